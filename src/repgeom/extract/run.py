"""Extract one condition (a base model with k shots, or an adapter with 0 shots) into one group of the store.

Each rank holds an exclusive lock (`repgeom.locks`) on the group while it runs, a file
`.{store}.locks/{group}.lock.rank{r}` beside the store (outside it: zarr warns about foreign files in its folders,
and the store's files stay untouched by a run that has nothing to do); a second job on the same group stops at once.
A run on an existing group (complete or not) first re-hashes the row chunks marked done against the digests kept
when they were written (the ranks share the work), and computes again those whose files are missing or changed.

Each rank owns whole row chunks (round robin over the chunks not yet done) and writes them itself. Within a chunk,
prompts that begin with the same run of tokens (a subject's header and shots) share it: one forward pass computes
the prefix and keeps its keys and values, and the prompts continue from that cache (docs/design.md, "Shared
prefixes"); the other prompts run whole. Prompts run in length-sorted batches; hooks keep only last-token rows on
the device, and the same forward pass reads the answer letters off every layer's residual stream through the final
norm and the LM head (the logit lens, `hooks.RowCapture`); each batch's rows are copied asynchronously into a host
buffer, which a writer thread stores once the chunk is full, while the next chunk runs.
"""
from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from repgeom import distributed
from repgeom.errors import InputError
from repgeom.io import read_parquet_table
from repgeom.extract.accuracy import (LENS_COLUMNS, accuracy_frame, accuracy_summary, lens_frame, write_accuracy,
                                      write_lens)
from repgeom.extract.batching import (TokenSample, encode_prompts, first_token_index, last_token_index,
                                      PrefixGroup, length_batches, pad_batch, position_ids,
                                      shared_prefix_groups)
from repgeom.extract.hooks import HOOKS, HookPoint, RowCapture, find_blocks, find_hook_points, unwrap
from repgeom.extract.model_setup import (ExtractionModel, adapter_fingerprint, compute_device,
                                         legacy_adapter_fingerprint, load_extraction_model, load_model_config,
                                         max_prompt_length, read_adapter_config, read_zero3_config)
from repgeom.extract.writer import AsyncChunkWriter, FilledChunk, HostBuffer, to_storage
from repgeom.letters import ANSWER_LETTERS
from repgeom.locks import rank_locks
from repgeom.models.loading import answer_letter_token_ids, load_tokenizer, model_fingerprint, parse_dtype
from repgeom.store.layout import (ARGMAX_TOKEN, LETTER_LOGPROB, STORE_DTYPES, chunk_rows, prompt_set_hash,
                                  storage_dtype)
from repgeom.store.reading import letter_lens_array, open_store_group, prompt_frame, read_array, require_array
from repgeom.store.writing import (GroupSpec, GroupWriter, TokenSampleLayout, group_status, open_group_for_repair,
                                   open_group_for_writing)

log = logging.getLogger("repgeom.extract")

PROMPT_COLUMNS = ("question_id", "subject", "gold", "n_shots", "prompt", "n_tokens")
DEFAULT_BATCH_TOKENS = {"cuda": 16384, "cpu": 2048}


class PromptSetError(InputError):
    """The prompts file is missing or malformed; the message names the file, column or row."""


@dataclass
class ExtractionSettings:
    hook: str = "block_input_norm"
    store_dtype: str = "float32"
    model_dtype: str = "auto"
    max_batch_tokens: int | None = None   # default by device: DEFAULT_BATCH_TOKENS
    max_length: int | None = None         # default: the model's max_position_embeddings
    padding_side: str = "right"
    token_sample_layers: list[int] = field(default_factory=list)
    token_sample_size: int = 0
    seed: int = 0
    chunk_rows: int | None = None         # default: layout.chunk_rows (about 16 MiB per layer chunk)
    min_shared_prefix: int = 32           # tokens that prompts must share to compute them once; 0: never share

    def __post_init__(self):
        if self.hook not in HOOKS:
            raise InputError(f"hook point {self.hook!r} is not one of {', '.join(HOOKS)}")
        if self.padding_side not in ("left", "right"):
            raise InputError(f"padding side {self.padding_side!r} is not 'left' or 'right'")
        if self.store_dtype not in STORE_DTYPES:
            raise InputError(f"store dtype {self.store_dtype!r} is not one of {', '.join(STORE_DTYPES)}")
        if self.min_shared_prefix < 0:
            raise InputError(f"min_shared_prefix must be 0 (never share) or a positive token count, "
                             f"got {self.min_shared_prefix}")
        if bool(self.token_sample_layers) != (self.token_sample_size > 0):
            raise InputError("a token sample needs both --token-sample-layers and a positive --token-sample-size")

    def token_sample_identity(self) -> dict | None:
        if not self.token_sample_size:
            return None
        return {"layers": list(self.token_sample_layers), "size": self.token_sample_size, "seed": self.seed}


def read_prompts(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    frame = read_parquet_table(path, "prompts file", PromptSetError, PROMPT_COLUMNS)
    if frame.empty:
        raise PromptSetError(f"prompts file {str(path)!r} has no rows")
    duplicated = frame["question_id"][frame["question_id"].duplicated()]
    if len(duplicated):
        raise PromptSetError(f"prompts file {str(path)!r}: question_id {duplicated.iloc[0]!r} appears more than once "
                             f"(row {duplicated.index[0]})")
    bad_gold = frame.index[~frame["gold"].isin(ANSWER_LETTERS)]
    if len(bad_gold):
        raise PromptSetError(f"prompts file {str(path)!r}, row {bad_gold[0]}: gold {frame['gold'][bad_gold[0]]!r} "
                             f"is not one of {', '.join(ANSWER_LETTERS)}")
    return frame.reset_index(drop=True)


@dataclass
class Batch:
    rows: np.ndarray               # chunk-relative rows, in computation order
    sample_slots: np.ndarray       # the chunk's sample slots that this pass computes
    sample_batch_rows: np.ndarray  # their row within the batch
    sample_positions: np.ndarray   # their token position within the tokens this pass computes


@dataclass
class PrefixPlan:
    """A prefix of `length` tokens that the prompts of `batches` share (0: none, the prompts run whole): one pass
    computes it, with the chunk's sampled tokens that fall in it (`prefix_sample_*`), then the batches continue it."""
    first_row: int                 # a chunk-relative row whose first `length` tokens are the prefix
    length: int
    prefix_sample_slots: np.ndarray
    prefix_sample_positions: np.ndarray
    batches: list[Batch]

    @property
    def n_passes(self) -> int:
        return len(self.batches) + (1 if self.length else 0)


def plan_chunk(token_lists: list[list[int]], sample_rows: np.ndarray, sample_positions: np.ndarray,
               max_batch_tokens: int, min_shared_prefix: int) -> list[PrefixPlan]:
    """The forward passes of one row chunk: prompts grouped by shared prefix (none when `min_shared_prefix` is 0),
    each group in length-sorted batches. `sample_rows` are chunk-relative (-1 for an empty slot).
    Deterministic in the chunk's tokens, so a chunk recomputed after a resume runs exactly the same passes."""
    n_rows = len(token_lists)
    lengths = np.array([len(ids) for ids in token_lists], dtype=np.int64)
    groups = (shared_prefix_groups(token_lists, min_shared_prefix) if min_shared_prefix
              else [PrefixGroup(np.arange(n_rows), 0)])
    filled = np.flatnonzero(sample_rows >= 0)
    plans = []
    for group in groups:
        in_group = np.zeros(n_rows, dtype=bool)
        in_group[group.rows] = True
        slots = filled[in_group[sample_rows[filled]]]
        in_prefix = sample_positions[slots] < group.length
        continued = slots[~in_prefix]
        batches = []
        for members in length_batches(lengths[group.rows] - group.length, max_batch_tokens, group.length):
            rows = group.rows[members]
            where = np.full(n_rows, -1)
            where[rows] = np.arange(len(rows))
            batch_slots = continued[where[sample_rows[continued]] >= 0]
            batches.append(Batch(rows, batch_slots, where[sample_rows[batch_slots]],
                                 sample_positions[batch_slots] - group.length))
        plans.append(PrefixPlan(int(group.rows[0]), group.length, slots[in_prefix], sample_positions[slots[in_prefix]],
                                batches))
    return plans


def letter_log_probs(logits: torch.Tensor, letter_ids: torch.Tensor) -> torch.Tensor:
    """[B, n, V] logits -> [B, n, 4] float32 log-probabilities of the answer letters, each of the n rows' log-softmax
    over the full vocabulary in float32; a row at a time, so that no float32 copy of all the logits is made."""
    return torch.stack([torch.log_softmax(logits[:, i].float(), dim=-1)[:, letter_ids] for i in range(logits.shape[1])],
                       dim=1)


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
        past = None
        if prefix_cache is not None:
            past = copy.deepcopy(prefix_cache)  # the forward pass appends this batch's keys and values to it
            past.batch_repeat_interleave(len(token_lists))
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


def predictions_frame(store_path, group: str, letter_ids: dict[str, int], tokenizer) -> pd.DataFrame:
    node = open_store_group(store_path, group)
    return accuracy_frame(prompt_frame(node), read_array(require_array(node, LETTER_LOGPROB)),
                          read_array(require_array(node, ARGMAX_TOKEN)), letter_ids, tokenizer)


def group_lens_frame(store_path, group: str) -> pd.DataFrame:
    """The group's logit lens by layer (`accuracy.lens_frame`); no rows for a group from before the lens was kept."""
    node = open_store_group(store_path, group)
    array = letter_lens_array(node)
    if array is None:
        log.warning("%s was extracted before the logit lens was kept: its lens table has no rows (delete the group "
                    "and extract again to get them)", group)
        return pd.DataFrame(columns=list(LENS_COLUMNS))
    return lens_frame(prompt_frame(node)["gold"], read_array(array))


@dataclass
class ExtractionJob:
    """One condition into one store group: `run()` extracts or resumes it, then rank 0 writes the lens table (if
    `lens_out`) and the accuracy table."""
    model_spec: str
    prompts_path: str | Path
    store_path: str | Path
    group: str
    accuracy_out: str | Path
    settings: ExtractionSettings = field(default_factory=ExtractionSettings)
    adapter: str | None = None
    revision: str | None = None
    zero3_config_path: str | None = None
    device_map: str | None = None
    wait_for_lock: bool = False   # wait for another process working on the group, instead of stopping
    lens_out: str | Path | None = None  # the logit lens by layer (`accuracy.lens_frame`) as parquet; None: not written

    @property
    def lock_base(self) -> Path:
        store = Path(self.store_path)
        return store.parent / f".{store.name}.locks" / f"{self.group}.lock"

    def run(self) -> dict | None:
        """Returns the accuracy summary on rank 0, None on the other ranks. A LockedError (before anything is read or
        written) if another live process works on the same group."""
        info = distributed.rank_info_from_env()
        with rank_locks(self.lock_base, f"store group {self.group!r} of {str(self.store_path)!r}", info.rank,
                        info.world_size, wait=self.wait_for_lock):
            return self._run(info)

    def _run(self, info: distributed.RankInfo) -> dict | None:
        if self.device_map and (info.world_size > 1 or self.zero3_config_path):
            raise InputError("--device-map auto shards one process's model over its GPUs: run it as a single rank, "
                             "without --zero3")
        prompts = read_prompts(self.prompts_path)
        tokenizer = load_tokenizer(self.model_spec, self.revision)
        letter_ids = answer_letter_token_ids(tokenizer)
        adapter_config = read_adapter_config(self.adapter) if self.adapter else None
        max_length = max_prompt_length(self.settings.max_length, load_model_config(self.model_spec, self.revision),
                                       adapter_config)
        device = compute_device(info, self.device_map)
        dtype = parse_dtype(self.settings.model_dtype, device)
        identity = {
            "model": model_fingerprint(self.model_spec, self.revision), "adapter": self._adapter_identity(),
            "hook": self.settings.hook, "store_dtype": self.settings.store_dtype,
            "model_dtype": str(dtype).removeprefix("torch."), "prompt_set_hash": prompt_set_hash(prompts),
            "max_length": max_length, "token_sample": self.settings.token_sample_identity(),
        }
        group_writer = None
        status = group_status(self.store_path, self.group, identity)
        if status != "absent":
            if info.world_size > 1:  # the ranks share the verification
                distributed.init_process_group(info, zero3=self.zero3_config_path is not None, device=device)
            if self._recompute_damaged_chunks(info, device):
                status = "incomplete"
        if status != "complete":
            distributed.init_process_group(info, zero3=self.zero3_config_path is not None, device=device)
            group_writer = self._extract(prompts, tokenizer, letter_ids, identity, max_length, device, dtype, info)
        summary = None
        if info.is_main:
            frame = predictions_frame(self.store_path, self.group, letter_ids, tokenizer)
            summary = accuracy_summary(frame)
            if group_writer is not None:
                group_writer.mark_complete({"accuracy": summary})
            about = {"group": self.group, "model": identity["model"], "adapter": identity["adapter"]}
            if self.lens_out is not None:
                lens = group_lens_frame(self.store_path, self.group)
                write_lens(lens, self.lens_out, about)
                if len(lens):
                    log.info("%s: logit-lens accuracy by layer: %s", self.group,
                             " ".join(f"{value:.2f}" for value in lens["accuracy"]))
            write_accuracy(frame, self.accuracy_out, about)
            log.info("%s: accuracy micro %.4f macro %.4f (full-vocabulary argmax: %.4f / %.4f) over %d prompts",
                     self.group, summary["micro"], summary["macro"], summary["micro_argmax"],
                     summary["macro_argmax"], summary["n"])
        distributed.close_process_group()
        return summary

    def _adapter_identity(self) -> dict | None:
        """The adapter's fingerprint; for a group extracted before fingerprints were canonical from this very adapter
        folder (its bytes unchanged since), the fingerprint stored then, so that the group still resumes."""
        fingerprint = adapter_fingerprint(self.adapter)
        if fingerprint is None:
            return None
        try:
            stored = json.loads((Path(self.store_path) / self.group / "zarr.json").read_text())["attributes"]["adapter"]
        except (OSError, ValueError, KeyError, TypeError):
            return fingerprint
        if stored != fingerprint and stored == legacy_adapter_fingerprint(self.adapter):
            log.info("%s was extracted from this adapter folder, unchanged since, under the older byte-level "
                     "fingerprint; keeping that", self.group)
            return stored
        return fingerprint

    def _recompute_damaged_chunks(self, info: distributed.RankInfo, device) -> bool:
        """Re-hash the files of the row chunks marked done (each rank a share) against the digests recorded when they
        were written; un-mark those that are missing or changed, so that the extraction computes them again. True if
        any was. Writes nothing when all are intact."""
        began = time.perf_counter()
        writer = open_group_for_repair(self.store_path, self.group)
        if not writer.has_digests:
            if info.is_main:
                log.warning("%s keeps no per-chunk digests (written by an older version): its row chunks cannot be "
                            "verified", self.group)
            return False
        done = np.flatnonzero(writer.done_chunks())
        mine = done[info.rank::info.world_size]
        problems = writer.verify_chunks(mine)
        for chunk, rel, what in problems:
            log.warning("%s: row chunk %d is damaged: file %s %s", self.group, chunk, rel, what)
        flags = np.zeros(writer.n_chunks, dtype=bool)
        flags[[chunk for chunk, _, _ in problems]] = True
        damaged = np.flatnonzero(distributed.all_ranks_any(flags, device)).tolist()
        if info.is_main:
            if damaged:
                open_group_for_repair(self.store_path, self.group, writable=True).unmark_chunks(damaged)
                log.warning("%s: recomputing damaged row chunk(s) %s of %d", self.group, damaged, writer.n_chunks)
            else:
                log.info("%s: %d row chunks marked done verified against their digests in %.1f s: intact",
                         self.group, len(done), time.perf_counter() - began)
        distributed.barrier()  # every rank sees the un-marked chunks before it reads which to compute
        return bool(damaged)

    def _extract(self, prompts, tokenizer, letter_ids, identity, max_length, device, dtype, info):
        settings = self.settings
        zero3 = read_zero3_config(self.zero3_config_path, dtype) if self.zero3_config_path else None
        loaded = load_extraction_model(self.model_spec, device, dtype, self.adapter, self.revision, zero3,
                                       self.device_map)
        token_lists = encode_prompts(tokenizer, prompts["prompt"].tolist(), max_length)
        differing = int((prompts["n_tokens"].to_numpy() != [len(ids) for ids in token_lists]).sum())
        if differing:
            log.warning("%d prompts have another token count than the prompts file's n_tokens (another tokenizer "
                        "or max_length?); extracting from this model's own tokenisation", differing)
        probe = torch.tensor([token_lists[0][:16]], device=loaded.input_device)
        points = find_hook_points(loaded.model, settings.hook, probe)
        bad_layers = [i for i in settings.token_sample_layers if not 0 <= i < len(points)]
        if bad_layers:
            raise InputError(f"--token-sample-layers {bad_layers} out of range: the model has layers 0..{len(points) - 1}")
        base = unwrap(loaded.model)
        hidden = base.get_input_embeddings().embedding_dim
        rows = settings.chunk_rows or chunk_rows(len(prompts), hidden, storage_dtype(settings.store_dtype).itemsize,
                                                 info.world_size)
        sample_layout = None
        if settings.token_sample_size:
            lengths = np.array([len(ids) for ids in token_lists], dtype=np.int64)
            sample = TokenSample.draw(lengths, settings.token_sample_size, settings.seed)
            sample_layout = TokenSampleLayout(settings.token_sample_layers,
                                              *sample.by_chunk(rows, -(-len(prompts) // rows)))
        spec = GroupSpec(identity=identity, layer_names=[p.name for p in points], hidden_size=hidden, chunk_rows=rows,
                         prompts=prompts, token_sample=sample_layout, letter_lens=True,
                         attrs={"letter_token_ids": letter_ids, "model_class": type(base).__name__})
        group_writer = open_group_for_writing(self.store_path, self.group, spec)
        extract_rank_share(loaded, points, token_lists, group_writer, settings, tokenizer.pad_token_id,
                           [letter_ids[k] for k in ANSWER_LETTERS], info, lockstep=zero3 is not None, label=self.group)
        return group_writer if info.is_main else None
