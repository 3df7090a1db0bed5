"""Pure functions of (rows, params, ranks): steps, learning rate, checkpoint steps, and which rows each rank trains on
at each step. The workflow calls `checkpoint_steps` at parse time, before anything is trained."""
from __future__ import annotations

import math

import numpy as np

from repgeom.finetune.params import FinetuneError, FinetuneParams, parse_params


def steps_per_epoch(n_rows: int, effective_batch: int) -> int:
    """Every row is seen once an epoch: the last batch of an epoch is smaller rather than dropped."""
    if n_rows < 1:
        raise FinetuneError("the fine-tuning set is empty: there is nothing to train on")
    return math.ceil(n_rows / effective_batch)


def total_steps(n_rows: int, params: FinetuneParams) -> int:
    return params.epochs * steps_per_epoch(n_rows, params.effective_batch)


def accumulation_steps(params: FinetuneParams, world_size: int) -> int:
    """effective batch = micro-batch x accumulation x ranks; the accumulation is what is left over."""
    per_pass = params.micro_batch * world_size
    if params.effective_batch % per_pass:
        raise FinetuneError(
            f"effective_batch {params.effective_batch} is not a multiple of micro_batch {params.micro_batch} x "
            f"{world_size} rank(s) = {per_pass}, so the gradient accumulation would not be a whole number of steps")
    return params.effective_batch // per_pass


def learning_rate(step: int, n_steps: int, params: FinetuneParams) -> float:
    """Rate of optimizer step `step` (0-based) of `n_steps`: linear warm-up over round(warmup_fraction x n_steps)
    steps, reaching the peak on the last of them, then a cosine down to final_lr_fraction x peak on the last step."""
    peak, final = params.lr, params.lr * params.final_lr_fraction
    warmup = round(params.warmup_fraction * n_steps)
    peak_step = max(warmup - 1, 0)
    if step < peak_step:
        return peak * (step + 1) / warmup
    progress = (step - peak_step) / max(n_steps - 1 - peak_step, 1)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))


def checkpoint_steps(n_rows: int, params: dict | FinetuneParams) -> dict[str, int]:
    """Checkpoint name -> optimizer steps done when it is saved: `n_checkpoints` log-spaced steps
    (geomspace(1, T, n) rounded, duplicates dropped), then every epoch end. The last step appears under both names."""
    params = parse_params(params)
    n_steps, per_epoch = total_steps(n_rows, params), steps_per_epoch(n_rows, params.effective_batch)
    log_spaced = np.unique(np.round(np.geomspace(1, n_steps, params.n_checkpoints)).astype(int))
    names = {f"step{step}": int(step) for step in log_spaced}
    names.update({f"epoch{epoch}": epoch * per_epoch for epoch in range(1, params.epochs + 1)})
    return names


# Independent random streams of one seed.
ORDER_STREAM, MIXING_STREAM = 0, 1


def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch (0-based), a function of the seed alone: a resumed run replays it exactly."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ORDER_STREAM, epoch))).permutation(n_rows)


def mixing_weights(n_rows: int, params: FinetuneParams, step: int) -> np.ndarray:
    """Prefix-subspace vertex weights [n_rows, K] at optimizer step `step`, from a uniform Dirichlet: a function of
    (seed, step, row) alone, so any split over ranks and a resumed run draw the same weights."""
    rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(MIXING_STREAM, step)))
    return rng.dirichlet(np.ones(params.subspace_vertices), size=n_rows)


def step_rows(n_rows: int, params: FinetuneParams, step: int) -> np.ndarray:
    """Rows of the global batch of optimizer step `step` (0-based over the whole run)."""
    per_epoch = steps_per_epoch(n_rows, params.effective_batch)
    epoch, index = divmod(step, per_epoch)
    order = epoch_order(n_rows, params.seed, epoch)
    return order[index * params.effective_batch: (index + 1) * params.effective_batch]


def rank_micro_batches(rows: np.ndarray, params: FinetuneParams, world_size: int, rank: int) -> list[np.ndarray]:
    """This rank's share of a global batch, one array per accumulation micro-step (always `accumulation` of them).

    Micro-step i of rank k takes rows [(i*W + k)*m, (i*W + k + 1)*m): a short last batch fills the first micro-steps
    of every rank, so ranks stay balanced; the arrays that come out empty must still be run (with zero weight),
    since every rank takes part in each collective gradient reduction."""
    m = params.micro_batch
    return [rows[(i * world_size + rank) * m: (i * world_size + rank + 1) * m]
            for i in range(accumulation_steps(params, world_size))]


def split_into_passes(micro: np.ndarray, lengths: np.ndarray, max_batch_tokens: int) -> list[np.ndarray]:
    """A micro-batch as forward passes whose padded tokens (rows x longest row) fit `max_batch_tokens`: one pass in
    the given order when the whole micro-batch fits, else rows packed longest first, so that rows of like length
    share a pass and little padding is run; a row longer than the budget is a pass of its own. Memory follows a
    pass's padded tokens, not the micro-batch's."""
    if len(micro) * lengths[micro].max(initial=0) <= max_batch_tokens:
        return [micro] if len(micro) else []
    passes, current = [], []
    for row in micro[np.argsort(-lengths[micro], kind="stable")]:
        if current and (len(current) + 1) * lengths[current[0]] > max_batch_tokens:
            passes.append(np.array(current))
            current = []
        current.append(row)
    return passes + [np.array(current)]


def rank_passes(rows: np.ndarray, lengths: np.ndarray, params: FinetuneParams, world_size: int,
                rank: int) -> list[list[np.ndarray]]:
    """This rank's micro-batches (`rank_micro_batches`), each as its forward passes (`split_into_passes`).

    Every rank gets the same number of passes in a micro-step, the most any rank needs and at least one: under
    ZeRO-3 each forward pass gathers the parameters collectively, and each micro-step's gradients are reduced
    together. A rank with fewer passes gets empty arrays, to run with zero weight. Every rank computes the same
    counts, from the global rows of the step."""
    shares = [rank_micro_batches(rows, params, world_size, other) for other in range(world_size)]
    split = [[split_into_passes(micro, lengths, params.max_batch_tokens) for micro in share] for share in shares]
    counts = [max(1, *(len(share[i]) for share in split)) for i in range(len(split[rank]))]
    return [passes + [rows[:0]] * (count - len(passes)) for passes, count in zip(split[rank], counts)]
