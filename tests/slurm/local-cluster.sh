#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the `slurm` tests (Debian/Ubuntu, as root).
#
#   tests/slurm/local-cluster.sh up      install slurm-wlm + munge if missing, start munged, slurmctld
#                                        and slurmd (2 fake GPUs), wait until the node is idle
#   tests/slurm/local-cluster.sh down    stop the daemons this script started (by PID), nothing else
#   tests/slurm/local-cluster.sh env     print `export SLURM_CONF=...` for the clients (sbatch, squeue)
#
# Idempotent: `up` on a running cluster only checks it. Everything lives under $MPQ_SLURM_DIR
# (default /tmp/mpq-slurm): slurm.conf, gres.conf, state, spool, logs, PID files. No accounting
# (slurmdbd): Snakemake's SLURM plugin must then query job status with `squeue`, which holds as
# long as MinJobAge (3600 s here: the tests read the records of a whole run after it ends) outlasts
# the gap between two status checks (up to 180 s).
# Exit status 3 with one line on stderr where SLURM cannot run here (not root, no apt-get).
set -euo pipefail

DIR=${MPQ_SLURM_DIR:-/tmp/mpq-slurm}
CONF=$DIR/etc/slurm.conf
GPUS=${MPQ_SLURM_GPUS:-2}
HOST=$(hostname -s)

cannot() { echo "slurm: cannot start a local cluster: $*" >&2; exit 3; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return 0
    command -v apt-get >/dev/null || cannot "slurmctld is not installed and there is no apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
        || cannot "apt-get install slurm-wlm munge failed"
}

start_munge() {
    # A munged already running (the system's) is used as it is and never stopped by `down`.
    if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null >/dev/null 2>&1; then
        return 0
    fi
    [[ -f /etc/munge/munge.key ]] || { mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$DIR/munged.pid"   # ours: `down` stops it
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return 0; sleep 0.1; done
    cannot "munged did not start"
}

write_conf() {
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/dev"
    local node
    node=$(slurmd -C | head -n 1)   # NodeName=<host> CPUs=... RealMemory=...
    node=${node/NodeName=$HOST/NodeName=$HOST NodeAddr=127.0.0.1}
    local gres_files=()
    for ((i = 0; i < GPUS; i++)); do : >"$DIR/dev/gpu$i"; gres_files+=("$DIR/dev/gpu$i"); done
    cat >"$CONF.tmp" <<EOF
# Written by tests/slurm/local-cluster.sh: one node, no accounting, fake GPUs.
ClusterName=mpq-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=3600
KillWait=5
JobRequeue=1
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${MPQ_SLURM_PORT:-6817}
SlurmdPort=$(( ${MPQ_SLURM_PORT:-6817} + 1 ))
$node Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    # Job steps (srun inside a job: the jobstep plugin clears SLURM_CONF) read the default path.
    if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]] && ! grep -q "^# Written by tests/slurm" /etc/slurm/slurm.conf; then
        cannot "/etc/slurm/slurm.conf belongs to another cluster; run this on a machine without one"
    fi
    mkdir -p /etc/slurm
    ln -sfn "$CONF" /etc/slurm/slurm.conf
    {
        for ((i = 0; i < GPUS; i++)); do echo "NodeName=$HOST Name=gpu File=$DIR/dev/gpu$i"; done
    } >"$DIR/etc/gres.conf"
}

up() {
    [[ $(id -u) == 0 ]] || cannot "needs root (slurmd runs jobs as their users)"
    mkdir -p "$DIR"
    install
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        wait_idle && return 0
    fi
    start_munge
    write_conf
    export SLURM_CONF=$CONF
    alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF" || cannot "slurmctld did not start (see $DIR/log/slurmctld.log)"
    alive "$DIR/slurmd.pid" || slurmd -f "$CONF" || cannot "slurmd did not start (see $DIR/log/slurmd.log)"
    wait_idle || cannot "the node did not come up (see $DIR/log/)"
}

wait_idle() {
    export SLURM_CONF=$CONF
    for _ in $(seq 100); do
        local state
        state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
        case $state in
            idle|mixed|allocated) return 0 ;;
            down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.2
    done
    return 1
}

down() {
    local f
    for f in slurmd slurmctld munged; do
        if alive "$DIR/$f.pid"; then
            local pid
            pid=$(cat "$DIR/$f.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        [[ $f == munged ]] && rm -f "$DIR/munged.pid"
    done
    [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$CONF" ]] && rm -f /etc/slurm/slurm.conf
    return 0
}

case ${1:-} in
    up) up ;;
    down) down ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
