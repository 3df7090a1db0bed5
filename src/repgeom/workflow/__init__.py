"""Logic the Snakemake rules need at parse time, kept here (and unit-tested) so that the rule files only wire paths.

Nothing here imports torch, transformers or DADApy: every Slurm job parses the workflow again.
"""
