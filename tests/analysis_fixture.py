"""Real smoke-scale runs of the engine for the analysis tests (records, metrics, checkpoints)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

# Table 1's and Figure 2's vanilla and AutoAugment rows and Table 1's ConAdv row at 32k and 64k.
ONLY = ["--only", "row=ResNet-50,ResNet-50+AA,ResNet-50+ConAdv", "--only", "paper_batch=32k,64k"]


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> Path:
    """A runs folder holding 6 finished smoke runs of Table 1 (trained in-process, about 20 s)."""
    from conadv_repro.launch import cli

    runs = tmp_path_factory.mktemp("analysis") / "runs"
    with mock.patch("pdb.post_mortem"):
        status = cli.main(["table1", *ONLY, "--runs-dir", str(runs), "--cluster", "debug"])
    assert status == 0
    return runs
