"""Submitting runs through submitit: Slurm job arrays, the local executor, or in-process (debug).

A job trains one or more runs one after the other in one process (a smoke grid would otherwise pay a
torch import per run). Jobs receive plain data (each run's config as a dict, its directory and its
claim's token), never functions from experiment modules, so they pickle cleanly.

On preemption or time limit submitit calls `RunJob.checkpoint`, which hands each run directory's lock
back to the job as a claim (so nobody starts the run while the job waits in the queue) and returns the
same job for resubmission: each run then resumes from its newest checkpoint (engine/checkpoint.py names
them) and ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conadv_repro.atomic import atomic_write_json, read_json
from conadv_repro.errors import UserError
from conadv_repro.launch.profiles import Profile
from conadv_repro.runfiles import LAUNCH_FILE

CLUSTERS = ("slurm", "local", "debug")


@dataclass(frozen=True)
class RunSpec:
    config: dict[str, Any]
    run_dir: str
    token: str
    tags: tuple[str, ...] = ()  # the experiments that use the run (its W&B tags)
    # Local runs share one lock file (runs/<scale>/_jobs/timing.lock; "" = none): a timed run (Table 3,
    # Figure 4: its times are the measurement) holds it exclusively while it trains, the others shared, so
    # that nothing else trains on the machine while a time is measured.
    machine_lock: str = ""
    timed: bool = False
    # The landscape measurement a launched experiment declares for the run (landscape_state.declared_for:
    # plain data; None: none), made on rank 0 after training finishes; `measure_only`: the run is finished
    # and unmeasured, so the job measures it and trains nothing.
    landscape: dict[str, Any] | None = None
    measure_only: bool = False


class RunJob:
    """The callable a submitit job runs: train its runs in order; raise if any of them failed."""

    def __init__(self, specs: list[RunSpec], threads: int = 0):
        self.specs = specs
        self.threads = threads

    def __call__(self) -> list[dict[str, Any]]:
        import submitit

        from conadv_repro.config import config_from_dict
        from conadv_repro.engine.lock import read_lock

        if job_tasks() > 1:
            # One run on several tasks (one per GPU): MASTER_ADDR/PORT, RANK, WORLD_SIZE for torch.distributed.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        leads = job_rank() == 0
        results, failures = [], []
        for spec in self.specs:
            holder = read_lock(Path(spec.run_dir))
            if holder is None or holder.get("token") != spec.token:
                # `launch cancel` took this run out of the job (or someone else owns it now): skip it.
                print(f"skipping {spec.run_dir}: its claim was cancelled or taken over", flush=True)
                results.append({"run_dir": spec.run_dir, "status": "skipped"})
                continue
            cfg = config_from_dict(spec.config)
            if spec.measure_only:
                results.append(self._measure_only(spec, leads))
                continue
            try:
                # Rank 0 takes the machine lock to train; the other ranks wait for it at the rendezvous.
                # Every process imports torch (seconds of CPU) under the lock too, so that no import lands
                # in a measurement; a timed run's rank 0 locks for training only once its ranks have
                # imported, never holding the lock while they wait for it.
                shared = not spec.timed
                with machine_lock(spec.machine_lock, shared=shared):
                    train = self._training_code()
                if spec.timed and job_tasks() > 1:
                    ranks_imported(Path(spec.machine_lock).parent)
                with machine_lock(spec.machine_lock if leads else "", shared=shared):
                    record = train(cfg, spec.run_dir, lock_token=spec.token, tags=list(spec.tags))
                results.append({"run_dir": spec.run_dir, "status": record.get("status"),
                                "final": record.get("final")})
                if spec.landscape is not None and leads and record.get("status") == "finished":
                    with machine_lock(spec.machine_lock, shared=True):
                        results[-1]["landscape"] = self._measure(spec)
            except Exception as error:  # the next runs of the job still train
                print(f"run {spec.run_dir} failed: {type(error).__name__}: {error}", flush=True)
                failures.append(spec.run_dir)
                results.append({"run_dir": spec.run_dir, "status": "failed", "error": str(error)})
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(self.specs)} runs failed: {', '.join(failures)}")
        return results

    def _measure_only(self, spec: RunSpec, leads: bool) -> dict[str, Any]:
        """A finished run's measurement alone; the job's claim on it is released after (no training took it
        over). Other ranks of a multi-task job have nothing to do."""
        from conadv_repro.engine.lock import release_claim

        try:
            outcome = "skipped (not rank 0)"
            if leads:
                with machine_lock(spec.machine_lock, shared=True):
                    self._training_code()  # torch, with this job's thread count
                    outcome = self._measure(spec)
        finally:
            if leads:
                release_claim(Path(spec.run_dir), spec.token)
        return {"run_dir": spec.run_dir, "status": "finished", "landscape": outcome}

    def _measure(self, spec: RunSpec) -> str:
        """Measure a finished run as declared (docs/landscape.md), on this job's device. A failure is printed
        on the job log and left in the run's landscape_error.json for `status`; it is not raised, so the
        training stays finished and the job's next runs go on (status then shows the run `unmeasured`)."""
        from conadv_repro import landscape_state

        assert spec.landscape is not None
        run_dir = Path(spec.run_dir)
        try:
            # torch: imported only where a run is measured
            from conadv_repro.config import config_from_dict
            from conadv_repro.engine.trainer import resolve_device
            from conadv_repro.landscape.measure import measure_run

            cfg = config_from_dict(spec.config)
            settings = landscape_state.settings_of(spec.landscape, cfg.data)
            device = resolve_device(cfg.runtime.device)  # the device the run trained on (rank 0's GPU)
            entry, reused = measure_run(run_dir, settings, device=device,
                                        log=lambda line: print(line, flush=True))
        except Exception as error:  # a UserError or a bug alike: reported, never the training's failure
            text = f"{type(error).__name__}: {error}".splitlines()[0]
            print(f"landscape measurement of {spec.run_dir} failed: {text}", flush=True)
            try:
                landscape_state.write_error(run_dir, spec.landscape, text, time.time())
            except OSError as unwritable:  # the log line above still says it; the run stays unmeasured
                print(f"cannot write {run_dir / landscape_state.ERROR_FILE}: {unwritable}", flush=True)
            return f"failed: {text}"
        landscape_state.clear_error(run_dir)
        return f"{'reused' if reused else 'measured'} entry {entry['key_id']}"

    def _training_code(self) -> Any:
        """`run_training`, importing torch on the first call (cached after it)."""
        import torch

        from conadv_repro.engine.run import run_training

        if self.threads:
            torch.set_num_threads(self.threads)
        return run_training

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        from conadv_repro.engine.lock import mark_requeued

        mark_requeued()
        return submitit.helpers.DelayedSubmission(RunJob(self.specs, self.threads))


@contextmanager
def machine_lock(lock_path: str, *, shared: bool) -> Iterator[None]:
    """Hold `lock_path` (created if missing) for the block, shared or exclusive (a readers-writer lock:
    shared holders train side by side, an exclusive one alone); nothing when the path is ""."""
    if not lock_path:
        yield
        return
    import fcntl

    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        # Released when the file closes, also when the process dies.
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ranks_imported(folder: Path, timeout_s: float = 600.0) -> None:
    """A multi-task job's ranks meet after their imports: each other rank leaves a marker file in `folder`,
    rank 0 waits for them all (at most `timeout_s`; a rank that died shows at the rendezvous) and removes
    them."""
    import submitit

    env = submitit.JobEnvironment()

    def marker(rank: int) -> Path:
        return folder / f"{env.job_id}.rank{rank}.imported"

    if env.global_rank:
        marker(env.global_rank).touch()
        return
    others = [marker(rank) for rank in range(1, env.num_tasks)]
    deadline = time.time() + timeout_s
    while not all(path.exists() for path in others) and time.time() < deadline:
        time.sleep(0.1)
    for path in others:
        path.unlink(missing_ok=True)


def job_rank() -> int:
    """This task's rank in its submitit job (0 outside a job)."""
    import submitit

    try:
        return submitit.JobEnvironment().global_rank
    except RuntimeError:
        return 0


def job_tasks() -> int:
    """Tasks of the submitit job this process belongs to (1 outside a job, e.g. called directly)."""
    import submitit

    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:
        return 1


def local_gpu_count() -> int:
    """GPUs of this machine (nvidia-smi, no torch import); submitit's local executor hides the others."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def job_resources(cluster: str, profile: Profile, tasks: int, *, local_gpus: int = 0) -> dict[str, Any]:
    """submitit parameters of a job whose run has `tasks` processes: one task per GPU, on as many
    nodes of `profile.gpus_per_node` GPUs as it takes."""
    if cluster == "debug":
        if tasks > 1:
            raise UserError(f"a run with {tasks} processes cannot run in-process (--cluster debug); allowed: "
                            "--cluster local or slurm")
        return {}
    if cluster == "local":
        return {"tasks_per_node": tasks, "gpus_per_node": min(tasks, local_gpus)}
    per_node = profile.gpus_per_node
    if not per_node:  # a CPU partition: every task on one node
        return {"tasks_per_node": tasks, "nodes": 1}
    if tasks <= per_node:
        return {"tasks_per_node": tasks, "nodes": 1, "gpus_per_node": tasks}
    if tasks % per_node:
        raise UserError(f"a run with {tasks} processes (trainers + attack workers) does not fill whole nodes of "
                        f"gpus_per_node={per_node} (profile {profile.name}); allowed: a multiple of {per_node}")
    return {"tasks_per_node": per_node, "nodes": tasks // per_node, "gpus_per_node": per_node}


LOCAL_TIMEOUT_MIN = 60 * 24 * 7
MAX_REQUEUES = 30  # submitit requeues a job that hits its time limit at most this often; then the run waits


def job_request(cluster: str, profile: Profile, tasks: int, *, local_gpus: int = 0) -> dict[str, Any]:
    """What one job of a run on `tasks` processes asks for, in words a user checks against the cluster:
    nodes, tasks, GPUs, CPUs per task, memory per node (GB, None: not asked) and time limit (minutes)."""
    if cluster == "debug":
        return {"nodes": 1, "tasks": 1, "gpus": min(1, local_gpus), "cpus_per_task": None, "mem_gb": None,
                "time_min": None}
    resources = job_resources(cluster, profile, tasks, local_gpus=local_gpus)
    nodes = int(resources.get("nodes", 1))
    request = {"nodes": nodes, "tasks": nodes * int(resources["tasks_per_node"]),
               "gpus": nodes * int(resources.get("gpus_per_node", 0))}
    if cluster == "local":
        return {**request, "cpus_per_task": None, "mem_gb": None, "time_min": LOCAL_TIMEOUT_MIN}
    return {**request, "cpus_per_task": profile.cpus_per_task, "mem_gb": profile.mem_gb, "time_min": profile.time_min}


def describe_request(request: dict[str, Any]) -> str:
    nodes, tasks, gpus = request["nodes"], request["tasks"], request["gpus"]
    parts = [f"{nodes} node{'s' if nodes != 1 else ''}", f"{tasks} task{'s' if tasks != 1 else ''}",
             f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"]
    if request["cpus_per_task"]:
        parts.append(f"{request['cpus_per_task']} CPUs per task")
    if request["mem_gb"]:
        parts.append(f"{request['mem_gb']} GB of memory per node")
    if request["time_min"]:
        hours, minutes = divmod(int(request["time_min"]), 60)
        parts.append(f"time limit {hours}:{minutes:02d}:00")
    return ", ".join(parts)


def request_lines(cluster: str, profile: Profile, job_tasks: list[int], *, local_gpus: int = 0) -> list[str]:
    """One line per distinct job shape of a launch: how many jobs ask for what."""
    shapes: dict[str, int] = {}
    for tasks in job_tasks:
        text = describe_request(job_request(cluster, profile, tasks, local_gpus=local_gpus))
        shapes[text] = shapes.get(text, 0) + 1
    source = f"profile {profile.name}" if cluster == "slurm" else f"this machine, {local_gpus} GPUs"
    return [f"  {count} job{'s each ask' if count != 1 else ' asks'} for: {text} ({source})"
            for text, count in shapes.items()]


def slurm_answers() -> bool:
    """Whether a Slurm controller answers here (sbatch on PATH and `sinfo` succeeding)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "--noheader"], capture_output=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def choose_cluster(requested: str | None) -> str:
    if requested is None:
        return "slurm" if slurm_answers() else "local"
    if requested not in CLUSTERS:
        raise UserError(f"--cluster {requested!r} is not allowed; allowed: {', '.join(CLUSTERS)}")
    if requested == "slurm" and not slurm_answers():
        raise UserError("--cluster slurm but no Slurm controller answers here (sbatch/sinfo); "
                        "use --cluster local, or start one (make slurm-up, as root on Debian)")
    return requested


def make_executor(cluster: str, folder: Path, profile: Profile, *, local_timeout_min: int = LOCAL_TIMEOUT_MIN) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, slurm_max_num_timeout=MAX_REQUEUES)
    if cluster == "slurm":
        params: dict[str, Any] = {
            "timeout_min": profile.time_min, **job_resources(cluster, profile, 1),
            "cpus_per_task": profile.cpus_per_task, "mem_gb": profile.mem_gb,
            "slurm_signal_delay_s": 120, "slurm_array_parallelism": profile.array_parallelism,
            "name": "conadv",
        }
        if profile.partition:
            params["slurm_partition"] = profile.partition
        extra = {k: v for k, v in (("account", profile.account), ("qos", profile.qos),
                                   ("constraint", profile.constraint)) if v}
        for key, value in extra.items():
            params[f"slurm_{key}"] = value
        executor.update_parameters(**params)
    elif cluster == "local":
        executor.update_parameters(timeout_min=local_timeout_min, name="conadv",
                                   **job_resources(cluster, profile, 1, local_gpus=local_gpu_count()))
    return executor


def remove_folder_template(folder: Path) -> None:
    """Remove the empty `%j` folder submitit leaves beside the jobs' own folders when it submits."""
    try:
        (folder / "%j").rmdir()
    except OSError:  # absent, or (unexpectedly) not empty: leave it
        pass


def record_submission(run_dir: Path, entry: dict[str, Any]) -> None:
    """Append a submission to the run's launch.json (atomically): cluster, job id, log folder, time."""
    path = run_dir / LAUNCH_FILE
    try:
        history = read_json(path).get("submissions", [])
    except (OSError, ValueError, AttributeError):
        history = []
    history.append({**entry, "time": time.time()})
    atomic_write_json(path, {"submissions": history})


def clean_env() -> Any:
    import submitit

    return submitit.helpers.clean_env()


@contextmanager
def detached_from_terminal(enabled: bool = True) -> Iterator[None]:
    """Start local jobs with /dev/null as stdout and stderr: submitit's local job controller would
    otherwise inherit ours and keep a pipe reading the launcher's output open until the job ends (its
    own output goes to its log files)."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def default_threads(cluster: str, processes: int) -> int:
    """torch threads per process: the local cores shared among the processes running at once."""
    if cluster != "local":
        return 0
    return max(1, (os.cpu_count() or 1) // max(processes, 1))
