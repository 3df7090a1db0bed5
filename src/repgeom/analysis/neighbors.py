"""Duplicate removal and exact k-nearest neighbours in DADApy's convention.

`knn` returns what `dadapy.Data.compute_distances` stores: `dist, ind` of shape [N, maxk + 1], column 0
the point itself at distance 0, then neighbours by increasing Euclidean distance, ties by row index.
It equals a float64 brute force: the candidate neighbours come from a blocked float64 Gram matrix
(|a|^2 + |b|^2 - 2 a.b, one GEMM per block, then top-k), and every value whose rank or size the Gram
trick cannot vouch for (a rigorous rounding-error bound decides) is recomputed directly as
sum((x_i - x_j)^2) in float64. The code is torch, so the same path runs on the GPU and on the CPU,
where it is faster than sklearn's brute force (DADApy's `compute_distances`): it computes each
symmetric block once.
"""
from __future__ import annotations

import numpy as np
import torch

_U = 2.0 ** -53  # unit roundoff of float64
# Gram values are trusted only when their worst-case error is below this fraction of the value;
# others are recomputed directly (this keeps every reported distance within ~1e-7 relative of the
# brute force in the worst case, ~1e-14 in practice, and near-duplicates exact).
_TRUSTED_REL_ERROR = 1e-7


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None means the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def deduplicate(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove exact duplicate rows, keeping first occurrences in their original order.

    Returns (X_unique as float64, kept_index into X, number of rows removed).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    # Rows are grouped by a hash of their bits and only rows with equal hashes are compared.
    keys = np.empty(len(X), dtype=np.uint64)
    weights = row_hash_weights(X.shape[1])
    for s in range(0, len(X), 1024):
        # `+ 0.0` turns -0.0 into 0.0, so rows equal as numbers have equal bits; the integer products
        # wrap modulo 2^64, so the hash does not depend on the order of the sum.
        keys[s:s + 1024] = (X[s:s + 1024] + 0.0).view(np.uint64) @ weights
    order = np.argsort(keys, kind="stable")  # equal keys stay in row order
    starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
    ends = np.r_[starts[1:], len(X)]
    duplicate = np.zeros(len(X), dtype=bool)
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        firsts = [order[start]]
        for row in order[start + 1:end]:
            if any(np.array_equal(X[row], X[first]) for first in firsts):
                duplicate[row] = True
            else:  # a hash collision: another distinct row
                firsts.append(row)
    kept = np.flatnonzero(~duplicate)
    if len(kept) == len(X):
        return X, kept, 0
    return X[kept], kept, len(X) - len(kept)


def duplicate_rows(X: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows `deduplicate` removes: exact copies of an earlier row (first occurrences stay)."""
    duplicate = np.ones(len(X), dtype=bool)
    duplicate[deduplicate(X)[1]] = False
    return duplicate


def row_hash_weights(n_columns: int) -> np.ndarray:
    """Fixed odd 64-bit weights of the row hash."""
    return np.random.default_rng(0).integers(1, 2**63, size=n_columns, dtype=np.uint64) | np.uint64(1)


def knn(X: np.ndarray, maxk: int, device: str | torch.device | None = None,
        block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN of every row of X among the rows of X: (dist [N, maxk+1] float64, ind [N, maxk+1] int64).

    Column 0 is the row itself (distance 0, also when it has exact duplicates), so the result can be
    handed to DADApy as `Data(coordinates=X, distances=(dist, ind), maxk=maxk)`.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, dim = X.shape
    if not 1 <= maxk <= n - 1:
        raise ValueError(f"maxk must be between 1 and N - 1 = {n - 1}, got {maxk}")
    dev = resolve_device(device)
    x = torch.from_numpy(X).to(dev)
    # Centring leaves distances unchanged and shrinks the norms, which is what the Gram error scales with.
    a = x - x.mean(0)
    sq = (a * a).sum(1)
    # A few candidates beyond maxk + 1 let the check below prove that no true neighbour was missed.
    n_cand = min(n, maxk + 1 + max(16, maxk // 32))
    # Rigorous bound on |Gram d^2 - exact d^2| is tau * (|a_i|^2 + |a_j|^2): dot products (2 D u),
    # the final additions and the centring (a few u).
    tau = (2 * dim + 32) * _U
    block = block or (4096 if dev.type == "cuda" else 2048)
    cand_d2, cand = _gram_candidates(a, sq, n_cand, block)
    dist = np.empty((n, maxk + 1))
    ind = np.empty((n, maxk + 1), dtype=np.int64)
    for r0 in range(0, n, block):
        rows = torch.arange(r0, min(n, r0 + block), device=dev)
        # Column 0 is the point itself (its d^2 was set to -inf).
        bd, bi = _exact_block(x, sq, rows, cand_d2[rows, 1:], cand[rows, 1:], tau, maxk, complete_set=n_cand == n)
        dist[r0:r0 + len(rows), 0], ind[r0:r0 + len(rows), 0] = 0.0, rows.cpu().numpy()
        dist[r0:r0 + len(rows), 1:], ind[r0:r0 + len(rows), 1:] = bd.cpu().numpy(), bi.cpu().numpy()
    return dist, ind


def _gram_candidates(a, sq, n_cand, block):
    """Per row, the n_cand smallest Gram d^2 = |a_i|^2 + |a_j|^2 - 2 a_i.a_j, sorted (the row itself
    first, at -inf), and their columns. Each block (I, J) with I <= J is computed once and serves the
    rows of I and, transposed, the rows of J: about half the GEMM work of the full matrix."""
    n = len(a)
    best_d2 = a.new_full((n, n_cand), torch.inf)
    best_ind = torch.zeros((n, n_cand), dtype=torch.int64, device=a.device)
    starts = range(0, n, block)
    for i0 in starts:
        rows_i = slice(i0, min(n, i0 + block))
        for j0 in starts[i0 // block:]:
            rows_j = slice(j0, min(n, j0 + block))
            d2 = torch.addmm(sq[None, rows_j], a[rows_i], a[rows_j].T, alpha=-2.0).add_(sq[rows_i, None])
            if i0 == j0:
                d2.fill_diagonal_(-torch.inf)  # the point itself comes first
            # The direct block with the last columns is the last one any row of I sees: sort there.
            _merge(best_d2, best_ind, rows_i, d2, j0, last=j0 == starts[-1])
            if j0 != i0:
                _merge(best_d2, best_ind, rows_j, d2.T, i0, last=False)
    return best_d2, best_ind


def _merge(best_d2, best_ind, rows, d2, col0, last):
    """Fold a block of d^2 (columns col0 + j) into the running n_cand smallest of `rows`."""
    n_cand = best_d2.shape[1]
    values, pick = torch.topk(torch.cat([best_d2[rows], d2], 1), n_cand, dim=1, largest=False, sorted=last)
    kept = torch.gather(best_ind[rows], 1, pick.clamp(max=n_cand - 1))
    best_d2[rows], best_ind[rows] = values, torch.where(pick >= n_cand, pick - n_cand + col0, kept)


def _exact_block(x, sq, rows, approx, cand, tau, maxk, complete_set):
    """Exact maxk nearest (self excluded) from Gram candidates sorted by approximate d^2."""
    # One error bound per row (the largest over its candidates), so that an interval that misses its
    # two sorted neighbours' intervals misses all of them.
    err = (tau * (sq[rows] + sq[cand].amax(1)))[:, None]
    apart = approx.diff(dim=1) > 2 * err
    edge = torch.ones_like(apart[:, :1])
    # A value whose error interval meets no other candidate's has its rank right whatever the error;
    # it is kept as is when the error is also small against the value. Everything else is recomputed.
    trusted = torch.cat([edge, apart], 1) & torch.cat([apart, edge], 1) & (err <= _TRUSTED_REL_ERROR * approx)
    if not complete_set:
        # Points outside the candidates have Gram d^2 >= the last candidate's; if even their lower bound
        # is above the maxk-th candidate's upper bound, the true maxk nearest are all candidates.
        # Rows where that cannot be proven are redone by brute force on the whole row.
        outside_lo = approx[:, -1] - tau * (sq[rows] + sq.max())
        unproven = torch.nonzero(approx[:, maxk - 1] + err[:, 0] >= outside_lo)[:, 0]
        for r in unproven.tolist():
            approx[r], cand[r] = _brute_force_row(x, rows[r], approx.shape[1])
            trusted[r] = True
    redo = torch.nonzero(~trusted)
    value = approx.clone()
    value[redo[:, 0], redo[:, 1]] = _direct_d2(x, rows[redo[:, 0]], cand[redo[:, 0], redo[:, 1]])
    d = value.clamp_(min=0.0).sqrt_()
    # Only rows with recomputed values can be out of order: sort those by (distance, index), as a
    # stable sort by distance of the candidates put in index order first.
    resort = torch.unique(redo[:, 0])
    if len(resort):
        sub_d, sub_c = d[resort], cand[resort]
        by_index = torch.argsort(sub_c, dim=1)
        sub_c, sub_d = torch.gather(sub_c, 1, by_index), torch.gather(sub_d, 1, by_index)
        sub_d, order = torch.sort(sub_d, dim=1, stable=True)
        d[resort], cand[resort] = sub_d, torch.gather(sub_c, 1, order)
    return d[:, :maxk], cand[:, :maxk]


def _direct_d2(x, i, j, chunk_bytes=64 << 20):
    """sum((x_i - x_j)^2) for index pairs, in chunks so the differences fit in memory."""
    out = x.new_empty(len(i))
    step = max(1, chunk_bytes // (8 * x.shape[1]))
    for s in range(0, len(i), step):
        diff = x[i[s:s + step]] - x[j[s:s + step]]
        out[s:s + step] = (diff * diff).sum(1)
    return out


def _brute_force_row(x, r, n_keep):
    """Exact d^2 from row r to every row, the n_keep smallest (ties by index), the row itself excluded."""
    others = torch.arange(len(x), device=x.device)
    d2 = _direct_d2(x, torch.full_like(others, int(r)), others)
    d2[r] = torch.inf
    d2, order = torch.sort(d2, stable=True)
    return d2[:n_keep], order[:n_keep]
