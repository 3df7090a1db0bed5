"""Extract one condition (a base model with k shots, or an adapter with 0 shots) into one group of the store.

Each rank holds an exclusive lock (`repgeom.locks`) on the group while it runs, a file
`.{store}.locks/{group}.lock.rank{r}` beside the store (outside it: zarr warns about foreign files in its folders,
and the store's files stay untouched by a run that has nothing to do); a second job on the same group stops at once.
A run on an existing group (complete or not) first re-hashes the row chunks marked done against the digests kept
when they were written (the ranks share the work), and computes again those whose files are missing or changed.

Each rank owns whole row chunks (round robin over the chunks not yet done) and writes them itself
(`forward.extract_rank_share`); rank 0 then writes the accuracy and lens tables.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from repgeom import distributed
from repgeom.errors import InputError
from repgeom.io import read_parquet_table
from repgeom.extract.accuracy import (LENS_COLUMNS, accuracy_frame, accuracy_summary, lens_frame, write_accuracy,
                                      write_lens)
from repgeom.extract.batching import TokenSample, encode_prompts
from repgeom.extract.forward import extract_rank_share
from repgeom.extract.hooks import HOOKS, find_hook_points, unwrap
from repgeom.extract.model_setup import (adapter_fingerprint, compute_device, load_extraction_model, load_model_config,
                                         max_prompt_length, read_adapter_config, read_zero3_config)
from repgeom.letters import ANSWER_LETTERS
from repgeom.locks import rank_locks
from repgeom.models.loading import answer_letter_token_ids, load_tokenizer, model_fingerprint, parse_dtype
from repgeom.store.layout import (ARGMAX_TOKEN, LETTER_LOGPROB, STORE_DTYPES, chunk_rows, prompt_set_hash,
                                  storage_dtype)
from repgeom.store.reading import letter_lens_array, open_store_group, prompt_frame, read_array, require_array
from repgeom.store.writing import GroupSpec, TokenSampleLayout, group_status, open_group_for_repair, open_group_for_writing

log = logging.getLogger("repgeom.extract")

PROMPT_COLUMNS = ("question_id", "subject", "gold", "n_shots", "prompt", "n_tokens")


class PromptSetError(InputError):
    """The prompts file is missing or malformed; the message names the file, column or row."""


@dataclass
class ExtractionSettings:
    hook: str = "block_input_norm"
    store_dtype: str = "float32"
    model_dtype: str = "auto"
    max_batch_tokens: int | None = None   # default by device: forward.DEFAULT_BATCH_TOKENS
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
            "model": model_fingerprint(self.model_spec, self.revision), "adapter": adapter_fingerprint(self.adapter),
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
                                       self.device_map, settings.max_batch_tokens)
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
