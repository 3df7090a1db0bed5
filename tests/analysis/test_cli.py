"""`python -m repgeom.analysis` end to end, on a fake activation store."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from dadapy import Data

import repgeom.store
from repgeom.analysis.geometry import data_overlap
from repgeom.analysis.layer import layer_metric_rows
from repgeom.analysis.neighbor_artifact import NeighborArtifact, layer_neighbors
from repgeom.analysis.neighbors import deduplicate, knn
from repgeom.analysis.overlap import OverlapSide, pair_overlap
from repgeom.analysis.__main__ import main, parse_layers

N_LAYERS = 3
FAST = '{"maxk": 100, "local_id_neighbors": 32}'


def fake_store(X0: np.ndarray, labels: pd.DataFrame) -> dict:
    """Two conditions of one model, 3 layers each. Layer 0 is the same vector for every prompt (as the
    first block's input is for a prompt that always ends with the same token); conditions differ by a
    rotation-free distortion; 'icl' stores its prompts in another order."""
    rng = np.random.default_rng(1)
    meta = labels.assign(question_id=[f"q{i:04d}" for i in range(len(X0))], pred="A", correct=False)
    store = {}
    for condition, scale in (("base", 0.0), ("icl", 0.5)):
        layers = [np.ones_like(X0, dtype=np.float32)]
        X = X0
        for _ in range(1, N_LAYERS):
            X = np.tanh(X @ (np.eye(X.shape[1]) + scale * rng.standard_normal((X.shape[1],) * 2) / 30) / 3)
            layers.append(X.astype(np.float32))
        order = np.arange(len(X0)) if condition == "base" else rng.permutation(len(X0))
        store[f"tiny/{condition}"] = [(layer[order], meta.iloc[order].reset_index(drop=True)) for layer in layers]
    return store


@pytest.fixture
def store(monkeypatch, mixture_data):
    X, labels = mixture_data
    data = fake_store(X[:400], labels[:400])
    calls = []
    def read_layer(path, group, layer):
        assert path == "acts.zarr"
        calls.append((group, layer))
        return data[group][layer]
    monkeypatch.setattr(repgeom.store, "read_layer", read_layer, raising=False)
    monkeypatch.setattr(repgeom.store, "n_layers", lambda path, group: len(data[group]), raising=False)
    monkeypatch.setattr(repgeom.store, "group_attrs", lambda path, group: {}, raising=False)
    return data, calls


def test_layers_end_to_end(store, tmp_path):
    data, calls = store
    out = tmp_path / "metrics" / "tiny" / "base.parquet"
    params = '{"maxk": 100, "local_id_neighbors": 32}'
    rc = main(["layers", "--store", "acts.zarr", "--group", "tiny/base", "--layers", "1-2", "--params-json", params,
               "--out", str(out), "--log", str(tmp_path / "analysis.log"), "--threads", "1"])
    assert rc == 0 and calls == [("tiny/base", 1), ("tiny/base", 2)]
    table = pd.read_parquet(out)
    assert table.columns.tolist() == ["model", "condition", "layer", "metric", "scale", "value", "error", "note"]
    assert str(table["scale"].dtype) == "Int64" and str(table["layer"].dtype) == "int64"
    assert (table["model"] == "tiny").all() and (table["condition"] == "base").all()
    X, meta = data["tiny/base"][2]
    expected = pd.DataFrame(layer_metric_rows(X, meta, {"maxk": 100, "local_id_neighbors": 32}, layer=2))
    got = table[table.layer == 2].reset_index(drop=True)
    assert got["metric"].tolist() == expected["metric"].tolist()
    np.testing.assert_allclose(got["value"], expected["value"], rtol=1e-12)
    assert "tiny/base layer 2: 400 x 128 analysed" in (tmp_path / "analysis.log").read_text()
    assert not [p for p in out.parent.iterdir() if p.name != "base.parquet"]  # no temporary left behind


def test_layers_degenerate_layer_zero(store, tmp_path):
    out = tmp_path / "m.parquet"
    assert main(["layers", "--store", "acts.zarr", "--group", "tiny/icl", "--layers", "0", "--out", str(out),
                 "--model", "M", "--condition", "C"]) == 0
    table = pd.read_parquet(out)
    assert (table["model"] == "M").all() and (table["condition"] == "C").all()
    assert table.loc[table.metric == "n_duplicates", "value"].item() == 399
    assert table.loc[table.metric == "id_twonn", "note"].item() == "only 1 distinct point(s): no neighbourhood geometry"


def test_layers_bad_input_fails_cleanly_without_output(store, tmp_path, capsys):
    data, _ = store
    X, meta = data["tiny/base"][1]
    X[5, 2] = np.nan
    out = tmp_path / "m.parquet"
    assert main(["layers", "--store", "acts.zarr", "--group", "tiny/base", "--layers", "1", "--out", str(out)]) == 1
    assert "layer 1: 1 row(s) hold NaN or inf, the first is row 5 (column 2" in capsys.readouterr().err
    assert not out.exists()
    assert main(["layers", "--store", "acts.zarr", "--group", "tiny/base", "--layers", "2-7", "--out", str(out)]) == 1
    assert "layers [3, 4, 5, 6, 7] not in the store (it has 0-2)" in capsys.readouterr().err
    assert main(["layers", "--store", "acts.zarr", "--group", "tiny/base", "--params-json", "{\"Z\": -1}",
                 "--out", str(out)]) == 1
    assert "--params-json: analysis parameter Z must be positive" in capsys.readouterr().err


def analysed(tmp_path, groups=("tiny/base", "tiny/icl"), blocks=("0-1", "2")) -> list[str]:
    """Run the per-layer analysis of each group, a job per block of layers, keeping neighbours; their artifacts."""
    artifacts = []
    for group in groups:
        for block in blocks:
            artifact = str(tmp_path / "neighbors" / group / f"layers_{block}.zarr")
            assert main(["layers", "--store", "acts.zarr", "--group", group, "--layers", block, "--params-json", FAST,
                         "--out", str(tmp_path / "metrics" / group / f"{block}.parquet"),
                         "--neighbors-out", artifact]) == 0
            artifacts.append(artifact)
    return artifacts


def test_layers_keep_each_layers_neighbours(store, tmp_path):
    data, calls = store
    [path] = analysed(tmp_path, groups=["tiny/icl"], blocks=["0-2"])
    artifact = NeighborArtifact(path)
    assert (artifact.group, artifact.layers, artifact.kept_neighbors) == ("tiny/icl", [0, 1, 2], 60)
    X, meta = data["tiny/icl"][2]
    np.testing.assert_array_equal(artifact.question_ids, meta["question_id"])
    stored, expected = artifact.layer(2), layer_neighbors(X, 60)
    np.testing.assert_array_equal(stored.distinct_index, expected.distinct_index)
    np.testing.assert_array_equal(stored.ind, expected.ind)
    np.testing.assert_allclose(stored.dist, expected.dist, rtol=1e-12)
    assert artifact.layer(0).ind.tolist() == [[0]] and (artifact.layer(0).distinct_index == 0).all()
    # Hashed as the activation store's groups are, so that provenance records take the hash as it is.
    from repgeom.provenance import zarr_group_hash
    assert artifact._root.attrs["content_sha256"] == zarr_group_hash(path)
    assert [p.name for p in (tmp_path / "neighbors" / "tiny" / "icl").iterdir()] == ["layers_0-2.zarr"]


def test_overlap_end_to_end(store, tmp_path):
    data, calls = store
    out = tmp_path / "overlap.parquet"
    artifacts = analysed(tmp_path)
    calls.clear()
    assert main(["overlap", "--store", "acts.zarr", "--groups", "tiny/base", "tiny/icl", "--k", "30",
                 "--neighbors", *artifacts, "--out", str(out)]) == 0
    assert calls == []  # every neighbour read from the artifacts, none recomputed from the store
    table = pd.read_parquet(out)
    assert table.columns.tolist() == ["model", "condition_a", "condition_b", "layer_a", "layer_b", "metric", "k",
                                      "value", "note"]
    pairs = list(zip(table.condition_a, table.condition_b, table.layer_a, table.layer_b))
    assert pairs == [("base", "icl", 0, 0), ("base", "icl", 1, 1), ("base", "base", 0, 1), ("icl", "icl", 0, 1),
                     ("base", "icl", 2, 2), ("base", "base", 1, 2), ("icl", "icl", 1, 2)]
    assert (table["metric"] == "data_overlap").all() and (table["k"] == 30).all()
    # Layer 0 holds one distinct vector: no neighbourhoods.
    degenerate = table[(table.layer_a == 0) | (table.layer_b == 0)]
    assert degenerate["value"].isna().all() and degenerate["note"].str.contains("only 1 distinct rows").all()
    # The others equal DADApy's overlap on the rows put in the same prompt order.
    base1, base2 = (data["tiny/base"][layer][0] for layer in (1, 2))
    icl2, icl_meta = data["tiny/icl"][2]
    icl2 = icl2[np.argsort(icl_meta["question_id"].to_numpy())]
    row = table[(table.condition_a == "base") & (table.layer_a == 2)].iloc[0]
    assert row.value == pytest.approx(data_overlap(knn(base2, 30), knn(icl2, 30), 30))
    assert 0.05 < row.value < 0.99
    row = table[(table.condition_a == "base") & (table.condition_b == "base") & (table.layer_a == 1)].iloc[0]
    assert row.value == pytest.approx(data_overlap(knn(base1, 30), knn(base2, 30), 30))


def test_overlap_rejects_a_different_prompt_set(store, tmp_path, capsys):
    data, _ = store
    for X, meta in data["tiny/icl"]:
        meta.loc[3, "question_id"] = "other"
    artifacts = analysed(tmp_path)
    assert main(["overlap", "--store", "acts.zarr", "--groups", "tiny/base", "tiny/icl", "--neighbors", *artifacts,
                 "--out", str(tmp_path / "o.parquet")]) == 1
    err = capsys.readouterr().err
    assert (f"tiny/icl (neighbour artifact {artifacts[2]!r}): not the same prompts as the first group (1 question ids "
            "only here") in err
    assert "different prompt set" in err and not (tmp_path / "o.parquet").exists()


def test_overlap_names_missing_or_unfit_neighbour_artifacts(store, tmp_path, capsys):
    artifacts = analysed(tmp_path)
    out = str(tmp_path / "o.parquet")
    command = ["overlap", "--store", "acts.zarr", "--groups", "tiny/base", "tiny/icl", "--out", out]
    assert main(command + ["--neighbors", *artifacts[:3]]) == 1
    assert "no neighbour artifact among --neighbors holds layers [2] of tiny/icl" in capsys.readouterr().err
    assert main(command + ["--k", "61", "--neighbors", *artifacts]) == 1
    err = capsys.readouterr().err
    assert f"neighbour artifact {artifacts[0]!r} keeps 60 neighbours per point, fewer than --k 61" in err
    assert main(command + ["--neighbors", *artifacts, artifacts[0]]) == 1
    assert "layer 0 of tiny/base is in two neighbour artifacts" in capsys.readouterr().err
    assert main(command + ["--neighbors", str(tmp_path / "nothing.zarr")]) == 1
    assert f"neighbour artifact {str(tmp_path / 'nothing.zarr')!r} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0-2", 4) == [0, 1, 2]
    assert parse_layers("3,0,1", 4) == [0, 1, 3]
    assert parse_layers("0-1,3", 4) == [0, 1, 3]
    with pytest.raises(ValueError, match="expected 'all'"):
        parse_layers("a-b", 4)


def test_overlap_rejects_mixed_models_and_repeated_groups(store, tmp_path, capsys):
    out = str(tmp_path / "o.parquet")
    command = ["overlap", "--store", "acts.zarr", "--neighbors", "n.zarr", "--out", out, "--groups"]
    assert main(command + ["tiny/base", "other/icl"]) == 1
    assert "--groups span models ['other', 'tiny']" in capsys.readouterr().err
    assert main(command + ["tiny/base", "tiny/base"]) == 1
    assert "--groups repeats a condition" in capsys.readouterr().err


def test_module_entry_point_runs():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "repgeom.analysis", "layers", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--params-json" in done.stdout and "--group" in done.stdout


def test_store_errors_are_reported_in_one_line(monkeypatch, tmp_path, capsys):
    def read_layer(path, group, layer):
        raise repgeom.store.StoreError(f"group {group!r} of {path!r} is incomplete")
    monkeypatch.setattr(repgeom.store, "read_layer", read_layer, raising=False)
    monkeypatch.setattr(repgeom.store, "n_layers", lambda path, group: 2, raising=False)
    monkeypatch.setattr(repgeom.store, "group_attrs", lambda path, group: {}, raising=False)
    assert main(["layers", "--store", "s.zarr", "--group", "m/c", "--out", str(tmp_path / "o.parquet")]) == 1
    err = capsys.readouterr().err
    assert "repgeom.analysis: error: group 'm/c' of 's.zarr' is incomplete" in err and "Traceback" not in err


# The data overlap on rows with exact duplicates: a row duplicated in either representation is dropped from both
# (first occurrences kept, as in the per-layer analysis), and the result is DADApy's on the distinct rows.

def with_duplicate_pairs(A: np.ndarray, B: np.ndarray, n_pairs: int = 6, seed: int = 11):
    """Copies of A and B where n_pairs rows of A repeat an earlier row of A, and n_pairs other rows of B an
    earlier row of B; returns them and the 2 * n_pairs rows that are duplicates in one side."""
    pick = np.random.default_rng(seed).choice(len(A), 4 * n_pairs, replace=False).reshape(2, 2, n_pairs)
    A, B = A.copy(), B.copy()
    for X, (first, second) in ((A, pick[0]), (B, pick[1])):
        source, copy = np.minimum(first, second), np.maximum(first, second)  # the copy comes later
        X[copy] = X[source]
    return A, B, np.sort(np.maximum(pick[:, 0], pick[:, 1]).ravel())


def data_overlap_distinct(A: np.ndarray, B: np.ndarray, k: int) -> tuple[float, int, str]:
    """chi_k between representations A and B of the same rows, on the rows distinct in both (`pair_overlap`), from
    the neighbours each side's layer analysis keeps (2k)."""
    sides = [OverlapSide(layer_neighbors(X, 2 * k), k, reload=lambda X=X: X) for X in (A, B)]
    return pair_overlap(*sides, k)


def dadapy_on_distinct_rows(A: np.ndarray, B: np.ndarray, k: int) -> tuple[float, int]:
    """DADApy 0.3.4 `return_data_overlap` on the rows that are no duplicate in A nor in B."""
    keep = np.zeros(len(A), dtype=bool)
    keep[np.intersect1d(deduplicate(A)[1], deduplicate(B)[1])] = True
    reference = Data(coordinates=A[keep], verbose=False)
    reference.compute_distances(maxk=k)
    return reference.return_data_overlap(coordinates=B[keep], k=k), int((~keep).sum())


def test_overlap_drops_rows_duplicated_in_either_side(mixture_data):
    X, _ = mixture_data  # 1500 rows
    Y = np.tanh(X @ np.random.default_rng(5).standard_normal((X.shape[1], 96)) / 30)
    A, B, duplicated = with_duplicate_pairs(X, Y)
    expected, n_dropped = dadapy_on_distinct_rows(A, B, 30)
    assert n_dropped == len(duplicated) == 12

    value, dropped, note = data_overlap_distinct(A, B, 30)
    assert value == pytest.approx(expected, abs=1e-12)
    assert dropped == 12
    assert note == "12 rows dropped from both, duplicates in A or B (duplicates: 6 in A, 6 in B); 1488 rows used"
    # Keeping the duplicates (their zero-distance ties broken by row order) gives another number.
    kept_duplicates = data_overlap(knn(A, 30), knn(B, 30), 30)
    assert abs(kept_duplicates - expected) > 1e-3
    # Symmetric in the sides, and without duplicates it is the plain overlap.
    assert data_overlap_distinct(B, A, 30)[0] == pytest.approx(expected, abs=1e-12)
    assert data_overlap_distinct(X, Y, 30) == (pytest.approx(data_overlap(knn(X, 30), knn(Y, 30), 30), abs=1e-15), 0, "")


def test_stored_neighbours_serve_pairs_and_are_recomputed_only_when_they_cannot(mixture_data):
    """A side's kNN on the rows a pair keeps, read off its stored lists, is the kNN of those rows; when the other
    side drops so many rows that a list keeps fewer than k, it is computed again (once per set of rows)."""
    X, _ = mixture_data
    A = X[:300]
    reloads = []
    side = OverlapSide(layer_neighbors(A, 20), 10, reload=lambda: reloads.append("A") or A)
    for drop_rows in ([], [5, 17, 260], list(np.argsort(((A - A[0]) ** 2).sum(1))[1:12])):
        drop = np.zeros(len(A), dtype=bool)
        drop[drop_rows] = True
        got = side.knn_without(drop)
        np.testing.assert_array_equal(got[1], knn(A[~drop], 10)[1])
    assert reloads == ["A"]  # the last set dropped row 0's 11 nearest: its list of 20 kept 9 < k
    side.knn_without(drop)
    assert reloads == ["A"]


def test_stored_neighbours_keep_the_tie_order_of_the_reference_rows():
    """Integer rows tie at every rank; the group stores them in another order than the reference. Read off the
    stored lists (and re-sorted by position), the kNN equals the one computed on the rows in the reference order,
    or, where a tie reaches past the stored lists, is computed again."""
    rng = np.random.default_rng(3)
    reference = rng.integers(-3, 4, size=(300, 5)).astype(np.float64)
    reference = reference[np.unique(reference, axis=0, return_index=True)[1]]  # distinct rows
    stored_order = rng.permutation(len(reference))
    order = np.argsort(stored_order)  # reference position -> stored row
    drop = np.zeros(len(reference), dtype=bool)
    drop[[4, 9, 100]] = True
    expected = knn(reference[~drop], 10)[1]
    for width, served in ((40, True), (12, False)):
        side = OverlapSide(layer_neighbors(reference[stored_order], width), 10, order=order, reload=lambda: reference)
        np.testing.assert_array_equal(side.knn_without(drop)[1], expected)
        assert (side._computed == {}) == served, width


def test_too_few_rows_left_after_dropping():
    X = np.repeat(np.arange(20.0)[:, None], 3, axis=1)
    Y = X.copy()
    X[10:] = X[0]  # 10 duplicates in A, none in B
    value, dropped, note = data_overlap_distinct(X, Y, 10)
    assert np.isnan(value) and dropped == 10
    assert note == "only 10 distinct rows in both (duplicates: 10 in A, 0 in B), need k + 1 = 11"


def _copy_row(data, group, layer, source, copy):
    """Make prompt `copy` of `group` at `layer` a duplicate of prompt `source` (question ids)."""
    X, meta = data[group][layer]
    where = {qid: i for i, qid in enumerate(meta["question_id"])}
    X[where[copy]] = X[where[source]]


def test_overlap_cli_drops_duplicates_of_either_condition(store, tmp_path, caplog):
    data, _ = store
    for source, copy in (("q0003", "q0100"), ("q0010", "q0250"), ("q0042", "q0399")):
        _copy_row(data, "tiny/base", 2, source, copy)
    for source, copy in (("q0007", "q0008"), ("q0120", "q0300")):
        _copy_row(data, "tiny/icl", 2, source, copy)
    out = tmp_path / "overlap.parquet"
    artifacts = analysed(tmp_path)
    with caplog.at_level(logging.INFO, logger="repgeom.analysis"):
        assert main(["overlap", "--store", "acts.zarr", "--groups", "tiny/base", "tiny/icl", "--layers", "1-2",
                     "--k", "30", "--neighbors", *artifacts, "--out", str(out)]) == 0
    table = pd.read_parquet(out).set_index(["condition_a", "condition_b", "layer_a", "layer_b"])

    base1, base2 = (data["tiny/base"][layer][0] for layer in (1, 2))
    icl1, icl_meta = data["tiny/icl"][1]
    order = np.argsort(icl_meta["question_id"].to_numpy())  # icl's rows in base's prompt order
    icl1, icl2 = icl1[order], data["tiny/icl"][2][0][order]
    for key, (A, B), dropped, counts in [
        (("base", "icl", 2, 2), (base2, icl2), 5, "3 in A, 2 in B"),
        (("base", "base", 1, 2), (base1, base2), 3, "0 in A, 3 in B"),
        (("icl", "icl", 1, 2), (icl1, icl2), 2, "0 in A, 2 in B"),
    ]:
        expected, n_dropped = dadapy_on_distinct_rows(A, B, 30)
        assert n_dropped == dropped
        row = table.loc[key]
        assert row.value == pytest.approx(expected, abs=1e-12), key
        assert row.note == (f"{dropped} rows dropped from both, duplicates in A or B (duplicates: {counts}); "
                            f"{400 - dropped} rows used")
        assert f"{key[0]} layer {key[2]} vs {key[1]} layer {key[3]}: {row.note}" in caplog.text
    assert table.loc[("base", "icl", 1, 1)].note == ""
