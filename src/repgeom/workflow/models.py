"""Where each configured model comes from, and its depth and width, read from the model itself where it exists."""
from __future__ import annotations

import json
from pathlib import Path

from repgeom.errors import InputError

# `build` (trained by the workflow) and `gguf` (dequantised by it) end up in the run's own models folder.
MADE_BY_WORKFLOW = ("build", "gguf")
SOURCES = (*MADE_BY_WORKFLOW, "path", "hub")

# config.json keys for the number of blocks and the width, across the architectures transformers writes.
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")


class ModelConfigError(InputError):
    """A model folder's config.json is missing or lacks the depth or width; the message names the file."""


def model_source(entry: dict) -> str:
    return next(source for source in SOURCES if source in entry)


def made_by_workflow(entry: dict) -> bool:
    return model_source(entry) in MADE_BY_WORKFLOW


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
