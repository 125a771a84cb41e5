"""Quick checks that submitit works against the real local Slurm cluster (`make slurm-up`).

Skipped without a cluster; failed instead when CONADV_REQUIRE_SLURM=1 (as in CI).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError

from tests.slurm_support import sacct_state, wait_done

pytestmark = pytest.mark.slurm

# The job's Python may not be able to import this test module (pytest puts tests/ on its own
# sys.path); send the job functions by value instead of by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def add_in_job(a: int, b: int) -> dict[str, object]:
    env = os.environ
    return {"sum": a + b, "job_id": env.get("SLURM_JOB_ID"), "partition": env.get("SLURM_JOB_PARTITION")}


def fail_in_job() -> None:
    raise ValueError("kaboom from the Slurm job")


def _executor(folder: Path, partition: str) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(slurm_partition=partition, timeout_min=5, cpus_per_task=1, mem_gb=1)
    return ex


def test_submit_result_completed(slurm_partition: str, tmp_path: Path) -> None:
    job = _executor(tmp_path, slurm_partition).submit(add_in_job, 2, 3)
    wait_done(job, timeout=120)
    res = job.result()
    assert res["sum"] == 5
    assert res["job_id"] == str(job.job_id)
    assert res["partition"] == slurm_partition
    assert sacct_state(job) == "COMPLETED"


def test_failing_job_reports_exception(slurm_partition: str, tmp_path: Path) -> None:
    job = _executor(tmp_path, slurm_partition).submit(fail_in_job)
    wait_done(job, timeout=120)
    with pytest.raises(FailedJobError) as err:
        job.result()
    text = str(err.value)
    assert "ValueError" in text and "kaboom from the Slurm job" in text, text[-2000:]
    assert sacct_state(job) == "FAILED"
