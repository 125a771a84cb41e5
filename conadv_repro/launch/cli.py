"""`python -m conadv_repro.launch`: train the paper's grids, on a Slurm cluster or on this machine.

    python -m conadv_repro.launch --list                       the experiments and their run counts
    python -m conadv_repro.launch table1 --dry-run             every run, its state, what would be submitted
    python -m conadv_repro.launch table1                       train what is not finished (resume, start)
    python -m conadv_repro.launch status table1                progress, logs, job ids
    python -m conadv_repro.launch cancel table1                cancel queued and running jobs, release claims
    python -m conadv_repro.launch between flatness             the loss on the line its settings declare

The paper scale is one flag away: `--scale paper --data-root /data/imagenet --profile NAME`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from conadv_repro.batch_sizes import format_batch
from conadv_repro.errors import OneLineParser, UserError, at_least_one, cli_entry
from conadv_repro.landscape_state import declared_for
from conadv_repro.launch.host_memory import host_memory_warnings
from conadv_repro.launch.memory_check import memory_warnings
from conadv_repro.launch.plan import LAYOUT_KEYS, PlannedRun, apply_filters, check_scale, expand, parse_sets
from conadv_repro.launch.states import RunState, SlurmJobs, run_state, summary_line
from conadv_repro.layout import check_layout, run_processes
from conadv_repro.presets import LAUNCH_SCALES, SCALE_DESCRIPTIONS
from conadv_repro.registry import experiment_names, load_experiments

COMMANDS = ("status", "cancel", "between")
# Options that act on a launch: given to status or cancel they would be ignored (cancel --dry-run cancelling).
LAUNCH_ONLY = {"--dry-run": "dry_run", "--estimate": "estimate", "--calibration": "calibration",
               "--allow-cpu": "allow_cpu", "--retry-failed": "retry_failed",
               "--runs-per-job": "runs_per_job", "--wait/--no-wait": "wait", "--list": "list",
               "--check-data": "check_data"}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m conadv_repro.launch", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scales:\n" + "\n".join(f"  {s:8s} {d}" for s, d in SCALE_DESCRIPTIONS.items()))
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                        help="an experiment of --list (table1 ... figure4, flatness, sharpness, staleness) or all "
                             "(after an optional command: status, cancel, or between: the loss on the line "
                             "between two finished runs that the experiment declares)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--scale", default="smoke", help=f"{', '.join(LAUNCH_SCALES)} (default: smoke)")
    parser.add_argument("--dry-run", action="store_true", help="show the plan and submit nothing")
    parser.add_argument("--estimate", action="store_true",
                        help="print each run's projected wall time and GPU-hours and the grid's total (from a "
                             "calibration of the profile's hardware); submit nothing")
    parser.add_argument("--calibration", default=None, metavar="PATH",
                        help="with --estimate: a calibration file (benchmarks/throughput.py --save) or 'published'")
    parser.add_argument("--cluster", default=None,
                        help="slurm, local or debug (default: slurm where a Slurm controller answers, else local)")
    parser.add_argument("--profile", default=None, metavar="NAME|PATH",
                        help="slurm/profiles/NAME.toml (partition, GPUs, time...; $CONADV_PROFILES names another "
                             "folder), or the path of a .toml file")
    parser.add_argument("--gpus-per-run", type=at_least_one, default=0, metavar="N",
                        help="GPUs (processes) per run, for every run whose experiment does not pin its layout "
                             "(Figure 4 does); not part of a run id: a relaunch with another N resumes the same "
                             "runs (default: the profile's gpus_per_run, else at the paper scale 8 on a GPU "
                             "profile, at most its gpus_per_node; otherwise as each run declares it: one trainer, "
                             "plus ConAdv's attack workers where set)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="launch the paper scale on jobs without a GPU (refused otherwise)")
    parser.add_argument("--only", action="extend", nargs="+", default=[], metavar="KEY=V1,V2",
                        help="keep runs whose config field or label (experiment, row, column) is one of the values")
    parser.add_argument("--set", action="extend", nargs="+", default=[], dest="sets", metavar="KEY=VALUE",
                        help="a variation: set a config key on the runs whose method uses it (new run ids, "
                             "unless the key is not part of them: the device, micro-batch and layout keys)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run directories live (default: runs)")
    parser.add_argument("--data-root", default="", help="dataset folder (ImageNet at the paper scale)")
    parser.add_argument("--retry-failed", action="store_true", help="also resubmit runs whose record says failed")
    parser.add_argument("--check-data", action="store_true",
                        help="before submitting, read the first and last bytes of every ImageNet image file of "
                             "--data-root, list those that cannot be read and stop (exit 2); a clean result is "
                             "remembered until a file changes")
    parser.add_argument("--runs-per-job", type=int, default=0,
                        help="runs trained one after another in one job (default: grouped for smoke grids, 1 otherwise)")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                        help="wait for the jobs and print the results (default: yes for local/debug, no for slurm)")
    return parser


def plan(args: argparse.Namespace, *, check_data: bool = True) -> list[PlannedRun]:
    from conadv_repro.launch.profiles import gpus_per_run, load_profile

    check_scale(args.scale)
    if not args.experiments:
        raise UserError(f"name an experiment; allowed: {', '.join(experiment_names())}, all")
    experiments = load_experiments(args.experiments)
    sets = parse_sets(args.sets)
    pinned = [key for key in LAYOUT_KEYS if key in sets]
    if args.gpus_per_run and pinned:
        raise UserError(f"--gpus-per-run {args.gpus_per_run} and --set {pinned[0]}=... both lay out the runs; "
                        "give one of them")
    gpus = gpus_per_run(load_profile(args.profile), args.scale, args.gpus_per_run)
    runs = expand(experiments, scale=args.scale, runs_dir=args.runs_dir, sets=sets,
                  data_root=args.data_root, check_data=check_data, gpus_per_run=gpus)
    runs = apply_filters(runs, args.only)
    for run in runs:  # a layout that cannot work is refused here, not by every rank of a submitted job
        try:
            check_layout(run.config, run_processes(run.config))
        except UserError as error:
            origin = f" (--gpus-per-run {args.gpus_per_run})" if args.gpus_per_run else ""
            raise UserError(f"run {run.run_id} ({run.config.method} at {run.config.paper_batch or run.config.batch_size})"
                            f"{origin}: {error}") from None
    return runs


def measurements(runs: list[PlannedRun], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run id -> the landscape measurement that a launched experiment declares for the run (plain data,
    landscape_state.declared_for); the first experiment in the paper's order wins where two declare one."""
    declared = {e.name: declared_for(e.settings, args.scale) for e in load_experiments(args.experiments)}
    found: dict[str, dict[str, Any]] = {}
    for run in runs:
        for name, _row, _column in run.uses:
            wanted = declared.get(name)
            if wanted is not None:
                found.setdefault(run.run_id, wanted)
    return found


def states_of(runs: list[PlannedRun], args: argparse.Namespace, jobs: SlurmJobs) -> list[RunState]:
    measured = measurements(runs, args)
    return [run_state(run.run_dir, jobs, measured.get(run.run_id), run.config.data) for run in runs]


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def follow_up(command: str, args: argparse.Namespace) -> str:
    """The same selection as this launch, for status or cancel (or the launch itself: `command` "")."""
    parts = ["python -m conadv_repro.launch", *([command] if command else []), *args.experiments, "--scale", args.scale]
    if args.runs_dir != Path("runs"):
        parts += ["--runs-dir", str(args.runs_dir)]
    if args.only:
        parts += ["--only", *args.only]
    if args.sets:
        parts += ["--set", *args.sets]
    return " ".join(parts)


def describe(run: PlannedRun, state: RunState) -> str:
    labels = run.labels()
    aa = "AA" if labels["autoaugment"] else "--"
    eps = f"eps={labels['epsilon']:g}" if labels["epsilon"] is not None else "     "
    seed = f" seed={labels['seed']}" if labels["seed"] else ""
    top1 = ""
    if state.record and state.record.get("final"):
        top1 = f" top1={state.record['final'].get('test_top1', float('nan')):.2f}"
    return (f"{state.state:10s} {labels['method']:8s} {aa} {labels['paper_batch']:>5s} "
            f"(batch {format_batch(labels['batch_size']):>5s}) {eps:7s}{seed} {run.run_id}{top1}")


def print_runs(runs: list[PlannedRun], states: list[RunState]) -> None:
    for run, state in zip(runs, states, strict=True):
        print(describe(run, state))


def cmd_list(args: argparse.Namespace) -> int:
    print("experiments (runs per scale):")
    experiments = load_experiments(["all"])
    width = max(len(e.name) for e in experiments)
    for experiment in experiments:
        counts = []
        for scale in LAUNCH_SCALES:
            runs = expand([experiment], scale=scale, runs_dir=args.runs_dir, sets={}, check_data=False)
            counts.append(f"{scale} {len(runs)}")
        print(f"  {experiment.name:{width}s} {experiment.description}  [{', '.join(counts)}]")
    total = []
    for scale in LAUNCH_SCALES:
        runs = expand(load_experiments(["all"]), scale=scale, runs_dir=args.runs_dir, sets={}, check_data=False)
        total.append(f"{scale} {len(runs)}")
    print(f"  {'all':{width}s} every experiment, shared runs once  [{', '.join(total)}]")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    if args.check_data and args.estimate:
        raise UserError("--check-data has no use with --estimate, which reads no data and submits nothing; "
                        "allowed: a launch or --dry-run")
    if args.estimate:
        from conadv_repro.launch.estimate import cmd_estimate

        return cmd_estimate(plan(args, check_data=False), args)
    if args.calibration:
        raise UserError("--calibration is for --estimate")
    from conadv_repro.launch import submit
    from conadv_repro.launch.profiles import gpus_line, load_profile

    runs = plan(args)
    profile = load_profile(args.profile)
    if args.dry_run and args.cluster is None:
        # A guess from PATH alone: asking the controller (sinfo) can take seconds, and a plan must be quick. A
        # profile describes a Slurm cluster: its plan is that cluster's.
        cluster = "slurm" if shutil.which("sbatch") or args.profile else "local"
    else:
        cluster = submit.choose_cluster(args.cluster)
        if args.cluster is None and args.profile and cluster != "slurm":
            # Never train a cluster's grid on the login node because its controller did not answer once.
            raise UserError(f"--profile {args.profile} describes a Slurm cluster, but no Slurm controller answers "
                            "here (sbatch/sinfo); launch from a node of that cluster, or add --cluster local to "
                            "train on this machine")
    local_gpus = submit.local_gpu_count() if cluster != "slurm" else 0
    if args.scale == "paper" and not args.allow_cpu:
        check_jobs_have_gpus(cluster, profile, local_gpus, args)
    jobs = SlurmJobs()
    states = states_of(runs, args, jobs)
    # An unmeasured run is finished: its job only measures it (nothing is trained again).
    todo_states = ("missing", "unfinished", "unmeasured", *(("failed",) if args.retry_failed else ()))
    todo = [run for run, state in zip(runs, states, strict=True) if state.state in todo_states]
    measure_only = {run.run_id for run, state in zip(runs, states, strict=True) if state.state == "unmeasured"}
    for run in todo:  # refuse a job the cluster cannot give before anything is claimed or written
        submit.job_resources(cluster, profile, job_processes(run, measure_only))
    summary = summary_line([s.state for s in states])
    for line in [*memory_warnings(todo, profile), *host_memory_warnings(todo, profile, cluster)]:
        print(line, file=sys.stderr)
    if args.check_data:  # last of the checks: it takes minutes, the others a moment
        check_data_files(runs, args)
    if args.dry_run:
        print_runs(runs, states)
        groups = group_runs(todo, cluster, args, measure_only)
        only = f" ({len(measure_only)} only to measure)" if measure_only else ""
        print(f"a launch would submit {plural(len(todo), 'run')}{only} in {plural(len(groups), 'job')} to {cluster} "
              f"(scale {args.scale}, runs in {args.runs_dir})")
        if groups:
            print(f"each job ({gpus_line(args, profile)}):")
        for line in submit.request_lines(cluster, profile, [job_processes(g[0], measure_only) for g in groups],
                                         local_gpus=local_gpus):
            print(line)
        print(summary)
        return 0
    if not todo:
        print_runs(runs, states)
        failed = sum(s.state == "failed" for s in states)
        hint = f"; {plural(failed, 'failed run')} would be retried with --retry-failed" if failed else ""
        print(f"nothing to submit: every run is finished, failed, diverged, queued or running{hint}")
        print(summary)
        return 0
    submitted = submit_runs(todo, cluster, profile, args, measured=measurements(runs, args),
                            measure_only=measure_only)
    if not submitted:
        print(summary_line([s.state for s in states_of(runs, args, SlurmJobs())]))
        return 0
    wait = args.wait if args.wait is not None else cluster != "slurm"
    if not wait:
        print(f"follow them with: {follow_up('status', args)}")
        return 0
    try:
        failures = wait_for(submitted)
    except KeyboardInterrupt:
        print("\ninterrupted: the local jobs stop with this launcher; run the same command again to resume "
              "them from their checkpoints", file=sys.stderr)
        return 130
    finally:
        submit.remove_folder_template(args.runs_dir / args.scale / "_jobs")  # submitit makes it while waiting
    states = states_of(runs, args, SlurmJobs())
    print_runs(runs, states)
    unmeasured = sum(s.state == "unmeasured" for s in states)
    if failures or unmeasured:
        what = "failed runs" if failures else "unmeasured runs (their measurement failed; training is finished)"
        print(f"details of {what}: {follow_up('status', args)}")
    print(summary_line([s.state for s in states]))
    return 1 if failures or unmeasured else 0


def check_data_files(runs: list[PlannedRun], args: argparse.Namespace) -> None:
    """`--check-data`: every ImageNet image file the runs will read can be read, or exit 2 listing those that
    cannot; then the launch (or dry run) goes on."""
    from conadv_repro.data.check_files import require_readable

    roots = sorted({run.config.data_root for run in runs if run.config.data == "imagenet"})
    if not roots:
        data = sorted({run.config.data for run in runs})
        raise UserError(f"--check-data has no use with --scale {args.scale} (data={', '.join(data)}); it checks "
                        "the ImageNet image files of --scale paper's --data-root")
    for root in roots:
        require_readable(root)


def check_jobs_have_gpus(cluster: str, profile: Any, local_gpus: int, args: argparse.Namespace) -> None:
    """The paper scale on CPUs would take hundreds of thousands of device-hours: refuse a launch whose jobs
    would get no GPU, unless the user says it is meant (--allow-cpu)."""
    if cluster == "slurm" and profile.gpus_per_node:
        return
    if cluster != "slurm" and local_gpus:
        return
    where = f"profile {profile.name} has gpus_per_node=0" if args.profile else "no --profile was given"
    if cluster != "slurm":
        where = f"--cluster {cluster} on this machine, which has no GPU"
    raise UserError(f"--scale paper would train on CPUs only ({where}); use a GPU profile such as "
                    "--profile example-gpu (copy slurm/profiles/example-gpu.toml for your cluster), or add "
                    "--allow-cpu if that is meant")


def job_processes(run: PlannedRun, measure_only: set[str] | None = None) -> int:
    """The tasks of a job for `run`: its ranks, or one when the job only measures it (rank 0 alone would
    work: a job of its training's size would hold idle GPUs)."""
    return 1 if run.run_id in (measure_only or set()) else run_processes(run.config)


def group_runs(runs: list[PlannedRun], cluster: str, args: argparse.Namespace,
               measure_only: set[str] | None = None) -> list[list[PlannedRun]]:
    if not runs:
        return []
    if cluster == "debug":
        return [runs]
    # A run on several processes has a job of its own (its tasks are its ranks).
    multi = [[run] for run in runs if job_processes(run, measure_only) > 1]
    runs = [run for run in runs if job_processes(run, measure_only) == 1]
    per_job = args.runs_per_job
    if per_job <= 0:
        if cluster == "local":
            jobs = min(len(runs), os.cpu_count() or 1) if args.scale in ("smoke", "proxy") else 1
            per_job = -(-len(runs) // max(jobs, 1))
        else:
            per_job = 8 if args.scale == "smoke" else 1
    per_job = max(per_job, 1)
    return [runs[i:i + per_job] for i in range(0, len(runs), per_job)] + multi


TIMING_LOCK = "timing.lock"


def timed_experiments() -> set[str]:
    """The experiments whose runs measure time (Table 3, Figure 4): `settings["timed"]`."""
    return {e.name for e in load_experiments(["all"]) if e.settings.get("timed")}


def experiment_tags(runs: list[PlannedRun], args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """Run id -> every experiment that uses the run at this scale (its W&B tags), not only those launched
    now: a run shared by Tables 1, 2 and 4 carries three tags even when launched for Table 1 alone."""
    names = {run.run_id: {use[0] for use in run.uses} for run in runs}
    try:
        every = expand(load_experiments(["all"]), scale=args.scale, runs_dir=args.runs_dir,
                       sets=parse_sets(getattr(args, "sets", None) or []),
                       data_root=getattr(args, "data_root", "") or "")
    except Exception:  # only labels: the launched experiments' names still tag the runs
        every = []
    for run in every:
        if run.run_id in names:
            names[run.run_id].update(use[0] for use in run.uses)
    return {run_id: tuple(sorted(found)) for run_id, found in names.items()}


def submit_runs(todo: list[PlannedRun], cluster: str, profile: Any, args: argparse.Namespace, *,
                measured: dict[str, dict[str, Any]] | None = None,
                measure_only: set[str] | None = None) -> list[tuple[Any, list[PlannedRun]]]:
    """`measured`: run id -> its declared landscape measurement (the job measures after training);
    `measure_only`: the finished run ids whose job only measures."""
    from conadv_repro.engine.lock import attach_job, claim, release_claim
    from conadv_repro.launch import submit

    claimed: list[tuple[PlannedRun, str]] = []
    for run in todo:
        token = uuid.uuid4().hex
        if claim(run.run_dir, token, cluster=cluster):
            claimed.append((run, token))
        else:
            print(f"skipping {run.run_id}: another launch or process holds it")
    if not claimed:
        print("nothing submitted: another launch or process holds every run")
        return []
    tokens = {id(run): token for run, token in claimed}
    groups = group_runs([run for run, _ in claimed], cluster, args, measure_only)
    folder = args.runs_dir / args.scale / "_jobs"
    executor = submit.make_executor(cluster, folder, profile)
    tasks = [job_processes(group[0], measure_only) for group in groups]
    threads = submit.default_threads(cluster, sum(tasks))
    local_gpus = submit.local_gpu_count() if cluster == "local" else 0
    jobs_made = []
    try:
        tags = experiment_tags([run for run, _ in claimed], args)
        timed = timed_experiments() if cluster == "local" else set()
        lock = str(folder / TIMING_LOCK) if cluster == "local" else ""

        def spec(run: PlannedRun) -> submit.RunSpec:
            return submit.RunSpec(run.config.to_dict(), str(run.run_dir), tokens[id(run)], tags[run.run_id],
                                  machine_lock=lock, timed=bool(timed & {use[0] for use in run.uses}),
                                  landscape=(measured or {}).get(run.run_id),
                                  measure_only=run.run_id in (measure_only or set()))

        payloads = [submit.RunJob([spec(run) for run in group], threads) for group in groups]
        measuring = sorted(timed & {use[0] for run, _ in claimed for use in run.uses})
        if measuring:
            print(f"the runs of {', '.join(measuring)} measure time: on this machine each trains alone")
        single = [p for p, n in zip(payloads, tasks, strict=True) if n == 1]
        multi = [(p, n) for p, n in zip(payloads, tasks, strict=True) if n > 1]
        for _, n in multi:  # refuse before submitting anything
            submit.job_resources(cluster, profile, n)
        if cluster == "debug":
            jobs = [executor.submit(payload) for payload in single]
        else:
            # clean_env: a launch from inside a Slurm job must not hand its SLURM_* variables to the jobs.
            with submit.clean_env(), submit.detached_from_terminal(cluster == "local"):
                with executor.batch():  # the one-process runs: one job array
                    jobs = [executor.submit(payload) for payload in single]
                for payload, n in multi:  # each run on several processes: a job with its own resources
                    executor.update_parameters(**submit.job_resources(cluster, profile, n, local_gpus=local_gpus))
                    jobs.append(executor.submit(payload))
        for job, group in zip(jobs, groups, strict=True):
            jobs_made.append((job, group))
            for run in group:
                attach_job(run.run_dir, tokens[id(run)], cluster=cluster, job_id=str(job.job_id))
                submit.record_submission(run.run_dir, {"cluster": cluster, "job_id": str(job.job_id),
                                                       "log_dir": str(folder / str(job.job_id)),
                                                       "layout": run_layout(run, cluster, profile, local_gpus)})
    except Exception:
        for run, token in claimed:
            release_claim(run.run_dir, token)
        raise
    finally:
        submit.remove_folder_template(folder)
    ids = ", ".join(str(job.job_id) for job, _ in jobs_made)
    print(f"submitted {plural(len(claimed), 'run')} in {plural(len(jobs_made), 'job')} to {cluster}"
          + (f": {ids}" if ids and cluster == "slurm" else ""))
    for line in submit.request_lines(cluster, profile, tasks, local_gpus=local_gpus):
        print(line)
    return jobs_made


def run_layout(run: PlannedRun, cluster: str, profile: Any, local_gpus: int) -> dict[str, Any]:
    """A submission's layout, for launch.json: the run's processes and what its job asks for."""
    from conadv_repro.launch import submit

    cfg = run.config
    processes = run_processes(cfg)
    workers = cfg.conadv.attack_workers if cfg.method == "conadv" else 0
    return {"processes": processes, "trainers": processes - workers, "attack_workers": workers,
            **submit.job_request(cluster, profile, processes, local_gpus=local_gpus)}


def wait_for(submitted: list[tuple[Any, list[PlannedRun]]]) -> int:
    failures = 0
    for job, _group in submitted:
        try:
            job.results()  # every task's (a run on several processes has one task per rank)
        except Exception:  # each run's state and error are in its record, shown below and by status
            failures += 1
            print(f"job {job.job_id} failed")
    return failures


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "launch"
    args = build_parser().parse_args(argv)
    if command != "launch":
        given = [flag for flag, value in LAUNCH_ONLY.items() if getattr(args, value) not in (None, False, 0)]
        if given:
            raise UserError(f"{given[0]} has no use with {command}; allowed there: the selection (experiments, "
                            "--scale, --only, --set, --runs-dir, --profile, --gpus-per-run, --data-root)")
    if args.runs_per_job < 0:
        raise UserError(f"--runs-per-job {args.runs_per_job} must be >= 0")
    if args.list:
        return cmd_list(args)
    if command == "launch":
        return cmd_launch(args)
    if command == "between":
        from conadv_repro.launch.between import cmd_between

        return cmd_between(args)
    from conadv_repro.launch.manage import cmd_cancel, cmd_status

    return {"status": cmd_status, "cancel": cmd_cancel}[command](args)
