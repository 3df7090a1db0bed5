"""A damaged row chunk of a finished (or resumed) group is found and computed again: each run on an existing group
re-hashes the chunk files of the row chunks marked done against the digests kept when they were written."""
import os
import re
import shutil

import pytest
import zarr
from helpers import TWO_RANKS

from repgeom.extract.job import ExtractionJob, ExtractionSettings
from repgeom.provenance import zarr_group_hash
from repgeom.store import group_attrs

SETTINGS = dict(chunk_rows=5, max_batch_tokens=200, token_sample_layers=[1], token_sample_size=40, seed=2)
OLD = 10**18  # nanoseconds: a file time no write in this test can produce
# Row chunk of a chunk file of the group, by array: reps/c/{layer}/{row chunk}/0, letter_logprob/c/{row chunk}/0, ...
ROW_CHUNK = re.compile(r"^(?:reps/c/\d+/(\d+)/0|letter_logprob/c/(\d+)/0|argmax_token/c/(\d+)|chunk_done/c/(\d+)"
                       r"|letter_logprob_layers/c/(\d+)/0/0|chunk_sha256/c/(\d+)/0/0"
                       r"|token_sample/reps/c/\d+/(\d+)/0/0)$")


def run(model, prompts, store):
    ExtractionJob(str(model), prompts, store, "m/c", store.parent / "acc.parquet", ExtractionSettings(**SETTINGS)).run()


def group_files(store):
    group = store / "m/c"
    return {p.relative_to(group).as_posix(): p for p in sorted(group.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama_dir, make_prompts):
    """One uninterrupted extraction: 24 prompts in 5 row chunks (the last of 4 rows), with a token sample."""
    out = tmp_path_factory.mktemp("reference")
    prompts = out / "prompts.parquet"
    make_prompts(24).to_parquet(prompts)
    run(tiny_llama_dir, prompts, out / "store.zarr")
    return prompts, out / "store.zarr"


@pytest.fixture
def copy(reference, tmp_path):
    """A private copy of the reference store, every file dated long ago, so that any rewrite shows in its mtime."""
    store = shutil.copytree(reference[1], tmp_path / "store.zarr")
    for path in store.rglob("*"):
        os.utime(path, ns=(OLD, OLD))
    return store


def rewritten(store):
    return {rel for rel, path in group_files(store).items() if path.stat().st_mtime_ns != OLD}


def row_chunks_of(files):
    chunks = set()
    for rel in files:
        match = ROW_CHUNK.match(rel)
        if match:
            chunks.add(int(next(g for g in match.groups() if g is not None)))
    return chunks


def damage(store):
    """Truncate layer 1's reps of row chunk 1; flip one byte of the (partial) last row chunk's letter log-probs."""
    reps = store / "m/c/reps/c/1/1/0"
    reps.write_bytes(reps.read_bytes()[:100])
    logprob = store / "m/c/letter_logprob/c/4/0"
    data = bytearray(logprob.read_bytes())
    data[7] ^= 0x01
    logprob.write_bytes(bytes(data))
    for path in (reps, logprob):
        os.utime(path, ns=(OLD, OLD))


def check_repaired(store, reference_store):
    assert {rel: p.read_bytes() for rel, p in group_files(store).items()} == {
        rel: p.read_bytes() for rel, p in group_files(reference_store).items()}  # byte-identical, zarr.json included
    attrs = group_attrs(store, "m/c")
    assert attrs["complete"] and attrs["content_sha256"] == zarr_group_hash(store, "m/c")


def test_damaged_chunks_of_a_complete_group_are_recomputed(reference, copy, tiny_llama_dir, caplog):
    prompts, reference_store = reference
    damage(copy)
    with caplog.at_level("INFO", logger="repgeom.extract"):
        run(tiny_llama_dir, prompts, copy)
    assert "m/c: row chunk 1 is damaged: file reps/c/1/1/0 changed (100 bytes" in caplog.text
    assert "m/c: row chunk 4 is damaged: file letter_logprob/c/4/0 changed" in caplog.text
    assert "recomputing damaged row chunk(s) [1, 4] of 5" in caplog.text
    assert "2 of 5 row chunks to compute (3 done before)" in caplog.text
    changed = rewritten(copy)
    assert row_chunks_of(changed) == {1, 4}  # only those row chunks were written again
    assert changed - {rel for rel in changed if ROW_CHUNK.match(rel)} == {"zarr.json"}  # and the group's attributes
    check_repaired(copy, reference_store)

    # Intact now: a run verifies and leaves every file alone.
    for path in copy.rglob("*"):
        os.utime(path, ns=(OLD, OLD))
    caplog.clear()
    with caplog.at_level("INFO", logger="repgeom.extract"):
        run(tiny_llama_dir, prompts, copy)
    assert "5 row chunks marked done verified against their digests" in caplog.text and "intact" in caplog.text
    assert "row chunks to compute" not in caplog.text
    assert rewritten(copy) == set()


def test_a_missing_chunk_file_of_a_resumed_group_is_recomputed(reference, copy, tiny_llama_dir, caplog):
    """A killed run's group (row chunk 3 not done) whose done row chunk 0 lost a file of its token sample."""
    prompts, reference_store = reference
    node = zarr.open_group(str(copy), mode="r+")["m/c"]
    node.attrs["complete"] = False
    node["chunk_done"][3] = 0
    (copy / "m/c/token_sample/reps/c/0/0/0/0").unlink()
    with caplog.at_level("INFO", logger="repgeom.extract"):
        run(tiny_llama_dir, prompts, copy)
    assert "m/c: row chunk 0 is damaged: file token_sample/reps/c/0/0/0/0 missing" in caplog.text
    assert "2 of 5 row chunks to compute (3 done before)" in caplog.text
    assert row_chunks_of(rewritten(copy)) == {0, 3}
    check_repaired(copy, reference_store)


@pytest.mark.slow
def test_two_ranks_share_the_verification_and_the_repair(reference, copy, tiny_llama_dir, cli):
    prompts, reference_store = reference
    damage(copy)
    result = cli("--model", tiny_llama_dir, "--prompts", prompts, "--store", copy, "--group", "m/c", "--accuracy-out",
                 copy.parent / "acc.parquet", "--chunk-rows", "5", "--max-batch-tokens", "200",
                 "--token-sample-layers", "1", "--token-sample-size", "40", "--seed", "2", launcher=TWO_RANKS)
    assert result.returncode == 0, result.stderr
    # Rank 0 hashes row chunks 0, 2, 4 and rank 1 chunks 1, 3; each finds its own, both recompute.
    assert "m/c: row chunk 1 is damaged: file reps/c/1/1/0" in result.stderr
    assert "m/c: row chunk 4 is damaged: file letter_logprob/c/4/0" in result.stderr
    assert "recomputing damaged row chunk(s) [1, 4] of 5" in result.stderr
    assert "rank 0/2: 1 of 5 row chunks" in result.stderr and "rank 1/2: 1 of 5 row chunks" in result.stderr
    assert row_chunks_of(rewritten(copy)) == {1, 4}
    check_repaired(copy, reference_store)
