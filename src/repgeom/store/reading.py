"""Read an extracted group back: one layer at a time as a numpy array plus a frame of the prompts' labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from repgeom.letters import ANSWER_LETTERS
from repgeom.store.layout import (CHUNK_DONE, FORMAT_VERSION, LETTER_LOGPROB, LETTER_LOGPROB_LAYERS, META_COLUMNS, REPS,
                                  TOKEN_SAMPLE, StoreError, decode)

ZARR_JSON = "zarr.json"  # a zarr v3 node's metadata: the store root has one


def open_store_group(store_path: str | Path, group: str, mode: str = "r") -> zarr.Group:
    """The group `group` of the store, or a StoreError naming what is missing or unreadable."""
    if not Path(store_path).is_dir():
        kind = "is a file, not a folder" if Path(store_path).exists() else "does not exist"
        raise StoreError(f"activation store {str(store_path)!r} {kind}")
    if not (Path(store_path) / ZARR_JSON).is_file():
        raise StoreError(missing_root_message(store_path))
    try:
        root = zarr.open_group(str(store_path), mode=mode)
        node = root[group]
    except KeyError:
        raise StoreError(f"store {str(store_path)!r} has no group {group!r}; has extraction run for it?") from None
    except Exception as err:  # zarr raises assorted errors on a damaged zarr.json
        raise StoreError(f"store {str(store_path)!r}, group {group!r} is unreadable (corrupt metadata?): "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(node, zarr.Group) or node.attrs.get("repgeom_format") != FORMAT_VERSION:
        raise StoreError(f"{str(store_path)!r}/{group} is not a repgeom activation group (format {FORMAT_VERSION}); "
                         "it is partial or was written by something else: delete it and extract again")
    return node


def missing_root_message(store_path: str | Path) -> str:
    """The folder exists but has no root zarr.json: it is not (or no longer) a zarr store."""
    path = Path(store_path)
    try:
        entries = sorted(entry.name for entry in path.iterdir())
    except OSError:
        entries = []
    held = (f"it holds {', '.join(entries[:5])}{', …' if len(entries) > 5 else ''}" if entries else "it is empty")
    return (f"{str(store_path)!r} is not a zarr store: its root {ZARR_JSON} is missing ({held}). If this is the "
            "activation store, delete the folder so that the extraction recreates it (or, to keep its groups, "
            f'restore {str(path / ZARR_JSON)!r} as {{"zarr_format": 3, "node_type": "group", "attributes": {{}}}}); '
            "otherwise give the path of the right store (--store)")


def require_array(node: zarr.Group, name: str) -> zarr.Array:
    try:
        array = node[name]
    except KeyError:
        array = None
    except Exception as err:
        raise StoreError(f"array {name!r} of {node.store_path} is unreadable (corrupt metadata?): {err}") from err
    if not isinstance(array, zarr.Array):
        raise StoreError(f"group {node.store_path} lacks array {name!r}: the store is partial or corrupt; "
                         "delete the group and extract again")
    return array


def letter_lens_array(node: zarr.Group) -> zarr.Array | None:
    """The group's logit lens on the answer letters; None for a group written before the lens was kept."""
    if LETTER_LOGPROB_LAYERS not in node:
        return None
    return require_array(node, LETTER_LOGPROB_LAYERS)


def read_array(array: zarr.Array, selection=slice(None)) -> np.ndarray:
    """array[selection], with damaged chunk data (checksum, size) reported as a StoreError naming the array."""
    try:
        return array[selection]
    except Exception as err:
        raise StoreError(f"chunk data of {array.store_path} is corrupt or truncated "
                         f"({type(err).__name__}: {err}); delete the group and extract again") from err


def _open_complete(store_path, group) -> zarr.Group:
    node = open_store_group(store_path, group)
    if not node.attrs.get("complete"):
        done = read_array(require_array(node, CHUNK_DONE)).astype(bool)
        raise StoreError(f"group {group!r} of {str(store_path)!r} is incomplete ({int(done.sum())} of {done.size} "
                         "row chunks written); run the extraction again to resume it")
    return node


def group_attrs(store_path: str | Path, group: str) -> dict:
    """The group's attributes: model fingerprint, hook point, dtypes, prompt-set hash, layer names, accuracy, …"""
    return dict(open_store_group(store_path, group).attrs)


def n_layers(store_path: str | Path, group: str) -> int:
    """Number of stored layers: L block inputs plus the final norm for an L-block model."""
    return len(open_store_group(store_path, group).attrs["layer_names"])


def prompt_frame(node: zarr.Group) -> pd.DataFrame:
    """question_id, subject, gold, and the constrained prediction `pred` (A-D) with its correctness."""
    frame = pd.DataFrame({name: read_array(require_array(node, name)).astype(str) for name in META_COLUMNS})
    logprob = read_array(require_array(node, LETTER_LOGPROB))
    frame["pred"] = np.array(ANSWER_LETTERS)[logprob.argmax(axis=1)]
    frame["correct"] = frame["pred"] == frame["gold"]
    return frame


def _layer_index(node: zarr.Group, layer: int, names: list[str]) -> int:
    if not -len(names) <= layer < len(names):
        raise StoreError(f"layer {layer} out of range: {node.store_path} stores {len(names)} layers (0..{len(names) - 1})")
    return layer % len(names)


def read_layer(store_path: str | Path, group: str, layer: int, dtype=np.float32) -> tuple[np.ndarray, pd.DataFrame]:
    """One layer's last-token representations [N, D] (as `dtype`) and the prompts' labels, row-aligned.

    `layer` i < L is read in block i (the group's hook: its input, its input norm's output, or its post-attention
    norm's output); layer L (or -1) is the final norm's output. The frame has question_id, subject, gold, pred, correct.
    """
    node = _open_complete(store_path, group)
    index = _layer_index(node, layer, node.attrs["layer_names"])
    reps = require_array(node, REPS)
    values = decode(read_array(reps, index), reps.attrs.get("encoding"), dtype)
    return values, prompt_frame(node)


def read_letter_lens(store_path: str | Path, group: str) -> tuple[np.ndarray, pd.DataFrame] | None:
    """The logit lens on the answer letters [N, L+1, 4] (float32 log-probabilities of A-D read off each stored layer;
    layer L is the prediction, `letter_logprob`) and the prompts' labels, row-aligned; None for a group written before
    the lens was kept (extract it again to get one)."""
    node = _open_complete(store_path, group)
    array = letter_lens_array(node)
    return None if array is None else (read_array(array), prompt_frame(node))


def read_token_sample(store_path: str | Path, group: str, layer: int,
                      dtype=np.float32) -> tuple[np.ndarray, pd.DataFrame]:
    """The seeded all-token sample at `layer` [S, D], with each token's question_id, subject, row and position.

    Positions count from the prompt's first token (BOS), after truncation and without any virtual tokens.
    """
    node = _open_complete(store_path, group)
    index = _layer_index(node, layer, node.attrs["layer_names"])
    sample = node.attrs.get("token_sample")
    if not sample:
        raise StoreError(f"group {group!r} of {str(store_path)!r} has no token sample; extract with --token-sample-layers")
    if index not in sample["layers"]:
        raise StoreError(f"the token sample of {group!r} covers layers {sample['layers']}, not {layer}")
    rows = read_array(require_array(node, f"{TOKEN_SAMPLE}/row"))
    positions = read_array(require_array(node, f"{TOKEN_SAMPLE}/position"))
    reps = require_array(node, f"{TOKEN_SAMPLE}/{REPS}")
    raw = read_array(reps, sample["layers"].index(index))  # [n_chunks, cap, D]
    filled = rows >= 0
    values = decode(raw[filled], reps.attrs.get("encoding"), dtype)
    meta = {name: read_array(require_array(node, name)).astype(str) for name in ("question_id", "subject")}
    frame = pd.DataFrame({"question_id": meta["question_id"][rows[filled]], "subject": meta["subject"][rows[filled]],
                          "row": rows[filled], "position": positions[filled]})
    return values, frame
