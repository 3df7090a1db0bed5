"""A small synthetic activation group written through the real store writer (imported by conftest and by scripts
that the tests run in subprocesses)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from repgeom.store.writing import GroupSpec, TokenSampleLayout, open_group_for_writing

N_ROWS, CHUNK_ROWS, N_LAYERS, HIDDEN = 10, 4, 3, 8  # three row chunks, the last one short


def group_spec(token_sample: bool = False) -> GroupSpec:
    prompts = pd.DataFrame({"question_id": [f"q{i}" for i in range(N_ROWS)], "subject": ["s"] * N_ROWS,
                            "gold": list("ABCDABCDAB")})
    n_chunks = -(-N_ROWS // CHUNK_ROWS)
    sample = None
    if token_sample:
        rows = np.array([[0, 1], [4, -1], [8, 9]])
        sample = TokenSampleLayout([0, 2], rows, np.where(rows >= 0, 1, -1))
        assert rows.shape[0] == n_chunks
    identity = {"store_dtype": "float32", "prompt_set_hash": "synthetic",
                "token_sample": {"layers": [0, 2], "size": 5, "seed": 0} if token_sample else None}
    return GroupSpec(identity=identity,
                     layer_names=[f"layer{i}" for i in range(N_LAYERS)], hidden_size=HIDDEN, chunk_rows=CHUNK_ROWS,
                     prompts=prompts, token_sample=sample)


def chunk_data(writer, chunk: int, seed: int = 0):
    """Random (never all-fill) values for one row chunk, as GroupWriter.write_chunk takes them."""
    start, stop = writer.chunk_bounds(chunk)
    rng = np.random.default_rng(seed * 100 + chunk)
    rows = stop - start
    sample = None
    if writer.sample_reps is not None:
        sample = rng.normal(size=writer.sample_reps.shape[:1] + writer.sample_reps.shape[2:]).astype(np.float32)
    return (rng.normal(size=(N_LAYERS, rows, HIDDEN)).astype(np.float32),
            rng.normal(size=(rows, 4)).astype(np.float32), rng.integers(0, 50, size=rows), sample)


def write_group(store, group: str, chunks=None, token_sample=False, complete=True, seed=0):
    writer = open_group_for_writing(store, group, group_spec(token_sample))
    for chunk in range(writer.n_chunks) if chunks is None else chunks:
        writer.write_chunk(chunk, *chunk_data(writer, chunk, seed))
    if complete:
        writer.mark_complete({"accuracy": {"micro": 0.5}})
    return writer
