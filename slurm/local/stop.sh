#!/usr/bin/env bash
# Stop the daemons that slurm/local/start.sh started (pids recorded in $LOCAL_SLURM_STATE),
# after cancelling the jobs of this local cluster. Never touches processes it did not start.
# Idempotent: with nothing running it says so and exits 0. Packages and config stay installed.
set -uo pipefail
STATE="${LOCAL_SLURM_STATE:-/run/local-slurm}"
log() { echo "[local-slurm] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "ERROR: must run as root (it stops the daemons start.sh started as root)"; exit 1; }
if [ ! -d "$STATE" ] || ! ls "$STATE"/*.pid >/dev/null 2>&1; then log "nothing to stop (no pid records in $STATE)"; exit 0; fi
# running <pid>: exists and is not a zombie (PID 1 here may reap orphans only seconds later)
running() { local st; st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ]; }
# alive <name> <comm>: the pid recorded in $STATE/<name>.pid is running and is <comm>
alive() { local f="$STATE/$1.pid" p; [ -s "$f" ] || return 1; p=$(cat "$f")
          running "$p" && [ "$(cat /proc/$p/comm 2>/dev/null)" = "$2" ]; }

if alive slurmctld slurmctld; then
  ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${ids// /}" ]; then
    log "cancelling jobs: $ids"; scancel $ids 2>/dev/null || true
    for i in $(seq 1 60); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

stop() { # stop <name> <comm> <pidfile the daemon wrote>
  if alive "$1" "$2"; then
    local p; p=$(cat "$STATE/$1.pid"); log "stopping $1 (pid $p)"; kill "$p" 2>/dev/null
    for i in $(seq 1 120); do running "$p" || break; sleep 0.25; done
    if running "$p"; then log "$1 still alive, SIGKILL"; kill -9 "$p" 2>/dev/null; sleep 0.5; fi
    # slurmctld/slurmdbd leave their pid file behind; a stale /run/slurmctld.pid makes
    # 'apt-get remove slurmctld' fail (its prerm then runs scancel against a dead controller).
    [ "$(cat "$3" 2>/dev/null)" = "$p" ] && rm -f "$3"
  fi
  rm -f "$STATE/$1.pid"
}
stop slurmd    slurmd    /run/slurmd.pid
stop slurmctld slurmctld /run/slurmctld.pid
stop slurmdbd  slurmdbd  /run/slurmdbd.pid
stop mariadbd  mariadbd  /run/mysqld/mysqld.pid
stop munged    munged    /run/munge/munged.pid
log "stopped"
