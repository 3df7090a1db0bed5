"""The kNN equals a float64 brute force, by either path (float32 candidates re-checked in float64, or float64 keys
for data whose neighbourhoods rows do not share); deduplication keeps first occurrences."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dadapy import Data
from scipy.spatial.distance import cdist
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors

from repgeom.analysis.neighbors import deduplicate, distinct_rows, knn
from repgeom.analysis import neighbors


@pytest.fixture(params=["float32 candidates", "float64 keys"])
def both_paths(request, monkeypatch):
    """A kNN test that uses this runs both ways: the choice (made on how much float32 candidates would save) only
    changes the time, never the result."""
    monkeypatch.setattr(neighbors, "_float32_keys_if_they_pay", lambda a, sq, n_candidates, block, union_rows:
                        neighbors._Keys(a, sq, torch.float32, block) if request.param == "float32 candidates" else None)


def assert_knn_equal(got, ref):
    """Indices identical; distances to 1e-13 relative (the Gram values kept for well-separated
    neighbours differ from the direct sums in the last bit) and exact where they are 0."""
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-13, atol=0)


def brute_force(X: np.ndarray, maxk: int):
    """Every pairwise distance as sqrt(sum((x_i - x_j)^2)) in float64, sorted by (distance, index),
    the point itself first."""
    x = torch.from_numpy(X)
    dist, ind = np.empty((len(X), maxk + 1)), np.empty((len(X), maxk + 1), dtype=np.int64)
    for r in range(len(X)):
        d = ((x - x[r]) ** 2).sum(1).sqrt().numpy()
        d[r] = -1.0
        order = np.argsort(d, kind="stable")[:maxk + 1]
        dist[r], ind[r] = np.maximum(d[order], 0.0), order
    return dist, ind


def with_duplicates(seed=0, n=600, D=64):
    """Gaussian data with an offset (large norms), exact duplicates, -0.0 vs 0.0, near-duplicates."""
    rng = np.random.default_rng(seed)
    X = 5.0 + 3.0 * rng.standard_normal((n, D))
    X[10] = X[3]
    X[11] = X[3]
    X[12, :] = 0.0
    X[13, :] = -0.0
    X[20] = X[4] + 1e-9            # near-duplicates: the Gram trick cannot rank these, the recheck must
    X[21] = X[4] * (1 + 1e-12)
    X[22] = X[4] * (1 - 1e-7)
    return X


def test_deduplicate_keeps_first_occurrences_in_order():
    X = with_duplicates()
    U, kept, removed = deduplicate(X)
    assert removed == 3  # rows 10 and 11 repeat row 3; row 13 (-0.0) repeats row 12 (0.0)
    assert kept.tolist() == [i for i in range(len(X)) if i not in (10, 11, 13)]
    np.testing.assert_array_equal(U, X[kept])
    assert U.dtype == np.float64
    same_kept, distinct_index = distinct_rows(X)
    np.testing.assert_array_equal(same_kept, kept)
    first = {10: 3, 11: 3, 13: 12}
    np.testing.assert_array_equal(kept[distinct_index], [first.get(i, i) for i in range(len(X))])


@pytest.mark.usefixtures("both_paths")
@pytest.mark.parametrize("block, D", [(None, 64), (97, 64), (97, 200)])
def test_knn_equals_float64_brute_force(block, D):
    """Blocks of several sizes; the float32 keys computed a panel of rows at a time (N > 4 D) or whole (N <= 4 D)."""
    X = with_duplicates(D=D)
    dist, ind = knn(X, 80, block=block)
    assert_knn_equal((dist, ind), brute_force(X, 80))
    # DADApy's convention: the point itself first at distance 0, also for duplicated rows.
    assert (ind[:, 0] == np.arange(len(X))).all() and (dist[:, 0] == 0).all()
    assert ind[3, :3].tolist() == [3, 10, 11] and dist[3, 1:3].tolist() == [0.0, 0.0]
    assert ind[11, :3].tolist() == [11, 3, 10]
    assert dist[4, 1] > 0 and ind[4, 1:4].tolist() == [21, 20, 22]


def assert_same_where_resolved(got, ref, rtol):
    """Distances within rtol, and indices identical wherever a neighbour's distance is further than
    rtol from both of its sorted neighbours' (closer ones may be ordered by the last bit of a sum)."""
    (dist, ind), (ref_dist, ref_ind) = got, ref
    np.testing.assert_allclose(dist, ref_dist, rtol=rtol, atol=0)
    gaps = np.diff(ref_dist, axis=1, prepend=-1.0, append=np.inf)
    resolved = (gaps[:, :-1] > rtol * ref_dist) & (gaps[:, 1:] > rtol * ref_dist)
    assert resolved.mean() > 0.99
    np.testing.assert_array_equal(ind[resolved], ref_ind[resolved])


@pytest.mark.usefixtures("both_paths")
def test_knn_matches_scipy_cdist():
    """Against an independent brute force that sums in another order."""
    X = with_duplicates(seed=1, n=500, D=300)
    full = cdist(X, X)
    np.fill_diagonal(full, -1.0)
    ref_ind = np.argsort(full, axis=1, kind="stable")[:, :61]
    ref = (np.maximum(np.take_along_axis(full, ref_ind, 1), 0.0), ref_ind)
    assert_same_where_resolved(knn(X, 60), ref, rtol=1e-14)


@pytest.mark.usefixtures("both_paths")
def test_knn_widens_candidate_sets_it_cannot_prove_complete():
    """60 copies of one point and maxk 20: a copy's first candidate set (maxk + 16 columns) cannot hold all the
    copies tied at distance 0, so it is widened until it provably does; ties stay in index order."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 16))
    X[100:160] = X[100]
    dist, ind = knn(X, 20)
    assert_knn_equal((dist, ind), brute_force(X, 20))
    assert ind[130, :4].tolist() == [130, 100, 101, 102]


@pytest.mark.usefixtures("both_paths")
@pytest.mark.parametrize("maxk", [5, 37, 120])
def test_knn_equals_sklearn_brute_force_with_ties(maxk):
    """Small integer coordinates: every distance is exact in float64 (sklearn's Gram trick too), and rows tie at
    every rank, across the maxk boundary too, and repeat each other. sklearn's brute force gives the same
    distances and, tie order aside, the same neighbours; the tie order is the row index."""
    rng = np.random.default_rng(7)
    X = rng.integers(-2, 3, size=(400, 6)).astype(np.float64)
    dist, ind = knn(X, maxk, block=64)
    ref_dist, ref_ind = NearestNeighbors(n_neighbors=maxk + 1, algorithm="brute").fit(X).kneighbors(X)
    # sklearn puts a row's exact copies anywhere among its zero distances, itself included.
    np.testing.assert_allclose(dist[:, 1:], ref_dist[:, 1:], rtol=1e-13, atol=0)
    last = ref_dist[:, -1:]
    for row in range(len(X)):  # neighbours not tied with the last one are the same sets
        assert set(ind[row, 1:][ref_dist[row, 1:] < last[row]]) == set(ref_ind[row][ref_dist[row] < last[row]]) - {row}
    full = pairwise_distances(X, metric="euclidean", n_jobs=1)
    np.fill_diagonal(full, -1.0)  # the point itself first, then (distance, index)
    np.testing.assert_array_equal(ind, np.argsort(full, axis=1, kind="stable")[:, :maxk + 1])


def test_knn_of_small_layers_computes_every_pair_in_float64():
    """maxk near N: the float32 pass is skipped, the result is the same."""
    X = with_duplicates(seed=5, n=150, D=32)
    assert_knn_equal(knn(X, 100), brute_force(X, 100))
    assert_knn_equal(knn(X, 149), brute_force(X, 149))


@pytest.mark.usefixtures("both_paths")
@pytest.mark.parametrize("scale", [2.0 ** -90, 1.0, 3.0 ** 40])
def test_knn_bounds_hold_at_any_magnitude_and_offset(scale):
    """A large common offset, rows of very different norms and values far outside float32's comfortable range:
    the keys are bounds (float32 ones on the scaled rows), so the result is still the float64 brute force."""
    rng = np.random.default_rng(8)
    X = 1e4 + rng.standard_normal((500, 48)) * np.exp(rng.uniform(-3, 3, (500, 1)))
    X[40] = X[41] + 1e-9
    X *= scale
    assert_knn_equal(knn(X, 40, block=128), brute_force(X, 40))


@pytest.mark.usefixtures("both_paths")
def test_knn_feeds_dadapy_like_its_own():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((800, 40)) @ rng.standard_normal((40, 200))
    dist, ind = knn(X, 100)
    data = Data(coordinates=X, verbose=False)
    data.compute_distances(maxk=100)
    np.testing.assert_array_equal(ind, data.dist_indices)
    # sklearn's own Gram-trick distances are off by ~1e-6 at distance 0 (the point itself)
    np.testing.assert_allclose(dist[:, 1:], data.distances[:, 1:], rtol=1e-10)


def test_knn_rejects_maxk_out_of_range():
    with pytest.raises(ValueError, match="maxk must be between 1 and N - 1 = 9"):
        knn(np.eye(10), 10)


@pytest.mark.usefixtures("both_paths")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_knn_gpu_equals_float64_brute_force():
    X = with_duplicates(seed=4, n=3000, D=512)
    got = knn(X, 500, device="cuda")
    assert_same_where_resolved(got, brute_force(X, 500), rtol=1e-13)
    assert got[1][4, 1:4].tolist() == [21, 20, 22] and got[1][3, :3].tolist() == [3, 10, 11]


def test_the_float32_path_is_chosen_where_rows_share_neighbourhoods():
    """Clusters and a curved low-dimensional manifold: neighbouring rows share most of their candidates, so float32
    candidates re-checked in float64 cost less than a float64 Gram matrix; isotropic noise, or candidates that are
    a large part of the points: they do not."""
    rng = np.random.default_rng(0)
    sphere = rng.standard_normal((3000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    layers = {"clusters": 10 * rng.standard_normal((30, 64))[rng.integers(0, 30, 3000)] + rng.standard_normal((3000, 64)),
              "sphere": sphere @ rng.standard_normal((3, 64)), "noise": rng.standard_normal((3000, 64))}
    chosen = {}
    for name, X in layers.items():
        x = torch.from_numpy(X)
        a = x - x.mean(0)
        sq = (a * a).sum(1)
        for n_candidates in (116, 400):
            keys = neighbors._float32_keys_if_they_pay(a, sq, n_candidates, 2048, 128)
            chosen[name, n_candidates] = keys is not None and keys.dtype == torch.float32
    assert chosen == {("clusters", 116): True, ("sphere", 116): True, ("noise", 116): False,
                      ("clusters", 400): False, ("sphere", 400): False, ("noise", 400): False}


@pytest.mark.usefixtures("both_paths")
def test_knn_of_identical_rows():
    """Every distance 0 (no scale to take from the norms): the rows in index order, each first in its own row."""
    for X in (np.ones((50, 3)), np.r_[np.ones((40, 3)), np.zeros((10, 3))]):
        dist, ind = knn(X, 5)
        assert (dist == 0).all() and ind[1].tolist() == [1, 0, 2, 3, 4, 5]
        assert ind[45].tolist() == ([45, 0, 1, 2, 3, 4] if len(np.unique(X, axis=0)) == 1 else [45, 40, 41, 42, 43, 44])


def test_deduplicate_tells_hash_collisions_from_duplicates():
    """Two distinct rows built to have the same hash are both kept; a real copy is removed."""
    w0, w1 = (int(w) for w in neighbors.row_hash_weights(2))
    a = np.array([1.5, -2.25])
    bits_a = a.view(np.uint64).astype(object)
    rng = np.random.default_rng(0)
    while True:  # choose b0, then the b1 that makes w0*b0 + w1*b1 equal a's hash modulo 2^64
        b0 = int(rng.standard_normal(1).view(np.uint64)[0])
        b1 = ((w0 * (int(bits_a[0]) - b0) + w1 * int(bits_a[1])) * pow(w1, -1, 2**64)) % 2**64
        b = np.array([b0, b1], dtype=np.uint64).view(np.float64)
        if np.isfinite(b).all():
            break
    X = np.stack([a, b, a, b, np.array([0.0, 1.0])])
    keys = X.view(np.uint64) @ neighbors.row_hash_weights(2)
    assert keys[0] == keys[1] and not np.array_equal(X[0], X[1])
    U, kept, removed = deduplicate(X)
    assert kept.tolist() == [0, 1, 4] and removed == 2
