"""DisAdv (the paper's section 3.2): attack batch t with the current weights theta_t, then update on the
clean and adversarial batches. Two sequential gradient computations per step."""

from __future__ import annotations

from conadv_repro.data.loader import MicroBatch
from conadv_repro.methods.adversarial import AdversarialMethod
from conadv_repro.methods.base import Branch


class DisAdv(AdversarialMethod):
    name = "disadv"

    def branches(self, micro: MicroBatch) -> list[Branch]:
        return self.make_branches(micro, self.adversarial(self.ctx.model, micro))
