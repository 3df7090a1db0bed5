"""Duplicate removal and exact k-nearest neighbours in DADApy's convention.

`knn` returns what `dadapy.Data.compute_distances` stores: `dist, ind` of shape [N, maxk + 1], column 0
the point itself at distance 0, then neighbours by increasing Euclidean distance, ties by row index.
It equals a float64 brute force (every distance sqrt(sum((x_i - x_j)^2)) in float64, sorted by
(distance, index)), in two passes:

1. Candidates. One Gram matrix, computed as a symmetric product (or a panel of rows at a time when keeping
   every pair would take more memory than the layer's copies), gives every pair a rigorous lower and upper
   bound of its squared distance: the rounding error is at most tau * (|a_i|^2 + |a_j|^2) on the centred rows a.
   A row's candidates are the points whose lower bound is at most the maxk-th smallest upper bound: a set that
   provably holds the true maxk nearest and every point tied with the last of them, usually a few more than maxk.
2. Exact order. From float64 Gram values of the candidates, a value whose rank or size the float64 error bound
   cannot vouch for is recomputed directly as sum((x_i - x_j)^2), and ties are put in index order.

Pass 1 runs in float32 where that saves float64 work: when a row's candidates are a small part of the points and
rows that are neighbours share most of them (clusters, low-dimensional structure: LLM representations). Pass 2 then
takes rows in blocks of neighbours (breadth-first over the candidates) and computes each block's candidates in one
float64 GEMM over the union of their columns, a small multiple of maxk / N of a float64 Gram matrix. The float32
product is half a Gram matrix's work; on the benchmark's LLM-like data (benchmarks/analysis_speed.py) the whole
takes 1.36-1.51 times one float32 Gram matrix at numpy's rate. Elsewhere (small layers, data without such
structure) pass 1 runs in float64 and its Gram values serve pass 2; when the candidates would be most points,
every pair is computed. The code is torch (its CPU GEMMs through numpy's BLAS), so the same path runs on the GPU
and on the CPU.
"""
from __future__ import annotations

import contextlib
import math
from collections import deque

import numpy as np
import torch

from repgeom.analysis.params import KEY_PANEL_BYTES, keys_kept_whole

_U64 = 2.0 ** -53  # unit roundoff of float64
# Float64 Gram values are trusted only when their worst-case error is below this fraction of the value;
# others are recomputed directly (this keeps every reported distance within ~1e-7 relative of the
# brute force in the worst case, ~1e-14 in practice, and near-duplicates exact).
_TRUSTED_REL_ERROR = 1e-7
# Rows per float64 GEMM on the CPU: unions of 128 neighbouring rows' candidates stay close to one row's.
_CPU_PAIR_ROWS = 128
# Neighbours per row that the block ordering follows.
_ORDER_NEIGHBOURS = 32


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None means the devices the job was given (`repgeom.distributed.rank_device`: the CPU when it was given no
    GPU, a GPU when it was given some; when nothing says, the GPU if there is one). A CUDA device that torch cannot
    use, named or given, stops with NoCudaError rather than running on the CPU."""
    from repgeom.distributed import NoCudaError, RankInfo, no_cuda_message, rank_device

    if device is None:
        return rank_device(RankInfo(0, 1, 0))
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NoCudaError(no_cuda_message(1, f"device {str(device)!r}"))
    return device


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
    pair_rows = block if dev.type == "cuda" else _CPU_PAIR_ROWS
    with _ieee_float32_matmul():
        x = torch.from_numpy(X).to(dev)
        # Centring leaves distances unchanged and shrinks the norms, which the Gram errors scale with.
        a = x - x.mean(0)
        sq = torch.einsum("ij,ij->i", a, a)  # 5x faster than linalg.vecdot on the CPU
        # A few candidates beyond maxk + 1 usually let pass 1 prove its set complete at the first try.
        n_first = min(n - 1, maxk + max(16, maxk // 32))
        if 2 * n_first >= n:  # small layers: every pair
            cand = _all_other_rows(n, dev)
            valid = torch.ones_like(cand, dtype=torch.bool)
            approx = _candidate_gram_d2(a, sq, cand, _row_blocks([list(range(n))], pair_rows))
        else:
            # Where float32 candidates would not save float64 work, one float64 Gram matrix gives them directly.
            keys = _float32_keys_if_they_pay(a, sq, n_first, block, pair_rows) or _Keys(a, sq, torch.float64, block)
            cand, valid, nearest, approx = _candidates(keys, sq, maxk, n_first)
            if keys.dtype == torch.float32:
                near = nearest.cpu().numpy()
                blocks = _row_blocks(_breadth_first(near.__getitem__, n, range(n), n), pair_rows)
                approx = _candidate_gram_d2(a, sq, cand, blocks)
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


def _gemm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A @ B; on the CPU by numpy's BLAS, like the reference's kNN (sklearn): the OpenBLAS of numpy's wheels ran these
    GEMMs 10-60% faster than torch's MKL on an AMD EPYC, and a product of rows with themselves as a symmetric one
    (half the work)."""
    if A.device.type != "cpu":
        return A @ B
    return torch.from_numpy(np.matmul(A.numpy(), B.numpy()))


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

    When the matrix is no larger than the layer's copies (`keys_kept_whole`) it is computed whole on first use, as a
    symmetric product (half the GEMM work, on the CPU); otherwise a panel of rows at a time (a panel's memory).
    """

    def __init__(self, a, sq, dtype, block):
        n, dim = a.shape
        self.dtype, self.whole = dtype, None
        unit = torch.finfo(dtype).eps / 2  # unit roundoff
        self.tau, self.eta = (1.01 * dim + 16) * unit, 4 * dim * torch.finfo(dtype).tiny
        if dtype == torch.float64:  # float64's range needs no scaling
            self.scale, self.scaled = 1.0, a
        else:
            self.scale = 2.0 ** -math.frexp(math.sqrt(float(sq.max())) or 1.0)[1]
            self.scaled = torch.empty((n, dim), dtype=dtype, device=a.device)
            for r0 in range(0, n, block):  # no temporary of the whole layer
                self.scaled[r0:r0 + block] = a[r0:r0 + block] * self.scale
        self.sq = sq * self.scale ** 2
        self.offset = ((1 - self.tau) * self.sq).to(dtype)
        itemsize = torch.finfo(dtype).bits // 8
        self.kept_whole = keys_kept_whole(n, dim, itemsize)
        self.panel_rows = block if self.kept_whole else max(1, min(block, KEY_PANEL_BYTES // (itemsize * n)))

    def __getitem__(self, rows):
        if not self.kept_whole:
            return self.panel(rows)
        if self.whole is None:
            self.whole = self._all()
        if len(rows) and int(rows[-1]) - int(rows[0]) == len(rows) - 1 and bool((rows.diff() == 1).all()):
            return self.whole[int(rows[0]):int(rows[-1]) + 1]  # a run of rows: a view, not a copy
        return self.whole[rows]

    def panel(self, rows):
        """The keys of `rows`, computed now (whether or not the matrix is kept whole)."""
        keys = self._keys_from_gram(_gemm(self.scaled[rows], self.scaled.T))
        keys[torch.arange(len(rows), device=rows.device), rows] = torch.inf
        return keys

    def _all(self):
        # One product of the rows with themselves: numpy's BLAS computes it as a symmetric one (half the work).
        return self._keys_from_gram(_gemm(self.scaled, self.scaled.T)).fill_diagonal_(torch.inf)

    def _keys_from_gram(self, gram):
        """key_ij = (1 - tau) |a_j|^2 - 2 a_i.a_j from the (scaled) Gram values, in place."""
        return gram.mul_(-2.0).add_(self.offset[None, :])


def _float32_keys_if_they_pay(a, sq, n_candidates: int, block: int, pair_rows: int) -> _Keys | None:
    """Float32 keys, if float32 candidates re-checked in float64 cost less than one float64 Gram matrix: when a row's
    candidates are a small part of the points (under an eighth) and neighbouring rows share most of theirs (clusters,
    low-dimensional structure). That is judged on a sample block of rows in breadth-first order, as the float64 pass
    takes them: their candidates (by key) together must be under a quarter of the points. The sample's keys are
    computed apart (a few percent of the float32 work), so that data without such structure, which takes the float64
    path, does not pay for all of them."""
    n, device = len(a), a.device
    if 8 * n_candidates > n:
        return None
    keys = _Keys(a, sq, torch.float32, block)

    def keys_of(rows):
        return keys.panel(torch.as_tensor(rows, device=device))

    rows, = _breadth_first(lambda rows: torch.topk(keys_of(rows), _ORDER_NEIGHBOURS, dim=1, largest=False).indices
                           .cpu().numpy(), n, [0], pair_rows)
    union = torch.unique(torch.topk(keys_of(rows), n_candidates, dim=1, largest=False).indices).numel()
    return keys if union < n / 4 else None


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
    row_lo = (1 - keys.tau) * keys.sq - keys.eta
    found = []  # (rows, their columns, which are candidates, their nearest columns, their d^2)
    todo, n_keep = torch.arange(n, device=sq.device), n_first
    while len(todo):
        retry = []
        for r0 in range(0, len(todo), keys.panel_rows):
            rows = todo[r0:r0 + keys.panel_rows]
            key, col = torch.topk(keys[rows], n_keep, dim=1, largest=False, sorted=False)
            key, sq_col = key.double(), keys.sq[col]
            lo = row_lo[rows, None] + key
            hi = lo + 2 * (keys.tau * (keys.sq[rows, None] + sq_col) + keys.eta)
            bound = torch.kthvalue(hi, maxk, dim=1).values
            complete = (lo.amax(1) > bound) | (n_keep == n - 1)
            if not complete.all():
                retry.append(rows[~complete])
                rows, lo, col, key, sq_col, bound = (t[complete] for t in (rows, lo, col, key, sq_col, bound))
            nearest = torch.gather(col, 1, torch.topk(lo, min(_ORDER_NEIGHBOURS, n_keep), dim=1, largest=False).indices)
            # Float64 keys' Gram d^2 serve pass 2 as they are; float32 ones are replaced.
            gram_d2 = ((keys.sq[rows, None] + key + keys.tau * sq_col) / keys.scale ** 2  # the scaling is exact
                       if keys.dtype == torch.float64 else None)
            found.append((rows, col, lo <= bound[:, None], nearest, gram_d2))
        todo, n_keep = torch.cat(retry) if retry else todo[:0], min(n - 1, 2 * n_keep)
    width = max(int(inside.sum(1).max()) for _, _, inside, _, _ in found if len(inside))
    cand = torch.empty((n, width), dtype=torch.int64, device=sq.device)
    valid = torch.empty((n, width), dtype=torch.bool, device=sq.device)
    nearest = torch.empty((n, found[0][3].shape[1]), dtype=torch.int64, device=sq.device)
    approx = torch.empty((n, width), dtype=torch.float64, device=sq.device) if keys.dtype == torch.float64 else None
    for rows, col, inside, near, gram_d2 in found:
        # Each row's candidates packed first, in order (to their rank among them; the rest to a spare last column
        # that goes), so that the columns past the most any row has can go. Other entries repeat the row's nearest:
        # every entry is then a column of the row block's GEMM.
        slot = torch.where(inside, torch.cumsum(inside, dim=1) - 1, width)
        cand[rows] = near[:, :1].repeat(1, width + 1).scatter_(1, slot, col)[:, :width]
        if approx is not None:
            approx[rows] = gram_d2.new_full((len(rows), width + 1), torch.inf).scatter_(1, slot, gram_d2)[:, :width]
        valid[rows] = torch.arange(width, device=sq.device) < inside.sum(1, keepdim=True)
        nearest[rows] = near[:, :nearest.shape[1]]
    return cand, valid, nearest, approx


def _breadth_first(nearest_of, n: int, starts, limit: int) -> list[list[int]]:
    """The first `limit` rows in breadth-first order over each row's nearest (`nearest_of(rows)`: a row of columns per
    row, nearest first), from each start not reached yet, as the components reached from each start (on clustered
    data, the clusters): consecutive rows are neighbours, so a block of them shares most candidates. The rows queued
    are expanded together (one GEMM when their nearest are computed), in order."""
    seen = np.zeros(n, dtype=bool)
    components, total = [], 0
    for start in starts:
        if seen[start]:
            continue
        seen[start] = True
        component = [start]  # in the order found, which is the order the queue gives them back
        queue = deque([start])
        while queue and total + len(component) < limit:
            for near in nearest_of([queue.popleft() for _ in range(len(queue))]):
                new = near[~seen[near]]
                seen[new] = True
                component.extend(new.tolist())
                queue.extend(new.tolist())
        components.append(component[:limit - total])
        total += len(components[-1])
        if total >= limit:
            break
    return components


def _row_blocks(components: list[list[int]], size: int) -> list[list[int]]:
    """Blocks of about `size` rows for the float64 pass, whose rows share their candidates: a component larger than
    that in equal parts, smaller ones together while they fit."""
    blocks, current = [], []
    for component in components:
        parts = max(1, round(len(component) / size))
        for p in range(parts):
            part = component[p * len(component) // parts:(p + 1) * len(component) // parts]
            if current and len(current) + len(part) > size:
                blocks.append(current)
                current = []
            current = current + part
    return blocks + [current]


def _candidate_gram_d2(a, sq, cand, blocks: list[list[int]]):
    """Float64 Gram d^2 = |a_i|^2 + |a_j|^2 - 2 a_i.a_j of every row and its candidates ([n, m], like cand).

    Rows are taken in `blocks` of neighbours, each block's pairs from one GEMM of its rows with the union of their
    candidates: rows that are neighbours share most of theirs. Hubs, the columns in every block's union (on the
    benchmark's data the central points of the other clusters), come from one GEMM of all rows instead, which runs
    faster than the blocks' and copies them once, not once a block. (Computing each pair once, in the block of
    the earlier of its rows, saved nothing on the benchmark's data: only 17% of its candidate pairs are mutual.)"""
    n, device = len(a), a.device
    blocks = [torch.as_tensor(rows, device=device) for rows in blocks]
    in_union = torch.zeros((len(blocks), n), dtype=torch.bool, device=device)
    for b, rows in enumerate(blocks):
        in_union[b, cand[rows]] = True
    hub = in_union.all(0)
    hubs = torch.nonzero(hub)[:, 0]
    hub_gram = _gemm(a, a[hubs].T)  # [n, hubs]
    # A column's place in a block's values: hubs first, then the block's other columns.
    column_in_block = torch.empty(n, dtype=torch.int64, device=device)
    column_in_block[hubs] = torch.arange(len(hubs), device=device)
    d2 = torch.empty(cand.shape, dtype=torch.float64, device=device)
    other_columns = in_union & ~hub  # [blocks, n]: each block's columns that are not hubs
    buffer = a.new_empty((int(other_columns.sum(1).max()), a.shape[1]))  # one buffer: fresh ones cost page faults
    for b, rows in enumerate(blocks):
        columns = torch.nonzero(other_columns[b])[:, 0]
        column_in_block[columns] = torch.arange(len(hubs), len(hubs) + len(columns), device=device)
        others = torch.index_select(a, 0, columns, out=buffer[:len(columns)])
        values = torch.cat([hub_gram[rows], _gemm(a[rows], others.T)], dim=1)
        block_cand = cand[rows]
        d2[rows] = (sq[rows, None] + sq[block_cand]).sub_(torch.gather(values, 1, column_in_block[block_cand]).mul_(2))
    return d2


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
