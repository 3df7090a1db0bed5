# Sourced by cluster.sh and nodes.sh: the slurm.conf lines both test clusters share.

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
