"""Logic the Snakemake rules need at parse time, kept here (and unit-tested) so that the rule files only wire paths
and look values up: `config` (the config checks), `models` (each model's source, shape and pattern), `plan` (the
run's conditions, layer blocks and compared conditions), `options` (job options from the config), `dataset`,
`captions` (what the report's captions take from the rules' params), `jobs` (provenance meta), `resources` (threads,
memory, GPUs) and `resume` (stale locks).

Nothing here imports torch, transformers or DADApy: every Slurm job parses the workflow again.
"""
