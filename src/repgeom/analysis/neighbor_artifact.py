"""Each layer's exact neighbours as the per-layer analysis keeps them, and the artifact that stores them.

The analysis computes one kNN per layer, on the layer's distinct rows. It keeps that kNN's first
`AnalysisParams.kept_neighbors` columns (twice the data overlap's k), so that the data overlap, and anything
else that needs neighbours, reads them instead of computing them again.

The artifact is one zarr (v3) group per analysis job (`neighbors/{model}/{condition}/layers_{first}-{last}.zarr`):

    question_id     [N] str                 the group's prompts, in its row order
    distinct_index  [L, N] int32            each row's distinct point at each layer (rows that share one are copies)
    width           [L] int32               neighbours kept at each layer: kept_neighbors, or fewer distinct points - 1
    index           [L, N, W + 1] int32     per distinct point: itself, then its neighbours by (distance, index);
                                            -1 past the layer's distinct points and width
    distance        [L, N, W + 1] float64   their distances; NaN where index is -1

with L the job's layers (attribute `layers`: the store layer of each slot) and W = `kept_neighbors`; the attribute
`group` names the activation store's group (MODEL/CONDITION). As in the activation store, every chunk carries a
crc32c checksum and the group its `content_sha256` (`repgeom.provenance.zarr_group_hash`), which the provenance
records take without hashing again. It is built in a temporary folder and moved into place whole, so an artifact
under its final name is complete.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from repgeom.analysis.neighbors import distinct_rows, knn
from repgeom.errors import InputError
from repgeom.io import atomic_path
from repgeom.provenance.hashing import zarr_group_hash
from repgeom.store.writing import CODECS, CONTENT_SHA256

FORMAT_VERSION = 1
FORMAT_ATTR = "repgeom_neighbors_format"
# Rows per chunk of `index` and `distance`: about 8 MiB of distances.
CHUNK_BYTES = 8 << 20


class NeighborArtifactError(InputError):
    """A neighbour artifact is missing, not one, or lacks what is asked of it; the message names the file."""


@dataclass(frozen=True)
class LayerNeighbors:
    """One layer's exact kNN on its distinct rows, in `neighbors.knn`'s convention (column 0 the point itself).

    distinct_index [N]: each row's distinct point (rows in order; first occurrences define the points' order).
    dist, ind [n_distinct, width + 1]: the points' nearest neighbours among the distinct points."""
    distinct_index: np.ndarray
    dist: np.ndarray
    ind: np.ndarray

    @property
    def width(self) -> int:
        return self.ind.shape[1] - 1

    @property
    def complete(self) -> bool:
        """Every other distinct point is listed: nothing lies beyond the last column."""
        return self.width == len(self.ind) - 1

    def narrowed(self, width: int) -> LayerNeighbors:
        """The first `width` neighbours (all there are, if fewer)."""
        columns = min(width, self.width) + 1
        return LayerNeighbors(self.distinct_index, np.ascontiguousarray(self.dist[:, :columns]),
                              np.ascontiguousarray(self.ind[:, :columns]))


def layer_neighbors(X: np.ndarray, width: int, device=None) -> LayerNeighbors:
    """The exact kNN of X's distinct rows, `width` neighbours wide (fewer when there are fewer distinct rows)."""
    kept, distinct_index = distinct_rows(X)
    if len(kept) == 1:
        return LayerNeighbors(distinct_index, np.zeros((1, 1)), np.zeros((1, 1), dtype=np.int64))
    dist, ind = knn(np.asarray(X, dtype=np.float64)[kept], min(width, len(kept) - 1), device=device)
    return LayerNeighbors(distinct_index, dist, ind)


@contextmanager
def writing_artifact(path: str | Path, *, group: str, layers: Sequence[int], question_ids,
                     kept_neighbors: int) -> Iterator[Callable[[int, LayerNeighbors], None]]:
    """Yield `add(layer, neighbors)`; once every layer is added, the artifact appears at `path` (replacing one
    there)."""
    path, layers = Path(path), [int(layer) for layer in layers]
    question_ids = np.asarray(question_ids, dtype=str)
    n_rows, columns = len(question_ids), kept_neighbors + 1
    chunk = (1, max(1, min(n_rows, CHUNK_BYTES // (8 * columns))), columns)
    with atomic_path(path) as tmp:
        tmp.unlink()  # the group is a folder in its place
        root = zarr.open_group(str(tmp), mode="w")
        ids = root.create_array("question_id", shape=(n_rows,), dtype=str, compressors=CODECS["compressors"])
        ids[:] = question_ids
        distinct = root.create_array("distinct_index", shape=(len(layers), n_rows), chunks=(1, n_rows), dtype="int32",
                                     fill_value=-1, **CODECS)
        width = root.create_array("width", shape=(len(layers),), dtype="int32", fill_value=-1, **CODECS)
        index = root.create_array("index", shape=(len(layers), n_rows, columns), chunks=chunk, dtype="int32",
                                  fill_value=-1, **CODECS)
        distance = root.create_array("distance", shape=(len(layers), n_rows, columns), chunks=chunk,
                                     dtype="float64", fill_value=np.nan, **CODECS)
        added = set()

        def add(layer: int, neighbors: LayerNeighbors) -> None:
            slot = layers.index(layer)
            if len(neighbors.distinct_index) != n_rows:
                raise ValueError(f"layer {layer}: {len(neighbors.distinct_index)} rows, the artifact has {n_rows}")
            kept = neighbors.narrowed(kept_neighbors)
            distinct[slot] = neighbors.distinct_index
            width[slot] = kept.width
            index[slot, :len(kept.ind), :kept.width + 1] = kept.ind
            distance[slot, :len(kept.dist), :kept.width + 1] = kept.dist
            added.add(layer)

        yield add
        if missing := sorted(set(layers) - added):
            raise ValueError(f"neighbour artifact {str(path)!r}: layers {missing} were never added")
        root.attrs.update({FORMAT_ATTR: FORMAT_VERSION, "group": group, "layers": layers,
                           "kept_neighbors": kept_neighbors, "complete": True})
        root.attrs.update({CONTENT_SHA256: zarr_group_hash(tmp)})
        if path.is_dir():  # os.replace cannot put a folder over a non-empty one
            shutil.rmtree(path)


class NeighborArtifact:
    """The read side: which group and layers an artifact holds, and each layer's `LayerNeighbors`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        where = f"neighbour artifact {str(self.path)!r}"
        if not self.path.is_dir():
            raise NeighborArtifactError(f"{where} does not exist; run the per-layer analysis (`layers "
                                        "--neighbors-out`) first")
        try:
            self._root = zarr.open_group(str(self.path), mode="r")
            attrs = dict(self._root.attrs)
        except Exception as err:  # zarr raises assorted errors on a damaged zarr.json
            raise NeighborArtifactError(f"{where} is unreadable: {type(err).__name__}: {err}") from err
        if attrs.get(FORMAT_ATTR) != FORMAT_VERSION or not attrs.get("complete"):
            raise NeighborArtifactError(f"{where} is not a complete repgeom neighbour artifact (format "
                                        f"{FORMAT_VERSION}); delete it and run the analysis again")
        self.group = str(attrs["group"])
        self.layers = [int(layer) for layer in attrs["layers"]]
        self.kept_neighbors = int(attrs["kept_neighbors"])
        self.question_ids = self._read("question_id").astype(str)

    def _read(self, name: str, selection=slice(None)) -> np.ndarray:
        try:
            return np.asarray(self._root[name][selection])
        except Exception as err:
            raise NeighborArtifactError(f"neighbour artifact {str(self.path)!r}: array {name!r} is missing or corrupt "
                                        f"({type(err).__name__}: {err}); delete it and run the analysis again") from err

    def layer(self, layer: int) -> LayerNeighbors:
        if layer not in self.layers:
            raise NeighborArtifactError(f"neighbour artifact {str(self.path)!r} holds layers {self.layers}, "
                                        f"not {layer}")
        slot = self.layers.index(layer)
        distinct_index = self._read("distinct_index", slot).astype(np.int64)
        n_distinct, width = int(distinct_index.max()) + 1, int(self._read("width", slot))
        ind = self._read("index", (slot, slice(0, n_distinct), slice(0, width + 1))).astype(np.int64)
        dist = self._read("distance", (slot, slice(0, n_distinct), slice(0, width + 1)))
        return LayerNeighbors(distinct_index, dist, ind)
