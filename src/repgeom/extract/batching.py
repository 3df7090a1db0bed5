"""Tokenisation with left truncation, shared prefixes and the forward passes of a row chunk (`plan_chunk`),
length-sorted batches, padding, last-token indices and the token sample."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from repgeom.errors import InputError


def encode_prompts(tokenizer, prompts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each prompt (the tokenizer adds BOS); over `max_length`, cut from the left, keeping BOS."""
    if max_length < 2:
        raise InputError(f"max_length must be at least 2 (BOS and one token), got {max_length}")
    encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    return [truncate_left(ids, max_length, tokenizer.bos_token_id) for ids in encoded]


def truncate_left(ids: list[int], max_length: int, bos_id: int | None) -> list[int]:
    if len(ids) <= max_length:
        return ids
    if bos_id is not None and ids[0] == bos_id:
        return ids[:1] + ids[len(ids) - max_length + 1:]
    return ids[len(ids) - max_length:]


# A batch that continues a shared prefix attends to the prefix's cached keys and values as well: its context
# (rows x (prefix + longest)) may be this many times the token budget, since a cached token costs one K and one V
# row per layer, a small part of what a computed token holds while it flows through the blocks.
CONTEXT_PER_BATCH_TOKEN = 4


def length_batches(lengths: np.ndarray, max_batch_tokens: int, prefix_length: int = 0) -> list[np.ndarray]:
    """Indices into `lengths` grouped longest first, each batch's padded size (count x longest) within budget; after
    a cached prefix of `prefix_length` tokens, its context (count x (prefix + longest)) within
    CONTEXT_PER_BATCH_TOKEN x budget too.

    Deterministic in `lengths` alone, so a chunk recomputed after a resume runs exactly the same batches.
    """
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, max_batch_tokens // longest)
        if prefix_length:
            size = min(size, max(1, CONTEXT_PER_BATCH_TOKEN * max_batch_tokens // (prefix_length + longest)))
        batches.append(order[start:start + size])
        start += size
    return batches


def common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


@dataclass
class PrefixGroup:
    """Rows (ascending indices) whose first `length` tokens are the same: computed once, then continued per row.
    `length` 0: rows computed whole."""
    rows: np.ndarray
    length: int


def shared_prefix_groups(token_lists: list[list[int]], min_length: int) -> list[PrefixGroup]:
    """The rows grouped by a common leading run of at least `min_length` tokens (a few-shot prompt's header and
    shots, the same for every question of a subject); every other row in one group of length 0, first.

    Sorted lexicographically, rows with a common prefix sit side by side, and a group's prefix is the shortest
    common prefix of neighbours in it. Every row keeps at least its last token to compute (its logits and its
    last-token representation come from the continuation). Deterministic in the token lists alone.
    """
    order = sorted(range(len(token_lists)), key=lambda row: token_lists[row])
    runs, current, shared = [], order[:1], None
    for previous, row in zip(order, order[1:]):
        common = common_prefix_length(token_lists[previous], token_lists[row])
        if common >= min_length:
            current.append(row)
            shared = common if shared is None else min(shared, common)
        else:
            runs.append((current, shared))
            current, shared = [row], None
    if current:
        runs.append((current, shared))
    groups, alone = [], []
    for rows, shared in runs:
        length = 0 if shared is None else min(shared, min(len(token_lists[r]) for r in rows) - 1)
        if length >= min_length:
            groups.append(PrefixGroup(np.sort(np.array(rows, dtype=np.int64)), length))
        else:
            alone.extend(rows)
    if alone:
        groups.insert(0, PrefixGroup(np.sort(np.array(alone, dtype=np.int64)), 0))
    return groups


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


def pad_batch(token_lists: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, S], padded on `side`."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(ids) for ids in token_lists)
    input_ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, ids in enumerate(token_lists):
        span = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        mask[row, span] = 1
    return input_ids, mask


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last real token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * positions).argmax(dim=1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's first real token (non-zero only under left padding)."""
    return attention_mask.argmax(dim=1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, … over each row's real tokens, so left padding does not shift positions."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


@dataclass
class TokenSample:
    """A uniform seeded sample of non-padding tokens: (row, position) pairs sorted by row then position."""
    rows: np.ndarray
    positions: np.ndarray

    @classmethod
    def draw(cls, lengths: np.ndarray, size: int, seed: int) -> "TokenSample":
        """Depends only on the token counts, the size and the seed: not on batching, ranks or resumes."""
        total = int(lengths.sum())
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        rows = np.searchsorted(starts, chosen, side="right") - 1
        return cls(rows=rows.astype(np.int64), positions=(chosen - starts[rows]).astype(np.int64))

    def by_chunk(self, chunk_rows: int, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
        """rows/positions as [n_chunks, cap] arrays (-1 = empty slot), the sampled tokens of each row chunk in order."""
        chunk_of = self.rows // chunk_rows
        counts = np.bincount(chunk_of, minlength=n_chunks)
        cap = max(1, int(counts.max(initial=0)))
        rows = np.full((n_chunks, cap), -1, dtype=np.int64)
        positions = np.full((n_chunks, cap), -1, dtype=np.int64)
        slot = np.arange(len(self.rows)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[chunk_of]
        rows[chunk_of, slot] = self.rows
        positions[chunk_of, slot] = self.positions
        return rows, positions
