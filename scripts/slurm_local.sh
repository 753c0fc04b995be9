#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests and trying `srlib sweep --executor slurm`.
#
#   scripts/slurm_local.sh start   # prints the line to eval: export SLURM_CONF=...
#   scripts/slurm_local.sh stop
#   scripts/slurm_local.sh status
#
# Installs nothing: it needs Debian's `slurm-wlm` and `munge` (apt-get install slurm-wlm munge) and runs as
# the user who can start them (root in CI containers). Everything it writes -- munge key and socket,
# slurm.conf, state, spool and logs -- lives in $SRLIB_SLURM_DIR (default /tmp/srlib-slurm-$USER), so it
# touches no system configuration and never talks to another munged or slurmctld. Its two ports are picked
# free at each start (not Slurm's 6817/6818, which a workstation's own Slurm usually holds); set
# SRLIB_SLURM_CTLD_PORT / SRLIB_SLURM_D_PORT to fix them.
set -euo pipefail

dir="${SRLIB_SLURM_DIR:-/tmp/srlib-slurm-$(id -un)}"
host="$(hostname -s)"
conf="$dir/slurm.conf"

need() {
  command -v python3 >/dev/null 2>&1 || { echo "slurm_local: python3 not found (it picks the free ports)" >&2; exit 1; }
  for b in munged slurmctld slurmd sinfo; do
    command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || {
      echo "slurm_local: $b not found; install Debian's slurm-wlm and munge (apt-get install slurm-wlm munge)" >&2
      exit 1
    }
  done
  export PATH="$PATH:/usr/sbin:/sbin"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_ports() {
  # Two ports nobody listens on now: bound together (so they differ), then released for the daemons.
  python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("", 0))
print(*(x.getsockname()[1] for x in s))'
}

write_conf() {
  local mem_mb ctld_port slurmd_port
  read -r ctld_port slurmd_port < <(free_ports)
  ctld_port="${SRLIB_SLURM_CTLD_PORT:-$ctld_port}"
  slurmd_port="${SRLIB_SLURM_D_PORT:-$slurmd_port}"
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # a bit under the machine's
  # cred_expire: Slurm holds a requeued job that long before restarting it (default 120 s; tests requeue).
  cat >"$conf" <<EOF
ClusterName=srlib-local
SlurmctldHost=$host
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=30
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  need
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
  chmod 700 "$dir/munge"
  if [ ! -s "$dir/munge/munge.key" ]; then
    head -c 1024 /dev/urandom >"$dir/munge/munge.key"
    chmod 600 "$dir/munge/munge.key"
  fi
  if ! alive "$dir/munge/munged.pid"; then
    # --force: munged refuses to run as root (CI containers) or with loose permissions otherwise.
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
  fi
  # A running controller keeps the ports its slurm.conf names; new ones only for a fresh start.
  if ! alive "$dir/slurmctld.pid" && ! alive "$dir/slurmd.pid"; then write_conf; fi
  export SLURM_CONF="$conf"
  alive "$dir/slurmctld.pid" || slurmctld -f "$conf"
  alive "$dir/slurmd.pid" || slurmd -f "$conf"
  for _ in $(seq 1 60); do
    if sinfo -h -o "%T" 2>/dev/null | grep -qx "idle"; then
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.5
  done
  echo "slurm_local: the node did not become idle within 30 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
  sinfo >&2 || true
  exit 1
}

stop() {
  export PATH="$PATH:/usr/sbin:/sbin"
  if [ -f "$conf" ]; then SLURM_CONF="$conf" scancel --quiet --user="$(id -un)" 2>/dev/null || true; fi
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    if alive "$pidfile"; then
      pid=$(cat "$pidfile")
      kill "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
  done
  # Job state would otherwise be recovered by the next start.
  rm -rf "$dir/state" "$dir/spool"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) export SLURM_CONF="$conf" PATH="$PATH:/usr/sbin:/sbin"; sinfo; squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
