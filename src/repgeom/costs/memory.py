"""Peak memory of an extraction or a LoRA training job, from the model's shape and the job's batch settings.

Parts: the process itself (Python, torch, transformers imported), the weights, and the activations of the largest
forward pass. An extraction keeps nothing across layers; training keeps each layer's activations for the backward
pass (only each layer's input under gradient checkpointing, which recomputes the rest one layer at a time).
Attention on padded batches takes torch's math path, whose B x heads x T x T probabilities are the part that grows
with the square of the longest row.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from repgeom.costs.architecture import Architecture

MB = 1 << 20
# A job process with torch and transformers imported, before any model: the tests' tiny run (a 1M-parameter model)
# peaks at 705 MB in its extract jobs, its prompts jobs (tokenizer only) at 522 MB.
PROCESS_BASE_MB = 650
# DeepSpeed's engine and its optimizer wrapper beside that.
DEEPSPEED_MB = 150
# Per GPU: the CUDA context, cuBLAS and attention workspaces, allocator fragmentation (repgeom.models.loading).
GPU_OVERHEAD_MB = 2048
# Activations a training pass keeps per token and layer, in units of the model dtype: the normalised input and its
# LoRA-dropout copies for q, k, v, o, gate and up (the width D each), attention output, the MLP's input, gate, up
# and product (the MLP width I each).
KEPT_PER_TOKEN_D, KEPT_PER_TOKEN_I = 12, 4
# Transient activations of one layer's forward pass per token (inference): a few D-wide and I-wide buffers.
LIVE_PER_TOKEN_D, LIVE_PER_TOKEN_I = 4, 2
# AdamW in float32 per trainable parameter: master copy, gradient, two moments.
OPTIMIZER_BYTES = 16


@dataclass(frozen=True)
class MemoryEstimate:
    host_mb: float
    gpu_mb: float       # per GPU; 0 for a CPU job


def uses_gradient_checkpointing(section: Mapping) -> bool:
    """Whether the config's fine-tuning recomputes activations in the backward pass."""
    return bool(section.get("gradient_checkpointing", False))


def attention_bytes(rows: int, longest: int, arch: Architecture) -> float:
    """Attention probabilities of one layer (float32) for `rows` rows padded to `longest` tokens."""
    return rows * arch.n_heads * longest * longest * 4


def extraction_peak_mb(arch: Architecture, *, dtype_bytes: int, max_batch_tokens: int, longest_prompt: int,
                       gpus: int, parallel: str, on_gpu: bool) -> MemoryEstimate:
    """An extraction job: the weights (read as float32 from the model folder on a CPU; in the model dtype, per GPU
    as `parallel` spreads them, on GPUs) and one layer's activations of a batch of `max_batch_tokens` padded tokens
    (length-sorted batches: rows x longest stays within the budget)."""
    tokens = max(max_batch_tokens, longest_prompt)
    live = tokens * (LIVE_PER_TOKEN_D * arch.hidden_size + LIVE_PER_TOKEN_I * arch.intermediate_size) * dtype_bytes
    live += attention_bytes(max(1, tokens // longest_prompt), longest_prompt, arch)
    if not on_gpu:
        return MemoryEstimate(PROCESS_BASE_MB + (arch.n_params * 4 + live) / MB, 0)
    shards = gpus if parallel in ("device_map", "zero3") else 1
    weights = arch.n_params * dtype_bytes / shards
    return MemoryEstimate(PROCESS_BASE_MB + 1024, GPU_OVERHEAD_MB + (weights + live) / MB)


def training_peak_mb(arch: Architecture, *, dtype_bytes: int, micro_batch: int, max_batch_tokens: int | None,
                     longest_row: int, lora_rank: int, world_size: int, zero_stage: int,
                     gradient_checkpointing: bool, on_gpu: bool) -> MemoryEstimate:
    """A LoRA training rank: the frozen weights (sharded under ZeRO-3), the adapters with their float32 optimizer
    state, and the activations one forward pass keeps for its backward pass: a micro-batch of its longest row's
    length, or the padded tokens `max_batch_tokens` allows in one pass."""
    rows = micro_batch if not max_batch_tokens else max(1, min(micro_batch, max_batch_tokens // longest_row))
    tokens = rows * longest_row
    per_layer = tokens * (KEPT_PER_TOKEN_D * arch.hidden_size + KEPT_PER_TOKEN_I * arch.intermediate_size) * dtype_bytes
    per_layer += 2 * attention_bytes(rows, longest_row, arch)  # the scores and their softmax
    if gradient_checkpointing:
        kept = arch.n_layers * tokens * arch.hidden_size * dtype_bytes + per_layer
    else:
        kept = arch.n_layers * per_layer
    lora = arch.lora_params(lora_rank) * (dtype_bytes + OPTIMIZER_BYTES)
    weights = arch.n_params * dtype_bytes / (world_size if zero_stage == 3 else 1)
    if not on_gpu:
        # On a CPU the float32 file is read, then cast to the model dtype.
        return MemoryEstimate(PROCESS_BASE_MB + DEEPSPEED_MB + (arch.n_params * 4 + lora + kept) / MB, 0)
    return MemoryEstimate(PROCESS_BASE_MB + DEEPSPEED_MB + 1024, GPU_OVERHEAD_MB + (weights + lora + kept) / MB)
