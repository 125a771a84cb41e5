"""What a landscape measurement is asked for, with every constant that decides its numbers.

Everything here goes into the key of a result (store.py): two people who use the same settings on the
same checkpoint get the same numbers (bit for bit on the CPU with the same torch build and thread count).
`VERSION` names the measurement code; change it with any change that moves a number, so that older
entries are measured again instead of reused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from conadv_repro.errors import UserError

VERSION = "conadv-landscape-measure/1"

# In the order they run and are reported; `between` needs --between OTHER_RUN and comes with it.
MEASURES = ("eigenvalue", "trace", "adaptive", "epsilon", "slice", "between")
DEFAULT_MEASURES = MEASURES[:-1]
MEASURE_HELP = {
    "eigenvalue": "top Hessian eigenvalue of the training loss (power iteration), and of plain cross-entropy",
    "trace": "Hessian trace of the training loss (Hutchinson, Rademacher probes) with its standard error",
    "adaptive": "top eigenvalue of diag(|w|) H diag(|w|) (ASAM's scale-invariant form)",
    "epsilon": "Keskar's epsilon-sharpness (projected sign ascent in the box eps (|w| + 1))",
    "slice": "loss and top-1 along one filter-normalised random direction (Li et al. 2018)",
    "between": "loss and top-1 on the line to --between OTHER_RUN (running statistics interpolated too)",
}

# The sample: clean training examples (the eval transform), drawn by a seed that is no run's, so every
# run on one dataset is measured on the same examples and cells stay paired.
SAMPLE_SEED = 20170
DEFAULT_EXAMPLES = 512
DEFAULT_EXAMPLES_BY_DATA = {"imagenet": 5000}
DEFAULT_MICRO_BATCH = 128
DEFAULT_SEED = 0  # of the probes and directions (their own torch.Generator per measure)
POWER_MAX_ITERATIONS = 20
POWER_TOLERANCE = 1e-3  # relative change of the Rayleigh quotient between two iterations
TRACE_PROBES = 16
# Keskar's epsilon-sharpness (sharpness.py): the box's relative size and the ascent's steps. They live
# here, not beside their code, so that this module imports no torch: the launcher's status reads keys.
EPSILON = 1e-3
ASCENT_STEPS = 10
# The stated alphas (slices.py): 21 points from -1 to 1 along a direction, 21 from 0 to 1 between two runs
# (beyond the ends the interpolated running variances could turn negative).
SLICE_ALPHAS = tuple(round(-1.0 + 0.1 * i, 10) for i in range(21))
BETWEEN_ALPHAS = tuple(round(0.05 * i, 10) for i in range(21))
# Each measure draws from its own generator, seeded seed * 16 + its stream, so a measure's numbers do not
# depend on which other measures ran before it.
STREAMS = {"eigenvalue": 1, "trace": 2, "adaptive": 3, "slice": 4}


def default_examples(data: str) -> int:
    return DEFAULT_EXAMPLES_BY_DATA.get(data, DEFAULT_EXAMPLES)


def parse_measures(text: str | None, *, between: bool) -> tuple[str, ...]:
    """The measures named in `text` (comma-separated; all but `between` when None), in MEASURES order;
    `between` is added when --between is given and refused without it."""
    if text is None:
        names = list(DEFAULT_MEASURES)
    else:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name not in MEASURES]
        if unknown or not names:
            shown = ", ".join(repr(name) for name in unknown) or "none"
            raise UserError(f"--measures {text!r}: unknown measure {shown}; allowed: {', '.join(MEASURES)} "
                            "(comma-separated)")
    if "between" in names and not between:
        raise UserError("measure 'between' needs --between OTHER_RUN, the run at the other end of the line")
    if between:
        names.append("between")
    return tuple(name for name in MEASURES if name in names)


@dataclass(frozen=True)
class Settings:
    measures: tuple[str, ...] = DEFAULT_MEASURES
    examples: int = DEFAULT_EXAMPLES
    micro_batch: int = DEFAULT_MICRO_BATCH
    seed: int = DEFAULT_SEED
    probes: int = TRACE_PROBES
    sample_seed: int = SAMPLE_SEED
    power_max_iterations: int = POWER_MAX_ITERATIONS
    power_tolerance: float = POWER_TOLERANCE
    epsilon: float = EPSILON
    ascent_steps: int = ASCENT_STEPS
    slice_alphas: tuple[float, ...] = SLICE_ALPHAS
    between_alphas: tuple[float, ...] = BETWEEN_ALPHAS

    def generator_seed(self, measure: str) -> int:
        return self.seed * 16 + STREAMS[measure]

    def as_key(self) -> dict[str, Any]:
        key = asdict(self)
        key["measures"] = list(self.measures)
        key["slice_alphas"] = list(self.slice_alphas)
        key["between_alphas"] = list(self.between_alphas)
        key["version"] = VERSION
        return key


__all__ = ["DEFAULT_MEASURES", "MEASURES", "MEASURE_HELP", "SAMPLE_SEED", "VERSION", "Settings",
           "default_examples", "parse_measures"]
