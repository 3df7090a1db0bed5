"""The vectorised local ID equals skdim's TwoNN(discard_fraction=0.1).fit_pw(X, n_neighbors=L)."""
from __future__ import annotations

import numpy as np
import pytest
import skdim

from repgeom.analysis.local_id import local_twonn
from repgeom.analysis.neighbors import knn
from repgeom.analysis import local_id


def skdim_local_id(X, L):
    return skdim.id.TwoNN(discard_fraction=0.1).fit_pw(X, n_neighbors=L).dimension_pw_


def test_local_id_equals_skdim(sphere5):
    X = sphere5[:700, :128]  # a projection of the sphere: fewer points and coordinates keep skdim quick
    dist, ind = knn(X, 200)
    ours = local_twonn(X, dist, ind, 128, 0.1)
    np.testing.assert_allclose(ours, skdim_local_id(X, 128), rtol=0, atol=1e-8)
    assert np.isfinite(ours).all()


def test_local_id_direct_fallback_equals_skdim(monkeypatch):
    """High-dimensional data and a kNN of width L: many pairs find fewer than two neighbourhood members
    in their own neighbour list and are computed directly."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((600, 40))
    direct = []
    original = local_id._two_nearest_direct
    monkeypatch.setattr(local_id, "_two_nearest_direct", lambda X_, p, h: direct.append(len(p)) or original(X_, p, h))
    dist, ind = knn(X, 12)
    ours = local_twonn(X, dist, ind, 12, 0.1)
    assert sum(direct) > 100
    np.testing.assert_allclose(ours, skdim_local_id(X, 12), rtol=0, atol=1e-8)


def test_local_id_of_known_dimension(sphere5):
    dist, ind = knn(sphere5, 128)
    ids = local_twonn(sphere5, dist, ind, 128, 0.1)
    assert np.mean(ids) == pytest.approx(5, rel=0.1)
    stats = local_id.summarize(ids)
    assert stats["q05"] < stats["q25"] < stats["q50"] < stats["q75"] < stats["q95"]
    assert stats["mean"] == pytest.approx(np.mean(ids)) and stats["std"] == pytest.approx(np.std(ids))


def test_local_id_needs_enough_neighbours(sphere5):
    dist, ind = knn(sphere5[:300], 50)
    with pytest.raises(ValueError, match="needs at least 128 neighbours"):
        local_twonn(sphere5[:300], dist, ind, 128)


def test_token_sample_local_id_drops_duplicates_and_equals_skdim(sphere5):
    """The all-token sample's local ID: exact repeats (a token seen in many prompts) are removed first."""
    from repgeom.analysis.layer import token_local_id_rows

    X = sphere5[:500, :128]
    with_repeats = np.concatenate([X, X[:50]])
    rows = {r["metric"]: r["value"] for r in token_local_id_rows(with_repeats, {"local_id_neighbors": 64})}
    assert rows["token_n_points"] == 500 and rows["token_n_duplicates"] == 50
    expected = skdim_local_id(X, 64)
    assert rows["token_local_id_mean"] == pytest.approx(expected.mean(), abs=1e-8)
    assert rows["token_local_id_q50"] == pytest.approx(np.quantile(expected, 0.5), abs=1e-8)
