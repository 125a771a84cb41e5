"""The names of a run directory's files, in one place, importable without torch (the launcher's
planning and status paths read them and must stay fast)."""

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RECORD_FILE = "record.json"
LAUNCH_FILE = "launch.json"  # the launcher's submissions of this run: cluster, job ids, log folders
FINAL_STATES = ("finished", "failed", "diverged")
# Files the launcher may leave in a run directory before the run has started.
LAUNCHER_FILES = ("lock.json", LAUNCH_FILE)
