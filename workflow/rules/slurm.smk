# Slurm submission (profiles/slurm, see profiles/slurm/README.md), and resuming after a killed run.
#
# Each job takes its resources from `job_resources(kind)` in common.smk (the hardware map's GPUs, CPUs, memory
# and runtime). This file wraps that function so that every job also carries the Slurm partition and account
# it is submitted to. Jobs with gpus > 0 go to the GPU partition, the others to the CPU partition. Values come
# from the config's `slurm` section, else from the environment variables SLURM_ACCOUNT, SLURM_GPU_PARTITION
# and SLURM_CPU_PARTITION, else the cluster's defaults apply (sbatch gets no partition or account).
# Other executors ignore these resources.
import os

from snakemake.logging import logger

from repgeom.resume import record_run, remove_stale_lock

SLURM_SETTINGS = {
    "account": "SLURM_ACCOUNT",
    "gpu_partition": "SLURM_GPU_PARTITION",
    "cpu_partition": "SLURM_CPU_PARTITION",
}


def slurm_setting(key):
    """The config's `slurm.<key>`, else its environment variable, else "" (the cluster's default)."""
    value = (config.get("slurm") or {}).get(key) or os.environ.get(SLURM_SETTINGS[key], "")
    return str(value).strip()


def slurm_resources(kind):
    """`slurm_partition` and `slurm_account` of a job kind, for snakemake-executor-plugin-slurm."""
    resources = {}
    gpu_partition, cpu_partition = slurm_setting("gpu_partition"), slurm_setting("cpu_partition")
    if gpu_partition or cpu_partition:
        # An empty partition lets the plugin pick the cluster's default one.
        resources["slurm_partition"] = lambda wildcards: (
            gpu_partition if _job_spec(kind, wildcards)["gpus"] > 0 else cpu_partition
        )
    if slurm_setting("account"):
        resources["slurm_account"] = slurm_setting("account")
    return resources


_job_resources_from_hardware_map = job_resources


def job_resources(kind):
    """The hardware map's resources of a job kind (common.smk), plus its Slurm partition and account."""
    return {**_job_resources_from_hardware_map(kind), **slurm_resources(kind)}


# A Snakemake process killed hard leaves its lock behind; the same command then removes it, once it is sure
# that the process that held it is gone (src/repgeom/resume.py), and the workflow profile's rerun-incomplete
# (profiles/default) redoes the jobs that were cut off.
if workflow.is_main_process:
    remove_stale_lock(".snakemake", warn=logger.warning)
    record_run(".snakemake")
