"""The neighbour artifact: what the per-layer analysis keeps, written whole or not at all, read back as kept."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from repgeom.analysis.neighbor_artifact import (NeighborArtifact, NeighborArtifactError, layer_neighbors,
                                                writing_artifact)
from repgeom.provenance import zarr_group_hash


def layers_with_duplicates():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 6))
    X[[7, 30]] = X[3]  # two copies of row 3
    few = np.repeat(rng.standard_normal((4, 6)), [20, 10, 10, 10], axis=0)  # 4 distinct points
    return {2: X, 5: few}


def test_round_trip_keeps_every_layer_and_its_copies(tmp_path):
    path = tmp_path / "layers_2-5.zarr"
    question_ids = [f"q{i}" for i in range(50)]
    layers = layers_with_duplicates()
    with writing_artifact(path, group="m/c", layers=[2, 5], question_ids=question_ids, kept_neighbors=8) as add:
        for layer, X in layers.items():
            add(layer, layer_neighbors(X, 20))  # kept 8 wide
    artifact = NeighborArtifact(path)
    assert (artifact.group, artifact.layers, artifact.kept_neighbors) == ("m/c", [2, 5], 8)
    assert artifact.question_ids.tolist() == question_ids
    for layer, X in layers.items():
        stored, expected = artifact.layer(layer), layer_neighbors(X, 8)
        np.testing.assert_array_equal(stored.distinct_index, expected.distinct_index)
        np.testing.assert_array_equal(stored.ind, expected.ind)
        np.testing.assert_allclose(stored.dist, expected.dist, rtol=1e-12)  # Gram values, from another kNN width
    assert artifact.layer(2).distinct_index[[3, 7, 30]].tolist() == [3, 3, 3] and artifact.layer(2).width == 8
    assert artifact.layer(5).width == 3 and artifact.layer(5).complete  # 4 distinct points: all of them
    assert zarr.open_group(str(path), mode="r").attrs["content_sha256"] == zarr_group_hash(path)
    with pytest.raises(NeighborArtifactError, match=r"holds layers \[2, 5\], not 3"):
        artifact.layer(3)


def test_nothing_is_left_unless_every_layer_was_added(tmp_path):
    path = tmp_path / "layers_2-5.zarr"
    X = layers_with_duplicates()[2]
    with pytest.raises(ValueError, match=r"layers \[5\] were never added"):
        with writing_artifact(path, group="m/c", layers=[2, 5], question_ids=list(range(50)), kept_neighbors=8) as add:
            add(2, layer_neighbors(X, 8))
    with pytest.raises(RuntimeError, match="killed"):
        with writing_artifact(path, group="m/c", layers=[2], question_ids=list(range(50)), kept_neighbors=8) as add:
            add(2, layer_neighbors(X, 8))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_an_artifact_replaces_an_older_one(tmp_path):
    path = tmp_path / "layers_2.zarr"
    X = layers_with_duplicates()[2]
    for kept in (8, 4):
        with writing_artifact(path, group="m/c", layers=[2], question_ids=list(range(50)), kept_neighbors=kept) as add:
            add(2, layer_neighbors(X, 8))
    assert NeighborArtifact(path).layer(2).width == 4 and [p.name for p in tmp_path.iterdir()] == ["layers_2.zarr"]


def test_what_is_not_an_artifact_is_named(tmp_path):
    with pytest.raises(NeighborArtifactError, match="does not exist; run the per-layer analysis"):
        NeighborArtifact(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["complete"] = True
    with pytest.raises(NeighborArtifactError, match="is not a complete repgeom neighbour artifact"):
        NeighborArtifact(tmp_path / "other.zarr")
