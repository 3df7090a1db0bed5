"""The analysis of one layer: `layer_analysis` gives every per-layer metric of one representation as long-form rows,
and the layer's neighbours, which later steps read instead of computing them again; `layer_metric_rows` gives the
rows alone.

All metrics are computed on the distinct rows (exact duplicates removed, first occurrences kept), on
float64 Euclidean distances. A metric that cannot be computed on this input is a row with value NaN
and the reason in `note`; inputs that are simply wrong (NaN/inf, misaligned labels) raise
AnalysisInputError. METRICS.md documents every metric.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from repgeom.analysis import geometry
from repgeom.analysis.neighbor_artifact import LayerNeighbors, layer_neighbors
from repgeom.analysis.neighbors import deduplicate, distinct_rows, knn
from repgeom.analysis.local_id import local_twonn, summarize
from repgeom.analysis.params import AnalysisParams
from repgeom.analysis.probes import linear_probe, reduce_for_probe
from repgeom.errors import InputError

# label column -> metric suffix
LABELS = {"subject": "subject", "gold": "letter"}
LOCAL_ID_STATS = ("mean", "std", "q05", "q25", "q50", "q75", "q95")
# ADP without halo gives the first three, with halo the last.
_CLUSTER_SPECS = [("n_clusters", None)] + [(f"ari_{name}", None) for name in LABELS.values()] + [("core_fraction", None)]


class AnalysisInputError(InputError):
    """The representation or its labels cannot be analysed; the message names the layer and row."""


@dataclasses.dataclass(frozen=True)
class LayerAnalysis:
    """A layer's metric rows and its neighbours as later steps read them (`AnalysisParams.kept_neighbors` wide)."""
    rows: list[dict]
    neighbors: LayerNeighbors


def layer_analysis(X: np.ndarray, labels: pd.DataFrame, params: AnalysisParams | dict | None = None, *,
                   layer: int | None = None, device=None, timings: dict | None = None) -> LayerAnalysis:
    """The metric rows {metric, scale, value, error, note} of one layer's representation X [N, D] and its labels
    (columns subject, gold; one row per row of X), and the layer's neighbours. Pass a dict as `timings` to get the
    seconds spent in each stage."""
    p = AnalysisParams.coerce(params)
    clock = _StageClock(timings)
    with clock("prepare"):
        X, labels = validate_inputs(X, labels, layer)
        rows = [_row("n_points", len(X))]
        kept, distinct_index = distinct_rows(X)
        n_removed = len(X) - len(kept)
        if n_removed:
            X, labels = X[kept], labels.iloc[kept].reset_index(drop=True)
    n = len(X)
    rows.append(_row("n_duplicates", n_removed))
    # Fewer distinct points than maxk + 1: clamp maxk (as DADApy does for a short kNN) rather than
    # drop the layer; the row says so, since such a layer is not comparable with a full-size one.
    maxk = min(p.maxk, n - 1)
    rows.append(_row("maxk_used", maxk, note=f"clamped from {p.maxk}: only {n} distinct points" if maxk < p.maxk else ""))
    if maxk < 2:
        note = f"only {n} distinct point(s): no neighbourhood geometry"
        with clock("knn"):  # the kNN of the one or two distinct points, the layer's rows mapped onto them
            distinct = layer_neighbors(X, p.kept_neighbors, device=device)
        return LayerAnalysis(rows + _nan_rows(_neighbour_metric_specs(p), note) + _probe_rows(X, labels, p),
                             LayerNeighbors(distinct_index, distinct.dist, distinct.ind))
    with clock("knn"):
        # One kNN serves everything: DADApy's maxk, the local-ID neighbourhoods, the label overlap's k and the
        # neighbours kept for the data overlap.
        width = min(n - 1, max(maxk, p.local_id_neighbors, p.kept_neighbors,
                               *(geometry.label_classes_k(labels[c], p.class_fraction) for c in LABELS)))
        dist, ind = knn(X, width, device=device)
        data = geometry.make_data(dist, ind, maxk)
    with clock("id"):
        id_rows, density_id, why_not = _id_rows(data, p)
        rows += id_rows
    with clock("density_adp"):
        rows += _cluster_rows(data, labels, p, density_id, why_not)
    with clock("label_overlap"):
        rows += [_row(f"label_overlap_{name}", geometry.label_overlap(dist, ind, labels[col], p.class_fraction))
                 for col, name in LABELS.items()]
    with clock("local_id"):
        rows += _local_id_rows(X, dist, ind, p)
    with clock("probes"):
        rows += _probe_rows(X, labels, p)
    return LayerAnalysis(rows, LayerNeighbors(distinct_index, dist, ind).narrowed(p.kept_neighbors))


def layer_metric_rows(X: np.ndarray, labels: pd.DataFrame, params: AnalysisParams | dict | None = None, *,
                      layer: int | None = None, device=None) -> list[dict]:
    """The metric rows of `layer_analysis` alone, without the neighbours."""
    return layer_analysis(X, labels, params, layer=layer, device=device).rows


class _StageClock:
    """`with clock("stage"):` adds the block's wall time to timings["stage"] (if timings is a dict)."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


def validate_inputs(X, labels: pd.DataFrame, layer=None) -> tuple[np.ndarray, pd.DataFrame]:
    """X as float64 [N, D] and labels with one non-null subject and gold per row, or AnalysisInputError."""
    where = f"layer {layer}" if layer is not None else "representation"
    X = validate_representation(X, where)
    missing = [c for c in LABELS if c not in labels.columns]
    if missing:
        raise AnalysisInputError(f"{where}: labels lack column(s) {missing}")
    if len(labels) != len(X):
        raise AnalysisInputError(f"{where}: {len(labels)} label rows for {len(X)} representation rows")
    for col in LABELS:
        if labels[col].isna().any():
            raise AnalysisInputError(f"{where}: label column {col!r} is missing at row {int(np.flatnonzero(labels[col].isna())[0])}")
    return X, labels.reset_index(drop=True)


def validate_representation(X, where: str) -> np.ndarray:
    """X as a finite float64 [N, D] array, or AnalysisInputError naming `where` and the first bad row."""
    X = np.asarray(X)
    if X.ndim != 2 or 0 in X.shape or X.dtype.kind in "OSUb":
        raise AnalysisInputError(f"{where}: expected a non-empty numeric array [N, D], got {X.dtype} {X.shape}")
    X = X.astype(np.float64)  # also from ml_dtypes' bfloat16
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise AnalysisInputError(f"{where}: {int(bad.any(1).sum())} row(s) hold NaN or inf, "
                                 f"the first is row {row} (column {col} = {X[row, col]})")
    return X


def _row(metric: str, value, scale: int | None = None, error: float = math.nan, note: str = "") -> dict:
    return {"metric": metric, "scale": None if scale is None else int(scale), "value": float(value),
            "error": float(error), "note": note}


def _nan_rows(specs, note: str) -> list[dict]:
    return [_row(metric, math.nan, scale, note=note) for metric, scale in specs]


def _neighbour_metric_specs(p: AnalysisParams) -> list[tuple[str, int | None]]:
    """(metric, scale) of every metric that needs neighbours."""
    return ([("id_gride", int(r)) for r in geometry.gride_scale_ranks(p.range_max)] + [("id_twonn", 2)]
            + _CLUSTER_SPECS + [(f"label_overlap_{name}", None) for name in LABELS.values()]
            + [(f"local_id_{s}", p.local_id_neighbors) for s in LOCAL_ID_STATS])


def _id_rows(data, p: AnalysisParams) -> tuple[list[dict], float, str]:
    """Gride rows at every scale of range_max (NaN beyond maxk) and TwoNN; also the ID for the density."""
    ids, errs, ranks = geometry.gride_ids(data, p.range_max)
    rows = []
    for i, rank in enumerate(geometry.gride_scale_ranks(p.range_max)):
        if i < len(ids):
            rows.append(_row("id_gride", ids[i], rank, errs[i]))
        else:
            rows.append(_row("id_gride", math.nan, rank, note=f"needs rank {rank} > maxk_used {data.maxk}"))
    rows.append(_row("id_twonn", geometry.twonn_id(data), 2))
    if p.id_scale_index >= len(ids):
        return rows, math.nan, f"no Gride scale {p.id_scale_index} for the density (maxk_used {data.maxk})"
    return rows, float(ids[p.id_scale_index]), ""



def _cluster_rows(data, labels: pd.DataFrame, p: AnalysisParams, density_id: float, why_not: str) -> list[dict]:
    """ADP without halo (number of clusters, ARIs) and with halo (core fraction)."""
    if not why_not and p.density_k > data.maxk:
        why_not = f"density_k {p.density_k} > maxk_used {data.maxk}"
    if why_not:
        return _nan_rows(_CLUSTER_SPECS, why_not)
    geometry.knn_density(data, density_id, p.density_k)
    try:
        clusters, n_clusters = geometry.adp_clusters(data, p.Z, halo=False)
        rows = [_row("n_clusters", n_clusters)] + [
            _row(f"ari_{name}", adjusted_rand_score(labels[col].to_numpy(), clusters)) for col, name in LABELS.items()]
    except geometry.ClusteringError as err:
        rows = _nan_rows(_CLUSTER_SPECS[:-1], str(err))
    try:
        with_halo, _ = geometry.adp_clusters(data, p.Z, halo=True)
        rows.append(_row("core_fraction", np.mean(with_halo >= 0)))
    except geometry.ClusteringError as err:
        rows += _nan_rows(_CLUSTER_SPECS[-1:], str(err))
    return rows


def token_local_id_rows(X: np.ndarray, params: AnalysisParams | dict | None = None, *, layer: int | None = None,
                        device=None) -> list[dict]:
    """Local ID ("Less is More") of a layer's all-token sample [S, D]: `token_local_id_*` rows, on the distinct
    tokens (duplicates removed first, as for the last-token rows)."""
    p = AnalysisParams.coerce(params)
    X = validate_representation(X, f"token sample of layer {layer}")
    X, _, n_removed = deduplicate(X)
    rows = [_row("token_n_points", len(X)), _row("token_n_duplicates", n_removed)]
    width = min(len(X) - 1, p.local_id_neighbors)
    if width < 2:
        return rows + _nan_rows([(f"token_local_id_{s}", p.local_id_neighbors) for s in LOCAL_ID_STATS],
                                f"only {len(X)} distinct tokens")
    dist, ind = knn(X, width, device=device)
    return rows + _local_id_rows(X, dist, ind, p, prefix="token_local_id_")


def _local_id_rows(X, dist, ind, p: AnalysisParams, prefix: str = "local_id_") -> list[dict]:
    L = p.local_id_neighbors
    specs = [(f"{prefix}{s}", L) for s in LOCAL_ID_STATS]
    if ind.shape[1] - 1 < L:
        return _nan_rows(specs, f"needs {L + 1} distinct points, has {len(X)}")
    stats = summarize(local_twonn(X, dist, ind, L, p.local_id_discard))
    return [_row(metric, stats[metric.removeprefix(prefix)], scale) for metric, scale in specs]


def _probe_rows(X, labels: pd.DataFrame, p: AnalysisParams) -> list[dict]:
    features = reduce_for_probe(X, p.probe_pca_dim, p.seed)
    rows = []
    for col, name in LABELS.items():
        res = linear_probe(features, labels[col].to_numpy(), p.probe_folds, p.seed)
        rows.append(_row(f"probe_{name}", res["accuracy"], error=res["accuracy_std"], note=res["note"]))
        rows.append(_row(f"probe_{name}_baseline", res["baseline"], error=res["baseline_std"], note=res["note"]))
    return rows
