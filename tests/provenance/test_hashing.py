"""Content hashes: folders, and the zarr group hash the store writer keeps as it writes (equal to the hash from disk,
also with two ranks, after a SIGKILL and resume, and for a group made before the digests were kept)."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from repgeom.provenance import hash_path, write_record, zarr_group_hash
from repgeom.provenance.hashing import dir_sha256, stat_signature
from repgeom.store.writing import CHUNK_SHA256, open_group_for_writing

HERE = Path(__file__).parent


def make_tree(root: Path, order):
    files = {"a.txt": b"alpha", "sub/b.bin": bytes(range(256)) * 5000, "sub/deeper/c": b""}
    for name in order:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(files[name])
    return root


def test_folder_hash_ignores_order_records_and_temporaries(tmp_path):
    one = make_tree(tmp_path / "one", ["a.txt", "sub/b.bin", "sub/deeper/c"])
    two = make_tree(tmp_path / "two", ["sub/deeper/c", "sub/b.bin", "a.txt"])
    assert hash_path(one) == hash_path(two) == ("dir", dir_sha256(one))
    (two / "a.txt.prov.json").write_text("{}")
    (two / ".a.txt.x1y2.tmp").write_text("half")
    (two / "sub" / "b.bin.3f2a.partial").write_text("half")
    (two / ".snakemake_timestamp").write_text("")
    assert hash_path(two) == hash_path(one)


@pytest.mark.parametrize("change", ["byte", "rename", "new_empty_file", "delete"])
def test_folder_hash_sees_changes(tmp_path, change):
    root = make_tree(tmp_path / "t", ["a.txt", "sub/b.bin", "sub/deeper/c"])
    before = hash_path(root)
    if change == "byte":
        data = bytearray((root / "sub/b.bin").read_bytes())
        data[1_000_000] ^= 1
        (root / "sub/b.bin").write_bytes(bytes(data))
    elif change == "rename":
        (root / "a.txt").rename(root / "A.txt")
    elif change == "new_empty_file":
        (root / "sub/e").write_bytes(b"")
    else:
        (root / "sub/deeper/c").unlink()
    assert hash_path(root) != before


def group_hash_attr(store, group):
    return json.loads((Path(store) / group / "zarr.json").read_text())["attributes"]["content_sha256"]


@pytest.mark.parametrize("token_sample", [False, True])
def test_incremental_group_hash_equals_hash_from_disk(tmp_path, synthetic_group, token_sample):
    store = tmp_path / "s.zarr"
    synthetic_group(store, "m/c", token_sample=token_sample)
    assert group_hash_attr(store, "m/c") == zarr_group_hash(store, "m/c") == hash_path(store / "m/c")[1]
    assert hash_path(store / "m/c")[0] == "zarr"
    digests = zarr.open_group(str(store), mode="r")[f"m/c/{CHUNK_SHA256}"][:]
    assert digests.shape == (3, 3 + 2 + 2 * token_sample, 32) and digests.any(axis=2).all()


def test_completion_uses_the_digests_kept_at_write_time(tmp_path, synthetic_group):
    """A chunk file changed after it was written is not re-read at completion: the kept digest stands."""
    store = tmp_path / "s.zarr"
    writer = synthetic_group(store, "m/c", complete=False)
    chunk = store / "m/c/reps/c/1/2/0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    writer.mark_complete({})
    assert group_hash_attr(store, "m/c") != zarr_group_hash(store, "m/c")


def test_group_hash_sees_data_and_metadata_but_not_its_record(tmp_path, synthetic_group):
    store = tmp_path / "s.zarr"
    synthetic_group(store, "m/c")
    clean = zarr_group_hash(store, "m/c")
    write_record(store / "m/c", {"schema_version": 1, "anything": True})
    assert zarr_group_hash(store, "m/c") == clean
    node = zarr.open_group(str(store), mode="r+")["m/c"]
    node.attrs["note"] = "edited"
    assert zarr_group_hash(store, "m/c") != clean
    del node.attrs["note"]
    assert zarr_group_hash(store, "m/c") == clean
    chunk = store / "m/c/argmax_token/c/0"
    data = bytearray(chunk.read_bytes())
    data[0] ^= 1
    chunk.write_bytes(bytes(data))
    assert zarr_group_hash(store, "m/c") != clean


def test_two_ranks_give_the_hash_of_one(tmp_path, synthetic_group, groups):
    chunk_data, group_spec = groups.chunk_data, groups.group_spec
    single = tmp_path / "one.zarr"
    synthetic_group(single, "m/c")
    store = tmp_path / "two.zarr"
    rank0 = open_group_for_writing(store, "m/c", group_spec())
    rank1 = open_group_for_writing(store, "m/c", group_spec())
    for writer, chunk in [(rank1, 1), (rank0, 0), (rank0, 2)]:
        writer.write_chunk(chunk, *chunk_data(writer, chunk))
    rank0.mark_complete({"accuracy": {"micro": 0.5}})
    assert group_hash_attr(store, "m/c") == zarr_group_hash(store, "m/c") == zarr_group_hash(single, "m/c")


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {here!r})
from synthetic import chunk_data, group_spec
from repgeom.store.writing import open_group_for_writing

writer = open_group_for_writing({store!r}, "m/c", group_spec())
writer.write_chunk(0, *chunk_data(writer, 0))
class KillOnSet:  # dies after chunk 1's data and digests are on disk, before it is marked done
    def __setitem__(self, key, value):
        os.kill(os.getpid(), signal.SIGKILL)
writer.done = KillOnSet()
writer.write_chunk(1, *chunk_data(writer, 1, seed=7))
"""


def test_resume_after_sigkill_gives_the_hash_from_disk(tmp_path, synthetic_group, groups):
    chunk_data, group_spec = groups.chunk_data, groups.group_spec
    store = tmp_path / "s.zarr"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER.format(here=str(HERE), store=str(store))],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    kept = zarr.open_group(str(store), mode="r")[f"m/c/{CHUNK_SHA256}"][:]
    assert kept[1].any() and not kept[2].any()  # chunk 1's digests were on disk, not its done mark
    (store / "m/c/reps/c/2/1/0.1234.partial").write_bytes(b"left by a kill")
    writer = open_group_for_writing(store, "m/c", group_spec())
    assert writer.done_chunks().tolist() == [True, False, False]
    assert not list(store.rglob("*.partial"))
    for chunk in (1, 2):  # chunk 1 again, with other values than the killed attempt wrote
        writer.write_chunk(chunk, *chunk_data(writer, chunk))
    writer.mark_complete({"accuracy": {"micro": 0.5}})
    reference = tmp_path / "ref.zarr"
    synthetic_group(reference, "m/c")
    assert group_hash_attr(store, "m/c") == zarr_group_hash(store, "m/c") == zarr_group_hash(reference, "m/c")


def test_group_without_digests_is_hashed_from_disk(tmp_path, groups):
    chunk_data, group_spec = groups.chunk_data, groups.group_spec
    store = tmp_path / "s.zarr"
    open_group_for_writing(store, "m/c", group_spec())
    shutil.rmtree(store / "m/c" / CHUNK_SHA256)  # as made before digests were kept
    writer = open_group_for_writing(store, "m/c", group_spec())
    assert writer.digests is None
    for chunk in range(writer.n_chunks):
        writer.write_chunk(chunk, *chunk_data(writer, chunk))
    writer.mark_complete({})
    assert group_hash_attr(store, "m/c") == zarr_group_hash(store, "m/c")


def test_stat_signature_of_a_group_ignores_its_record(tmp_path, synthetic_group):
    store = tmp_path / "s.zarr"
    synthetic_group(store, "m/c")
    before = stat_signature(store / "m/c")
    write_record(store / "m/c", {"schema_version": 1})
    assert stat_signature(store / "m/c") == before
    chunk = store / "m/c/reps/c/0/0/0"
    os.utime(chunk, ns=(chunk.stat().st_atime_ns, chunk.stat().st_mtime_ns + 10**9))
    assert stat_signature(store / "m/c") != before
    assert np.isscalar(before["size"])
