# Resuming after a killed run.
from snakemake.logging import logger

from repgeom.workflow.resume import record_run, remove_stale_lock

# A Snakemake process killed hard leaves its lock behind; the same command then removes it, once it is sure
# that the process that held it is gone (src/repgeom/workflow/resume.py), and the workflow profile's
# rerun-incomplete (profiles/default) redoes the jobs that were cut off.
if workflow.is_main_process:
    remove_stale_lock(".snakemake", warn=logger.warning)
    record_run(".snakemake")
