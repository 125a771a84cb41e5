"""W&B tracking: mode resolution, W&B run ids and tags, and real offline runs (no account, no network).

The rest of the suite runs with WANDB_MODE=disabled (conftest.py, the Makefile); these tests set their
own environment: offline, silent, no console capture, W&B's folders in a temporary directory. Nothing
here starts an online run: the online path is checked on its init arguments, or with a fake wandb.init.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conadv_repro import tracking
from conadv_repro.config import config_from_overrides
from conadv_repro.tracking import Tracker, WandbTracker, make_tracker, resolve_mode, wandb_row, wandb_run_ids

TINY = ["steps=3", "model.width=4", "batch_size=64", "bn.group_size=16", "runtime.device=cpu",
        "runtime.log_every=1", "runtime.threads=1"]
VARIED = "steps=3 model.width=4 bn.group_size=16"  # TINY's hashed fields the smoke scale sets otherwise


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Offline, silent W&B with its folders and credentials lookups in tmp_path (whatever the caller's
    environment says: `make test` exports WANDB_MODE=disabled)."""
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
           "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
           "NETRC": str(tmp_path / "no-netrc")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DISABLED", "WANDB_PROJECT",
                "WANDB_ENTITY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(tracking, "_warned", set())
    return env


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment without any W&B credentials (for the pure resolution functions)."""
    return {"NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "no-config"), **extra}


class FakeRun:
    def __init__(self, kwargs: dict[str, Any]):
        self.kwargs = kwargs
        self.logged: list[tuple[dict[str, Any], int]] = []
        self.summary: dict[str, Any] = {}
        self.exit_codes: list[int] = []
        self.starting_step = 0

    def log(self, values: dict[str, Any], step: int) -> None:
        self.logged.append((values, step))

    def finish(self, exit_code: int = 0) -> None:
        self.exit_codes.append(exit_code)


@pytest.fixture
def fake_init(wandb_env, monkeypatch: pytest.MonkeyPatch) -> list[FakeRun]:
    """Replace wandb.init with a recorder; returns the runs it made."""
    import wandb

    runs: list[FakeRun] = []

    def init(**kwargs: Any) -> FakeRun:
        runs.append(FakeRun(kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


# ------------------------------------------------------------------ which mode


def test_auto_is_offline_without_credentials(tmp_path):
    assert not tracking.api_key_configured(clean_env(tmp_path))
    assert resolve_mode("auto", clean_env(tmp_path)) == "offline"


def test_auto_is_online_with_an_api_key_in_the_environment(tmp_path):
    env = clean_env(tmp_path, WANDB_API_KEY="0" * 40)
    assert tracking.api_key_configured(env)
    assert resolve_mode("auto", env) == "online"
    assert resolve_mode("offline", env) == "offline"  # asked for offline: offline, logged in or not


def test_auto_is_online_with_the_netrc_entry_of_wandb_login(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "1" * 40 + "\n")
    netrc.chmod(0o600)
    env = clean_env(tmp_path, NETRC=str(netrc))
    assert resolve_mode("auto", env) == "online"
    # A key for another host (a private W&B server) counts only when that server is the one in use.
    assert resolve_mode("auto", {**env, "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"
    netrc.write_text("machine wandb.example.org\n  login user\n  password " + "2" * 40 + "\n")
    assert resolve_mode("auto", {**env, "WANDB_BASE_URL": "https://wandb.example.org"}) == "online"


def test_the_environment_wins_over_the_config(tmp_path):
    keyed = clean_env(tmp_path, WANDB_API_KEY="0" * 40)
    assert resolve_mode("online", {**keyed, "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_mode("auto", {**keyed, "WANDB_MODE": "offline"}) == "offline"
    assert resolve_mode("disabled", clean_env(tmp_path, WANDB_MODE="online")) == "online"
    assert resolve_mode("auto", clean_env(tmp_path, WANDB_MODE="dryrun")) == "offline"
    assert resolve_mode("online", clean_env(tmp_path, WANDB_DISABLED="true")) == "disabled"
    assert resolve_mode("disabled", clean_env(tmp_path)) == "disabled"


def test_disabled_makes_the_no_op_tracker(tmp_path):
    off = config_from_overrides([*TINY, "runtime.wandb=disabled"])
    tracker = make_tracker(off, run_id=off.run_id(), attempt=1, run_dir=tmp_path, env=clean_env(tmp_path))
    assert type(tracker) is Tracker
    cfg = config_from_overrides(TINY)
    tracker = make_tracker(cfg, run_id=cfg.run_id(), attempt=1, run_dir=tmp_path,
                           env=clean_env(tmp_path, WANDB_MODE="disabled"))
    assert type(tracker) is Tracker
    tracker.start().log({"kind": "train", "step": 1, "train_loss": 1.0}, 1)  # all no-ops
    tracker.summary({"test_top1": 1.0})
    tracker.finish("finished")


def test_importing_the_engine_entry_points_does_not_import_wandb(tmp_path):
    code = ("import sys; from conadv_repro.config import config_from_overrides; "
            "from conadv_repro.tracking import make_tracker; "
            f"cfg = config_from_overrides({TINY!r}); "
            "make_tracker(cfg, run_id='x', attempt=1, run_dir='.', env={'WANDB_MODE': 'offline'}); "
            "assert 'wandb' not in sys.modules, 'wandb imported before a run starts'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------ ids, tags, init arguments


def test_offline_runs_are_one_per_attempt_and_tagged(tmp_path):
    cfg = config_from_overrides([*TINY, "scale=smoke"])
    run_id = cfg.run_id()
    env = clean_env(tmp_path, WANDB_MODE="offline", WANDB_PROJECT="proj", WANDB_ENTITY="team")
    kwargs = []
    for attempt in (1, 2):
        tracker = make_tracker(cfg, run_id=run_id, attempt=attempt, tags=["table2", "table1", "table1"],
                               run_dir=tmp_path / "run", started=1_700_000_000.5, env=env)
        assert isinstance(tracker, WandbTracker) and tracker.offline_kwargs is None
        kwargs.append(tracker.init_kwargs)
    first, second = kwargs
    assert first["mode"] == "offline" and "resume" not in first
    assert first["id"] == f"{run_id}-{1_700_000_000:x}-a1" and second["id"] == f"{run_id}-{1_700_000_000:x}-a2"
    assert first["tags"] == ["table1", "table2", run_id, "attempt-1"]
    assert second["tags"] == ["table1", "table2", run_id, "attempt-2"]
    assert first["name"] == f"vanilla batch=64 {VARIED} s0 {run_id[:6]}"
    assert first["group"] == "smoke" and first["job_type"] == "vanilla"
    assert first["project"] == "proj" and first["entity"] == "team"
    assert first["dir"] == str((tmp_path / "run").resolve())
    assert first["reinit"] == "create_new" and first["settings"] == {"console": "off"}
    assert first["config"]["scale"] == "smoke" and first["config"]["model.width"] == 4
    assert first["config"]["run_dir"] == first["dir"] and first["config"]["run_id"] == run_id


def test_online_runs_share_one_id_across_attempts_and_fall_back_to_offline(tmp_path):
    cfg = config_from_overrides(TINY)  # a free run: group "free"
    env = clean_env(tmp_path, WANDB_API_KEY="0" * 40)
    trackers = [make_tracker(cfg, run_id=cfg.run_id(), attempt=attempt, tags=["table4"], run_dir=tmp_path,
                             started=123.0, env=env) for attempt in (1, 2)]
    online = [t.init_kwargs for t in trackers]
    assert [k["mode"] for k in online] == ["online", "online"]
    assert online[0]["id"] == online[1]["id"] == wandb_run_ids(cfg.run_id(), 1, 123.0)[0]
    assert online[0]["resume"] == "allow" and online[0]["group"] == "free"
    assert online[0]["tags"] == ["table4", cfg.run_id()]
    assert "project" in online[0] and "entity" not in online[0]
    fallback = trackers[1].offline_kwargs
    assert fallback is not None and fallback["mode"] == "offline" and fallback["id"].endswith("-a2")
    # A run trained again from scratch (a new record, another start time) is another W&B run.
    assert wandb_run_ids(cfg.run_id(), 1, 456.0)[0] != online[0]["id"]


def test_online_init_failure_falls_back_to_offline(tmp_path, wandb_env, monkeypatch, capsys):
    import wandb

    modes = []

    def init(**kwargs: Any) -> FakeRun:
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("no network")
        return FakeRun(kwargs)

    monkeypatch.setattr(wandb, "init", init)
    cfg = config_from_overrides(TINY)
    env = {**wandb_env, "WANDB_MODE": "", "WANDB_API_KEY": "0" * 40}
    tracker = make_tracker(cfg, run_id=cfg.run_id(), attempt=1, run_dir=tmp_path, env=env).start()
    assert modes == ["online", "offline"] and tracker.mode == "offline"
    assert "logging offline instead" in capsys.readouterr().err


def test_rows_become_namespaced_numbers():
    row = {"kind": "train", "step": 5, "epoch": 0.25, "lr": 0.1, "train_top1": 50.0, "train_loss": 1.5,
           "train_loss_clean": 1.4, "images_per_s": None, "note": "text"}
    assert wandb_row(row) == {"train/epoch": 0.25, "train/lr": 0.1, "train/top1": 50.0, "train/loss": 1.5,
                              "train/loss_clean": 1.4}
    epoch = {"kind": "epoch", "epoch": 1, "step": 19, "train_top1": 40.0, "test_top1": 30.0}
    assert wandb_row(epoch) == {"epoch/epoch": 1, "epoch/train_top1": 40.0, "epoch/test_top1": 30.0}


# ------------------------------------------------------------------ real runs


def test_a_real_run_logs_offline_into_its_run_directory(tmp_path, wandb_env):
    from conadv_repro.engine.run import run_training

    cfg = config_from_overrides(TINY)
    run_dir = tmp_path / "run"
    record = run_training(cfg, run_dir, log=lambda _: None, tags=["table1"])
    assert record["status"] == "finished"
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    expected_id = wandb_run_ids(cfg.run_id(), 1, record["started"])[1]
    assert offline[0].name.endswith(expected_id)
    (log_file,) = offline[0].glob("*.wandb")
    assert log_file.name == f"run-{expected_id}.wandb" and log_file.stat().st_size > 0
    assert not list((tmp_path / "wandb-dir").rglob("offline-run-*"))  # in the run directory, not WANDB_DIR
    # Our records stay the source of truth: metrics.jsonl is unchanged by W&B.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in rows] == ["train", "train", "train", "final"]


def test_each_attempt_of_a_run_is_its_own_offline_run(tmp_path, wandb_env, monkeypatch):
    from conadv_repro.engine import trainer as trainer_module
    from conadv_repro.engine.run import run_training

    cfg = config_from_overrides(TINY)
    run_dir = tmp_path / "run"
    real_step = trainer_module.Trainer.train_step

    def failing_step(self, step, batches):
        if step == 1:
            raise RuntimeError("node lost")
        return real_step(self, step, batches)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="node lost"):
        run_training(cfg, run_dir, log=lambda _: None)
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    record = run_training(cfg, run_dir, log=lambda _: None)
    assert record["status"] == "finished" and record["attempts"] == 2
    names = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert [name[-3:] for name in names] == ["-a1", "-a2"], names
    for name in names:
        assert list((run_dir / "wandb" / name).glob("*.wandb"))


def test_training_goes_on_when_wandb_init_fails(tmp_path, wandb_env, monkeypatch, capsys):
    import wandb

    from conadv_repro.engine.run import run_training

    def broken_init(**kwargs: Any) -> None:
        raise RuntimeError("wandb is broken")

    monkeypatch.setattr(wandb, "init", broken_init)
    record = run_training(config_from_overrides(TINY), tmp_path / "run", log=lambda _: None)
    assert record["status"] == "finished"
    err = capsys.readouterr().err
    assert err.count("W&B logging is off") == 1 and "wandb is broken" in err


def test_training_goes_on_when_logging_fails_midway(tmp_path, fake_init, monkeypatch, capsys):
    from conadv_repro.engine.run import run_training

    def broken_log(self, values, step):
        raise OSError("disk full")

    monkeypatch.setattr(FakeRun, "log", broken_log)
    record = run_training(config_from_overrides(TINY), tmp_path / "run", log=lambda _: None)
    assert record["status"] == "finished"
    assert capsys.readouterr().err.count("W&B logging stopped") == 1
    assert fake_init[0].exit_codes == [1]


def test_the_launcher_passes_experiment_tags_to_wandb(tmp_path, fake_init):
    from conadv_repro.engine.lock import claim
    from conadv_repro.launch.submit import RunJob, RunSpec

    cfg = config_from_overrides([*TINY, "scale=smoke"])
    run_dir = tmp_path / "runs" / "smoke" / cfg.run_id()
    assert claim(run_dir, "token", cluster="debug")
    spec = RunSpec(cfg.to_dict(), str(run_dir), "token", tags=("table1", "table2", "table4"))
    (result,) = RunJob([spec])()
    assert result["status"] == "finished"
    (run,) = fake_init
    tags = run.kwargs["tags"]
    assert tags[:3] == ["table1", "table2", "table4"] and cfg.run_id() in tags and "attempt-1" in tags
    assert run.kwargs["group"] == "smoke"
    # Every metrics row reached W&B at its step; the final numbers are the summary; the status closes it.
    steps = [step for _, step in run.logged]
    assert steps == sorted(steps) and steps[-1] == 3 and all("train/loss" in v for v, _ in run.logged)
    assert set(run.summary) >= {"test_top1", "test_top5", "train_top1", "status"}
    assert run.summary["status"] == "finished" and run.exit_codes == [0]


def test_a_failed_run_finishes_its_wandb_run_as_failed(tmp_path, fake_init, monkeypatch):
    from conadv_repro.engine import trainer as trainer_module
    from conadv_repro.engine.run import run_training

    def failing_step(self, step, batches):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(trainer_module.Trainer, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_training(config_from_overrides(TINY), tmp_path / "run", log=lambda _: None)
    (run,) = fake_init
    assert run.summary["status"] == "failed" and run.exit_codes == [1]


def test_the_launcher_tags_a_run_with_every_experiment_using_it(tmp_path):
    import argparse

    from conadv_repro.launch.cli import experiment_tags
    from conadv_repro.launch.plan import expand
    from conadv_repro.registry import load_experiments

    runs = expand(load_experiments(["table1"]), scale="smoke", runs_dir=tmp_path, sets={})
    args = argparse.Namespace(scale="smoke", runs_dir=tmp_path, sets=[], data_root="")
    tags = experiment_tags(runs, args)
    assert set(tags) == {run.run_id for run in runs}
    assert all("table1" in found and list(found) == sorted(found) for found in tags.values())
    every = expand(load_experiments(["all"]), scale="smoke", runs_dir=tmp_path, sets={})
    shared = [run for run in every if len({use[0] for use in run.uses}) > 1 and run.run_id in tags]
    assert shared, "table1 shares no run with another experiment at smoke scale"
    for run in shared:
        assert tags[run.run_id] == tuple(sorted({use[0] for use in run.uses}))


def test_a_login_to_the_installed_wandbs_default_host_is_found(tmp_path):
    from conadv_repro.tracking import _installed_default_base_url, api_key_configured

    netrc_file = tmp_path / "netrc"
    for url in ("https://api.wandb.ai", "https://api.forge.coreweave.com", _installed_default_base_url()):
        if not url:
            continue
        host = url.split("://", 1)[1]
        netrc_file.write_text(f"machine {host}\n  login user\n  password abcdef0123456789\n")
        netrc_file.chmod(0o600)
        env = {"NETRC": str(netrc_file), "WANDB_CONFIG_DIR": str(tmp_path / "cfg")}
        assert api_key_configured(env), host
    netrc_file.write_text("machine example.org\n  login user\n  password x\n")
    assert not api_key_configured({"NETRC": str(netrc_file), "WANDB_CONFIG_DIR": str(tmp_path / "cfg")})


@pytest.mark.parametrize("items, label", [
    (["scale=smoke", "method=conadv", "autoaugment=true", "paper_batch=96k", "attack.epsilon=8"],
     "conadv AA 96k eps=8 s0"),
    (["scale=smoke", "method=vanilla", "paper_batch=32k", "seed=3"], "vanilla 32k s3"),
    (["scale=smoke", "method=conadv", "paper_batch=32k", "conadv.tau=2"], "conadv 32k eps=3 tau=2 s0"),
    # A launcher variation (--set) shows as its key and value, whatever made it.
    (["scale=smoke", "method=disadv", "paper_batch=8k", "attack.bn_mode=eval"], "disadv 8k eps=3 attack.bn_mode=eval s0"),
    (["scale=smoke", "method=noise", "paper_batch=8k"], "noise 8k eps=3 s0"),
])
def test_wandb_names_say_what_tells_cells_apart(tmp_path, items, label):
    cfg = config_from_overrides(items)
    tracker = make_tracker(cfg, run_id=cfg.run_id(), attempt=1, run_dir=tmp_path,
                           env=clean_env(tmp_path, WANDB_MODE="offline"))
    kwargs = tracker.init_kwargs
    assert kwargs["name"] == f"{label} {cfg.run_id()[:6]}"
    # Ids, tags and the config keep the run id exactly as before: resume and the analysis use those.
    assert kwargs["id"] == wandb_run_ids(cfg.run_id(), 1)[1]
    assert cfg.run_id() in kwargs["tags"] and kwargs["config"]["run_id"] == cfg.run_id()


def test_wandb_source_reads_the_run_id_from_the_config_never_the_name():
    from types import SimpleNamespace

    from analysis.wandb_source import _row

    summary = {"test_top1": 40.0, "status": "finished"}
    run = SimpleNamespace(config={"run_id": "7304fea192fe", "method": "vanilla"}, summary=summary,
                          name="vanilla 1k s0 7304fe", state="finished", created_at="2026-01-01")
    row = _row(run)
    assert row is not None and row["run_id"] == "7304fea192fe" and row["test_top1"] == 40.0
    # A run without the id in its config is not one of ours, whatever its name looks like.
    assert _row(SimpleNamespace(config={}, summary=summary, name="7304fea192fe", state="finished",
                                created_at="2026-01-01")) is None
