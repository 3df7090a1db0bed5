"""The analysis of one layer (layer_analysis, layer_metric_rows): the full metric set, its agreement with DADApy's path, and every bad input."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from dadapy import Data

from repgeom.analysis.geometry import dadapy_reference
from repgeom.analysis.layer import AnalysisInputError, layer_analysis, layer_metric_rows
from repgeom.analysis.neighbor_artifact import layer_neighbors
from repgeom.analysis.params import AnalysisParams
from repgeom.analysis.layer import LOCAL_ID_STATS

PARAMS = {"maxk": 300}


def as_table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows).set_index(["metric", "scale"], drop=False)


def value(table, metric, scale=None):
    rows = table[(table["metric"] == metric) & ((table["scale"].isna()) if scale is None else (table["scale"] == scale))]
    assert len(rows) == 1, (metric, scale)
    return rows.iloc[0]


@pytest.fixture(scope="module")
def mixture_table(mixture_data):
    X, labels = mixture_data
    X = X.copy()
    X[7] = X[3]  # one duplicate row
    return as_table(layer_metric_rows(X.astype(np.float32), labels, PARAMS, layer=5))


def test_metric_set_is_complete(mixture_table):
    t = mixture_table
    expected = (["n_points", "n_duplicates", "maxk_used"] + ["id_gride"] * 6 + ["id_twonn", "n_clusters", "ari_subject",
                "ari_letter", "core_fraction", "label_overlap_subject", "label_overlap_letter"]
                + [f"local_id_{s}" for s in LOCAL_ID_STATS]
                + ["probe_subject", "probe_subject_baseline", "probe_letter", "probe_letter_baseline"])
    assert t["metric"].tolist() == expected
    assert t.loc[t.metric == "id_gride", "scale"].tolist() == [2, 4, 8, 16, 32, 64]
    assert set(t.columns) == {"metric", "scale", "value", "error", "note"}
    assert t["value"].notna().all() and (t["note"] == "").all()
    assert value(t, "n_points").value == 1500 and value(t, "n_duplicates").value == 1
    assert value(t, "maxk_used").value == 300


def test_values_match_dadapy_and_the_data(mixture_table, mixture_data):
    t = mixture_table
    X, labels = mixture_data
    keep = np.arange(len(X)) != 7
    ref = dadapy_reference(X.astype(np.float32)[keep], labels[keep], AnalysisParams(**PARAMS))
    gride = t[t.metric == "id_gride"]
    np.testing.assert_allclose(gride["value"], ref["id_gride"], rtol=1e-6)
    np.testing.assert_allclose(gride["error"], ref["id_gride_err"], rtol=1e-6)
    assert value(t, "id_twonn", 2).value == pytest.approx(ref["id_twonn"], rel=1e-6)
    assert value(t, "n_clusters").value == ref["n_clusters"] == 5
    assert value(t, "ari_subject").value == pytest.approx(1.0)
    assert abs(value(t, "ari_letter").value) < 0.02
    assert value(t, "core_fraction").value == pytest.approx(np.mean(ref["clusters_halo"] >= 0))
    assert value(t, "label_overlap_subject").value == pytest.approx(ref["label_overlap_subject"])
    assert value(t, "label_overlap_letter").value == pytest.approx(ref["label_overlap_gold"])
    assert 2.5 < value(t, "local_id_mean", 128).value < 3.5
    assert value(t, "probe_subject").value > 0.99 > 0.3 > value(t, "probe_subject_baseline").value
    assert value(t, "probe_subject").error >= 0


def test_the_layers_neighbours_are_kept_for_the_overlap(mixture_data):
    """The kNN the analysis computed, on the distinct rows, narrowed to kept_neighbors; copies map to their first."""
    X, labels = mixture_data
    X = X[:400].copy()
    X[7] = X[3]
    result = layer_analysis(X, labels[:400], {"maxk": 100, "overlap_k": 10})
    kept = layer_neighbors(X, 20)
    assert result.neighbors.width == 20 and result.neighbors.distinct_index[7] == 3
    np.testing.assert_array_equal(result.neighbors.distinct_index, kept.distinct_index)
    np.testing.assert_array_equal(result.neighbors.ind, kept.ind)
    np.testing.assert_allclose(result.neighbors.dist, kept.dist, rtol=1e-12)  # Gram values, from other blocks
    # A layer with a single distinct point keeps that point alone.
    single = layer_analysis(np.ones((40, 8)), labels[:40]).neighbors
    assert single.ind.tolist() == [[0]] and (single.distinct_index == 0).all()


def test_known_dimension(sphere5):
    labels = pd.DataFrame({"subject": ["s"] * len(sphere5), "gold": list("ABCD") * (len(sphere5) // 4)})
    t = as_table(layer_metric_rows(sphere5, labels, {"maxk": 130}))
    assert value(t, "id_twonn", 2).value == pytest.approx(5, rel=0.1)
    assert value(t, "id_gride", 32).value == pytest.approx(5, rel=0.1)
    assert value(t, "local_id_mean", 128).value == pytest.approx(5, rel=0.1)


def labels_for(n):
    return pd.DataFrame({"subject": ["a", "b"] * (n // 2), "gold": ["A", "B", "C", "D"] * (n // 4)})


def test_nan_or_inf_names_layer_and_row():
    X = np.random.default_rng(0).standard_normal((40, 8))
    X[17, 3] = np.nan
    X[30, 0] = np.inf
    with pytest.raises(AnalysisInputError, match=r"layer 12: 2 row\(s\) hold NaN or inf, the first is row 17 \(column 3"):
        layer_metric_rows(X, labels_for(40), layer=12)


def test_label_length_and_columns_are_checked():
    X = np.random.default_rng(0).standard_normal((40, 8))
    with pytest.raises(AnalysisInputError, match="layer 3: 36 label rows for 40 representation rows"):
        layer_metric_rows(X, labels_for(36), layer=3)
    with pytest.raises(AnalysisInputError, match=r"lack column\(s\) \['gold'\]"):
        layer_metric_rows(X, labels_for(40)[["subject"]])
    bad = labels_for(40)
    bad.loc[9, "gold"] = None
    with pytest.raises(AnalysisInputError, match="'gold' is missing at row 9"):
        layer_metric_rows(X, bad)
    with pytest.raises(ValueError, match=r"unknown analysis parameter\(s\) \['max_k'\]"):
        layer_metric_rows(X, labels_for(40), {"max_k": 5})


def test_fewer_distinct_points_than_maxk_clamps_and_says_so():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 16))
    X[100:] = X[:100]  # 100 distinct points
    t = as_table(layer_metric_rows(X, labels_for(200), {"maxk": 1000, "local_id_neighbors": 50}))
    assert value(t, "n_duplicates").value == 100
    row = value(t, "maxk_used")
    assert row.value == 99 and row.note == "clamped from 1000: only 100 distinct points"
    gride = t[t.metric == "id_gride"]
    assert gride["value"].notna().tolist() == [True] * 6  # ranks up to 64 < 99
    assert value(t, "n_clusters").value >= 1 and np.isfinite(value(t, "local_id_mean", 50).value)
    assert value(t, "id_twonn", 2).value == pytest.approx(16, rel=0.35)


def test_tiny_layer_records_nan_with_reasons():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8))
    t = as_table(layer_metric_rows(X, labels_for(40), {"maxk": 1000, "local_id_neighbors": 128}))
    gride = t[t.metric == "id_gride"]
    assert gride["value"].notna().tolist() == [True] * 5 + [False]
    assert gride.iloc[5].note == "needs rank 64 > maxk_used 39"
    local = value(t, "local_id_mean", 128)
    assert math.isnan(local.value) and local.note == "needs 129 distinct points, has 40"
    assert np.isfinite(value(t, "ari_subject").value)


def test_single_distinct_point_gives_nan_everywhere_but_counts():
    X = np.ones((40, 8))  # e.g. layer 0: every prompt ends with the same token
    t = as_table(layer_metric_rows(X, labels_for(40), layer=0))
    assert value(t, "n_points").value == 40 and value(t, "n_duplicates").value == 39
    geometry_rows = t[~t.metric.isin(["n_points", "n_duplicates", "maxk_used"])]
    assert geometry_rows["value"].isna().all()
    assert len(geometry_rows) == 6 + 1 + 4 + 2 + 7 + 4
    assert (geometry_rows[~geometry_rows.metric.str.startswith("probe")]["note"]
            == "only 1 distinct point(s): no neighbourhood geometry").all()
    assert (geometry_rows[geometry_rows.metric.str.startswith("probe")]["note"] != "").all()


def test_adp_label_bug_is_recorded_not_raised(monkeypatch, mixture_data):
    X, labels = mixture_data
    def buggy(self, Z, halo):
        self.N_clusters = 2
        labels = np.zeros(self.N, dtype=int)
        labels[0] = 7
        return labels
    monkeypatch.setattr(Data, "compute_clustering_ADP", buggy)
    t = as_table(layer_metric_rows(X[:500], labels[:500], {"maxk": 100}))
    for metric in ("n_clusters", "ari_subject", "ari_letter", "core_fraction"):
        row = value(t, metric)
        assert math.isnan(row.value) and "label outside [" in row.note and "point 0: 7" in row.note
    assert np.isfinite(value(t, "label_overlap_subject").value)


def test_half_precision_inputs_are_analysed_in_float64():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    X = np.random.default_rng(0).standard_normal((64, 8))
    params = {"maxk": 20, "local_id_neighbors": 16}
    for dtype in (np.float16, ml_dtypes.bfloat16):
        low = X.astype(dtype)
        got = pd.DataFrame(layer_metric_rows(low, labels_for(64), params))
        expected = pd.DataFrame(layer_metric_rows(low.astype(np.float64), labels_for(64), params))
        pd.testing.assert_frame_equal(got, expected)
    with pytest.raises(AnalysisInputError, match="expected a non-empty numeric array"):
        layer_metric_rows(np.array([["a", "b"]] * 4), labels_for(4))
