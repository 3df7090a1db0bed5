"""A rank's share of one extraction: the forward passes over its row chunks, each chunk's rows kept in a host buffer
that a writer thread stores.

Within a chunk, prompts that begin with the same run of tokens (a subject's header and shots) share it: one forward
pass computes the prefix and keeps its keys and values, and the prompts continue from that cache (docs/design.md,
"Shared prefixes"; the passes are planned by `batching.plan_chunk`); the other prompts run whole. Prompts run in
length-sorted batches; hooks keep only last-token rows on the device, and the same forward pass reads the answer
letters off every layer's residual stream through the final norm and the LM head (the logit lens,
`hooks.RowCapture`); each batch's rows are copied asynchronously into a host buffer, which a writer thread stores
once the chunk is full, while the next chunk runs.
"""
from __future__ import annotations

import copy
import logging
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from repgeom import distributed
from repgeom.extract.batching import (Batch, PrefixPlan, first_token_index, last_token_index, pad_batch, plan_chunk,
                                      position_ids)
from repgeom.extract.hooks import HookPoint, RowCapture, find_blocks, unwrap
from repgeom.extract.model_setup import ExtractionModel
from repgeom.extract.writer import AsyncChunkWriter, FilledChunk, HostBuffer, to_storage
from repgeom.store.writing import GroupWriter, TokenSampleLayout

if TYPE_CHECKING:
    from repgeom.extract.job import ExtractionSettings

log = logging.getLogger("repgeom.extract")

DEFAULT_BATCH_TOKENS = {"cuda": 16384, "cpu": 2048}


def letter_log_probs(logits: torch.Tensor, letter_ids: torch.Tensor) -> torch.Tensor:
    """[B, n, V] logits -> [B, n, 4] float32 log-probabilities of the answer letters, each of the n rows' log-softmax
    over the full vocabulary in float32; a row at a time, so that no float32 copy of all the logits is made."""
    return torch.stack([torch.log_softmax(logits[:, i].float(), dim=-1)[:, letter_ids] for i in range(logits.shape[1])],
                       dim=1)


def repeated_cache(prefix_cache, rows: int):
    """The key/value cache of a prefix (batch size 1) for a batch of `rows` prompts that continue it: a new cache whose
    layers hold the prefix's keys and values repeated `rows` times (new tensors, which the forward pass then extends).
    The prefix's own cache is left as it is, for the next batch, and its tensors are read once, never copied whole:
    the cache and its layers are copied shallowly before `batch_repeat_interleave` replaces each layer's tensors."""
    past = copy.copy(prefix_cache)
    past.layers = [copy.copy(layer) for layer in prefix_cache.layers]
    past.batch_repeat_interleave(rows)
    return past


class BatchRunner:
    """One forward pass over a padded batch; returns the kept rows on the device, already in the storage dtype."""

    def __init__(self, loaded: ExtractionModel, capture: RowCapture, pad_id: int, letter_ids: list[int],
                 store_dtype: str, padding_side: str):
        if loaded.prompt_learning and padding_side != "right":
            raise ValueError("prompt-learning adapters need right padding: peft ignores position_ids")
        self.loaded, self.capture, self.pad_id, self.store_dtype = loaded, capture, pad_id, store_dtype
        self.padding_side = padding_side
        self.letter_ids = torch.tensor(letter_ids, device=loaded.input_device)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, past=None, keep_cache: bool = False):
        """`past`: the keys and values of a prefix that every row continues; `keep_cache`: return this pass's."""
        if self.loaded.prompt_learning:
            return self.loaded.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        if past is not None:
            mask = torch.cat([mask.new_ones(len(mask), past.get_seq_length()), mask], dim=1)
        positions = position_ids(mask)[:, mask.shape[1] - input_ids.shape[1]:]
        return self.loaded.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=past, use_cache=past is not None or keep_cache)

    def to_device(self, values) -> torch.Tensor:
        """Host to device without a stream sync: from pinned memory on CUDA (pageable copies synchronise)."""
        values = torch.as_tensor(values)
        if self.loaded.input_device.type == "cuda" and values.numel():
            values = values.pin_memory()
        return values.to(self.loaded.input_device, non_blocking=True)

    def run_prefix(self, prefix: list[int], sample_positions: np.ndarray):
        """One pass over a shared prefix: its key/value cache, and its sampled rows (positions within the prefix)
        in the storage dtype (None without a token sample)."""
        input_ids = self.to_device([prefix])
        sample_positions = self.to_device(sample_positions)
        last = torch.full((1,), len(prefix) - 1, device=input_ids.device)
        self.capture.start(len(prefix), last, torch.zeros_like(sample_positions), sample_positions)
        cache = self.forward(input_ids, torch.ones_like(input_ids), keep_cache=True).past_key_values
        _, sample = self.capture.stop()
        return cache, None if sample is None else to_storage(sample, self.store_dtype)

    def run(self, token_lists: list[list[int]], batch: Batch, prefix_cache=None):
        """The batch's rows, continuing `prefix_cache` (a prefix's keys and values, batch size 1) if given: the stored
        layers' last-token rows and the token sample (None without one) in the storage dtype, the logit lens on the
        letters [B, n_layers, 4] (its last layer is the prediction) and the full-vocabulary argmax."""
        input_ids, mask = (self.to_device(t) for t in pad_batch(token_lists, self.pad_id, self.padding_side))
        sample_rows = self.to_device(batch.sample_batch_rows)
        sample_index = first_token_index(mask)[sample_rows] + self.to_device(batch.sample_positions)
        self.capture.start(input_ids.shape[1], last_token_index(mask), sample_rows, sample_index, lens=True)
        past = None if prefix_cache is None else repeated_cache(prefix_cache, len(token_lists))
        logits = self.forward(input_ids, mask, past).logits  # [B, n_layers, V]: the lens rows, then the prediction
        reps, sample = self.capture.stop()
        # .to(): under device_map="auto" the LM head may sit on another GPU.
        letter_lens = letter_log_probs(logits, self.letter_ids.to(logits.device)).to(self.loaded.input_device)
        argmax = logits[:, -1].argmax(dim=-1).to(self.loaded.input_device)
        storage = None if sample is None else to_storage(sample, self.store_dtype)
        return to_storage(reps, self.store_dtype), letter_lens, argmax, storage

    def run_discarded(self) -> None:
        """A one-token pass whose outputs are thrown away: keeps a ZeRO-3 rank in step with ranks that have work."""
        ids = torch.full((1, 1), self.pad_id, device=self.loaded.input_device)
        self.forward(ids, torch.ones_like(ids))


def chunk_plan(group_writer, token_lists, sample_layout: TokenSampleLayout | None, chunk: int,
               max_batch_tokens: int, min_shared_prefix: int) -> list[PrefixPlan]:
    first, stop = group_writer.chunk_bounds(chunk)
    if sample_layout is not None:
        sample_rows = np.where(sample_layout.rows[chunk] >= 0, sample_layout.rows[chunk] - first, -1)
        sample_positions = sample_layout.positions[chunk]
    else:
        sample_rows = sample_positions = np.empty(0, dtype=np.int64)
    return plan_chunk(token_lists[first:stop], sample_rows, sample_positions, max_batch_tokens, min_shared_prefix)


def extract_chunks(runner: BatchRunner, writer: AsyncChunkWriter, group_writer, token_lists,
                   plans: dict[int, list[PrefixPlan]], n_forward_passes: int, progress: tqdm) -> None:
    """Compute the chunks of `plans`, handing each to the writer when full; then pad to `n_forward_passes` (ZeRO-3
    lockstep)."""
    use_cuda_events = runner.loaded.input_device.type == "cuda"
    passes, tokens, start = 0, 0, time.perf_counter()
    for chunk, chunk_plans in plans.items():
        first, _ = group_writer.chunk_bounds(chunk)
        buffer = writer.acquire()
        row_order, sample_order, row_cursor, sample_cursor = [], [], 0, 0

        def keep_sample(sample, slots):
            nonlocal sample_cursor
            if sample is not None and len(slots):
                buffer.sample[sample_cursor:sample_cursor + len(slots)].copy_(sample, non_blocking=True)
            sample_order.append(slots)
            sample_cursor += len(slots)

        for plan in chunk_plans:
            prefix_cache = None
            if plan.length:
                prefix_cache, sample = runner.run_prefix(token_lists[first + plan.first_row][:plan.length],
                                                         plan.prefix_sample_positions)
                keep_sample(sample, plan.prefix_sample_slots)
                passes += 1
            for batch in plan.batches:
                reps, letter_lens, argmax, sample = runner.run(
                    [token_lists[first + r][plan.length:] for r in batch.rows], batch, prefix_cache)
                rows = slice(row_cursor, row_cursor + len(batch.rows))
                buffer.reps[rows].copy_(reps, non_blocking=True)
                buffer.letter_lens[rows].copy_(letter_lens, non_blocking=True)
                buffer.argmax_token[rows].copy_(argmax, non_blocking=True)
                keep_sample(sample, batch.sample_slots)
                row_order.append(batch.rows)
                row_cursor += len(batch.rows)
                passes += 1
                tokens += sum(len(token_lists[first + r]) for r in batch.rows)
                progress.update(len(batch.rows))
                progress.set_postfix_str(f"{tokens / (time.perf_counter() - start):,.0f} prompt tok/s", refresh=False)
        ready = None
        if use_cuda_events:
            ready = torch.cuda.Event()
            ready.record()
        writer.submit(FilledChunk(chunk, buffer, np.concatenate(row_order), np.concatenate(sample_order), ready))
    for _ in range(n_forward_passes - passes):
        runner.run_discarded()


def extract_rank_share(loaded: ExtractionModel, points: list[HookPoint], token_lists: list[list[int]],
                       group_writer: GroupWriter, settings: ExtractionSettings, pad_id: int, letter_ids: list[int],
                       info: distributed.RankInfo, lockstep: bool, label: str) -> None:
    """Compute this rank's share (round robin) of the row chunks not yet done, and write them.

    `lockstep`: ZeRO-3, where every rank must run the same number of forward passes."""
    # A resumed group keeps its own chunking and sample layout, whatever this run would have chosen.
    sample_layout = group_writer.token_sample_layout()
    todo = np.flatnonzero(~group_writer.done_chunks()).tolist()
    distributed.barrier()  # every rank has read the same `todo` before any rank marks a chunk done
    mine = todo[info.rank::info.world_size]
    device = loaded.input_device
    max_batch_tokens = settings.max_batch_tokens or DEFAULT_BATCH_TOKENS[device.type]
    # Prompt-learning adapters put virtual tokens in front of every prompt (or in the cache): no prefix to share.
    min_shared_prefix = 0 if loaded.prompt_learning else settings.min_shared_prefix
    plans = {chunk: chunk_plan(group_writer, token_lists, sample_layout, chunk, max_batch_tokens, min_shared_prefix)
             for chunk in mine}
    n_passes = own_passes = sum(plan.n_passes for chunk_plans in plans.values() for plan in chunk_plans)
    if lockstep:
        n_passes = distributed.all_ranks_max(own_passes, device)
    hidden = group_writer.reps.shape[2]
    log.info("rank %d/%d: %d of %d row chunks to compute (%d done before), %d layers at %s, hidden size %d%s",
             info.rank, info.world_size, len(mine), group_writer.n_chunks, group_writer.n_chunks - len(todo),
             len(points), settings.hook, hidden,
             f"; ZeRO-3 lockstep: {n_passes} forward passes, {n_passes - own_passes} discarded" if lockstep else "")

    if group_writer.letter_lens is None and info.is_main:
        log.warning("%s was created before the logit lens was kept: its row chunks are written without it (delete "
                    "the group and extract again to get the lens)", label)
    base = unwrap(loaded.model)
    capture = RowCapture(points, find_blocks(base)[1], base.get_output_embeddings(), settings.token_sample_layers)
    runner = BatchRunner(loaded, capture, pad_id, letter_ids, settings.store_dtype, settings.padding_side)
    sample_cap = sample_layout.rows.shape[1] if sample_layout is not None else 0
    sample_shape = (sample_cap, len(sample_layout.layers)) if sample_layout is not None else None
    buffers = [HostBuffer.allocate(group_writer.chunk_rows, len(points), hidden, settings.store_dtype, sample_shape,
                                   pin=device.type == "cuda")
               for _ in range(min(2, len(mine)))]
    writer = AsyncChunkWriter(group_writer, buffers, sample_cap)
    n_shared = sum(plan.length > 0 for chunk_plans in plans.values() for plan in chunk_plans)
    if n_shared:
        log.info("rank %d: %d shared prefixes (%d tokens computed once each on average)", info.rank, n_shared,
                 sum(plan.length for chunk_plans in plans.values() for plan in chunk_plans) / n_shared)
    progress = tqdm(total=sum(stop - start for start, stop in map(group_writer.chunk_bounds, mine)), unit="prompt",
                    file=sys.stderr,
                    desc=f"extract {label} rank {info.rank}", mininterval=5)
    try:
        with torch.no_grad():
            extract_chunks(runner, writer, group_writer, token_lists, plans, n_passes, progress)
    finally:
        progress.close()
        capture.remove()
        writer.close()
    distributed.barrier()  # every rank's chunks are written
