"""Analysis parameters. The defaults are the reference protocol's values (docs/protocol.md §5.10)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class AnalysisParams:
    maxk: int = 1000                # neighbours kept per point (DADApy `maxk`)
    range_max: int = 100            # Gride: ranks (2^i, 2^(i+1)) up to this rank -> 6 scales
    id_scale_index: int = 4         # Gride scale whose ID feeds the density: (16, 32)
    density_k: int = 16             # kNN density
    Z: float = 1.6                  # ADP merging threshold
    class_fraction: float = 0.3     # label overlap: k_i = floor(0.3 * size of i's class)
    local_id_neighbors: int = 128   # local ID: TwoNN inside each point's L nearest neighbours
    local_id_discard: float = 0.1   # local ID: fraction of the largest mu dropped
    overlap_k: int = 30             # data overlap chi_k
    probe_folds: int = 5
    probe_pca_dim: int = 64         # probes run on this many principal components when D is larger
    seed: int = 42

    def __post_init__(self):
        for name in ("maxk", "range_max", "density_k", "local_id_neighbors", "overlap_k", "probe_pca_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"analysis parameter {name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.id_scale_index, int) or self.id_scale_index < 0:
            raise ValueError(f"analysis parameter id_scale_index must be an integer >= 0, got {self.id_scale_index!r}")
        if not isinstance(self.probe_folds, int) or self.probe_folds < 2:
            raise ValueError(f"analysis parameter probe_folds must be an integer >= 2, got {self.probe_folds!r}")
        if not 0 < self.class_fraction <= 1:
            raise ValueError(f"analysis parameter class_fraction must be in (0, 1], got {self.class_fraction!r}")
        if not 0 <= self.local_id_discard < 1:
            raise ValueError(f"analysis parameter local_id_discard must be in [0, 1), got {self.local_id_discard!r}")
        if not self.Z > 0:
            raise ValueError(f"analysis parameter Z must be positive, got {self.Z!r}")

    @property
    def kept_neighbors(self) -> int:
        """Neighbours per point the per-layer analysis keeps for later steps (the data overlap): twice the overlap's
        k, so that the rows a pair of representations drops (duplicates in the other one) seldom leave a point
        fewer than k of them."""
        return 2 * self.overlap_k

    @classmethod
    def coerce(cls, params: AnalysisParams | Mapping | None) -> AnalysisParams:
        """Accept an AnalysisParams, a dict of overrides (unknown keys are an error) or None (defaults)."""
        if params is None:
            return cls()
        if isinstance(params, cls):
            return params
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown analysis parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**params)


def gride_scale(id_scale_index: int) -> int:
    """n2 of the Gride scale index (ranks (2^i, 2^(i+1)), i counted from 1): index 4 -> (16, 32) -> 32. The figures
    show the ID at this scale, the one that feeds the density."""
    return 2 ** (id_scale_index + 1)


# Resident memory of an analysis process before any data (python, torch, DADApy, sklearn).
BASE_MEMORY_MB = 1000
# The kNN's key matrix of every pair (repgeom.analysis.neighbors) is kept whole when it is no larger than the copies of
# the layer the analysis holds anyway (24 N D bytes: float32, float64, centred float64); otherwise it is computed a
# panel of rows of at most this many bytes at a time.
KEY_PANEL_BYTES = 256 << 20


def keys_kept_whole(n_points: int, dim: int, itemsize: int) -> bool:
    return itemsize * n_points <= 24 * dim


def key_bytes(n_points: int, dim: int) -> int:
    """The most memory the kNN's keys take: the whole matrix (float32, or float64 for data without shared
    neighbourhoods) where it is kept whole, else a panel."""
    return max([itemsize * n_points ** 2 for itemsize in (4, 8) if keys_kept_whole(n_points, dim, itemsize)]
               + [KEY_PANEL_BYTES])


def layer_memory_mb(n_points: int, dim: int, params: AnalysisParams | Mapping | None = None) -> int:
    """Peak memory of one layer's analysis, an upper bound for sizing its job: the layer as read (float32), its float64
    copy, the copy of its distinct rows, the kNN's centred float64 and scaled float32 copies and its float32 keys (the
    whole N^2 matrix or a panel); and the neighbour distances and indices (float64 + int64) that DADApy copies about
    three times over (distances, neighbour ranks, the density and clustering work arrays)."""
    p = AnalysisParams.coerce(params)
    k = max(p.maxk, p.local_id_neighbors, p.kept_neighbors) + 1
    bytes_needed = n_points * dim * (4 + 8 + 8 + 8 + 4) + key_bytes(n_points, dim) + n_points * k * 16 * 4
    return BASE_MEMORY_MB + -(-bytes_needed // 2**20)
