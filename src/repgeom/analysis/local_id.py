"""Pointwise local intrinsic dimension ("Less is More", Ruppik et al.), vectorised.

For each point i, TwoNN runs inside S_i, its L nearest neighbours (i itself excluded): for every
j in S_i, mu_j = r2/r1 with r1, r2 the distances from j to its two nearest members of S_i \\ {j};
the largest `discard_fraction` of the mu are dropped and -log(1 - F_emp) is fitted against log(mu)
by a line through the origin. This is exactly `skdim.id.TwoNN(discard_fraction).fit_pw(X, n_neighbors=L)`.

Instead of L x L distances per neighbourhood (N L^2 D flops, more than the kNN itself), r1 and r2
are read off j's own exact neighbour list: the first two entries of that list that belong to S_i are
j's two nearest members of S_i. Only pairs whose list holds fewer than two members are computed
directly.
"""
from __future__ import annotations

import numpy as np

# j's list is scanned in growing windows: most pairs find two members among j's first few neighbours.
_FIRST_WINDOW, _GROWTH = 32, 4


def local_twonn(X: np.ndarray, dist: np.ndarray, ind: np.ndarray, n_neighbors: int = 128,
                discard_fraction: float = 0.1, batch: int = 256) -> np.ndarray:
    """Local TwoNN ID of every row of X, from its exact kNN (`knn(X, maxk)` with maxk >= n_neighbors)."""
    n, width = ind.shape[0], ind.shape[1] - 1
    if width < n_neighbors:
        raise ValueError(f"local ID needs at least {n_neighbors} neighbours per point, the kNN has {width}")
    ids = np.empty(n)
    for b0 in range(0, n, batch):
        centres = np.arange(b0, min(n, b0 + batch))
        hoods = ind[centres, 1:n_neighbors + 1]
        r = _two_nearest_in_hood(X, dist, ind, hoods)
        ids[centres] = _twonn_fit(r[..., 1] / r[..., 0], discard_fraction)
    return ids


def _two_nearest_in_hood(X, dist, ind, hoods):
    """r[b, l] = distances from hoods[b, l] to its two nearest other members of hoods[b]."""
    n_hoods, size = hoods.shape
    member = np.zeros((n_hoods, len(X)), dtype=bool)
    member[np.arange(n_hoods)[:, None], hoods] = True
    pair_hood = np.repeat(np.arange(n_hoods), size)
    pair_point = hoods.ravel()
    r = np.full((len(pair_point), 2), np.nan)
    found = np.zeros(len(pair_point), dtype=np.int64)
    lo, size_window = 1, _FIRST_WINDOW
    while lo < ind.shape[1]:
        hi, size_window = min(ind.shape[1], lo + size_window), size_window * _GROWTH
        todo = np.flatnonzero(found < 2)
        if len(todo) == 0:
            break
        is_member = member.ravel()[(pair_hood[todo] * len(X))[:, None] + ind[pair_point[todo], lo:hi]]
        rows = np.arange(len(todo))
        for _ in range(2):  # the window's next member in list order, for the pairs that still lack one
            column = is_member.argmax(axis=1)
            hit = is_member[rows, column] & (found[todo] < 2)
            take = todo[hit]
            r[take, found[take]] = dist[pair_point[take], lo + column[hit]]
            found[take] += 1
            is_member[rows, column] = False
        lo = hi
    for b in np.unique(pair_hood[found < 2]):
        todo = np.flatnonzero((pair_hood == b) & (found < 2))
        r[todo] = _two_nearest_direct(X, pair_point[todo], hoods[b])
    return r.reshape(n_hoods, size, 2)


def _two_nearest_direct(X, points, hood):
    """Two smallest distances from each of `points` (members of `hood`) to the other members."""
    # Centring on the neighbourhood keeps the Gram trick accurate at the neighbourhood's scale.
    centre = X[hood].mean(0)
    Y, Q = X[hood] - centre, X[points] - centre
    d2 = (Q * Q).sum(1)[:, None] + (Y * Y).sum(1)[None, :] - 2.0 * Q @ Y.T
    d2[points[:, None] == hood[None, :]] = np.inf
    return np.sqrt(np.maximum(np.sort(np.partition(d2, 1, axis=1)[:, :2], axis=1), 0.0))


def _twonn_fit(mu: np.ndarray, discard_fraction: float) -> np.ndarray:
    """TwoNN slope per row of mu (rows = neighbourhoods), as skdim's TwoNN(method='linear')."""
    size = mu.shape[1]
    n_keep = int(size * (1 - discard_fraction))
    log_mu = np.log(np.sort(mu, axis=1)[:, :n_keep])
    y = -np.log(1 - np.arange(1, n_keep + 1) / size)
    return (log_mu @ y) / (log_mu * log_mu).sum(axis=1)


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean, std and the 5/25/50/75/95 % quantiles of the pointwise IDs."""
    q = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            **{f"q{int(p * 100):02d}": float(v) for p, v in zip((0.05, 0.25, 0.5, 0.75, 0.95), q)}}
