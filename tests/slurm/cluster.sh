#!/usr/bin/env bash
# A real, single-node Slurm cluster on this machine, for the tests in tests/slurm/.
#
#   tests/slurm/cluster.sh up       install slurm-wlm and munge when missing (apt-get, as root), then start
#                                   munged, slurmctld and slurmd; fast and harmless when already up
#   tests/slurm/cluster.sh down     cancel every job and stop the daemons this script started
#   tests/slurm/cluster.sh status   show the partitions and the node
#
# The node has this machine's CPUs, a bit under its available memory, and 8 fake GRES GPUs
# (files /dev/fakegpu*), so that GPU requests are really scheduled and refused. Two partitions share
# it: `cpu` (the default) and `gpu`. Accounting is off; MinJobAge=3600 keeps finished jobs visible to
# `squeue`/`scontrol show job` for an hour (the executor plugin's `--slurm-status-command squeue`).
#
# `up` exits 77 when Slurm cannot run here (not root, no apt-get, or the daemons do not start), with the
# reason on stderr; the pytest fixture turns that into a skip. It never touches a slurm.conf it did not
# write (a real cluster's), and `down` stops only daemons whose pid files it wrote.
set -euo pipefail
# shellcheck source=tests/slurm/common.sh
source "$(dirname "$0")/common.sh"

GPUS=${REPGEOM_SLURM_GPUS:-8}
STATE=/var/lib/repgeom-slurm          # state, spool, pid files and logs of this test cluster
CONF_DIR=/etc/slurm
MARK="# written by repgeom tests/slurm/cluster.sh"
HOST=$(hostname -s)

cannot() { echo "cluster.sh: Slurm cannot start here: $*" >&2; exit 77; }
log() { echo "cluster.sh: $*" >&2; }

ours() { [[ -f $CONF_DIR/slurm.conf ]] && head -1 "$CONF_DIR/slurm.conf" | grep -qF "$MARK"; }

node_state() { timeout 10 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -1 || true; }

is_up() {
    ours || return 1
    timeout 10 scontrol ping 2>/dev/null | grep -q "is UP" || return 1
    case $(node_state) in idle* | mix* | alloc* | completing*) return 0 ;; *) return 1 ;; esac
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || cannot "slurm-wlm is not installed and apt-get is not available"
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    local packages=(slurm-wlm munge)
    if ! apt-get install -y -q --no-install-recommends "${packages[@]}" >"$STATE/apt.log" 2>&1; then
        apt-get update -q >>"$STATE/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${packages[@]}" >>"$STATE/apt.log" 2>&1 \
            || cannot "apt-get install ${packages[*]} failed (see $STATE/apt.log): $(tail -3 "$STATE/apt.log")"
    fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid >>"$STATE/munged.out" 2>&1 \
        || cannot "munged did not start: $(tail -3 "$STATE/munged.out")"
    cp /run/munge/munged.pid "$STATE/munged.pid"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    cannot "munge -n | unmunge does not succeed"
}

write_config() {
    if [[ -f $CONF_DIR/slurm.conf ]] && ! ours; then
        cannot "$CONF_DIR/slurm.conf exists and was not written by this script (a real cluster's?)"
    fi
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/^MemAvailable:/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
    mkdir -p "$CONF_DIR"
    cat >"$CONF_DIR/slurm.conf" <<EOF
$MARK
ClusterName=repgeom-test
SlurmctldHost=$HOST(127.0.0.1)
$(common_slurm_settings)
SlurmdParameters=config_overrides
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/gres.conf" <<EOF
$MARK
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/fakegpu[0-$((GPUS - 1))]
EOF
    for ((i = 0; i < GPUS; i++)); do touch "/dev/fakegpu$i"; done
    mkdir -p "$STATE/ctld" "$STATE/d"
}


up() {
    [[ $(id -u) == 0 ]] || cannot "not root"
    if is_up; then
        log "already up ($HOST: $(node_state))"
        echo "already-up"
        return
    fi
    mkdir -p "$STATE"
    install_packages
    start_munge
    write_config
    if ! alive "$STATE/slurmctld.pid"; then
        slurmctld -c >>"$STATE/slurmctld.out" 2>&1 || cannot "slurmctld did not start: $(tail -3 "$STATE/slurmctld.log" 2>/dev/null)"
    fi
    for _ in $(seq 50); do timeout 5 scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.2; done
    if ! alive "$STATE/slurmd.pid"; then
        slurmd >>"$STATE/slurmd.out" 2>&1 || cannot "slurmd did not start: $(tail -3 "$STATE/slurmd.log" 2>/dev/null)"
    fi
    local state=""
    for i in $(seq 100); do
        state=$(node_state)
        case $state in
            idle* | mix* | alloc*) log "up: $(sinfo -h -o '%P %D %c %m %G' | tr '\n' ';')"; echo "started"; return ;;
            down* | drain* | inval*) ((i % 10 == 0)) && scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.3
    done
    cannot "node $HOST is '$state', not idle: $(tail -3 "$STATE/slurmd.log" 2>/dev/null)"
}

down() {
    [[ $(id -u) == 0 ]] || { log "not root: nothing to stop"; return; }
    if ours && alive "$STATE/slurmctld.pid"; then
        local jobs
        jobs=$(timeout 10 squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 30); do
                [[ -z $(timeout 5 squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_pid "$STATE/slurmd.pid"
    stop_pid "$STATE/slurmctld.pid"
    stop_pid "$STATE/munged.pid"  # only when this script started munged
    log "down"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) sinfo; squeue ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
