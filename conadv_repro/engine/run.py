"""One run, start to finish, in its run directory: lock, config, resume, train, evaluate, record.

Order matters for the "nothing written on bad input" rule: the config, the run directory and the
dataset are all checked before the first byte is written. A run resumes from its newest valid
checkpoint, and rows of metrics.jsonl written after that checkpoint are dropped (the resumed run writes
them again, identically), so a run killed at any point and started again ends bit-identical to one never
stopped (timing fields aside).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conadv_repro.atomic import append_jsonl
from conadv_repro.config import Config
from conadv_repro.distributed.context import DistContext, RankLost, init_distributed, lost_ranks, watch_peers
from conadv_repro.distributed.handshake import BUILD, DONE, START, Announcer
from conadv_repro.engine.checkpoint import NoUsableCheckpoint, load_latest_checkpoint, save_checkpoint
from conadv_repro.engine.lock import RunLock, check_not_held, requeue_requested
from conadv_repro.engine.progress import format_duration
from conadv_repro.engine.ranks import follow, is_transport_error, transport_reason
from conadv_repro.engine.rundir import RunDirectory, environment_info
from conadv_repro.engine.trainer import Diverged, Trainer, Window, checkpoint_due, new_progress
from conadv_repro.errors import OneLineFailure
from conadv_repro.tracking import Tracker, make_tracker

FINAL_STATES = ("finished", "diverged")


class LockLost(RuntimeError):
    """Someone else holds the run directory now: write nothing more to it."""


def describe_outcome(record: dict[str, Any]) -> str:
    status = record.get("status")
    final = record.get("final") or {}
    if status == "finished":
        return (f"finished: test top-1 {final.get('test_top1', float('nan')):.2f}% "
                f"top-5 {final.get('test_top5', float('nan')):.2f}%, train top-1 (eval) "
                f"{final.get('train_top1', float('nan')):.2f}%, {record.get('steps_done')} steps in "
                f"{format_duration(record.get('wall_time_s', 0.0))}")
    if status == "diverged":
        return f"diverged after {record.get('steps_done')} steps ({record.get('error', 'non-finite loss')})"
    return str(status)


def run_training(cfg: Config, run_dir: str | Path, *, log: Callable[[str], None] = print,
                 lock_token: str | None = None, tags: list[str] | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) the run `cfg` in `run_dir`; returns its record. `lock_token` adopts a
    launcher's claim on the directory (see engine/lock.py); `tags` name the experiments that use the run
    (its W&B tags, see tracking.py).

    Started as several processes (torchrun, or the launcher's Slurm tasks), every process calls this:
    rank 0 leads and writes, the other trainers follow, attack workers attack (engine/ranks.py); a rank
    that loses the others raises `RankLost` naming the lost rank(s)."""
    ctx = init_distributed(cfg)
    try:
        if ctx.rank == 0:
            return _lead(cfg, Path(run_dir), ctx, log, lock_token, tags)
        return follow(cfg, ctx, log)
    except Exception as error:
        if ctx.multi and is_transport_error(error) and not isinstance(error, RankLost):
            raise rank_lost(ctx, error) from error
        raise
    finally:
        ctx.close()


def rank_lost(ctx: DistContext, error: BaseException, stalled: str = "") -> RankLost:
    """A transport failure as the error a user reads: which rank(s) went silent, and the backend's reason."""
    if stalled:
        return RankLost(f"{stalled}: {transport_reason(error)}")
    return RankLost(f"{ctx.name()}: lost contact with rank(s) {lost_ranks(ctx)}: {transport_reason(error)}")


def _lead(cfg: Config, run_dir: Path, ctx: DistContext, log: Callable[[str], None], lock_token: str | None,
          tags: list[str] | None) -> dict[str, Any]:
    announcer = Announcer(ctx)
    try:
        return _lead_announced(cfg, run_dir, ctx, announcer, log, lock_token, tags)
    except BaseException as error:
        announcer.abort(f"{type(error).__name__}: {error}")
        raise


def _lead_announced(cfg: Config, run_dir: Path, ctx: DistContext, announcer: Announcer,
                    log: Callable[[str], None], lock_token: str | None, tags: list[str] | None) -> dict[str, Any]:
    rd = RunDirectory(Path(run_dir))
    rd.check_compatible(cfg)
    record = rd.read_record()
    if record and record.get("status") in FINAL_STATES:
        log(f"run {rd.path} is already {describe_outcome(record)}; nothing to do")
        announcer.send(DONE, status=record.get("status"))
        return record
    check_not_held(rd.path, lock_token)
    announcer.send(BUILD)
    try:
        trainer = Trainer(cfg, log=log, dist=ctx)
    except Exception as error:
        # A launched run's directory exists already (its claim made it): record why it could not start,
        # so that status shows it as failed. A run started by hand on bad input stays unwritten.
        if lock_token is not None and rd.path.is_dir():
            rd.write_record({"run_id": cfg.run_id(), "status": "failed", "config": cfg.flat(),
                             "attempts": int((record or {}).get("attempts", 0)) + 1, "steps_done": 0,
                             "error": f"{type(error).__name__}: {error}",
                             "traceback": traceback.format_exc()[-4000:]})
        raise
    rd.path.mkdir(parents=True, exist_ok=True)
    with RunLock(rd.path, token=lock_token) as lock:
        record = rd.read_record()  # another process may have finished it while we were building
        if record and record.get("status") in FINAL_STATES:
            log(f"run {rd.path} is already {describe_outcome(record)}; nothing to do")
            announcer.send(DONE, status=record.get("status"))
            return record
        try:
            return _train_locked(trainer, rd, record or {}, log, lock, tags or [], announcer)
        finally:
            trainer.close()


def _train_locked(trainer: Trainer, rd: RunDirectory, previous: dict[str, Any],
                  log: Callable[[str], None], lock: RunLock, tags: list[str], announcer: Announcer) -> dict[str, Any]:
    cfg, derived = trainer.cfg, trainer.derived
    if not rd.config_path.exists():
        rd.write_config(cfg, derived.as_dict())
    try:
        loaded = load_latest_checkpoint(rd.path)
    except NoUsableCheckpoint as error:
        # Not trained again from step 0 over them, and not left "running" or "interrupted" either: the
        # record says why the run stopped, for `launch status`; the files stay for the user to restore.
        stale = {key: value for key, value in previous.items() if key != "traceback"}
        rd.write_record({**stale, "run_id": cfg.run_id(), "status": "failed", "config": cfg.flat(),
                         "attempts": int(previous.get("attempts", 0)) + 1, "error": str(error)})
        raise OneLineFailure(str(error)) from None
    elapsed0, epoch_times, log_window = 0.0, [], Window()
    if loaded is not None:
        state, path = loaded
        trainer.load_state_dict(state)
        elapsed0 = float(state.get("elapsed", 0.0))
        epoch_times = list(state.get("epoch_times", []))
        log_window = Window(**state.get("log_window", {}))
        log(f"resuming {rd.path} from {path.name} at step {trainer.step}/{derived.total_steps}")
        if state.get("micro_batch", derived.micro_batch) != derived.micro_batch:
            log(f"warning: the checkpoint was written with runtime.micro_batch={state['micro_batch']}, this "
                f"process uses {derived.micro_batch}: the same run up to floating-point summation order, "
                "but not bit-identical to an uninterrupted one")
    announcer.send(START, checkpoint=str(loaded[1]) if loaded else None, step=trainer.step)
    rd.truncate_metrics(trainer.step)
    start = trainer.step
    name = cfg.run_id()
    record: dict[str, Any] = {
        "run_id": name, "status": "running", "attempts": int(previous.get("attempts", 0)) + 1,
        "started": previous.get("started", time.time()), "config": cfg.flat(), "derived": derived.as_dict(),
        "steps_done": start, "total_steps": derived.total_steps, "wall_time_s": elapsed0,
        "epoch_times": epoch_times, "environment": environment_info(trainer.device), "final": None,
        "distributed": trainer.dist.describe(), "executor": trainer.method.executor_label(),
        # One entry per attempt: a run may resume on another number of GPUs (not part of its id); Table 3 and
        # Figure 4 time only runs trained on one layout throughout.
        "layouts": [*previous.get("layouts", []), {"attempt": int(previous.get("attempts", 0)) + 1,
                                                   "from_step": start, **trainer.dist.describe(),
                                                   "device": trainer.device.type}],
    }
    rd.write_record(record)
    tracker = make_tracker(cfg, run_id=name, attempt=record["attempts"], tags=tags, run_dir=rd.path,
                           started=record["started"], derived=derived.as_dict()).start()
    try:
        return _train_steps(trainer, rd, record, log, lock, tracker, elapsed0, epoch_times, log_window)
    except KeyboardInterrupt:
        _record_interrupted(rd, lock)
        raise
    finally:
        # "running" here: stopped by a lost lock or an interrupt, not by a failure of the run itself.
        tracker.finish("interrupted" if record["status"] == "running" else record["status"])


def _record_interrupted(rd: RunDirectory, lock: RunLock) -> None:
    """Ctrl-C: say so in record.json, so that it does not claim a process is training. The run stays
    resumable from its newest checkpoint (any status outside FINAL_STATES resumes)."""
    if lock.lost:
        return  # the directory is someone else's now
    # The record on disk, not ours: it holds the steps of the newest checkpoint, where a resume starts.
    on_disk = rd.read_record()
    if on_disk is not None and on_disk.get("status") == "running":
        rd.write_record({**on_disk, "status": "interrupted", "interrupted": time.time()})


def _train_steps(trainer: Trainer, rd: RunDirectory, record: dict[str, Any], log: Callable[[str], None],
                 lock: RunLock, tracker: Tracker, elapsed0: float, epoch_times: list[float],
                 log_window: Window) -> dict[str, Any]:
    cfg, derived = trainer.cfg, trainer.derived
    name, start = record["run_id"], trainer.step
    log(f"[{name}] {trainer.describe()}")
    trainer.open_batches(start)
    progress = new_progress(trainer, name, start)
    t0 = time.time()

    def elapsed() -> float:
        return elapsed0 + time.time() - t0

    def append(row: dict[str, Any]) -> None:
        append_jsonl(rd.metrics_path, row)
        tracker.log(row, row["step"])

    spe, total = derived.steps_per_epoch, derived.total_steps
    stalled: list[str] = []

    def on_stall(ranks: list[int], seconds: float) -> None:
        # From the watch's thread, while this one waits in a collective: the record says why before NCCL's
        # watchdog (or gloo's timeout) ends the process.
        message = (f"{trainer.dist.name()}: rank(s) {', '.join(map(str, ranks))} silent for {seconds:g} s "
                   "(stalled or lost)")
        stalled.append(message)
        log(f"[{name}] {message}; the run stops")
        rd.write_record({**record, "status": "failed", "error": message, "wall_time_s": elapsed()})

    watch = None
    try:
        for step in range(start, total):
            trainer.stop_requested = lock.lost  # every trainer learns it in the step's all-reduce
            out = trainer.train_step(step, trainer.step_batches(step))
            if watch is None and trainer.dist.multi:  # the steady state: see distributed/stall_watch.py
                watch = watch_peers(trainer.dist, cfg.runtime.dist_step_timeout_s, on_stall)
            if out["stop"]:
                raise LockLost(f"run directory {rd.path} was taken over by another process (or its claim "
                               "was cancelled); stopping without writing to it")
            trainer.step = steps_done = step + 1
            for window in (log_window, trainer.epoch_window):
                window.add(out["examples"], out["correct"], out["loss"], out["branch_loss"])
            if steps_done % cfg.runtime.log_every == 0 or steps_done == total:
                summary = log_window.summary()
                img_s = progress.step_line(steps_done, summary["train_loss"], summary["train_top1"], out["lr"])
                append({"kind": "train", "step": steps_done, "epoch": steps_done / spe, "lr": out["lr"],
                        **summary, "images_per_s": img_s, "elapsed_s": elapsed()})
                log_window = Window()
            if steps_done % spe == 0:
                epoch = steps_done // spe
                row: dict[str, Any] = {"kind": "epoch", "epoch": epoch, "step": steps_done,
                                       **trainer.epoch_window.summary()}
                if epoch % cfg.runtime.eval_every == 0 or steps_done == total:
                    test = trainer.evaluate("test")
                    row.update({"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"]})
                    log(f"[{name}] epoch {epoch}: train top-1 {row['train_top1']:.2f}% "
                        f"test top-1 {test['top1']:.2f}% top-5 {test['top5']:.2f}%")
                epoch_times.append(elapsed())
                row["elapsed_s"] = epoch_times[-1]
                append(row)
                trainer.epoch_window = Window()
            if steps_done < total and checkpoint_due(trainer, steps_done):
                save_checkpoint(rd.path, steps_done, {**trainer.state_dict(), "elapsed": elapsed(),
                                                      "epoch_times": epoch_times,
                                                      "log_window": log_window.__dict__.copy()})
                rd.write_record({**record, "steps_done": steps_done, "wall_time_s": elapsed(),
                                 "epoch_times": epoch_times})
            if steps_done % spe == 0 or steps_done % cfg.runtime.checkpoint_every == 0:
                progress.restart_window(steps_done)
        if watch is not None:  # the other ranks are done and leave: their silence is no stall
            watch.stop()
        test = trainer.evaluate("test")
        train = trainer.evaluate("train")
        save_checkpoint(rd.path, total, {**trainer.state_dict(), "elapsed": elapsed(), "epoch_times": epoch_times,
                                         "log_window": Window().__dict__.copy()}, final=True)
        final = {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
                 "train_top1": train["top1"], "train_top5": train["top5"], "train_loss": train["loss"],
                 "train_top1_running": (trainer.epoch_window.summary()["train_top1"]
                                        if trainer.epoch_window.examples else _last_epoch_train_top1(rd))}
        append_jsonl(rd.metrics_path, {"kind": "final", "step": total, **final})
        tracker.summary({**final, "steps_done": total})
        record.update(status="finished", final=final, steps_done=total, wall_time_s=elapsed(),
                      epoch_times=epoch_times, finished=time.time())
        rd.write_record(record)
        log(f"[{name}] {describe_outcome(record)}")
        log(f"[{name}] run directory: {rd.path}")
        return record
    except LockLost:
        raise
    except OneLineFailure as error:
        # E.g. an unreadable image: its line is the whole story (the traceback would be the data loader's),
        # and the checkpoints stay, so the run resumes once the file is fixed.
        record.update(status="failed", error=str(error), steps_done=trainer.step, wall_time_s=elapsed())
        rd.write_record(record)
        raise
    except Diverged as error:
        append_jsonl(rd.metrics_path, {"kind": "diverged", "step": trainer.step + 1, "error": str(error)})
        tracker.summary({"steps_done": trainer.step})
        record.update(status="diverged", error=str(error), steps_done=trainer.step, wall_time_s=elapsed())
        rd.write_record(record)
        log(f"[{name}] {describe_outcome(record)}")
        return record
    except Exception as error:
        if requeue_requested():
            # Raised while the job was being checkpointed for a requeue (preemption or time limit), e.g. by
            # the requeue command itself: the run did not fail, it stays resumable from its last checkpoint.
            log(f"[{name}] interrupted while its job was being requeued: {type(error).__name__}: {error}")
            raise
        lost = rank_lost(trainer.dist, error, stalled[0] if stalled else "") \
            if trainer.dist.multi and is_transport_error(error) else None
        record.update(status="failed", error=str(lost) if lost else f"{type(error).__name__}: {error}",
                      traceback=traceback.format_exc()[-4000:], steps_done=trainer.step, wall_time_s=elapsed())
        rd.write_record(record)
        if lost is not None:
            raise lost from error
        raise
    finally:
        if watch is not None:
            watch.stop()


def _last_epoch_train_top1(rd: RunDirectory) -> float | None:
    epochs = [row for row in rd.metrics() if row.get("kind") == "epoch"]
    return epochs[-1]["train_top1"] if epochs else None
