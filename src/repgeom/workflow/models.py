"""Where each configured model comes from, and its depth and width, read from the model itself where it exists."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from repgeom.errors import InputError
from repgeom.models.gguf import gguf_shape, resolve_gguf

# `build` (trained by the workflow) and `gguf` (dequantised by it) end up in the run's own models folder.
MADE_BY_WORKFLOW = ("build", "gguf")
SOURCES = (*MADE_BY_WORKFLOW, "path", "hub")

# config.json keys for the number of blocks and the width, across the architectures transformers writes.
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")


class ModelConfigError(InputError):
    """A model folder's config.json is missing or lacks the depth or width; the message names the file."""


def model_source(entry: Mapping) -> str:
    return next(source for source in SOURCES if source in entry)


def made_by_workflow(entry: Mapping) -> bool:
    return model_source(entry) in MADE_BY_WORKFLOW


def model_spec(entry: Mapping, folder: str) -> str:
    """What `from_pretrained` gets: `folder` (the run's own copy) for a model the workflow makes, else the local path
    or the hub id."""
    return folder if made_by_workflow(entry) else entry.get("path") or entry["hub"]


def models_pattern(config: Mapping, source: str | None = None) -> str:
    """A wildcard pattern matching the configured models (of one source: `build`, `gguf`), so that one rule makes
    each; a pattern matching nothing when there is none."""
    names = [re.escape(name) for name, entry in config["models"].items()
             if source is None or model_source(entry) == source]
    return "|".join(names) or "(?!)"


def gguf_source(entry: Mapping) -> dict:
    """A GGUF model's source as the import job takes it, with the installed version of the package shipping it
    (a package that is not installed is an error giving the pip command that installs it)."""
    source = dict(entry["gguf"])
    if "package" in source:
        source["version"] = resolve_gguf(source).version
    return source


def _first(config: dict, keys: tuple[str, ...], path: Path, what: str) -> int:
    for section in (config, config.get("text_config") or {}):
        for key in keys:
            if isinstance(section.get(key), int):
                return section[key]
    raise ModelConfigError(f"{path}: no {what} ({' / '.join(keys)}) in the model's config")


def folder_shape(folder: str | Path) -> tuple[int, int]:
    """(decoder blocks, hidden size) from a save_pretrained folder's config.json."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelConfigError(f"{path} does not exist: the model folder {str(folder)!r} holds no model "
                               "(give a save_pretrained folder)") from None
    except (OSError, ValueError) as err:
        raise ModelConfigError(f"{path}: not a readable JSON model config ({err})") from None
    return _first(config, LAYER_KEYS, path, "number of layers"), _first(config, WIDTH_KEYS, path, "hidden size")


def model_shape(entry: Mapping) -> tuple[int, int | None]:
    """(decoder blocks, hidden size), read from the model: the build settings, the GGUF file's header, a local
    folder's config.json, or the config for a hub id (a dry run stays offline; the width may be unknown: None)."""
    source = model_source(entry)
    if source == "build":
        return entry["build"]["architecture"]["num_layers"], entry["build"]["architecture"]["hidden_size"]
    if source == "gguf":
        return gguf_shape(entry["gguf"])
    if source == "path":
        return folder_shape(entry["path"])
    return entry["num_layers"], entry.get("hidden_size")


def model_shapes(config: Mapping) -> tuple[dict[str, tuple[int, int | None]], list[str]]:
    """Each model's shape (`model_shape`), read once when the workflow starts, and one line per model whose source
    cannot be read (`models.NAME.SOURCE: why`), for the config check."""
    shapes, problems = {}, []
    for name, entry in config["models"].items():
        try:
            shapes[name] = model_shape(entry)
        except InputError as err:
            problems.append(f"models.{name}.{model_source(entry)}: {err}")
    return shapes, problems


def stored_layers(shape: tuple[int, int | None]) -> int:
    """Layers in the store: the input of every decoder block plus the final norm."""
    return shape[0] + 1
