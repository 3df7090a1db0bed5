"""Content hashes of artifacts: a file, a folder, a zarr group. Only the standard library, so the job wrapper and the
store writer import it cheaply.

- file: sha256 of its bytes, read in 1 MiB blocks.
- folder: sha256 over the lines `relpath\\0sha256(file)\\n` in sorted relpath order (POSIX separators).
- zarr group (any folder holding a `zarr.json`): sha256 over a tag, the canonical JSON of every `zarr.json` under it
  (keyed by relpath, with the mutable attributes `provenance` and `content_sha256` removed), then the lines
  `relpath\\0sha256(file)\\n` of every other file (the chunk files, as stored on disk: encoded bytes with checksum).

All three skip records (`*.prov.json`), temporaries (`*.partial` from zarr, `.NAME.*.tmp` from
`repgeom.io.atomic_path`) and `.snakemake_timestamp` (which Snakemake adds to a `directory()` output after the job),
which come and go without changing the content.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

BLOCK = 1 << 20
RECORD_SUFFIX = ".prov.json"
ZARR_META = "zarr.json"
# Attributes that describe the group rather than belong to it: excluded, so writing them never changes the hash.
MUTABLE_ATTRS = ("provenance", "content_sha256")
ZARR_TAG = b"repgeom-zarr-group-sha256/1\n"
SNAKEMAKE_TIMESTAMP = ".snakemake_timestamp"


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def is_skipped(name: str) -> bool:
    """A record or a temporary file: not part of any artifact's content."""
    return (name == SNAKEMAKE_TIMESTAMP or name.endswith(RECORD_SUFFIX) or name.endswith(".partial")
            or (name.startswith(".") and name.endswith(".tmp")))


def stream_sha256(f) -> bytes:
    """sha256 of what remains of the open binary file `f`, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    while n := f.readinto(buffer):
        digest.update(view[:n])
    return digest.digest()


def file_sha256(path: str | Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return stream_sha256(f).hex()


def walk_files(root: str | Path) -> list[tuple[str, Path]]:
    """(relpath, path) of every content file under `root`, sorted by relpath."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            if not is_skipped(name):
                path = Path(folder) / name
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _lines_sha256(entries) -> hashlib._Hash:
    digest = hashlib.sha256()
    for rel, sha in entries:
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest


def dir_sha256(path: str | Path) -> str:
    return _lines_sha256((rel, file_sha256(p)) for rel, p in walk_files(path)).hexdigest()


def is_zarr(path: str | Path) -> bool:
    return (Path(path) / ZARR_META).is_file()


def kind_of(path: str | Path) -> str | None:
    """'file', 'dir', 'zarr' (a folder with a zarr.json), or None if nothing is there."""
    path = Path(path)
    if path.is_file():
        return "file"
    if path.is_dir():
        return "zarr" if is_zarr(path) else "dir"
    return None


def zarr_metadata(path: str | Path) -> dict:
    """A zarr.json without its mutable attributes; an unparseable one stands in as the hash of its bytes."""
    raw = Path(path).read_bytes()
    try:
        meta = json.loads(raw)
    except ValueError:
        return {"unparseable_sha256": hashlib.sha256(raw).hexdigest()}
    if isinstance(meta, dict) and isinstance(meta.get("attributes"), dict):
        meta["attributes"] = {k: v for k, v in meta["attributes"].items() if k not in MUTABLE_ATTRS}
    return meta


def zarr_group_hash(store: str | Path, group: str | None = None, known: dict[str, str] | None = None) -> str:
    """The content hash of group `group` of `store` (or of the zarr folder `store` itself), from disk.

    `known` maps a chunk file's relpath (within the group) to its sha256 as computed when it was written; those files
    are not read again. The store writer passes the digests it kept; the audit passes none."""
    root = Path(store) / group if group else Path(store)
    known = known or {}
    meta, data = {}, []
    for rel, path in walk_files(root):
        if path.name == ZARR_META:
            meta[rel] = zarr_metadata(path)
        else:
            data.append((rel, known.get(rel) or file_sha256(path)))
    digest = _lines_sha256(data)
    combined = hashlib.sha256(ZARR_TAG)
    combined.update(canonical_json(meta).encode())
    combined.update(b"\n")
    combined.update(digest.digest())
    return combined.hexdigest()


def hash_path(path: str | Path) -> tuple[str, str]:
    """(kind, sha256) of a file, folder or zarr group; FileNotFoundError if nothing is there."""
    kind = kind_of(path)
    if kind is None:
        raise FileNotFoundError(f"{path} does not exist")
    if kind == "file":
        return kind, file_sha256(path)
    if kind == "zarr":
        return kind, zarr_group_hash(path)
    return kind, dir_sha256(path)


def stat_signature(path: str | Path, kind: str | None = None) -> dict:
    """Cheap evidence that an artifact is unchanged since it was hashed: sizes and mtimes, no content read.

    A folder's is its files' count, total size and newest mtime. A zarr group's leaves out its own zarr.json (where
    its record is written after the signature is taken) and has the hash of that file's other content instead."""
    path = Path(path)
    kind = kind or kind_of(path)
    if kind == "file":
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    files = walk_files(path)
    if kind == "zarr":
        files = [(rel, p) for rel, p in files if rel != ZARR_META]
    stats = [p.stat() for _, p in files]
    signature = {"size": sum(s.st_size for s in stats), "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
                 "files": len(stats)}
    if kind == "zarr":
        signature["meta_sha256"] = hashlib.sha256(
            canonical_json(zarr_metadata(path / ZARR_META)).encode()).hexdigest()
    return signature
