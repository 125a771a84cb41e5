"""Experiment tracking behind one small interface: W&B, or nothing.

Our run directory (record.json, metrics.jsonl) stays the source of truth; W&B is the shared dashboard.
A run logs to W&B offline by default (no account, no network: files under `<run_dir>/wandb/`, to be
uploaded with `wandb sync`), online when an API key is configured (`wandb login`, WANDB_API_KEY) or when
asked for (`runtime.wandb=online`), and not at all with `runtime.wandb=disabled`. The WANDB_MODE
environment variable, when set, wins over `runtime.wandb` (`WANDB_MODE=disabled` turns W&B off
everywhere, as the test suite does).

W&B run ids are derived from our run id and the time the run directory's run started (kept in its
record across attempts), so a requeued or restarted run finds its W&B run again (online: `resume="allow"`)
while a run trained again from scratch in a new directory gets a fresh one. Offline runs can neither be
resumed nor merged by `wandb sync`, so each attempt is its own offline run, tagged with the run id and
`attempt-N`.

wandb is imported only when a W&B run starts, and its failures (missing package, `wandb.init` errors,
a dead service) never stop training: the run warns once on stderr and goes on without W&B.
"""

from __future__ import annotations

import configparser
import math
import netrc
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from conadv_repro.run_label import run_label

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_PROJECT = "conadv-repro"
# The hosts `wandb login` may store a key for when no host is configured: W&B's own, and the one recent
# wandb releases default to. wandb's default of the installed version is added when it can be read.
DEFAULT_BASE_URLS = ("https://api.wandb.ai", "https://api.forge.coreweave.com")
# WANDB_MODE values wandb itself accepts, mapped to ours.
_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
              "disabled": "disabled"}
_TRUE = ("1", "true", "yes", "on")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Print `message` on stderr the first time `key` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Tracker:
    """Where a run's metrics go besides its run directory. This base class tracks nothing."""

    mode = "disabled"

    def start(self) -> Tracker:
        return self

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """One metrics row (as appended to metrics.jsonl) at training step `step`."""

    def summary(self, values: Mapping[str, Any]) -> None:
        """The run's final numbers."""

    def finish(self, status: str) -> None:
        """End the run with our status (finished, diverged, failed); safe to call more than once."""


class WandbTracker(Tracker):
    """A W&B run; `init_kwargs` are those of `wandb.init` (mode included), `offline_kwargs` those to
    fall back to when an online run cannot start (None: no fallback)."""

    def __init__(self, init_kwargs: dict[str, Any], offline_kwargs: dict[str, Any] | None = None):
        self.init_kwargs = init_kwargs
        self.offline_kwargs = offline_kwargs
        self.mode = init_kwargs["mode"]
        # The name is a label for people; the run id travels in the config (and the tags).
        self.run_id = str(init_kwargs.get("config", {}).get("run_id") or init_kwargs["name"])
        self.run: Any = None
        self._min_step = 0  # an online run resumed by W&B accepts steps from its starting step on

    def start(self) -> Tracker:
        try:
            import wandb
        except Exception as error:  # any import failure: train without W&B
            warn_once("wandb-import", f"W&B logging is off: `import wandb` failed ({type(error).__name__}: "
                                      f"{error})")
            return Tracker()
        run_id = self.run_id
        try:
            self.run = _init(wandb, self.init_kwargs)
        except Exception as error:
            if self.offline_kwargs is None:
                warn_once(f"wandb-init-{run_id}", f"W&B logging is off for run {run_id}: wandb.init failed "
                                                  f"({type(error).__name__}: {error})")
                return Tracker()
            warn_once(f"wandb-init-{run_id}", f"W&B online logging failed for run {run_id} "
                                              f"({type(error).__name__}: {error}); logging offline instead "
                                              "(upload later with `wandb sync`)")
            self.mode = "offline"
            try:
                self.run = _init(wandb, self.offline_kwargs)
            except Exception as error2:
                warn_once(f"wandb-init-offline-{run_id}", f"W&B logging is off for run {run_id}: offline "
                                                          f"wandb.init failed too ({type(error2).__name__}: "
                                                          f"{error2})")
                return Tracker()
        try:
            self._min_step = int(getattr(self.run, "starting_step", 0) or 0)
        except Exception:  # only an optimisation (skipping rows W&B would drop)
            self._min_step = 0
        return self

    def _call(self, what: str, fn: Any, *args: Any) -> None:
        if self.run is None:
            return
        try:
            fn(*args)
        except Exception as error:  # W&B trouble must not stop training
            warn_once(f"wandb-{what}-{self.run_id}",
                      f"W&B logging stopped for run {self.run_id}: {what} failed "
                      f"({type(error).__name__}: {error})")
            run, self.run = self.run, None
            try:
                run.finish(exit_code=1)
            except Exception:
                pass

    def log(self, row: Mapping[str, Any], step: int) -> None:
        if self.run is None or step < self._min_step:
            return  # a resumed online run already holds this step (a resumed run logs it again, identically)
        values = wandb_row(row)
        if values:
            self._call("log", self.run.log, values, step)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            clean = {k: v for k, v in values.items() if _loggable(v)}
            self._call("summary", self.run.summary.update, clean)

    def finish(self, status: str) -> None:
        if self.run is None:
            return
        run = self.run
        self._call("summary", run.summary.update, {"status": status})
        self.run = None
        try:
            run.finish(exit_code=0 if status == "finished" else 1)
        except Exception as error:
            warn_once(f"wandb-finish-{self.run_id}", f"W&B could not finish run "
                      f"{self.run_id} ({type(error).__name__}: {error})")


def _init(wandb: Any, kwargs: dict[str, Any]) -> Any:
    kwargs = dict(kwargs)
    Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
    settings = kwargs.pop("settings", {})
    return wandb.init(**kwargs, settings=wandb.Settings(**settings))


def _loggable(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return not (isinstance(value, float) and math.isnan(value))
    return False


def wandb_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl row as W&B values: numbers only, keyed `<kind>/<name>` (a train row and an epoch
    row of the same step both hold a train_top1, over different windows): train/top1, train/loss,
    train/lr, epoch/train_top1, epoch/test_top1, ..."""
    kind = str(row.get("kind", "metrics"))
    return {f"{kind}/{key.removeprefix(kind + '_')}": value for key, value in row.items()
            if key not in ("kind", "step") and _loggable(value)}


def api_key_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether W&B credentials are configured here, read the way wandb reads them but without importing
    it, prompting, or the network: WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, the api_key of wandb's
    settings file, or the netrc entry `wandb login` writes for the W&B host."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    settings = _settings_file(env)
    if settings.get("api_key"):
        return True
    configured = env.get("WANDB_BASE_URL") or settings.get("base_url")
    urls = [configured] if configured else [*DEFAULT_BASE_URLS, _installed_default_base_url()]
    hosts = {urlsplit(url).netloc for url in urls if url}
    path = env.get("NETRC") or str(Path.home() / (".netrc" if os.name != "nt" else "_netrc"))
    try:
        table = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return False
    return any((creds := table.authenticators(host)) and creds[2] for host in hosts if host)


def _installed_default_base_url() -> str | None:
    """The installed wandb's default host, read from its settings model without creating settings."""
    try:
        from wandb.sdk.wandb_settings import Settings

        default = Settings.model_fields["base_url"].default
    except Exception:  # another wandb layout, or no wandb: the known defaults stay
        return None
    return default if isinstance(default, str) else None


def _settings_file(env: Mapping[str, str]) -> dict[str, str]:
    """The [default] section of wandb's user settings file (`wandb login --host` writes base_url)."""
    folder = env.get("WANDB_CONFIG_DIR") or str(Path.home() / ".config" / "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(Path(folder) / "settings")
        return dict(parser["default"]) if parser.has_section("default") else {}
    except (OSError, configparser.Error):
        return {}


def resolve_mode(setting: str, env: Mapping[str, str] | None = None) -> str:
    """online, offline or disabled, from `runtime.wandb` and the environment (WANDB_MODE wins; auto is
    online when W&B credentials are configured, offline otherwise)."""
    env = os.environ if env is None else env
    if env.get("WANDB_DISABLED", "").strip().lower() in _TRUE:
        return "disabled"
    requested = env.get("WANDB_MODE", "").strip().lower()
    if requested:
        if requested in _ENV_MODES:
            return _ENV_MODES[requested]
        warn_once(f"wandb-mode-{requested}", f"WANDB_MODE={requested!r} is not one of "
                                             f"{', '.join(_ENV_MODES)}; using runtime.wandb={setting}")
    if setting not in MODES:
        raise ValueError(f"runtime.wandb={setting!r}; allowed: {', '.join(MODES)}")
    if setting == "auto":
        return "online" if api_key_configured(env) else "offline"
    return setting


def wandb_run_ids(run_id: str, attempt: int, started: float | None = None) -> tuple[str, str]:
    """(online id, offline id) of a run's W&B run: the online one shared by all attempts, the offline one
    per attempt. `started` (the run's first start, from its record) tells apart runs of the same config
    trained again from scratch."""
    base = run_id if started is None else f"{run_id}-{int(started):x}"
    return base, f"{base}-a{attempt}"


def make_tracker(cfg: Any, *, run_id: str, attempt: int, tags: Sequence[str] = (), run_dir: str | Path,
                 started: float | None = None, env: Mapping[str, str] | None = None,
                 derived: Mapping[str, Any] | None = None) -> Tracker:
    """The tracker of one attempt of run `run_id` (`cfg` its Config; `tags` the experiments using it);
    not started yet. W&B runs write under `<run_dir>/wandb/`."""
    env = os.environ if env is None else env
    mode = resolve_mode(cfg.runtime.wandb, env)
    if mode == "disabled":
        return Tracker()
    run_dir = Path(run_dir).resolve()
    scale = cfg.scale or "free"
    experiment_tags = sorted({str(tag) for tag in tags if tag})
    config = {**cfg.flat(), "scale": scale, "run_id": run_id, "run_dir": str(run_dir),
              **{f"derived.{key}": value for key, value in (derived or {}).items()}}
    online_id, offline_id = wandb_run_ids(run_id, attempt, started)
    common: dict[str, Any] = {
        "project": env.get("WANDB_PROJECT") or DEFAULT_PROJECT, "name": run_label(cfg, run_id), "group": scale,
        "job_type": cfg.method, "config": config, "dir": str(run_dir), "reinit": "create_new",
        "allow_val_change": True, "settings": {"console": "off"},
    }
    if env.get("WANDB_ENTITY"):
        common["entity"] = env["WANDB_ENTITY"]
    offline = {**common, "mode": "offline", "id": offline_id,
               "tags": [*experiment_tags, run_id, f"attempt-{attempt}"]}
    if mode == "offline":
        return WandbTracker(offline)
    online = {**common, "mode": "online", "id": online_id, "resume": "allow", "tags": [*experiment_tags, run_id]}
    return WandbTracker(online, offline_kwargs=offline)
