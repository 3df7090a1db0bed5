"""The activation store's layout: array names, stored dtypes, chunk sizing and the prompt-set hash.

One zarr (v3) store per run; one group per `{model}/{condition}`:

    reps            [n_layers, N, D]  chunks (1, R, D)   one layer's [N, D] reads without touching the others
    question_id, subject, gold        [N] strings
    letter_logprob  [N, 4] float32    log-probabilities of the answer letters A-D
    letter_logprob_layers  [N, n_layers, 4] float32   the logit lens: the same, read through the final norm and
                    the LM head off the residual stream entering block i (layer i < L) and, at layer L, the
                    prediction itself (equal to `letter_logprob`); absent from groups written before it was kept
    argmax_token    [N] int64         argmax of the full next-token distribution
    chunk_done      [n_chunks] uint8  one zarr chunk per row chunk: 1 once that row chunk is durably written
    chunk_sha256    [n_chunks, files, 32] uint8  sha256 of each chunk file a row chunk wrote, kept before its
                    chunk_done mark; combined into the group's `content_sha256` attribute at completion (provenance)
    token_sample/   optional all-token sample (see `repgeom.extract.batching.sample_tokens`)

Every array carries a crc32c checksum per chunk, so a corrupted chunk fails loudly on read.
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd

from repgeom.errors import InputError

# The one store of a run, under the results folder: results/activations.zarr.
STORE_NAME = "activations.zarr"
FORMAT_VERSION = 1
REPS = "reps"
META_COLUMNS = ("question_id", "subject", "gold")
LETTER_LOGPROB = "letter_logprob"
LETTER_LOGPROB_LAYERS = "letter_logprob_layers"
ARGMAX_TOKEN = "argmax_token"
CHUNK_DONE = "chunk_done"
TOKEN_SAMPLE = "token_sample"

STORE_DTYPES = ("float32", "float16", "bfloat16")
# zarr has no bfloat16: its raw bits are stored as uint16 and widened to float32 on read (bit-exact).
BF16_ENCODING = "bfloat16-bits-as-uint16"

CHUNK_TARGET_BYTES = 16 << 20
CHUNK_MIN_BYTES = 8 << 20


class StoreError(InputError, RuntimeError):
    """The store is missing, partial, corrupt or does not match the run; the message says which and where."""


def storage_dtype(store_dtype: str) -> np.dtype:
    if store_dtype not in STORE_DTYPES:
        raise ValueError(f"unknown store dtype {store_dtype!r}; use one of {', '.join(STORE_DTYPES)}")
    return np.dtype({"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[store_dtype])


def decode(raw: np.ndarray, encoding: str | None, dtype=np.float32) -> np.ndarray:
    """Stored values as `dtype`; bf16 bits become the float32 numbers they encode, exactly."""
    if encoding == BF16_ENCODING:
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(dtype, copy=False)


def chunk_rows(n_rows: int, hidden_size: int, itemsize: int, world_size: int = 1) -> int:
    """Rows per chunk: about 16 MiB per layer chunk, smaller (down to 8 MiB) so that every rank gets a chunk."""
    row_bytes = hidden_size * itemsize
    target = max(1, CHUNK_TARGET_BYTES // row_bytes)
    floor = max(1, CHUNK_MIN_BYTES // row_bytes)
    return max(1, min(n_rows, target, max(floor, math.ceil(n_rows / world_size))))


def prompt_set_hash(prompts: pd.DataFrame) -> str:
    """sha256 over the fields that define a prompt set, row by row in order (tokenizer-dependent columns excluded)."""
    columns = ["question_id", "subject", "gold", "n_shots", "prompt"]
    missing = [c for c in columns if c not in prompts.columns]
    if missing:
        raise StoreError(f"prompt frame lacks column(s) {missing}; it has {list(prompts.columns)}")
    records = [[str(q), str(s), str(g), int(k), str(p)] for q, s, g, k, p in prompts[columns].itertuples(index=False)]
    return hashlib.sha256(json.dumps(records, ensure_ascii=False).encode()).hexdigest()
