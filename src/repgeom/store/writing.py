"""Create, validate and fill one extraction group; safe against concurrent jobs, other ranks and kills.

Completion protocol: a row chunk's data (every layer, the predictions, the token sample) is written and
fsync'ed before its `chunk_done` entry is set; each entry is its own zarr chunk, so ranks that own different
row chunks never write the same file. The group's `complete` attribute is set once every row chunk is done.
Group attributes are written last at creation, so a group without them was never used and is recreated.

Content hash (for provenance): as each row chunk's files are fsync'ed, their on-disk bytes are hashed (read back from
the page cache they were just written to) and the digests stored in `chunk_sha256` [n_chunks, files, 32] before
`chunk_done` is set, each row chunk in its own zarr chunk like `chunk_done`. At completion they are combined with the
group's metadata and its small arrays (read then) into the attribute `content_sha256`, equal to
`repgeom.provenance.zarr_group_hash` computed from disk, without reading the activations again.

Repair: the same digests let a later run check the row chunks marked done (`GroupWriter.verify_chunks` re-hashes
their files); one whose file is missing or differs is un-marked (`unmark_chunks`, which first clears `complete`) and
computed again, after which `content_sha256` is recomputed at completion like any other.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec

from repgeom.provenance.hashing import file_sha256, stream_sha256, zarr_group_hash
from repgeom.store.layout import (ARGMAX_TOKEN, BF16_ENCODING, CHUNK_DONE, FORMAT_VERSION, LETTER_LOGPROB,
                                  LETTER_LOGPROB_LAYERS, META_COLUMNS, REPS, TOKEN_SAMPLE, StoreError, storage_dtype)
from repgeom.store.reading import letter_lens_array, open_store_group, read_array, require_array

# Uncompressed (activations barely compress) but checksummed, so a damaged chunk fails on read.
CODECS = {"serializer": BytesCodec(), "compressors": [Crc32cCodec()]}
CHUNK_SHA256 = "chunk_sha256"
CONTENT_SHA256 = "content_sha256"


@dataclass
class TokenSampleLayout:
    """Which tokens are sampled, grouped by row chunk: row/position [n_chunks, cap], -1 where a chunk has fewer."""
    layers: list[int]
    rows: np.ndarray
    positions: np.ndarray


@dataclass
class GroupSpec:
    """What a new group holds. `identity` must match exactly for a run to resume an existing group."""
    identity: dict
    layer_names: list[str]
    hidden_size: int
    chunk_rows: int
    prompts: pd.DataFrame
    attrs: dict = field(default_factory=dict)
    token_sample: TokenSampleLayout | None = None
    letter_lens: bool = False  # keep the logit lens on the answer letters (`letter_logprob_layers`)


@contextmanager
def store_lock(store_path: Path):
    """An exclusive lock on the store folder, held while groups are created or validated (several jobs share a store)."""
    if store_path.exists() and not store_path.is_dir():
        raise StoreError(f"activation store {str(store_path)!r} is a file, not a zarr store folder")
    store_path.mkdir(parents=True, exist_ok=True)
    fd = os.open(store_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check_identity(node: zarr.Group, identity: dict, store_path, group: str) -> None:
    """Raise if the existing group was extracted from other prompts, weights or settings."""
    for key, wanted in identity.items():
        stored = node.attrs.get(key)
        if stored != wanted:
            what = "prompt set" if key == "prompt_set_hash" else key
            raise StoreError(
                f"group {group!r} of store {str(store_path)!r} was extracted with a different {what} "
                f"(stored {stored!r}, this run {wanted!r}); delete that group (or use another --group) to start over")


def group_status(store_path: str | Path, group: str, identity: dict) -> str:
    """'absent', 'incomplete' or 'complete' for a group that matches `identity`; a StoreError otherwise."""
    store_path = Path(store_path)
    if not (store_path / group / "zarr.json").exists():
        return "absent"
    with store_lock(store_path):
        try:
            node = open_store_group(store_path, group)
        except StoreError:
            if _is_unfinished_creation(store_path, group):
                return "absent"
            raise
        check_identity(node, identity, store_path, group)
        return "complete" if node.attrs.get("complete") else "incomplete"


def _is_unfinished_creation(store_path: Path, group: str) -> bool:
    """A group node whose attributes were never written: a creation killed part-way, holding no results."""
    try:
        node = zarr.open_group(str(store_path), mode="r")[group]
    except Exception:
        return False
    return isinstance(node, zarr.Group) and "repgeom_format" not in node.attrs


def open_group_for_repair(store_path: str | Path, group: str, writable: bool = False) -> "GroupWriter":
    """An existing, finished-creation group, to verify its done row chunks (and, `writable`, un-mark damaged ones)."""
    store_path = Path(store_path)
    return GroupWriter(open_store_group(store_path, group, mode="r+" if writable else "r"), store_path)


def open_group_for_writing(store_path: str | Path, group: str, spec: GroupSpec) -> "GroupWriter":
    """Create the group, or reopen an existing one after checking it matches `spec`; race-safe across processes."""
    store_path = Path(store_path)
    with store_lock(store_path):
        try:
            root = zarr.open_group(str(store_path), mode="a")
        except Exception as err:
            raise StoreError(f"{str(store_path)!r} is not a readable zarr store: {type(err).__name__}: {err}") from err
        if (store_path / group / "zarr.json").exists() and not _is_unfinished_creation(store_path, group):
            node = open_store_group(store_path, group, mode="r+")
            check_identity(node, spec.identity, store_path, group)
            writer = GroupWriter(node, store_path)
            writer.check_shape(spec)
            writer.remove_stale_partial_files()
        else:
            writer = GroupWriter(_create_group(root, group, spec), store_path)
    return writer


def _create_group(root: zarr.Group, group: str, spec: GroupSpec) -> zarr.Group:
    n_rows, rows = len(spec.prompts), spec.chunk_rows
    n_chunks = -(-n_rows // rows)
    node = root.create_group(group, overwrite=True)
    store_dtype = spec.identity["store_dtype"]
    reps = node.create_array(REPS, shape=(len(spec.layer_names), n_rows, spec.hidden_size),
                             chunks=(1, rows, spec.hidden_size), dtype=storage_dtype(store_dtype), fill_value=0,
                             dimension_names=("layer", "prompt", "hidden"), **CODECS)
    encoding = {"encoding": BF16_ENCODING} if store_dtype == "bfloat16" else {}
    reps.attrs.update({"layer_names": spec.layer_names, **encoding})
    for name in META_COLUMNS:
        node.create_array(name, shape=(n_rows,), chunks=(rows,), dtype=str, compressors=CODECS["compressors"])[:] = (
            spec.prompts[name].astype(str).to_numpy())
    node.create_array(LETTER_LOGPROB, shape=(n_rows, 4), chunks=(rows, 4), dtype="float32", fill_value=np.nan, **CODECS)
    node.create_array(ARGMAX_TOKEN, shape=(n_rows,), chunks=(rows,), dtype="int64", fill_value=-1, **CODECS)
    n_layers = len(spec.layer_names)
    if spec.letter_lens:
        node.create_array(LETTER_LOGPROB_LAYERS, shape=(n_rows, n_layers, 4), chunks=(rows, n_layers, 4),
                          dtype="float32", fill_value=np.nan, dimension_names=("prompt", "layer", "letter"), **CODECS)
    node.create_array(CHUNK_DONE, shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0, **CODECS)
    sample = spec.token_sample
    # A row chunk's files (`GroupWriter.chunk_files`): reps per layer, the prediction arrays, the token sample per
    # sampled layer.
    n_files = n_layers + (3 if spec.letter_lens else 2) + (len(sample.layers) if sample is not None else 0)
    node.create_array(CHUNK_SHA256, shape=(n_chunks, n_files, 32), chunks=(1, n_files, 32), dtype="uint8",
                      fill_value=0, **CODECS)
    if sample is not None:
        cap = sample.rows.shape[1]
        node.create_array(f"{TOKEN_SAMPLE}/row", shape=sample.rows.shape, chunks=(1, cap), dtype="int64",
                          fill_value=-1, **CODECS)[:] = sample.rows
        node.create_array(f"{TOKEN_SAMPLE}/position", shape=sample.positions.shape, chunks=(1, cap), dtype="int64",
                          fill_value=-1, **CODECS)[:] = sample.positions
        sample_reps = node.create_array(
            f"{TOKEN_SAMPLE}/{REPS}", shape=(len(sample.layers), n_chunks, cap, spec.hidden_size),
            chunks=(1, 1, cap, spec.hidden_size), dtype=storage_dtype(store_dtype), fill_value=0,
            dimension_names=("sampled_layer", "row_chunk", "slot", "hidden"), **CODECS)
        sample_reps.attrs.update(encoding)
    # Written last: their presence marks a finished creation.
    node.attrs.update({**spec.identity, **spec.attrs, "layer_names": spec.layer_names, "hidden_size": spec.hidden_size,
                       "n_prompts": n_rows, "chunk_rows": rows, "complete": False, "repgeom_format": FORMAT_VERSION})
    return node


class GroupWriter:
    """Writes whole row chunks of one group and records their completion."""

    def __init__(self, node: zarr.Group, store_path: Path):
        self.node = node
        self.store_path = store_path
        self.reps = require_array(node, REPS)
        self.letter_logprob = require_array(node, LETTER_LOGPROB)
        self.argmax_token = require_array(node, ARGMAX_TOKEN)
        self.letter_lens = letter_lens_array(node)  # None: a group without (or from before) the lens
        self.done = require_array(node, CHUNK_DONE)
        self.sample_reps = require_array(node, f"{TOKEN_SAMPLE}/{REPS}") if node.attrs.get("token_sample") else None
        self.n_rows = self.reps.shape[1]
        self.chunk_rows = self.reps.chunks[1]
        self.n_chunks = self.done.shape[0]
        self.digests = self._digest_array()

    def _digest_array(self) -> zarr.Array | None:
        """The per-chunk digests; None for a group made before they were kept (hashed from disk at completion)."""
        try:
            digests = self.node[CHUNK_SHA256]
        except KeyError:
            return None
        if not isinstance(digests, zarr.Array) or digests.shape != (self.n_chunks, len(self.chunk_files(0)), 32):
            return None
        return digests

    def check_shape(self, spec: GroupSpec) -> None:
        expected = (len(spec.layer_names), len(spec.prompts), spec.hidden_size)
        if (self.reps.shape != expected or self.n_chunks != -(-self.n_rows // self.chunk_rows)
                or list(self.node.attrs.get("layer_names", [])) != spec.layer_names):
            raise StoreError(
                f"group {self.node.store_path} holds {self.reps.shape} [layers, prompts, hidden] with layers "
                f"{self.node.attrs.get('layer_names')}, but this model gives {expected} with {spec.layer_names}: "
                "the store is corrupt or from another model; delete the group and extract again")
        lens_expected = (len(spec.prompts), len(spec.layer_names), 4)
        if self.letter_lens is not None and self.letter_lens.shape != lens_expected:
            raise StoreError(
                f"group {self.node.store_path} holds a logit lens of {self.letter_lens.shape} [prompts, layers, "
                f"letters], not {lens_expected}: the store is corrupt; delete the group and extract again")

    def remove_stale_partial_files(self) -> None:
        """zarr writes a chunk to a `.partial` file and renames it; a kill can leave that temporary behind."""
        for path in (self.store_path / self.node.path).rglob("*.partial"):
            path.unlink(missing_ok=True)

    def token_sample_layout(self) -> TokenSampleLayout | None:
        """The sampled tokens as stored (chunked as this group is)."""
        sample = self.node.attrs.get("token_sample")
        if not sample:
            return None
        return TokenSampleLayout(list(sample["layers"]), read_array(require_array(self.node, f"{TOKEN_SAMPLE}/row")),
                                 read_array(require_array(self.node, f"{TOKEN_SAMPLE}/position")))

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        return chunk * self.chunk_rows, min(self.n_rows, (chunk + 1) * self.chunk_rows)

    def done_chunks(self) -> np.ndarray:
        return read_array(self.done).astype(bool)

    def write_chunk(self, chunk: int, reps: np.ndarray, letter_logprob: np.ndarray, argmax_token: np.ndarray,
                    sample: np.ndarray | None, letter_lens: np.ndarray | None = None) -> None:
        """Write row chunk `chunk` (reps [n_layers, rows, D] in the storage dtype), fsync it, then mark it done.
        `letter_lens` [rows, n_layers, 4], the logit lens, is stored where the group keeps one (`GroupSpec.letter_lens`;
        a group from before the lens was kept has none)."""
        if self.letter_lens is not None and letter_lens is None:
            raise ValueError(f"{self.node.store_path} keeps the logit lens: row chunk {chunk} needs its letter_lens")
        start, stop = self.chunk_bounds(chunk)
        self.reps[:, start:stop, :] = reps
        self.letter_logprob[start:stop] = letter_logprob
        self.argmax_token[start:stop] = argmax_token
        if self.letter_lens is not None:
            self.letter_lens[start:stop] = letter_lens
        if self.sample_reps is not None:
            self.sample_reps[:, chunk] = sample
        digests = [self._fsync(array, coords, digest=True) for array, coords in self.chunk_files(chunk)]
        if self.digests is not None:
            self.digests[chunk] = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)
            self._fsync(self.digests, (chunk, 0, 0))
        self.done[chunk] = 1
        self._fsync(self.done, (chunk,))

    def chunk_files(self, chunk: int) -> list[tuple[zarr.Array, tuple[int, ...]]]:
        """The zarr chunks that row chunk `chunk` writes, in the order of its `chunk_sha256` entries."""
        files = [(self.reps, (layer, chunk, 0)) for layer in range(self.reps.shape[0])]
        files += [(self.letter_logprob, (chunk, 0)), (self.argmax_token, (chunk,))]
        if self.letter_lens is not None:
            files.append((self.letter_lens, (chunk, 0, 0)))
        if self.sample_reps is not None:
            files += [(self.sample_reps, (layer, chunk, 0, 0)) for layer in range(self.sample_reps.shape[0])]
        return files

    def _chunk_path(self, array: zarr.Array, coords: tuple[int, ...]) -> Path:
        return self.store_path / array.path / array.metadata.encode_chunk_key(coords)

    def _fsync(self, array: zarr.Array, coords: tuple[int, ...], digest: bool = False) -> bytes | None:
        """fsync one chunk file; with `digest`, the sha256 of its bytes, read back while they are still cached."""
        with open(self._chunk_path(array, coords), "rb", buffering=0) as f:
            sha = stream_sha256(f) if digest else None
            os.fsync(f.fileno())
        return sha

    def verify_chunks(self, chunks) -> list[tuple[int, str, str]]:
        """(row chunk, file relpath within the group, what is wrong) for each file of the row chunks `chunks` marked
        done whose bytes on disk are missing or differ from the sha256 recorded when it was written. Reads those
        files (hashed as `write_chunk` hashes them); writes nothing. Chunks not done, and groups made before digests
        were kept (`has_digests` False), are not checked."""
        if self.digests is None:
            return []
        done, group_dir, problems = self.done_chunks(), self.store_path / self.node.path, []
        for chunk in chunks:
            if not done[chunk]:
                continue
            stored = np.asarray(self.digests[chunk])
            for (array, coords), digest in zip(self.chunk_files(chunk), stored):
                if not digest.any():  # no digest recorded for this file
                    continue
                path = self._chunk_path(array, coords)
                rel = path.relative_to(group_dir).as_posix()
                if not path.is_file():
                    problems.append((chunk, rel, "missing"))
                    continue
                sha = file_sha256(path)
                if sha != digest.tobytes().hex():
                    problems.append((chunk, rel, f"changed ({path.stat().st_size} bytes, sha256 {sha[:12]}..., "
                                                 f"written as {digest.tobytes().hex()[:12]}...)"))
        return problems

    @property
    def has_digests(self) -> bool:
        return self.digests is not None

    def unmark_chunks(self, chunks) -> None:
        """Row chunks to compute again: the group stops being complete first, then their `chunk_done` marks go. Not
        synced: an un-marking lost to a crash is found again by the next run's verification."""
        self.node.attrs.update({"complete": False})
        for chunk in chunks:
            self.done[int(chunk)] = 0  # the fill value: zarr deletes that mark's chunk file

    def mark_complete(self, attrs: dict) -> None:
        done = self.done_chunks()
        if not done.all():
            raise StoreError(f"cannot mark {self.node.store_path} complete: row chunks {np.flatnonzero(~done).tolist()} "
                             "are not written")
        self.node.attrs.update({**attrs, "complete": True})
        self.node.attrs.update({CONTENT_SHA256: self.content_sha256()})

    def content_sha256(self) -> str:
        """The group's content hash (`repgeom.provenance.zarr_group_hash`), from the digests kept per row chunk plus
        the files no row chunk writes (metadata and small arrays); fully from disk for a group without digests."""
        known = {}
        if self.digests is not None:
            stored = read_array(self.digests)
            group_dir = self.store_path / self.node.path
            for chunk in range(self.n_chunks):
                for (array, coords), digest in zip(self.chunk_files(chunk), stored[chunk]):
                    if digest.any():  # all zero: never written
                        rel = self._chunk_path(array, coords).relative_to(group_dir).as_posix()
                        known[rel] = digest.tobytes().hex()
        return zarr_group_hash(self.store_path, self.node.path, known=known)
