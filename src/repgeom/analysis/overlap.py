"""The data overlap chi_k between two representations of the same prompts, from the neighbours their per-layer
analyses kept.

Each pair is compared on the rows distinct in both representations: a row that is an exact duplicate of an earlier
row (in the reference prompt order) in either is dropped from both. A side's kNN on the rows a pair keeps is read
off its stored lists: drop the rows the pair drops and re-sort each list by (distance, position) in the kept rows,
which is the order `neighbors.knn` gives those rows (ties by index). That is exact as long as each list keeps k
entries that are strictly closer than its last stored one (or lists every point); otherwise, which only happens
when the other side has duplicates among a row's nearest, the side's kNN on those rows is computed again.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from repgeom.analysis.geometry import data_overlap
from repgeom.analysis.layer import AnalysisInputError
from repgeom.analysis.neighbor_artifact import LayerNeighbors
from repgeom.analysis.neighbors import knn


class OverlapSide:
    """One representation (a condition at a layer) for the data overlap: its stored neighbours, its rows put in the
    reference prompt order by `order` (reference position -> its row; None when it is that order already).

    `reload()` gives the representation (rows in the reference order) for the rare pair its stored lists cannot
    serve; each kNN computed is kept for the next pair that drops the same rows."""

    def __init__(self, neighbors: LayerNeighbors, k: int, order: np.ndarray | None = None,
                 reload: Callable[[], np.ndarray] | None = None, device=None):
        self.neighbors, self.k, self.device, self._reload = neighbors, k, device, reload
        self.point = neighbors.distinct_index if order is None else neighbors.distinct_index[order]
        self.duplicates = np.ones(len(self.point), dtype=bool)
        self.duplicates[np.unique(self.point, return_index=True)[1]] = False
        self.n_duplicates = int(self.duplicates.sum())
        self._computed = {}

    def knn_without(self, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dist, ind) of width k on the rows not in `drop` (which holds this side's duplicates), indexed 0.. over
        those rows in order."""
        kept = np.flatnonzero(~drop)
        stored = self._from_stored(kept)
        if stored is not None:
            return stored
        key = kept.tobytes()
        if key not in self._computed:
            if self._reload is None:
                raise ValueError("this side keeps no representation to recompute its kNN on other rows")
            self._computed[key] = knn(self._reload()[kept], self.k, device=self.device)
        return self._computed[key]

    def _from_stored(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The kNN on the rows `kept` from the stored lists, or None where they cannot vouch for it."""
        stored, k = self.neighbors, self.k
        if stored.width < k:
            return None
        points = self.point[kept]
        position = np.full(len(stored.ind), -1)
        position[points] = np.arange(len(points))
        ind = position[stored.ind[points, 1:]]
        listed = ind >= 0
        dist = np.where(listed, stored.dist[points, 1:], np.inf)
        by_distance = np.lexsort((np.where(listed, ind, len(points)), dist), axis=1)[:, :k]
        ind, dist = np.take_along_axis(ind, by_distance, 1), np.take_along_axis(dist, by_distance, 1)
        if not listed.sum(1).min() >= k:
            return None
        # A point beyond the stored lists is at least as far as the last one listed: only a strictly closer k-th
        # neighbour (or a list of every point) proves that none of them belongs in, ties included.
        if not (stored.complete or (dist[:, -1] < stored.dist[points, -1]).all()):
            return None
        return np.c_[np.zeros(len(points)), dist], np.c_[np.arange(len(points)), ind]


def pair_overlap(side_a: OverlapSide, side_b: OverlapSide, k: int) -> tuple[float, int, str]:
    """(chi_k, rows dropped, note) between two representations of the same rows, on the rows distinct in both:
    a row that is a duplicate in either side (a copy of an earlier row there) is dropped from both."""
    if len(side_a.duplicates) != len(side_b.duplicates):
        raise ValueError(f"data overlap needs the same rows: {len(side_a.duplicates)} against {len(side_b.duplicates)}")
    drop = side_a.duplicates | side_b.duplicates
    n_dropped = int(drop.sum())
    n_kept = len(drop) - n_dropped
    counts = f"duplicates: {side_a.n_duplicates} in A, {side_b.n_duplicates} in B"
    if n_kept < k + 1:
        return float("nan"), n_dropped, f"only {n_kept} distinct rows in both ({counts}), need k + 1 = {k + 1}"
    value = data_overlap(side_a.knn_without(drop), side_b.knn_without(drop), k)
    note = f"{n_dropped} rows dropped from both, duplicates in A or B ({counts}); {n_kept} rows used" if n_dropped else ""
    return value, n_dropped, note


def aligned_to(question_ids, reference, where: str) -> np.ndarray:
    """Row order that puts this group's prompts in the reference group's order, or an error if the
    groups were not extracted from the same prompts."""
    question_ids, reference = pd.Series(question_ids), pd.Series(reference)
    if question_ids.duplicated().any():
        raise AnalysisInputError(f"{where}: question_id {question_ids[question_ids.duplicated()].iloc[0]!r} repeats")
    if set(question_ids) != set(reference):
        extra, lacking = set(question_ids) - set(reference), set(reference) - set(question_ids)
        raise AnalysisInputError(
            f"{where}: not the same prompts as the first group ({len(extra)} question ids only here, "
            f"{len(lacking)} only there, e.g. {sorted(map(str, extra or lacking))[:3]}): "
            "was this store extracted from a different prompt set?")
    return pd.Index(question_ids).get_indexer(reference)
