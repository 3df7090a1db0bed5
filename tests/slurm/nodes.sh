#!/usr/bin/env bash
# A second, real Slurm cluster of three nodes on this machine, for the placement tests in tests/slurm/.
#
#   tests/slurm/nodes.sh up       start it (after tests/slurm/cluster.sh up, which installs Slurm and munge)
#   tests/slurm/nodes.sh down     cancel its jobs, stop its daemons, remove its namespaces and bridge
#   tests/slurm/nodes.sh env      print the SLURM_CONF=... line that points Slurm's commands at it
#
# Each node is one slurmd in a network namespace and a UTS namespace of its own, with its own host name and
# address on a bridge that this script makes (10.77.0.0/24: the controller at .1, the nodes at .11-.13); no
# address leaves the namespaces and the bridge made here. Partition `split` holds n1 and n2, one fake GPU each;
# partition `pair` holds n3, with two. A 2-GPU job in `split` can only get its GPUs across two nodes.
# The controller listens on port 6917, beside the single-node cluster's 6817, with its own slurm.conf, state and
# logs: SLURM_CONF points Slurm's commands here at it, and each node sees it at /etc/slurm. Accounting is off, as in
# cluster.sh.
#
# `up` exits 77 when the cluster cannot start here (not root, no `ip`/`unshare`, a daemon that does not
# start, a node that does not come up), with the reason on stderr; the pytest fixture turns that into a skip.
set -euo pipefail
# shellcheck source=tests/slurm/common.sh
source "$(dirname "$0")/common.sh"

STATE=/var/lib/repgeom-slurm-nodes
CONF_DIR=/etc/repgeom-slurm-nodes
CONF=$CONF_DIR/slurm.conf
BRIDGE=rgslurm0
NET=10.77.0
NODES=(n1 n2 n3)
declare -A GPUS=([n1]=1 [n2]=1 [n3]=2)
declare -A ADDR=([n1]=$NET.11 [n2]=$NET.12 [n3]=$NET.13)
HOST=$(hostname -s)
export SLURM_CONF=$CONF

cannot() { echo "nodes.sh: the three-node cluster cannot start here: $*" >&2; exit 77; }
log() { echo "nodes.sh: $*" >&2; }

node_states() { timeout 10 sinfo -h -N -o "%N %T" 2>/dev/null | sort -u || true; }

all_idle() {
    local states
    states=$(node_states)
    for node in "${NODES[@]}"; do
        grep -Eq "^$node (idle|mix|alloc)" <<<"$states" || return 1
    done
}

write_config() {
    local cpus mem
    cpus=$(nproc)
    # A third of the available memory per node: the three share this machine with the single-node cluster.
    mem=$(awk '/^MemAvailable:/ {printf "%d", $2 / 1024 / 4}' /proc/meminfo)
    mkdir -p "$CONF_DIR" "$STATE/ctld"
    {
        cat <<EOF
ClusterName=repgeom-nodes
SlurmctldHost=$HOST($NET.1)
SlurmctldPort=6917
SlurmdPort=6818
$(common_slurm_settings)
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/%n.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/%n.log
EOF
        for node in "${NODES[@]}"; do
            echo "NodeName=$node NodeAddr=${ADDR[$node]} CPUs=$cpus RealMemory=$mem Gres=gpu:${GPUS[$node]} State=UNKNOWN"
        done
        echo "PartitionName=split Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP"
        echo "PartitionName=pair Nodes=n3 MaxTime=INFINITE State=UP"
    } >"$CONF"
    {
        echo "AutoDetect=off"
        for node in "${NODES[@]}"; do
            echo "NodeName=$node Name=gpu File=/dev/fakegpu-$node-[0-$((GPUS[$node] - 1))]"
            for ((i = 0; i < GPUS[$node]; i++)); do touch "/dev/fakegpu-$node-$i"; done
        done
    } >"$CONF_DIR/gres.conf"
}

network_up() {
    ip link show "$BRIDGE" >/dev/null 2>&1 || {
        ip link add "$BRIDGE" type bridge
        ip addr add "$NET.1/24" dev "$BRIDGE"
    }
    ip link set "$BRIDGE" up
    for node in "${NODES[@]}"; do
        local ns=rgs-$node
        ip netns list | grep -qw "$ns" && continue
        ip netns add "$ns"
        ip link add "veth-$node" type veth peer name eth0 netns "$ns"
        ip link set "veth-$node" master "$BRIDGE" up
        ip -n "$ns" addr add "${ADDR[$node]}/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}

up() {
    [[ $(id -u) == 0 ]] || cannot "not root"
    command -v ip >/dev/null && command -v unshare >/dev/null || cannot "ip (iproute2) and unshare are needed"
    command -v slurmctld >/dev/null || cannot "Slurm is not installed (run tests/slurm/cluster.sh up first)"
    if alive "$STATE/slurmctld.pid" && all_idle; then
        log "already up"
        echo "already-up"
        return
    fi
    mkdir -p "$STATE"
    write_config
    { cat /etc/hosts; for node in "${NODES[@]}"; do echo "${ADDR[$node]} $node"; done; } >"$STATE/hosts"
    network_up >>"$STATE/network.log" 2>&1 || cannot "the bridge or the namespaces failed: $(tail -3 "$STATE/network.log")"
    if ! alive "$STATE/slurmctld.pid"; then
        slurmctld -c -f "$CONF" >>"$STATE/slurmctld.out" 2>&1 \
            || cannot "slurmctld did not start: $(tail -3 "$STATE/slurmctld.log" 2>/dev/null)"
    fi
    for _ in $(seq 50); do timeout 5 scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.2; done
    for node in "${NODES[@]}"; do
        alive "$STATE/$node.pid" && continue
        mkdir -p "$STATE/$node"
        # nsenter, not `ip netns exec`, which mounts a /sys without the cgroup tree slurmd reads. Namespaces of its
        # own: UTS (slurmd takes its node name from the host name) and mount, where this cluster's config lies at
        # /etc/slurm and /etc/hosts knows the nodes, as on a real node (the job step's `srun` reads /etc/slurm: the
        # plugin drops SLURM_CONF; torchrun's rendezvous resolves the node's own name).
        nsenter --net="/run/netns/rgs-$node" unshare --uts --mount --propagation private sh -c \
            "hostname $node && mount --bind $CONF_DIR /etc/slurm && mount --bind $STATE/hosts /etc/hosts && exec slurmd" \
            >>"$STATE/$node.out" 2>&1 || cannot "slurmd of $node did not start: $(tail -3 "$STATE/$node.log" 2>/dev/null)"
    done
    for i in $(seq 100); do
        if all_idle; then
            log "up: $(sinfo -h -o '%P %D %N %G' | tr '\n' ';')"
            echo "started"
            return
        fi
        if ((i % 10 == 0)); then
            for node in "${NODES[@]}"; do scontrol update NodeName="$node" State=RESUME 2>/dev/null || true; done
        fi
        sleep 0.3
    done
    cannot "nodes not idle: $(node_states | tr '\n' ';') $(tail -2 "$STATE/n1.log" 2>/dev/null)"
}

down() {
    [[ $(id -u) == 0 ]] || { log "not root: nothing to stop"; return; }
    if alive "$STATE/slurmctld.pid"; then
        local jobs
        jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
        # shellcheck disable=SC2086
        [[ -z $jobs ]] || scancel $jobs 2>/dev/null || true
    fi
    for node in "${NODES[@]}"; do stop_pid "$STATE/$node.pid"; done
    stop_pid "$STATE/slurmctld.pid"
    for node in "${NODES[@]}"; do ip netns del "rgs-$node" 2>/dev/null || true; done
    ip link del "$BRIDGE" 2>/dev/null || true
    log "down"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    env) echo "SLURM_CONF=$CONF" ;;
    status) sinfo; squeue ;;
    *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
