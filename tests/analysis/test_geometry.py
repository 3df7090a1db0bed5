"""The DADApy metrics on the project's kNN equal DADApy's own path (DADApy computing the kNN)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dadapy import Data

from repgeom.analysis import geometry
from repgeom.analysis.geometry import dadapy_reference, data_overlap, label_overlap
from repgeom.analysis.neighbors import knn
from repgeom.analysis.params import AnalysisParams

PARAMS = AnalysisParams(maxk=300)


@pytest.fixture(scope="module")
def mixture_both_paths(mixture_data):
    X, labels = mixture_data
    reference = dadapy_reference(X, labels, PARAMS)
    dist, ind = knn(X, PARAMS.maxk)
    data = geometry.make_data(dist, ind, PARAMS.maxk)
    return X, labels, reference, data, (dist, ind)


def test_gride_and_twonn_equal_dadapy(mixture_both_paths):
    _, _, ref, data, _ = mixture_both_paths
    ids, errs, ranks = geometry.gride_ids(data, PARAMS.range_max)
    assert ranks.tolist() == [2, 4, 8, 16, 32, 64] == geometry.gride_scale_ranks(100).tolist()
    np.testing.assert_allclose(ids, ref["id_gride"], rtol=1e-6)
    np.testing.assert_allclose(errs, ref["id_gride_err"], rtol=1e-6)
    assert geometry.twonn_id(data) == pytest.approx(ref["id_twonn"], rel=1e-6)
    assert 2.5 < ids[4] < 3.5  # the clusters are 3-d


def test_density_and_adp_equal_dadapy(mixture_both_paths):
    _, labels, ref, data, _ = mixture_both_paths
    geometry.knn_density(data, ref["id_gride"][PARAMS.id_scale_index], PARAMS.density_k)
    np.testing.assert_allclose(data.log_den, ref["log_den"], rtol=1e-9)
    clusters, n_clusters = geometry.adp_clusters(data, PARAMS.Z, halo=False)
    with_halo, _ = geometry.adp_clusters(data, PARAMS.Z, halo=True)
    np.testing.assert_array_equal(clusters, ref["clusters"])
    np.testing.assert_array_equal(with_halo, ref["clusters_halo"])
    assert n_clusters == ref["n_clusters"] == 5
    from sklearn.metrics import adjusted_rand_score
    assert adjusted_rand_score(labels["subject"], clusters) == 1.0


def test_label_overlap_equals_dadapy(mixture_both_paths):
    _, labels, ref, _, (dist, ind) = mixture_both_paths
    assert label_overlap(dist, ind, labels["subject"], 0.3) == pytest.approx(ref["label_overlap_subject"], abs=1e-12)
    assert label_overlap(dist, ind, labels["gold"], 0.3) == pytest.approx(ref["label_overlap_gold"], abs=1e-12)
    assert ref["label_overlap_subject"] == pytest.approx(1.0)
    assert ref["label_overlap_gold"] == pytest.approx(0.25, abs=0.02)


def test_label_overlap_is_the_class_weighted_mean():
    """The semantics of docs/protocol.md §5.7, on a case small enough to count by hand: k_i = floor(0.3 n_class)."""
    X = np.array([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0], [12.0], [13.0], [14.0], [15.0], [16.0]])
    labels = np.array(["a"] * 4 + ["b"] * 7)  # k = 1 for class a, k = 2 for class b
    labels[3] = "b"  # now a: 3 points (k floor(0.9) -> 1), b: 8 points (k = 2)
    dist, ind = knn(X, 4)
    per_point = []
    for i, lab in enumerate(labels):
        k = max(1, int(0.3 * (labels == lab).sum()))
        per_point.append((labels[ind[i, 1:k + 1]] == lab).mean())
    per_point = np.array(per_point)
    expected = np.mean([per_point[labels == c].mean() for c in ("a", "b")])
    assert label_overlap(dist, ind, labels, 0.3) == pytest.approx(expected)


def test_data_overlap_equals_dadapy(mixture_data):
    X, _ = mixture_data
    rng = np.random.default_rng(5)
    Y = np.tanh(X @ rng.standard_normal((X.shape[1], 96)) / 30)  # another representation of the same points
    reference = Data(coordinates=X, verbose=False)
    reference.compute_distances(maxk=30)
    expected = reference.return_data_overlap(coordinates=Y, k=30)
    assert data_overlap(knn(X, 30), knn(Y, 30), 30) == pytest.approx(expected, abs=1e-12)
    assert 0.2 < expected < 0.95
    assert data_overlap(knn(X, 40), knn(X, 35), 30) == 1.0
    with pytest.raises(ValueError, match="needs 30 neighbours"):
        data_overlap(knn(X, 20), knn(Y, 30), 30)


def test_adp_labels_out_of_range_raise(monkeypatch, mixture_both_paths):
    _, _, ref, data, _ = mixture_both_paths
    geometry.knn_density(data, ref["id_gride"][4], 16)
    def buggy(self, Z, halo):
        self.N_clusters = 3
        return np.array([0, 1, 2, -1, 5])
    monkeypatch.setattr(Data, "compute_clustering_ADP", buggy)
    with pytest.raises(geometry.ClusteringError, match=r"2 of 5 points a label outside \[0, 2\]"):
        geometry.adp_clusters(data, 1.6, halo=False)
    with pytest.raises(geometry.ClusteringError, match=r"1 of 5 points a label outside \[-1, 2\]"):
        geometry.adp_clusters(data, 1.6, halo=True)


def test_ids_of_a_curved_manifold_of_known_dimension(sphere5):
    dist, ind = knn(sphere5, 100)
    data = geometry.make_data(dist, ind, 100)
    ids, _, ranks = geometry.gride_ids(data, 100)
    for rank, value in zip(ranks, ids):
        if 4 <= rank <= 32:
            assert value == pytest.approx(5, rel=0.1), rank
    assert geometry.twonn_id(data) == pytest.approx(5, rel=0.1)
