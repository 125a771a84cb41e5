#!/usr/bin/env bash
# Start the project's local test cluster: a real single-node Slurm (munge + MariaDB + slurmdbd +
# slurmctld + slurmd) on Debian, as root, without systemd. For the test suite and CI; see README.md.
# Idempotent: safe to run again (about 3 s when everything is installed and up).
# Exits 0 once the node is IDLE and sacct answers.
#
# Env knobs:
#   LOCAL_SLURM_PARTITION  partition name (default: debug)
#   LOCAL_SLURM_CPUS       CPUs to advertise (default: nproc; may exceed nproc -> oversubscribe)
#   LOCAL_SLURM_STATE      dir for our pid records + lock (default: /run/local-slurm)
# Logs: /var/log/slurm/{slurmctld,slurmd,slurmdbd}.log, /var/log/mysql/local-slurm.err
set -euo pipefail

PARTITION="${LOCAL_SLURM_PARTITION:-debug}"
CPUS="${LOCAL_SLURM_CPUS:-$(nproc)}"
STATE="${LOCAL_SLURM_STATE:-/run/local-slurm}"
CLUSTER=localcluster
NODE="$(hostname -s)"
DBPASS=slurmdbpass            # local-only MariaDB account used by slurmdbd
PKGS=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)

log() { echo "[local-slurm] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts system daemons); try: sudo bash $0"
[ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1 \
  || die "Debian only (needs /etc/debian_version and apt-get); on other systems use a real cluster"
grep -q '^12\.' /etc/debian_version || log "note: tested on Debian 12 (bookworm); this is Debian $(cat /etc/debian_version)"

# running <pid>: exists and is not a zombie (PID 1 here may reap orphans only seconds later)
running() { local st; st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ]; }
# alive <name> <comm>: the pid recorded in $STATE/<name>.pid is running and is <comm>
alive() { local f="$STATE/$1.pid" p; [ -s "$f" ] || return 1; p=$(cat "$f")
          running "$p" && [ "$(cat /proc/$p/comm 2>/dev/null)" = "$2" ]; }
wait_for() { local secs=$1; shift; local i; for ((i=0; i<secs*4; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done; return 1; }
foreign() { # foreign <daemon pidfile> <comm>: is a <comm> we did not record running per that pidfile?
  local p; p=$(cat "$1" 2>/dev/null) || return 1; [ -n "$p" ] && running "$p" && [ "$(cat /proc/$p/comm 2>/dev/null)" = "$2" ]; }
record() { # record <name> <daemon pidfile> <comm>: copy pid the daemon wrote into our state dir
  wait_for 20 test -s "$2" || die "$1 did not write $2"
  local p; p=$(cat "$2"); [ "$(cat /proc/$p/comm 2>/dev/null)" = "$3" ] || die "$1 pid $p is not $3"
  echo "$p" > "$STATE/$1.pid"; }

mkdir -p "$STATE"
# Serialize concurrent callers. Every daemon below is started with 9>&- so none inherits the lock.
exec 9>"$STATE/lock"; flock 9

# ---------------------------------------------------------------- 1. packages
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Package scripts must not start daemons (we start them below, and track their pids).
  # Docker-style images already ship a policy-rc.d that says no; add one if absent.
  tmp_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    tmp_policy=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > "$tmp_policy"; chmod +x "$tmp_policy"
  fi
  apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
  if [ -n "$tmp_policy" ]; then rm -f "$tmp_policy"; fi
fi

# ---------------------------------------------------------------- 2. munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! alive munged munged; then
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    die "a munged not started by this script is already running; stop it first"
  fi
  rm -f /run/munge/munged.pid
  # munged refuses to run as root with a munge-owned key; run it as the munge user.
  runuser -u munge -- /usr/sbin/munged 9>&-
  record munged /run/munge/munged.pid munged
fi
wait_for 10 sh -c 'munge -n | unmunge' || die "munge not working"
log "munged ok (pid $(cat $STATE/munged.pid))"

# ---------------------------------------------------------------- 3. MariaDB (for slurmdbd -> sacct)
install -d -o mysql -g root -m 0755 /run/mysqld
install -d -o mysql -g adm -m 0750 /var/log/mysql
cat > /etc/mysql/mariadb.conf.d/99-local-slurm.cnf <<'CNF'
[mysqld]
bind-address=127.0.0.1
innodb_buffer_pool_size=256M
innodb_lock_wait_timeout=900
CNF
[ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
if ! alive mariadbd mariadbd; then
  if mariadb-admin ping >/dev/null 2>&1; then die "a MariaDB not started by this script is running; stop it first"; fi
  rm -f /run/mysqld/mysqld.pid
  # mariadbd does not daemonize itself. setsid -f forks it off and NO shell process of ours
  # keeps the caller's stdout/stderr open (else `start_local_slurm.sh | tail` never ends).
  ( cd / && exec setsid -f /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
        --log-error=/var/log/mysql/local-slurm.err ) </dev/null >/dev/null 2>&1 9>&-
  record mariadbd /run/mysqld/mysqld.pid mariadbd
fi
wait_for 60 mariadb-admin ping || die "MariaDB did not come up (see /var/log/mysql/local-slurm.err)"
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
log "mariadbd ok (pid $(cat $STATE/mariadbd.pid))"

# ---------------------------------------------------------------- 4. config files
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm
install -d -m 0755 /var/spool/slurmd /etc/slurm
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p'); MEM=$(( MEM * 9 / 10 ))
changed=0
write_if_changed() { # write_if_changed <path> <mode> <owner>; content on stdin
  local tmp; tmp=$(mktemp); cat > "$tmp"
  if ! cmp -s "$tmp" "$1"; then install -m "$2" -o "$3" -g "$3" "$tmp" "$1"; changed=1; fi; rm -f "$tmp"; }

write_if_changed /etc/slurm/slurmdbd.conf 600 slurm <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DBPASS
CONF
dbd_changed=$changed; changed=0

write_if_changed /etc/slurm/slurm.conf 644 root <<CONF
# generated by slurm/local/start.sh (local test cluster)
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# requeued jobs wait cred_expire seconds before they may start again (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
# re-scan pending jobs often (requeued jobs become eligible by time, not by an event)
SchedulerParameters=bf_interval=2,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=1024
ReturnToService=2
KillWait=5
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
ctl_changed=$changed

# ---------------------------------------------------------------- 5. daemons
stop_recorded() { # stop_recorded <name> <comm>  (only pids this script recorded)
  if alive "$1" "$2"; then local p; p=$(cat "$STATE/$1.pid"); kill "$p"
    wait_for 30 eval "! running $p" || kill -9 "$p"; fi; rm -f "$STATE/$1.pid"; }
if [ "$dbd_changed" = 1 ]; then stop_recorded slurmdbd slurmdbd; fi
if [ "$ctl_changed" = 1 ] || [ "$dbd_changed" = 1 ]; then stop_recorded slurmd slurmd; stop_recorded slurmctld slurmctld; fi

if ! alive slurmdbd slurmdbd; then
  foreign /run/slurmdbd.pid slurmdbd && die "a slurmdbd not started by this script is running (/run/slurmdbd.pid)"
  rm -f /run/slurmdbd.pid; /usr/sbin/slurmdbd 9>&-; record slurmdbd /run/slurmdbd.pid slurmdbd
fi
wait_for 30 sacctmgr -n list cluster || die "slurmdbd not answering (see /var/log/slurm/slurmdbd.log)"
sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
log "slurmdbd ok (pid $(cat $STATE/slurmdbd.pid))"

if ! alive slurmctld slurmctld; then
  foreign /run/slurmctld.pid slurmctld && die "a slurmctld not started by this script is running (/run/slurmctld.pid)"
  rm -f /run/slurmctld.pid; /usr/sbin/slurmctld 9>&-; record slurmctld /run/slurmctld.pid slurmctld
fi
wait_for 30 scontrol ping || die "slurmctld not answering (see /var/log/slurm/slurmctld.log)"
if ! alive slurmd slurmd; then
  foreign /run/slurmd.pid slurmd && die "a slurmd not started by this script is running (/run/slurmd.pid)"
  rm -f /run/slurmd.pid; /usr/sbin/slurmd -N "$NODE" 9>&-; record slurmd /run/slurmd.pid slurmd
fi

# ---------------------------------------------------------------- 6. wait for the node
for i in $(seq 1 120); do
  st=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1)
  case "$st" in
    idle|mixed|allocated) break ;;
    down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.5
done
case "$st" in idle|mixed|allocated) ;; *) die "node $NODE is '$st' (see /var/log/slurm/slurmd.log)";; esac
wait_for 30 sacct -n -X -S now || die "sacct does not work"
log "cluster '$CLUSTER' up: node $NODE is $st, partition '$PARTITION'"
sinfo
