"""Each job's threads, GPUs, memory, runtime and node count, from the config's `hardware` map.

The hardware map gives each job kind (with per-model overrides) its GPUs, CPUs, memory and runtime; memory and
runtime grow by `retry_growth` on each retry, so a job killed for memory or time asks for more on its next attempt.
An analysis job asks at least for what one layer needs, sized from the number of prompts, the width and `maxk`.

Where jobs go on a cluster (account, partitions) belongs to the cluster, not to the experiment: profiles/slurm sets
it. What a job needs stays here: every job runs on one node (`nodes: 1`; the launcher starts all ranks there), and
a fine-tuning job asks Slurm for SIGUSR1 some minutes before its time limit, when it saves its state and stops.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from repgeom.analysis.params import layer_memory_mb

# The full MMLU release: what the analysis subset can at most hold when the data is not read yet.
MMLU_SUBJECTS, MMLU_TEST_ROWS = 57, 14042

# Job kinds that save their state and stop when Slurm warns them of their time limit (repgeom.finetune).
WARNED_KINDS = ("finetune",)


def warning_seconds(runtime_minutes: int) -> int:
    """How long before its time limit a job is warned: a tenth of its runtime, between 1 and 10 minutes (Slurm may
    send the signal up to a minute early, and a large run's state needs time to be written)."""
    return int(min(max(runtime_minutes * 6, 60), 600))


def analysis_points(config: Mapping, generated_subjects: int | None) -> int:
    """An upper bound on one layer's points, from the config alone (the data is not read when jobs are sized):
    the analysis subset, or the all-token sample analysed in the same job if that is larger."""
    cap = config["sampling"]["max_per_subject"]
    generate = config["dataset"].get("generate")
    if generate:
        prompts = generated_subjects * min(cap, generate["n_test"])
    else:
        prompts = min(MMLU_SUBJECTS * cap, MMLU_TEST_ROWS)
    return max(prompts, (config["extraction"].get("token_sample") or {}).get("size", 0))


class JobResources:
    """Snakemake `resources` and `threads` of each job kind.

    `hidden_size(model)` gives a model's width (None when unknown), `generated_subjects` the number of subjects of
    a generated dataset: together they size the analysis jobs' memory."""

    def __init__(self, config: Mapping, hidden_size: Callable[[str], int | None],
                 generated_subjects: int | None = None):
        self.config = config
        self.hardware = config["hardware"]
        self.hidden_size = hidden_size
        self.generated_subjects = generated_subjects

    def spec(self, kind: str, model: str | None = None) -> dict:
        """The hardware map's entry for a job kind, overridden per model where the config says so."""
        jobs = self.hardware["jobs"]
        spec = jobs.get(kind, jobs["default"])
        return self.hardware["models"].get(model, {}).get(kind, spec)

    def analysis_memory_mb(self, model: str) -> int:
        """What one layer's analysis needs (0 when the model's width is not known)."""
        width = self.hidden_size(model)
        if not width:
            return 0
        points = analysis_points(self.config, self.generated_subjects)
        return layer_memory_mb(points, width, self.config["analysis"]["params"])

    def amount(self, kind: str, key: str, model: str | None, attempt: int = 1) -> int:
        """Memory (MB) or runtime (minutes) of an attempt: retry_growth**(attempt - 1) times the mapped value."""
        value = self.spec(kind, model)[key]
        if kind == "analyze" and key == "mem_mb" and model is not None:
            value = max(value, self.analysis_memory_mb(model))
        return int(value * self.hardware["retry_growth"] ** (attempt - 1))

    def gpus(self, kind: str, model: str | None) -> int:
        """The GPUs a job kind is mapped to: the ranks its launcher starts (a rule's params, so that a cluster's
        profile may ask for the GPUs another way, as a `gres` string, without changing how many ranks start)."""
        return self.spec(kind, model)["gpus"]

    def resources(self, kind: str) -> dict:
        """A rule's `resources`: callables of the wildcards (and attempt), never literals in the rules."""
        model = lambda wildcards: getattr(wildcards, "model", None)  # noqa: E731
        resources = {
            "gpu": lambda wildcards: self.gpus(kind, model(wildcards)),
            "cpus_per_task": lambda wildcards: self.spec(kind, model(wildcards))["cpus"],
            "mem_mb": lambda wildcards, attempt: self.amount(kind, "mem_mb", model(wildcards), attempt),
            "runtime": lambda wildcards, attempt: self.amount(kind, "runtime", model(wildcards), attempt),
            # Slurm's `--gpus=N` counts over the whole job: without one node, N GPUs may come from several.
            "nodes": 1,
        }
        if kind in WARNED_KINDS:
            # Read by snakemake-executor-plugin-slurm only (sbatch's own option); other executors ignore it.
            resources["slurm_extra"] = lambda wildcards, attempt: (
                f"--signal=USR1@{warning_seconds(self.amount(kind, 'runtime', model(wildcards), attempt))}")
        return resources

    def threads(self, kind: str) -> Callable:
        return lambda wildcards: self.spec(kind, getattr(wildcards, "model", None))["cpus"]
