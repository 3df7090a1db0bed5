"""Each job's runtime, memory and bytes written, from its work (costs.flops, costs.workload) and the throughput
constants of the device it runs on (resources/costs/throughput.yaml, or a calibrated copy).

A job's runtime is its rule's start-up (process start, imports, small work), plus reading the model's weights, plus
its FLOP over the device's rate for that kind of work. A CPU job's rate scales with its cores; a GPU job's with its
GPUs as its parallelism allows (`scaling`).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
import yaml

from repgeom.analysis.params import AnalysisParams, layer_memory_mb
from repgeom.costs import flops, memory
from repgeom.costs.architecture import Architecture, model_architecture
from repgeom.costs.dag import Job
from repgeom.costs.workload import Lengths, Workload
from repgeom.errors import InputError
from repgeom.extract.batching import TokenSample
from repgeom.finetune.params import method_params, parse_params
from repgeom.finetune.plan import checkpoint_steps, rank_passes, step_rows, total_steps
from repgeom.store.layout import chunk_rows
from repgeom.workflow.models import made_by_workflow, stored_layers

CONSTANTS = files("repgeom") / "resources" / "costs" / "throughput.yaml"
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Files beside a model's weights (tokenizer, config): SmolLM2's tokenizer.json is 3.5 MB.
MODEL_FOLDER_EXTRA_BYTES = 4 << 20
MB = 1 << 20


class PlanError(InputError):
    """The plan cannot be made, or a job can never run on the cluster; the message names the job and what it needs."""


def load_constants(path: str | Path | None = None) -> dict:
    """The shipped constants, or a calibrated file written by `repgeom plan --calibrate ... --write-constants`."""
    text = Path(path).read_text() if path else CONSTANTS.read_text()
    return yaml.safe_load(text)


def value(entry) -> float:
    return float(entry["value"] if isinstance(entry, Mapping) else entry)


def per_rule(constants: Mapping, table: str, key: str) -> float:
    """A per-rule constant (`startup_s`, `fixed_bytes`): the rule's entry, else the table's `default` (else 0)."""
    entries = constants.get(table, {})
    return value(entries.get(key, entries.get("default", 0)))


@dataclass
class Estimate:
    job: Job
    device: str                 # a `devices` key of the constants
    fixed_s: float              # start-up and reading the model
    host_mb: float
    gpu_mb: float               # per GPU
    bytes_written: int
    tokens: int = 0             # tokens the job computes (extraction) or trains on (all epochs)
    flops: float = 0.0
    counted: bool = True        # token counts read from the run's files (False: estimated)
    variable_s: float = 0.0     # the work over its rates ...
    rate_keys: tuple = ()       # ... the constants those are (paths into the constants), which calibration scales
    startup_key: str = ""       # the `startup_s` entry of its fixed part (default: its rule)

    @property
    def startup_entry(self) -> str:
        return self.startup_key or self.job.rule

    @property
    def seconds(self) -> float:
        return self.fixed_s + self.variable_s

    @property
    def gpu_hours(self) -> float:
        return self.job.gpus * self.seconds / 3600

    @property
    def cpu_hours(self) -> float:
        return self.job.cpus * self.seconds / 3600


class CostModel:
    """Estimates for the jobs of one config: `gpu` names the cluster's GPU kind (a `devices` key)."""

    def __init__(self, config: Mapping, constants: Mapping, gpu: str):
        if gpu not in constants["devices"]:
            raise PlanError(f"--gpu {gpu}: not a device of the cost model (known: "
                            f"{', '.join(sorted(constants['devices']))})")
        self.config, self.constants, self.gpu = config, constants, gpu
        self.workload = Workload(config, constants, self.model_folder)

    @functools.cache
    def architecture(self, model: str) -> Architecture:
        return model_architecture(model, self.config["models"][model])

    def device(self, job: Job) -> str:
        return self.gpu if job.gpus else "cpu"

    def rate_key(self, job: Job, work: str, dtype: str | None = None) -> tuple[str, ...]:
        """Where the rate of `work` (forward_flops_per_s, train_flops_per_s, knn_flops_per_s) for the job is."""
        device = self.device(job)
        entry = self.constants["devices"][device][work]
        if dtype is None:
            return ("devices", device, work)
        return ("devices", device, work, dtype if dtype in entry else next(iter(entry)))

    def rate(self, job: Job, key: tuple[str, ...], parallel: str = "data") -> float:
        """The rate at `key` for the job: a CPU rate (`devices.cpu`, `analysis`) scaled by its cores, a GPU rate
        by its GPUs."""
        base = value(functools.reduce(lambda node, k: node[k], key, self.constants))
        if key[:2] != ("devices", self.gpu) or not job.gpus:
            return base * job.cpus / self.constants["devices"]["cpu"]["cores"]
        return base * job.gpus ** value(self.constants["scaling"][parallel])

    def startup(self, rule: str) -> float:
        return per_rule(self.constants, "startup_s", rule)

    def model_dtype(self, section: str, job: Job) -> str:
        name = self.config[section].get("model_dtype", "auto")
        if name != "auto":
            return name
        if job.gpus:
            return "bfloat16"
        from repgeom.models.loading import cpu_has_native_bf16

        return "bfloat16" if cpu_has_native_bf16() else "float32"

    def load_seconds(self, job: Job, model: str, dtype_bytes: int) -> float:
        weights = self.architecture(model).n_params * dtype_bytes
        return weights / (value(self.constants["devices"][self.device(job)]["load_gb_per_s"]) * 1e9)

    def model_folder(self, model: str) -> str | None:
        entry = self.config["models"][model]
        if made_by_workflow(entry):
            return str(Path(self.config["results_dir"]) / "models" / model)
        return entry.get("path")

    def estimate(self, job: Job) -> Estimate:
        method = getattr(self, f"_{job.rule}", None)
        if method is None:
            estimate = Estimate(job, self.device(job), self.startup(job.rule), memory.PROCESS_BASELINE_MB, 0, 0)
        else:
            estimate = method(job)
        estimate.bytes_written += int(per_rule(self.constants, "fixed_bytes", estimate.startup_entry))
        return estimate

    # One method per rule whose cost follows from its work; the others cost their start-up.

    def _extract(self, job: Job) -> Estimate:
        model, condition = job.wildcards["model"], job.wildcards["condition"]
        arch, section = self.architecture(model), self.config["extraction"]
        dtype = self.model_dtype("extraction", job)
        lengths = self.workload.prompt_lengths(model, condition)
        parallel = self.config["models"][model].get("extraction_parallel", section["parallel"])
        work = flops.extraction_flops(arch, lengths.tokens, lengths.shared)
        key = self.rate_key(job, "forward_flops_per_s", dtype)
        peak = memory.extraction_peak_mb(arch, dtype_bytes=DTYPE_BYTES[dtype],
                                         max_batch_tokens=section["max_batch_tokens"],
                                         longest_prompt=int(lengths.tokens.max()), gpus=job.gpus,
                                         parallel=parallel, on_gpu=bool(job.gpus))
        fixed = self.startup("extract") + self.load_seconds(job, model, DTYPE_BYTES[dtype])
        return Estimate(job, self.device(job), fixed, peak.host_mb, peak.gpu_mb,
                        self.store_group_bytes(model, lengths, job.gpus), int(lengths.tokens.sum()), work,
                        lengths.counted, work / self.rate(job, key, parallel), (key,))

    def store_group_bytes(self, model: str, lengths: Lengths, ranks: int) -> int:
        """One condition's store group: every stored layer's rows in whole chunks, and the token sample's slots."""
        section, arch = self.config["extraction"], self.architecture(model)
        itemsize = DTYPE_BYTES[section["store_dtype"]]
        rows = section.get("chunk_rows") or chunk_rows(lengths.n, arch.hidden_size, itemsize, max(ranks, 1))
        n_chunks = -(-lengths.n // rows)
        layers = stored_layers((arch.n_layers, arch.hidden_size))
        total = layers * n_chunks * rows * arch.hidden_size * itemsize
        sample = section.get("token_sample")
        if sample:
            drawn = TokenSample.draw(lengths.tokens, sample["size"], self.config["sampling"]["seed"])
            cap = drawn.by_chunk(rows, n_chunks)[0].shape[1]
            total += len(sample["layers"]) * n_chunks * cap * arch.hidden_size * itemsize
        return int(total)

    def _finetune(self, job: Job) -> Estimate:
        model, method = job.wildcards["model"], job.wildcards["method"]
        arch, section = self.architecture(model), self.config["finetune"]
        params = parse_params(method_params(section, method))
        lengths = self.workload.finetune_lengths(model)
        dtype = self.model_dtype("finetune", job)
        padded = padded_passes(lengths.tokens, params, max(job.gpus, 1))
        work = flops.training_flops(arch, padded)
        parallel = "zero3" if section.get("deepspeed") == "zero3" else "data"
        key = self.rate_key(job, "train_flops_per_s", dtype)
        peak = memory.training_peak_mb(
            arch, dtype_bytes=DTYPE_BYTES[dtype], micro_batch=params.micro_batch,
            max_batch_tokens=params.max_batch_tokens, longest_row=int(lengths.tokens.max()),
            lora_rank=params.lora_r, world_size=max(job.gpus, 1),
            zero_stage=3 if parallel == "zero3" else 2, on_gpu=bool(job.gpus))
        # One adapter folder per checkpoint name (the last step is saved under its step and its epoch).
        adapter_bytes = len(checkpoint_steps(lengths.n, params)) * arch.lora_params(params.lora_r) * DTYPE_BYTES[dtype]
        fixed = self.startup("finetune") + self.load_seconds(job, model, DTYPE_BYTES[dtype])
        return Estimate(job, self.device(job), fixed, peak.host_mb, peak.gpu_mb, adapter_bytes, int(sum(padded)), work,
                        lengths.counted, work / self.rate(job, key, parallel), (key,))

    def _analyze_layers(self, job: Job) -> Estimate:
        model, condition = job.wildcards["model"], job.wildcards["condition"]
        first, last = map(int, job.wildcards["layers"].split("-"))
        arch, params = self.architecture(model), AnalysisParams.coerce(self.config["analysis"]["params"])
        n = self.workload.prompt_lengths(model, condition).n
        sample = self.config["extraction"].get("token_sample") or {}
        sizes = [n] * (last - first + 1) + [sample["size"] for layer in sample.get("layers", ())
                                             if first <= layer <= last]
        work = sum(flops.knn_flops(points, arch.hidden_size) for points in sizes)
        key, point_key = self.rate_key(job, "knn_flops_per_s"), ("analysis", "point_columns_per_s")
        point_columns = sum(sizes) * (params.maxk + 1)
        variable = work / self.rate(job, key) + point_columns / self.rate(job, point_key)
        host = max(layer_memory_mb(points, arch.hidden_size, params) for points in sizes)
        kept = (params.kept_neighbors + 1) * 12  # float64 distance and int32 index per neighbour
        return Estimate(job, self.device(job), self.startup("analyze_layers"), host, 0,
                        n * kept * (last - first + 1), flops=work, variable_s=variable, rate_keys=(key, point_key))

    def _generate_dataset(self, job: Job) -> Estimate:
        """Each generator is a program of its own: its start-up and work are its own constant."""
        key = f"generate_dataset.{self.config['dataset']['generate']['kind']}"
        return Estimate(job, "cpu", self.startup(key), memory.PROCESS_BASELINE_MB, 0, 0, startup_key=key)

    def _import_model(self, job: Job) -> Estimate:
        arch = self.architecture(job.wildcards["model"])
        # Dequantised from the GGUF file, moved into a plain model, saved: one float32 copy at a time.
        host = memory.PROCESS_BASELINE_MB + arch.n_params * 4 / MB
        key = ("devices", "cpu", "gguf_import_params_per_s")
        return Estimate(job, "cpu", self.startup("import_model"), host, 0, arch.n_params * 4 + MODEL_FOLDER_EXTRA_BYTES,
                        variable_s=arch.n_params / self.rate(job, key), rate_keys=(key,))

    def _build_model(self, job: Job) -> Estimate:
        build = self.config["models"][job.wildcards["model"]]["build"]
        arch, pretrain = self.architecture(job.wildcards["model"]), build["pretrain"]
        lengths = np.full(pretrain["steps"] * pretrain["batch_size"], pretrain["seq_len"])
        # Full pre-training: the weight gradients cost another backward pass.
        work = flops.forward_flops(arch, lengths) * (flops.TRAIN_PASSES + 1)
        key = self.rate_key(job, "train_flops_per_s", "float32")
        # float32 weights, gradients and AdamW's two moments: 16 bytes a parameter.
        host = memory.PROCESS_BASELINE_MB + 16 * arch.n_params / MB
        return Estimate(job, "cpu", self.startup("build_model"), host, 0, arch.n_params * 4 + MODEL_FOLDER_EXTRA_BYTES,
                        int(lengths.sum()), work, variable_s=work / self.rate(job, key), rate_keys=(key,))


def padded_passes(lengths: np.ndarray, params, ranks: int) -> list[int]:
    """The padded length of every row of every forward pass the training runs, in its own order: each step's rows,
    over the ranks' micro-batches, split into passes within `max_batch_tokens` (repgeom.finetune.plan), each padded
    to its longest row."""
    padded = []
    for step in range(total_steps(len(lengths), params)):
        rows = step_rows(len(lengths), params, step)
        for rank in range(ranks):
            for passes in rank_passes(rows, lengths, params, ranks, rank):
                padded.extend(int(lengths[p].max()) for p in passes if len(p) for _ in p)
    return padded
