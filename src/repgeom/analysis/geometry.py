"""The DADApy 0.3.4 side of the analysis: IDs, density, ADP clustering and neighbourhood overlaps.

Everything here runs in DADApy on a precomputed kNN (`neighbors.knn`), so the numbers are DADApy's own.
`dadapy_reference` is the DADApy-only path the reference code ran (DADApy computes the kNN itself);
tests and the benchmark hold the project's path to it.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from dadapy import Data

from repgeom.analysis.params import AnalysisParams


class ClusteringError(RuntimeError):
    """DADApy's ADP returned labels outside [-1 (halo), N_clusters - 1]."""


def make_data(dist: np.ndarray, ind: np.ndarray, maxk: int) -> Data:
    """A DADApy `Data` holding the first maxk neighbours (contiguous: the Cython code wants them). Every call here
    works from them; coordinates would only be copied (DADApy casts them to a new float64 array)."""
    knn = (np.ascontiguousarray(dist[:, :maxk + 1]), np.ascontiguousarray(ind[:, :maxk + 1]))
    return Data(distances=knn, maxk=maxk, verbose=False)


def gride_scale_ranks(range_max: int) -> np.ndarray:
    """n2 of each Gride scale (n1, n2) = (2^i, 2^(i+1)) that DADApy uses for this range_max."""
    return 2 ** np.arange(1, int(math.log(range_max, 2)) + 1)  # DADApy's own expression


def gride_ids(data: Data, range_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, errors, n2 ranks) from `return_id_scaling_gride`. Ranks beyond data.maxk are not computed:
    asking DADApy for them would make it recompute all distances with sklearn."""
    ids, errs, ranks = data.return_id_scaling_gride(range_max=min(range_max, data.maxk), return_ranks=True)
    return ids, errs, ranks


def twonn_id(data: Data) -> float:
    """TwoNN ID (DADApy defaults: linear fit, 10% of the largest mu dropped), without setting data's ID."""
    return float(data.compute_id_2NN(set_attr=False)[0])


def knn_density(data: Data, intrinsic_dim: float, density_k: int) -> None:
    """DADApy kNN log-density (k = density_k) at the given ID, stored in `data` for the clustering."""
    data.set_id(intrinsic_dim)
    data.compute_density_kNN(k=density_k)


def adp_clusters(data: Data, Z: float, halo: bool) -> tuple[np.ndarray, int]:
    """ADP clustering of `data` (density already computed): (assignment, number of clusters).

    Raises ClusteringError if a label is out of range (a known bug of DADApy's Cython ADP could leave
    points unassigned): without halo every label must be in [0, N_clusters - 1], with halo in [-1, ...].
    """
    labels = np.asarray(data.compute_clustering_ADP(Z=Z, halo=halo))
    n_clusters = int(data.N_clusters)
    low = -1 if halo else 0
    bad = np.flatnonzero((labels < low) | (labels > n_clusters - 1))
    if len(bad):
        raise ClusteringError(
            f"DADApy ADP (halo={halo}) gave {len(bad)} of {len(labels)} points a label outside "
            f"[{low}, {n_clusters - 1}] (e.g. point {bad[0]}: {labels[bad[0]]})")
    return labels, n_clusters


def label_classes_k(labels, class_fraction: float) -> int:
    """Largest k_i = floor(class_fraction * class size) the label overlap needs (at least 1)."""
    counts = pd.Series(np.asarray(labels)).value_counts()
    return max(1, int(counts.max() * class_fraction))


def label_overlap(dist: np.ndarray, ind: np.ndarray, labels, class_fraction: float) -> float:
    """DADApy `return_label_overlap(labels, class_fraction=...)`: for each point, the fraction of its
    floor(class_fraction * n_class) nearest neighbours with its label, averaged with weight 1/n_class."""
    needed = label_classes_k(labels, class_fraction)
    if ind.shape[1] - 1 < needed:
        raise ValueError(f"label overlap needs {needed} neighbours per point, the kNN has {ind.shape[1] - 1}")
    codes = pd.factorize(np.asarray(labels))[0]  # DADApy casts labels to int
    data = Data(distances=(dist, ind), maxk=ind.shape[1] - 1, verbose=False)
    return float(data.return_label_overlap(codes, class_fraction=class_fraction))


def data_overlap(knn_a: tuple[np.ndarray, np.ndarray], knn_b: tuple[np.ndarray, np.ndarray], k: int) -> float:
    """chi_k = mean_i |NN_k^A(i) & NN_k^B(i)| / k, by DADApy `return_data_overlap`, from each
    representation's (dist, ind) of width >= k + 1 on the same rows."""
    for name, (_, ind) in (("A", knn_a), ("B", knn_b)):
        if ind.shape[1] - 1 < k:
            raise ValueError(f"data overlap needs {k} neighbours per point, the kNN of {name} has {ind.shape[1] - 1}")
    if len(knn_a[1]) != len(knn_b[1]):
        raise ValueError(f"data overlap needs the same points: {len(knn_a[1])} rows against {len(knn_b[1])}")
    data = Data(distances=knn_a, maxk=k, verbose=False)
    return float(data.return_data_overlap(distances=knn_b, k=k))


def dadapy_reference(X: np.ndarray, labels: pd.DataFrame, params: AnalysisParams | None = None) -> dict:
    """The reference's DADApy-only path on one layer: DADApy computes the kNN (sklearn brute force)."""
    p = AnalysisParams.coerce(params)
    data = Data(coordinates=np.asarray(X, dtype=np.float64), verbose=False)
    data.compute_distances(maxk=p.maxk)
    ids, errs, ranks = data.return_id_scaling_gride(range_max=p.range_max, return_ranks=True)
    out = {"dist": data.distances, "ind": data.dist_indices, "id_gride": ids, "id_gride_err": errs,
           "id_gride_ranks": ranks, "id_twonn": float(data.compute_id_2NN(set_attr=False)[0])}
    data.set_id(ids[p.id_scale_index])
    data.compute_density_kNN(k=p.density_k)
    out["log_den"] = data.log_den.copy()
    out["clusters"] = data.compute_clustering_ADP(Z=p.Z, halo=False).copy()
    out["n_clusters"] = data.N_clusters
    out["clusters_halo"] = data.compute_clustering_ADP(Z=p.Z, halo=True).copy()
    for column in ("subject", "gold"):
        codes = pd.factorize(labels[column].to_numpy())[0]
        out[f"label_overlap_{column}"] = float(data.return_label_overlap(codes, class_fraction=p.class_fraction))
    return out
