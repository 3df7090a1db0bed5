"""Provenance records: where they live, how they are read and written, and the environment facts they carry.

A file or folder artifact `X` has the sidecar `X.prov.json`; a zarr group keeps its record in its own attributes
under `provenance` (the group's hash leaves that attribute out).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from repgeom.provenance.hashing import RECORD_SUFFIX, ZARR_META, canonical_json, file_sha256, is_zarr
from repgeom.errors import InputError

SCHEMA_VERSION = 1
RECORD_ATTR = "provenance"
PACKAGES = ("torch", "transformers", "peft", "deepspeed", "zarr", "dadapy", "pandas", "numpy", "repgeom")
CODE_DIR_ENV = "REPGEOM_CODE_DIR"


class RecordError(InputError):
    """A record that cannot be read or lacks what a record must hold; the message names the file."""


def _plain(path: str | Path) -> Path:
    return Path(os.path.normpath(os.fspath(path)))


def record_path(artifact: str | Path) -> Path:
    """Where `artifact`'s record lives: the zarr group's own zarr.json, else the sidecar `ARTIFACT.prov.json`."""
    artifact = _plain(artifact)
    if is_zarr(artifact):
        return artifact / ZARR_META
    return artifact.with_name(artifact.name + RECORD_SUFFIX)


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RecordError(f"provenance record {path} is unreadable ({type(err).__name__}: {err})") from None


def validate_record(record, where) -> dict:
    if not isinstance(record, dict):
        raise RecordError(f"provenance record {where} is not a JSON object")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(f"provenance record {where} has schema_version {record.get('schema_version')!r}, "
                          f"not {SCHEMA_VERSION}")
    for key, kind in (("artifact", str), ("inputs", list), ("outputs", list)):
        if not isinstance(record.get(key), kind):
            raise RecordError(f"provenance record {where} lacks {key!r} (a {kind.__name__})")
    for entry in record["inputs"] + record["outputs"]:
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("path", "sha256"))):
            raise RecordError(f"provenance record {where} has an input or output without path and sha256: {entry!r}")
    own_output(record, where)
    return record


def own_output(record: dict, where="record") -> dict:
    """The record's entry for its own artifact among the outputs of the job that made it."""
    for entry in record["outputs"]:
        if entry["path"] == record["artifact"]:
            return entry
    raise RecordError(f"provenance record {where} lists no output entry for its artifact {record['artifact']!r}")


def read_record(artifact: str | Path) -> dict | None:
    """The artifact's record; None if it has none; RecordError if it is unreadable or malformed."""
    path = record_path(artifact)
    if not path.is_file():
        return None
    if path.name == ZARR_META:
        meta = _load_json(path)
        record = (meta.get("attributes") or {}).get(RECORD_ATTR) if isinstance(meta, dict) else None
        if record is None:
            return None
        return validate_record(record, f"{path} (attribute {RECORD_ATTR!r})")
    return validate_record(_load_json(path), path)


def _rewrite_zarr_attrs(meta_path: Path, change) -> bool:
    from repgeom.io import write_json

    meta = json.loads(meta_path.read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} is not a zarr metadata object")
    attrs = meta.get("attributes") or {}
    meta["attributes"] = attrs
    if not change(attrs):
        return False
    write_json(meta, meta_path)
    return True


def write_record(artifact: str | Path, record: dict) -> Path:
    """Write `record` atomically to `artifact`'s record location; returns that location."""
    from repgeom.io import write_json

    path = record_path(artifact)
    if path.name == ZARR_META:
        def put(attrs):
            attrs[RECORD_ATTR] = record
            return True
        _rewrite_zarr_attrs(path, put)
    else:
        write_json(record, path)
    return path


def remove_record(artifact: str | Path) -> bool:
    """Delete `artifact`'s record if it has one (before the job that remakes it runs)."""
    artifact = _plain(artifact)
    sidecar = artifact.with_name(artifact.name + RECORD_SUFFIX)
    removed = False
    if sidecar.is_file():
        sidecar.unlink()
        removed = True
    if is_zarr(artifact):
        def drop(attrs):
            return attrs.pop(RECORD_ATTR, None) is not None
        try:
            removed = _rewrite_zarr_attrs(artifact / ZARR_META, drop) or removed
        except ValueError:
            pass  # unparseable metadata holds no record to remove; the job will rewrite or reject the group
    return removed


# ---- configuration -------------------------------------------------------------------------------------------------

ABSENT = object()  # what `lookup` returns for a key the config lacks


def lookup(config, key: str):
    """The value at dotted path `key`; a key that itself holds dots (a model name) is matched whole first."""
    if key in (config if isinstance(config, dict) else {}):
        return config[key]
    if not isinstance(config, dict):
        return ABSENT
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in config:
            found = lookup(config[head], ".".join(parts[cut:]))
            if found is not ABSENT:
                return found
    return ABSENT


def json_value(value):
    """As it reads back from JSON: tuples become lists, dates strings."""
    return json.loads(json.dumps(value, default=str))


def config_subset(config: dict, keys: list[str]) -> dict:
    """{dotted key: value} for the config keys a rule depends on; a key the config lacks maps to None."""
    subset = {}
    for key in keys:
        value = lookup(config, key)
        subset[key] = None if value is ABSENT else json_value(value)
    return subset


def config_sha256(subset: dict) -> str:
    return hashlib.sha256(canonical_json(subset).encode()).hexdigest()


# ---- environment ---------------------------------------------------------------------------------------------------

def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(code_dir: Path, *args: str, text: bool = True):
    return subprocess.run(["git", "-C", str(code_dir), *args], capture_output=True, text=text, timeout=60, check=True)


def code_dir() -> Path:
    if os.environ.get(CODE_DIR_ENV):
        return Path(os.environ[CODE_DIR_ENV])
    import repgeom

    return Path(repgeom.__file__).resolve().parent


def code_version() -> dict:
    """git commit, whether the tree is dirty and a hash of the diff (tracked changes plus untracked files)."""
    where = code_dir()
    if shutil.which("git") is None:
        return {"git_commit": None, "dirty": None, "diff_sha256": None, "note": "git is not installed"}
    try:
        top = Path(_git(where, "rev-parse", "--show-toplevel").stdout.strip())
        if not os.environ.get(CODE_DIR_ENV):
            # A package installed into a venv that sits inside some checkout is not that checkout's code.
            _git(where, "ls-files", "--error-unmatch", "__init__.py")
        commit = _git(top, "rev-parse", "HEAD").stdout.strip()
        status = _git(top, "status", "--porcelain", "--untracked-files=all").stdout
    except (subprocess.SubprocessError, OSError):
        return {"git_commit": None, "dirty": None, "diff_sha256": None, "note": f"{where} is not a git checkout"}
    if not status.strip():
        return {"git_commit": commit, "dirty": False, "diff_sha256": None}
    digest = hashlib.sha256(_git(top, "diff", "HEAD", "--binary", text=False).stdout)
    untracked = _git(top, "ls-files", "--others", "--exclude-standard", "-z", text=False).stdout
    for name in sorted(n for n in untracked.decode().split("\0") if n):
        path = top / name
        digest.update(f"\0untracked {name}\0{file_sha256(path) if path.is_file() else 'not a file'}\n".encode())
    return {"git_commit": commit, "dirty": True, "diff_sha256": digest.hexdigest()}


def short_commit() -> str | None:
    """The code as a measurement names it: the commit's short hash, `-dirty` when the tree has changes; None
    outside a git checkout."""
    version = code_version()
    if version["git_commit"] is None:
        return None
    return version["git_commit"][:7] + ("-dirty" if version["dirty"] else "")


def _gpus() -> tuple[str | None, int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    wanted = None if visible is None else [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    names = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        except (subprocess.SubprocessError, OSError):
            out = ""
        for line in out.splitlines():  # "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-…)"
            head, _, rest = line.partition(": ")
            if not head.startswith("GPU "):
                continue
            index, name = head[4:], rest.rsplit(" (UUID: ", 1)[0]
            uuid = rest.rsplit("(UUID: ", 1)[-1].rstrip(")")
            if wanted is None or index in wanted or uuid in wanted:
                names.append(name)
    if names:
        distinct = sorted(set(names))
        return ", ".join(distinct), len(names)
    return None, len(wanted) if wanted is not None else 0


def host_info() -> dict:
    gpu_model, gpu_count = _gpus()
    return {"hostname": socket.gethostname(), "gpu_model": gpu_model, "gpu_count": gpu_count,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def relative(path: str | Path, base: str | Path | None = None) -> str:
    """`path` relative to `base` (default: the working directory) when inside it, else absolute."""
    base = os.path.abspath(base or os.getcwd())
    full = os.path.abspath(os.fspath(path))
    rel = os.path.relpath(full, base)
    return full if rel == ".." or rel.startswith(".." + os.sep) else Path(rel).as_posix()
