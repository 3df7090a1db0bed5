"""Each job's threads, GPUs, memory, runtime and Slurm placement, from the config's `hardware` and `slurm` sections.

The hardware map gives each job kind (with per-model overrides) its GPUs, CPUs, memory and runtime; memory and
runtime grow by `retry_growth` on each retry, so a job killed for memory or time asks for more on its next attempt.
An analysis job asks at least for what one layer needs, sized from the number of prompts, the width and `maxk`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from repgeom.analysis.params import layer_memory_mb

# The full MMLU release: what the analysis subset can at most hold when the data is not read yet.
MMLU_SUBJECTS, MMLU_TEST_ROWS = 57, 14042

# `slurm.<key>` in the config, else this environment variable, else the cluster's default.
SLURM_ENVIRONMENT = {"account": "SLURM_ACCOUNT", "gpu_partition": "SLURM_GPU_PARTITION",
                     "cpu_partition": "SLURM_CPU_PARTITION"}


def slurm_setting(config: Mapping, key: str, environ: Mapping[str, str] = os.environ) -> str:
    value = (config.get("slurm") or {}).get(key) or environ.get(SLURM_ENVIRONMENT[key], "")
    return str(value).strip()


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
                 generated_subjects: int | None = None, environ: Mapping[str, str] = os.environ):
        self.config = config
        self.hardware = config["hardware"]
        self.hidden_size = hidden_size
        self.generated_subjects = generated_subjects
        self.slurm = {key: slurm_setting(config, key, environ) for key in SLURM_ENVIRONMENT}

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

    def partition(self, kind: str, model: str | None) -> str:
        """GPU jobs go to the GPU partition, the others to the CPU partition ("" lets Slurm pick its default)."""
        return self.slurm["gpu_partition"] if self.spec(kind, model)["gpus"] > 0 else self.slurm["cpu_partition"]

    def resources(self, kind: str) -> dict:
        """A rule's `resources`: callables of the wildcards (and attempt), never literals in the rules."""
        model = lambda wildcards: getattr(wildcards, "model", None)  # noqa: E731
        resources = {
            "gpu": lambda wildcards: self.spec(kind, model(wildcards))["gpus"],
            "cpus_per_task": lambda wildcards: self.spec(kind, model(wildcards))["cpus"],
            "mem_mb": lambda wildcards, attempt: self.amount(kind, "mem_mb", model(wildcards), attempt),
            "runtime": lambda wildcards, attempt: self.amount(kind, "runtime", model(wildcards), attempt),
        }
        # Read by snakemake-executor-plugin-slurm only; other executors ignore them.
        if self.slurm["gpu_partition"] or self.slurm["cpu_partition"]:
            resources["slurm_partition"] = lambda wildcards: self.partition(kind, model(wildcards))
        if self.slurm["account"]:
            resources["slurm_account"] = self.slurm["account"]
        return resources

    def threads(self, kind: str) -> Callable:
        return lambda wildcards: self.spec(kind, getattr(wildcards, "model", None))["cpus"]
