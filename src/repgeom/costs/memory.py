"""Peak memory of a fine-tuning or an extraction process, in megabytes, from the model's shape and the run's settings.

Both are sums of parts: a fixed process baseline, the weights, (training) the adapter with its AdamW states and
gradients, and what one forward pass holds for its padded tokens. A pass's padded tokens are bounded by the
stage's `max_batch_tokens` (rows x longest row), except that a single row longer than the budget is its own pass.

The per-token counts were calibrated on SmolLM2-135M's shape (30 blocks, width 576, MLP 1536) in float32 on a CPU
with torch 2.13, transformers 5.23, peft 0.21 and SDPA attention (transformers' default), and checked on a 6-block
model of that width by tests/costs/test_memory.py. In training, SDPA keeps no [heads, T, T] attention matrix:
4 rows of 250 tokens and 1 row of 1,010 peak alike (4.1 GB), where eager attention adds the B x heads x T^2
probabilities to every block (+4.0 GB at 4 x 1,010 tokens). In the extraction's padded batches it does hold one
block's attention matrix (`ATTENTION_COPIES`).
"""
from __future__ import annotations

from dataclasses import dataclass

from repgeom.costs.architecture import Architecture

MB = 2 ** 20
# torch, transformers, peft and deepspeed imported, the tokenizer loaded: 400 MB measured (ru_maxrss, CPU).
PROCESS_BASELINE_MB = 400
# A fine-tuning process holds more than its imports before its first pass: DeepSpeed's engine and optimizer wrapper,
# its JIT-built ops, the data. Over four runs of tests/costs/test_memory.py (6 blocks of SmolLM2's width, float32),
# the stage's peak exceeded the other parts by 203-637 MB at 250 tokens (median 214) and 227-462 MB at 1,000
# (median 350).
TRAINING_PROCESS_MB = 300
# The CUDA runtime's host memory (its libraries and context) beside the CPU baseline: not measured here (no GPU).
CUDA_HOST_MB = 1500
# On each GPU: the CUDA context, cuBLAS and attention workspaces, allocator fragmentation (as
# repgeom.models.loading.GPU_OVERHEAD_BYTES, the extraction's device-map reserve).
GPU_OVERHEAD_MB = 2048
# AdamW's two moments, float32, per trainable parameter, and its float32 gradient (DeepSpeed keeps both in float32).
ADAM_STATE_BYTES = 8
FP32_GRAD_BYTES = 4
# Values per token per block that autograd keeps for backward (LoRA on all seven projections, no dropout): counted,
# the norms' inputs and outputs (4 D), q, k, v, their rotated copies, the GQA-expanded keys and values, SDPA's
# output and the o input (~12 D), the MLP's gate, up, SiLU and product (4 I) and LoRA's low-rank outputs; rounded up
# to the 20.8k values (20 D + 6 I at D 576, I 1536) measured per token per block on SmolLM2-135M.
KEPT_PER_TOKEN_HIDDEN = 20
KEPT_PER_TOKEN_INTERMEDIATE = 6
# LoRA dropout keeps a dropped copy of each adapted projection's input and its mask (1 byte a value): q, k, v, o,
# gate and up read D values, down reads I. Measured: dropout 0.1 adds 28 KB per token per block at D 576, I 1536.
DROPOUT_INPUTS_HIDDEN = 6
DROPOUT_INPUTS_INTERMEDIATE = 1
# Inference holds one block's transients at a time: the MLP's gate, up and product (3 I) and the residual stream,
# its norm and the attention output (3 D), as repgeom.models.loading.forward_reserve_bytes counts them.
TRANSIENT_PER_TOKEN_HIDDEN = 3
TRANSIENT_PER_TOKEN_INTERMEDIATE = 3
# The extraction's attention: one float32 [rows, heads, T, T] matrix of one block at a time (measured: the peak
# grows 106-170 MB from 16 x 251 to 4 x 1,001 tokens at 9 heads, where one such matrix grows 108 MB).
ATTENTION_COPIES = 1
# The extraction's logit lens: a batch has at most max_batch_tokens / MIN_PROMPT_TOKENS rows
# (repgeom.models.loading.MIN_PROMPT_TOKENS); it keeps each row's logits at every layer and a float32 log-softmax.
LENS_MIN_PROMPT_TOKENS = 32


@dataclass(frozen=True)
class MemoryEstimate:
    host_mb: float  # the process's resident memory (per rank)
    gpu_mb: float  # per GPU; 0 on a CPU


def pass_tokens(max_batch_tokens: int, longest_row: int, rows: int) -> int:
    """Padded tokens of the largest forward pass: `rows` rows of the longest length, as many as the budget takes,
    at least one."""
    return longest_row * max(1, min(rows, max_batch_tokens // longest_row))


def training_activation_mb(arch: Architecture, tokens: int, *, dtype_bytes: int, lora_dropout: bool = True) -> float:
    """What a training forward pass of `tokens` padded tokens keeps for backward."""
    d, inter = arch.hidden_size, arch.intermediate_size
    per_block = (KEPT_PER_TOKEN_HIDDEN * d + KEPT_PER_TOKEN_INTERMEDIATE * inter) * dtype_bytes
    if lora_dropout:
        per_block += (DROPOUT_INPUTS_HIDDEN * d + DROPOUT_INPUTS_INTERMEDIATE * inter) * (dtype_bytes + 1)
    return tokens * arch.n_layers * per_block / MB


def logits_mb(arch: Architecture, rows: int, kept_positions: int, dtype_bytes: int) -> float:
    """Logits at the kept positions ([rows, kept, V]) and their float32 copy for the cross-entropy."""
    return rows * kept_positions * arch.vocab_size * (dtype_bytes + 4) / MB


def training_peak_mb(arch: Architecture, *, dtype_bytes: int, micro_batch: int, max_batch_tokens: int,
                     longest_row: int, lora_rank: int, world_size: int = 1, zero_stage: int = 2,
                     on_gpu: bool = False) -> MemoryEstimate:
    """Peak memory of one rank of a LoRA fine-tuning (`repgeom.finetune`): the weights (sharded over the ranks
    under ZeRO-3, one block gathered at a time), the adapter with its gradient and AdamW states, and the
    activations kept for backward by the largest forward pass (`pass_tokens` of the micro-batch), with logits at
    one position a row (`logits_to_keep`)."""
    weights = arch.n_params * dtype_bytes / MB
    if zero_stage == 3:
        weights = weights / world_size + arch.block_params * dtype_bytes / MB
    # ZeRO stages 2 and 3 partition the gradients and optimizer states over the ranks.
    adapter = arch.lora_params(lora_rank) * (dtype_bytes + (FP32_GRAD_BYTES + ADAM_STATE_BYTES) / world_size) / MB
    rows = pass_tokens(max_batch_tokens, longest_row, micro_batch) // longest_row
    forward = (training_activation_mb(arch, pass_tokens(max_batch_tokens, longest_row, micro_batch),
                                      dtype_bytes=dtype_bytes)
               + logits_mb(arch, rows, rows, dtype_bytes))
    process = PROCESS_BASELINE_MB + TRAINING_PROCESS_MB
    if on_gpu:
        return MemoryEstimate(host_mb=process + CUDA_HOST_MB, gpu_mb=weights + adapter + forward + GPU_OVERHEAD_MB)
    return MemoryEstimate(host_mb=process + weights + adapter + forward, gpu_mb=0.0)


def extraction_peak_mb(arch: Architecture, *, dtype_bytes: int, max_batch_tokens: int, longest_prompt: int,
                       gpus: int = 1, parallel: str = "data", on_gpu: bool = False) -> MemoryEstimate:
    """Peak memory of an extraction process (`repgeom.extract`): no gradients, so a forward pass holds one block's
    transients for its padded tokens (`repgeom.extract.batching.length_batches`) and the logit lens of its rows.
    `parallel`: 'data' (each rank a full copy; per rank), 'device_map' (one process, the blocks spread over
    `gpus`), 'zero3' (each rank a 1/gpus share, one block gathered at a time)."""
    if parallel not in ("data", "device_map", "zero3"):
        raise ValueError(f"parallel must be 'data', 'device_map' or 'zero3', got {parallel!r}")
    weights = arch.n_params * dtype_bytes / MB
    if parallel == "device_map":
        weights /= gpus
    elif parallel == "zero3":
        weights = weights / gpus + arch.block_params * dtype_bytes / MB
    tokens = pass_tokens(max_batch_tokens, longest_prompt, max_batch_tokens)
    transient = tokens * (TRANSIENT_PER_TOKEN_HIDDEN * arch.hidden_size
                          + TRANSIENT_PER_TOKEN_INTERMEDIATE * arch.intermediate_size) * dtype_bytes / MB
    rows = max(1, min(tokens // longest_prompt, max_batch_tokens // LENS_MIN_PROMPT_TOKENS))
    lens = rows * arch.vocab_size * ((arch.n_layers + 1) * dtype_bytes + 4) / MB
    attention = ATTENTION_COPIES * (tokens // longest_prompt) * arch.n_heads * longest_prompt ** 2 * 4 / MB
    forward = transient + lens + attention
    if on_gpu:
        return MemoryEstimate(host_mb=PROCESS_BASELINE_MB + CUDA_HOST_MB, gpu_mb=weights + forward + GPU_OVERHEAD_MB)
    return MemoryEstimate(host_mb=PROCESS_BASELINE_MB + weights + forward, gpu_mb=0.0)
