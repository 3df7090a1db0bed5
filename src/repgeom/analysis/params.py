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


# Resident memory of an analysis process before any data (python, torch, DADApy, sklearn).
BASE_MEMORY_MB = 1000


def layer_memory_mb(n_points: int, dim: int, params: AnalysisParams | Mapping | None = None) -> int:
    """Peak memory of one layer's analysis, an upper bound for sizing its job: the layer in float32 and its
    float64 copy, and the neighbour distances and indices (float64 + int64) that DADApy copies about three
    times over (distances, neighbour ranks, the density and clustering work arrays)."""
    p = AnalysisParams.coerce(params)
    k = max(p.maxk, p.local_id_neighbors) + 1
    bytes_needed = n_points * dim * (4 + 8) + n_points * k * 16 * 4
    return BASE_MEMORY_MB + -(-bytes_needed // 2**20)
