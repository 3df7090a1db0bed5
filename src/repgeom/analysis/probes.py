"""Linear probes: cross-validated multinomial logistic regression against a majority-class baseline."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd
import sklearn
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

_MAX_ITER = 300


def reduce_for_probe(X: np.ndarray, pca_dim: int, seed: int) -> np.ndarray:
    """Projection on the first pca_dim principal components when D is larger. Randomised PCA in
    torch, float32: the probe needs the leading directions, not their last digits, and this is
    several times faster than sklearn's on a busy CPU. PCA sees no labels, so it is fitted once on
    all points rather than per fold."""
    if X.shape[1] <= pca_dim or X.shape[0] <= pca_dim:
        return X
    x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    x = x - x.mean(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        V = _principal_directions(x, q=min(pca_dim + 10, *x.shape), niter=4)
    return (x @ V[:, :pca_dim]).numpy().astype(np.float64)


def _principal_directions(x: torch.Tensor, q: int, niter: int) -> torch.Tensor:
    """V of `torch.pca_lowrank(x, q, center=False, niter=niter)`: the same randomised subspace iteration (Halko et al.,
    Algorithm 4.4, on x or, when it is wide, on x^T), the same random draws and steps, but each QR and the SVD on one
    thread: MKL's threaded QR of these thin matrices took 30x longer on 2 cores (0.3 s a call at N = 9181), while the
    GEMMs keep every thread."""
    wide = x.shape[0] < x.shape[1]
    A = x.mT if wide else x

    def orthonormal(X):
        with _one_torch_thread():
            return torch.linalg.qr(X).Q

    Q = orthonormal(A @ torch.randn(A.shape[1], q, dtype=A.dtype))
    for _ in range(niter):
        Q = orthonormal(A @ orthonormal(A.mT @ Q))
    with _one_torch_thread():
        U, _, Vh = torch.linalg.svd(Q.mT @ A, full_matrices=False)
    return Q @ U if wide else Vh.mT


@contextlib.contextmanager
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def linear_probe(features: np.ndarray, labels, folds: int = 5, seed: int = 42) -> dict:
    """Mean and std over seeded stratified folds of the probe's and the majority baseline's accuracy.

    Values are NaN, with the reason in `note`, when the labels cannot be split into `folds` folds.
    """
    y = pd.factorize(np.asarray(labels))[0]
    counts = np.bincount(y)
    out = {"accuracy": np.nan, "accuracy_std": np.nan, "baseline": np.nan, "baseline_std": np.nan, "note": ""}
    if len(counts) < 2:
        out["note"] = "only one class"
        return out
    if counts.max() < folds:
        out["note"] = f"no class has {folds} members, needed for {folds}-fold cross-validation"
        return out
    accuracy, baseline = [], []
    # What cross_val_score(make_pipeline(StandardScaler(), LogisticRegression()), ...) and a most-frequent
    # DummyClassifier compute, fold by fold, without their per-call validation and bookkeeping (most of the time
    # on a small layer). One BLAS thread: lbfgs makes thousands of tiny BLAS calls, which threads only slow down
    # (30x slower measured on a busy 2-core machine).
    with threadpool_limits(limits=1), warnings.catch_warnings(record=True) as caught, \
            sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        # Classes smaller than `folds` only draw a warning from StratifiedKFold; they are kept.
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class")
        for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(features, y):
            scaler = StandardScaler().fit(features[train])
            probe = LogisticRegression(max_iter=_MAX_ITER).fit(scaler.transform(features[train]), y[train])
            accuracy.append(np.mean(probe.predict(scaler.transform(features[test])) == y[test]))
            # The majority class of the training folds, the first of equally frequent ones (as DummyClassifier).
            baseline.append(np.mean(y[test] == np.bincount(y[train]).argmax()))
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        out["note"] = f"lbfgs stopped at max_iter={_MAX_ITER} in some folds"
    out.update(accuracy=float(np.mean(accuracy)), accuracy_std=float(np.std(accuracy)),
               baseline=float(np.mean(baseline)), baseline_std=float(np.std(baseline)))
    return out
