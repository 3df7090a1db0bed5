# Sourced by cluster.sh and nodes.sh: the slurm.conf lines both test clusters share, and how they stop a daemon.

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # pid file: TERM, wait, then KILL
    local file=$1 pid
    alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$file"
}

# Authentication by munge, daemons as root, processes tracked without cgroups, cores and memory as consumable
# resources, fake GPUs as GRES, no accounting (so the profile must find squeue), finished jobs kept an hour for
# squeue, and a node that comes back after a restart returned to service.
common_slurm_settings() {
    cat <<EOF2
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
EOF2
}
