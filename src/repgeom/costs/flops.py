"""The arithmetic work of each stage, in FLOP: what the throughput constants (FLOP/s per device) divide.

Plain counts: a forward pass multiplies every token through every weight matrix (2 FLOP per weight) and attends to
the tokens before it (2 x 2 x width FLOP per earlier token and layer: scores and the weighted sum). A LoRA training
step adds the backward pass through the frozen weights (the input gradients: as much again); the adapters' own
gradients are negligible at LoRA ranks.
"""
from __future__ import annotations

from collections.abc import Iterable

from repgeom.costs.architecture import Architecture

# Forward passes a LoRA training step costs, in forward-pass units: forward + backward (input gradients only).
TRAIN_PASSES = 2


def forward_flops(arch: Architecture, lengths: Iterable[int]) -> float:
    """FLOP of forward passes over sequences of these lengths (causal attention: each token attends to those before
    it), up to the last layer and the output head at every position."""
    lengths = list(lengths)
    tokens = sum(lengths)
    attended = sum(n * (n + 1) / 2 for n in lengths)
    return 2.0 * arch.matmul_params * tokens + 4.0 * arch.n_layers * arch.hidden_size * attended


def extraction_flops(arch: Architecture, lengths: Iterable[int], shared: Iterable[tuple[int, int]] = ()) -> float:
    """The extraction's forward passes: the output head runs at the last position only, and a prefix that
    `rows` prompts share (`shared`: (prefix length, rows) pairs; a subject's header and shots) is computed once."""
    lengths = list(lengths)
    head = 2.0 * arch.vocab_size * arch.hidden_size
    repeated = [prefix for prefix, rows in shared for _ in range(max(rows - 1, 0))]
    return (forward_flops(arch, lengths) - head * (sum(lengths) - len(lengths))
            - (forward_flops(arch, repeated) - head * sum(repeated)))


def training_flops(arch: Architecture, lengths: Iterable[int]) -> float:
    """LoRA training over sequences of these (padded) lengths, once each."""
    return TRAIN_PASSES * forward_flops(arch, lengths)


def knn_flops(n_points: int, dim: int) -> float:
    """The exact kNN's Gram products over N points in D dimensions: 2 N^2 D."""
    return 2.0 * n_points * n_points * dim
