"""Duplicate removal and exact k-nearest neighbours in DADApy's convention.

`knn` returns what `dadapy.Data.compute_distances` stores: `dist, ind` of shape [N, maxk + 1], column 0
the point itself at distance 0, then neighbours by increasing Euclidean distance, ties by row index.
It equals a float64 brute force (every distance sqrt(sum((x_i - x_j)^2)) in float64, sorted by
(distance, index)), in two passes:

1. Candidates, in float32. One float32 Gram matrix, each symmetric block computed once (or a panel of rows
   at a time when keeping every pair would take more memory than the layer's float64 copies), gives every
   pair a rigorous lower and upper bound of its squared distance: the float32 rounding error is at most
   tau32 * (|a_i|^2 + |a_j|^2) on the centred rows a. A row's candidates are the points whose lower bound
   is at most the maxk-th smallest upper bound: a set that provably holds the true maxk nearest and every
   point tied with the last of them, usually a few more than maxk.
2. Exact values, in float64, for the candidates only. Rows are taken in blocks of neighbours (breadth-first
   over the candidates), whose candidates are mostly the same, and each block's in one float64 GEMM over the
   union of their columns. A value whose rank or size the float64 Gram error bound cannot vouch for is
   recomputed directly as sum((x_i - x_j)^2), and ties are put in index order.

The float64 work is then a small multiple of maxk / N of a full float64 Gram matrix, and the whole costs
about one float32 Gram matrix. When the candidates would be most points anyway (maxk near N: small layers)
pass 1 is skipped and every pair is computed in float64. The code is torch, so the same path runs on the
GPU and on the CPU.
"""
from __future__ import annotations

import contextlib
import math
from collections import deque

import numpy as np
import torch

from repgeom.analysis.params import KEY_PANEL_BYTES, keys_kept_whole

_U64 = 2.0 ** -53  # unit roundoff of float64
_U32 = 2.0 ** -24  # unit roundoff of float32
# Float64 Gram values are trusted only when their worst-case error is below this fraction of the value;
# others are recomputed directly (this keeps every reported distance within ~1e-7 relative of the
# brute force in the worst case, ~1e-14 in practice, and near-duplicates exact).
_TRUSTED_REL_ERROR = 1e-7
# Rows per float64 GEMM on the CPU: unions of 128 neighbouring rows' candidates stay close to one row's.
_CPU_UNION_ROWS = 128
# Neighbours per row that the block ordering follows.
_ORDER_NEIGHBOURS = 32


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None means the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def distinct_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept, distinct_index): the first occurrence of each distinct row, in order, and for every row the position of
    its value in `kept`. Rows are equal when their values are (so -0.0 equals 0.0)."""
    first = _first_occurrences(np.ascontiguousarray(X, dtype=np.float64))
    kept = np.flatnonzero(first == np.arange(len(X)))
    return kept, np.searchsorted(kept, first)


def _first_occurrences(X: np.ndarray) -> np.ndarray:
    """For every row, the index of the first row equal to it (itself when it is a first occurrence). Rows are grouped
    by a hash of their bits and only rows with equal hashes are compared."""
    keys = np.empty(len(X), dtype=np.uint64)
    weights = row_hash_weights(X.shape[1])
    for s in range(0, len(X), 1024):
        # `+ 0.0` turns -0.0 into 0.0, so rows equal as numbers have equal bits; the integer products
        # wrap modulo 2^64, so the hash does not depend on the order of the sum.
        keys[s:s + 1024] = (X[s:s + 1024] + 0.0).view(np.uint64) @ weights
    order = np.argsort(keys, kind="stable")  # equal keys stay in row order
    starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
    ends = np.r_[starts[1:], len(X)]
    first = np.arange(len(X))
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        firsts = [order[start]]
        for row in order[start + 1:end]:
            same = next((f for f in firsts if np.array_equal(X[row], X[f])), None)
            if same is None:  # a hash collision: another distinct row
                firsts.append(row)
            else:
                first[row] = same
    return first


def deduplicate(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove exact duplicate rows, keeping first occurrences in their original order.

    Returns (X_unique as float64, kept_index into X, number of rows removed).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    kept, _ = distinct_rows(X)
    if len(kept) == len(X):
        return X, kept, 0
    return X[kept], kept, len(X) - len(kept)


def row_hash_weights(n_columns: int) -> np.ndarray:
    """Fixed odd 64-bit weights of the row hash."""
    return np.random.default_rng(0).integers(1, 2**63, size=n_columns, dtype=np.uint64) | np.uint64(1)


def knn(X: np.ndarray, maxk: int, device: str | torch.device | None = None,
        block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN of every row of X among the rows of X: (dist [N, maxk+1] float64, ind [N, maxk+1] int64).

    Column 0 is the row itself (distance 0, also when it has exact duplicates), so the result can be
    handed to DADApy as `Data(coordinates=X, distances=(dist, ind), maxk=maxk)`. `block` is the side of
    the Gram blocks (rows per GEMM).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, dim = X.shape
    if not 1 <= maxk <= n - 1:
        raise ValueError(f"maxk must be between 1 and N - 1 = {n - 1}, got {maxk}")
    dev = resolve_device(device)
    block = block or (4096 if dev.type == "cuda" else 2048)
    union_rows = block if dev.type == "cuda" else _CPU_UNION_ROWS
    with _ieee_float32_matmul():
        x = torch.from_numpy(X).to(dev)
        # Centring leaves distances unchanged and shrinks the norms, which the Gram errors scale with.
        a = x - x.mean(0)
        sq = (a * a).sum(1)
        # A few candidates beyond maxk + 1 usually let pass 1 prove its set complete at the first try.
        n_first = min(n - 1, maxk + max(16, maxk // 32))
        if 2 * n_first >= n:  # small layers: every pair
            cand = _all_other_rows(n, dev)
            valid = torch.ones_like(cand, dtype=torch.bool)
            approx = _candidate_gram_d2(a, sq, cand, torch.arange(n, device=dev), block, union_rows)
        else:
            keys = _Keys(a, sq, torch.float32, block)
            if not _shared_neighbourhoods(keys, n_first, union_rows):
                # Rows' candidates barely overlap (no clusters, no low-dimensional structure): the float64 values of
                # the candidates would take most of a float64 Gram matrix, so that one gives the candidates directly.
                keys = _Keys(a, sq, torch.float64, block)
            cand, valid, nearest, approx = _candidates(keys, sq, maxk, n_first)
            if keys.dtype == torch.float32:
                near = nearest.cpu().numpy()
                order = torch.as_tensor(_breadth_first(near.__getitem__, n, range(n), n), device=dev)
                approx = _candidate_gram_d2(a, sq, cand, order, block, union_rows)
        # Rigorous bound on |float64 Gram d^2 - exact d^2| is tau * (|a_i|^2 + |a_j|^2): dot products (2 D u),
        # the final additions and the centring (a few u).
        tau = (2 * dim + 32) * _U64
        dist = torch.empty((n, maxk + 1), dtype=torch.float64, device=dev)
        ind = torch.empty((n, maxk + 1), dtype=torch.int64, device=dev)
        dist[:, 0], ind[:, 0] = 0.0, torch.arange(n, device=dev)
        for r0 in range(0, n, block):
            rows = slice(r0, r0 + block)
            dist[rows, 1:], ind[rows, 1:] = _exact_rows(x, sq, torch.arange(n, device=dev)[rows], cand[rows],
                                                        valid[rows], approx[rows], tau, maxk)
    return dist.cpu().numpy(), ind.cpu().numpy()


@contextlib.contextmanager
def _ieee_float32_matmul():
    """Float32 GEMMs in IEEE float32 (no TF32 or bfloat16 shortcuts): pass 1's error bound assumes it."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _all_other_rows(n, dev):
    """[n, n - 1]: every row's other rows, in index order."""
    others = torch.arange(n - 1, device=dev).expand(n, n - 1)
    return others + (others >= torch.arange(n, device=dev)[:, None])


class _Keys:
    """Rows of the key matrix key_ij = (1 - tau) |a_j|^2 - 2 a_i.a_j in `dtype` (float32: on the rows scaled by a
    power of two, exact, so that the largest |a_i|^2 is about 1), +inf on the diagonal (the point itself is never a
    candidate: it is column 0).

    Bounds: a Gram value of d^2 in `dtype` is within e_ij = tau * (|a_i|^2 + |a_j|^2) + eta of the exact one, where
    tau covers the dot product (D u, any summation order), rounding the inputs to `dtype` and the additions, and
    eta underflow. So lo_ij = (1 - tau) |a_i|^2 - eta + key_ij is a lower bound of d^2 that orders like the keys
    within a row, and lo_ij + 2 e_ij an upper bound.

    When the matrix is no larger than the layer's float64 copies (`keys_kept_whole`) it is computed whole on first
    use, each symmetric block once, serving its rows and, transposed, its columns' rows; otherwise a panel of rows
    at a time (twice the GEMM work, a panel's memory)."""

    def __init__(self, a, sq, dtype, block):
        n, dim = a.shape
        self.dtype, self.block, self.whole = dtype, block, None
        unit = torch.finfo(dtype).eps / 2  # unit roundoff
        self.tau, self.eta = (1.01 * dim + 16) * unit, 4 * dim * torch.finfo(dtype).tiny
        if dtype == torch.float64:  # float64's range needs no scaling
            scale, self.scaled = 1.0, a
        else:
            scale = 2.0 ** -math.frexp(math.sqrt(float(sq.max())) or 1.0)[1]
            self.scaled = torch.empty((n, dim), dtype=dtype, device=a.device)
            for r0 in range(0, n, block):  # no temporary of the whole layer
                self.scaled[r0:r0 + block] = a[r0:r0 + block] * scale
        self.sq = sq * scale ** 2
        self.offset = ((1 - self.tau) * self.sq).to(dtype)
        itemsize = torch.finfo(dtype).bits // 8
        self.kept_whole = keys_kept_whole(n, dim, itemsize)
        self.panel_rows = block if self.kept_whole else max(1, min(block, KEY_PANEL_BYTES // (itemsize * n)))

    def __getitem__(self, rows):
        if not self.kept_whole:
            return self.panel(rows)
        if self.whole is None:
            self.whole = self._all()
        return self.whole[rows]

    def panel(self, rows):
        """The keys of `rows`, computed now (whether or not the matrix is kept whole)."""
        keys = torch.add(self.offset[None, :], self.scaled[rows] @ self.scaled.T, alpha=-2.0)
        keys[torch.arange(len(rows), device=rows.device), rows] = torch.inf
        return keys

    def _all(self):
        n, scaled, offset, block = len(self.scaled), self.scaled, self.offset, self.block
        keys = torch.empty((n, n), dtype=scaled.dtype, device=scaled.device)
        starts = range(0, n, block)
        for i0 in starts:
            rows_i = slice(i0, min(n, i0 + block))
            for j0 in starts[i0 // block:]:
                rows_j = slice(j0, min(n, j0 + block))
                gram = scaled[rows_i] @ scaled[rows_j].T
                torch.add(offset[None, rows_j], gram, alpha=-2.0, out=keys[rows_i, rows_j])
                if j0 != i0:
                    torch.add(offset[None, rows_i], gram.T, alpha=-2.0, out=keys[rows_j, rows_i])
        keys.fill_diagonal_(torch.inf)
        return keys


def _shared_neighbourhoods(keys: _Keys, n_candidates: int, union_rows: int) -> bool:
    """Whether rows that are neighbours share most of their candidates (clusters, low-dimensional structure), judged on
    a sample block of rows in breadth-first order, as the float64 pass takes them: their candidates (by key) together
    are then under a quarter of the points, which makes the float64 values of all candidates a small part of a float64
    Gram matrix's work. The sample's keys are computed apart (a few percent of the float32 work), so that data
    without such structure, which takes the float64 path, does not pay for all of them."""
    n, device = len(keys.sq), keys.sq.device

    def keys_of(rows):
        return keys.panel(torch.as_tensor(rows, device=device))

    rows = _breadth_first(lambda rows: torch.topk(keys_of(rows), _ORDER_NEIGHBOURS, dim=1, largest=False).indices
                          .cpu().numpy(), n, [0], union_rows)
    return torch.unique(torch.topk(keys_of(rows), n_candidates, dim=1, largest=False).indices).numel() < n / 4


def _candidates(keys: _Keys, sq, maxk, n_first):
    """Per row, a set of columns that provably holds its maxk nearest (self excluded) and every point tied with
    the maxk-th: [n, m] columns, [n, m] mask of the candidates among them (other entries repeat the row's nearest);
    the rows' nearest few by lower bound [n, <= 32]; and their Gram d^2 as `keys` give them [n, m] (float64 only
    from float64 keys).

    At least maxk points are within the maxk-th smallest upper bound, so the true maxk-th distance (and every point
    tied with it) is too: the candidates are the points whose lower bound is at most that. Outside a row's n_keep
    smallest keys every lower bound is at least the largest of theirs: if that is above, the set is complete; if
    not, the row tries twice as many.
    """
    n = len(sq)
    ratio = (sq.max() / keys.sq.max()).item()  # back from the scaled rows: a power of two, exact
    row_lo = (1 - keys.tau) * keys.sq - keys.eta
    found = []  # (rows, their columns (candidates first), which are candidates, their nearest columns, their d^2)
    todo, n_keep = torch.arange(n, device=sq.device), n_first
    while len(todo):
        retry = []
        for r0 in range(0, len(todo), keys.panel_rows):
            rows = todo[r0:r0 + keys.panel_rows]
            key, col = torch.topk(keys[rows], n_keep, dim=1, largest=False, sorted=False)
            key = key.double()
            lo = row_lo[rows, None] + key
            hi = lo + 2 * (keys.tau * (keys.sq[rows, None] + keys.sq[col]) + keys.eta)
            bound = torch.kthvalue(hi, maxk, dim=1).values
            complete = (lo.amax(1) > bound) | (n_keep == n - 1)
            lo, col, key, bound, done = lo[complete], col[complete], key[complete], bound[complete], rows[complete]
            nearest = torch.gather(col, 1, torch.topk(lo, min(_ORDER_NEIGHBOURS, n_keep), dim=1, largest=False).indices)
            gram_d2 = (keys.sq[done, None] + key + keys.tau * keys.sq[col]) * ratio
            found.append((done, col, lo <= bound[:, None], nearest, gram_d2))
            retry.append(rows[~complete])
        todo, n_keep = torch.cat(retry), min(n - 1, 2 * n_keep)
    width = max(int(inside.sum(1).max()) for _, _, inside, _, _ in found if len(inside))
    cand = torch.empty((n, width), dtype=torch.int64, device=sq.device)
    valid = torch.empty((n, width), dtype=torch.bool, device=sq.device)
    nearest = torch.empty((n, found[0][3].shape[1]), dtype=torch.int64, device=sq.device)
    approx = torch.empty((n, width), dtype=torch.float64, device=sq.device)
    for rows, col, inside, near, gram_d2 in found:
        # Each row's candidates packed first, in order (to their rank among them; the rest to a spare last column
        # that goes), so that the columns past the most any row has can go. Other entries repeat the row's nearest:
        # every entry is then a column of the row block's GEMM.
        slot = torch.where(inside, torch.cumsum(inside, dim=1) - 1, width)
        cand[rows] = near[:, :1].repeat(1, width + 1).scatter_(1, slot, col)[:, :width]
        approx[rows] = gram_d2.new_full((len(rows), width + 1), torch.inf).scatter_(1, slot, gram_d2)[:, :width]
        valid[rows] = torch.arange(width, device=sq.device) < inside.sum(1, keepdim=True)
        nearest[rows] = near[:, :nearest.shape[1]]
    return cand, valid, nearest, approx


def _breadth_first(nearest_of, n: int, starts, limit: int) -> list[int]:
    """The first `limit` rows in breadth-first order over each row's nearest (`nearest_of(rows)`: a row of columns per
    row, nearest first), from each start not reached yet: consecutive rows are neighbours, so a block of them shares
    most candidates. The rows queued are expanded together (one GEMM when their nearest are computed), in order."""
    seen = np.zeros(n, dtype=bool)
    order = []  # in the order found, which is the order the queue gives them back
    for start in starts:
        if seen[start]:
            continue
        seen[start] = True
        order.append(start)
        queue = deque([start])
        while queue and len(order) < limit:
            for near in nearest_of([queue.popleft() for _ in range(len(queue))]):
                new = near[~seen[near]]
                seen[new] = True
                order.extend(new.tolist())
                queue.extend(new.tolist())
        if len(order) >= limit:
            break
    return order[:limit]


def _candidate_gram_d2(a, sq, cand, order, block, union_rows):
    """Float64 Gram d^2 = |a_i|^2 + |a_j|^2 - 2 a_i.a_j of every row and its candidates ([n, m], like cand).

    Rows are taken `union_rows` at a time in `order` (neighbours together), each block in one GEMM over the union of
    its rows' candidates; unless those unions add up to more than half of every pair (data without neighbourhoods
    that rows share, or candidates that are most points), where the symmetric blocks of the whole Gram matrix,
    each computed once, cost less."""
    n = len(a)
    blocks = [order[r0:r0 + union_rows] for r0 in range(0, n, union_rows)]
    unions = []
    for rows in blocks:
        used = torch.zeros(n, dtype=torch.bool, device=a.device)
        used[cand[rows]] = True
        unions.append(torch.nonzero(used)[:, 0])
    gram_of_pairs = torch.empty(cand.shape, dtype=torch.float64, device=a.device)
    if 2 * sum(len(rows) * len(columns) for rows, columns in zip(blocks, unions)) <= n * n:
        where = torch.empty(n, dtype=torch.int64, device=a.device)
        buffer = a.new_empty((max(map(len, unions)), a.shape[1]))  # one buffer: fresh ones cost page faults
        for rows, columns in zip(blocks, unions):
            where[columns] = torch.arange(len(columns), device=a.device)
            union = torch.index_select(a, 0, columns, out=buffer[:len(columns)])
            gram_of_pairs[rows] = torch.gather(a[rows] @ union.T, 1, where[cand[rows]])
    else:
        starts = range(0, n, block)
        for i0 in starts:
            rows_i = slice(i0, min(n, i0 + block))
            for j0 in starts[i0 // block:]:
                rows_j = slice(j0, min(n, j0 + block))
                gram = a[rows_i] @ a[rows_j].T
                for rows, cols, part in ((rows_i, rows_j, gram), (rows_j, rows_i, gram.T)):
                    inside = (cand[rows] >= cols.start) & (cand[rows] < cols.stop)
                    values = torch.gather(part, 1, (cand[rows] - cols.start).clamp_(0, part.shape[1] - 1))
                    gram_of_pairs[rows] = torch.where(inside, values, gram_of_pairs[rows])
                    if j0 == i0:
                        break
    return (sq[:, None] + sq[cand]).sub_(2 * gram_of_pairs)


def _exact_rows(x, sq, rows, cand, valid, approx, tau, maxk):
    """Exact maxk nearest of `rows` (self excluded) among their candidates, sorted by (distance, index), from the
    candidates' float64 Gram d^2 `approx`."""
    approx = torch.where(valid, approx, torch.inf)
    approx, by_value = torch.sort(approx, dim=1)
    cand, valid = torch.gather(cand, 1, by_value), torch.gather(valid, 1, by_value)
    # One error bound per row (the largest over its candidates), so that an interval that misses its
    # two sorted neighbours' intervals misses all of them.
    err = (tau * (sq[rows] + sq[cand].amax(1)))[:, None]
    # Invalid entries (sorted last, at inf) are no candidates: nothing is ranked against them.
    apart = (approx.diff(dim=1) > 2 * err) | ~valid[:, 1:]
    edge = torch.ones_like(apart[:, :1])
    # A value whose error interval meets no other candidate's has its rank right whatever the error;
    # it is kept as is when the error is also small against the value. Everything else is recomputed.
    trusted = torch.cat([edge, apart], 1) & torch.cat([apart, edge], 1) & (err <= _TRUSTED_REL_ERROR * approx)
    redo = torch.nonzero(~trusted & valid)
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
        sub_d, by_distance = torch.sort(sub_d, dim=1, stable=True)
        d[resort], cand[resort] = sub_d, torch.gather(sub_c, 1, by_distance)
    return d[:, :maxk], cand[:, :maxk]


def _direct_d2(x, i, j, chunk_bytes=64 << 20):
    """sum((x_i - x_j)^2) for index pairs, in chunks so the differences fit in memory."""
    out = x.new_empty(len(i))
    step = max(1, chunk_bytes // (8 * x.shape[1]))
    for s in range(0, len(i), step):
        diff = x[i[s:s + step]] - x[j[s:s + step]]
        out[s:s + step] = (diff * diff).sum(1)
    return out
