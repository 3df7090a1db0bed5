"""Linear probes beat the majority baseline on separable labels and not on shuffled ones."""
from __future__ import annotations

import numpy as np
import pytest

from repgeom.analysis.probes import linear_probe
from repgeom.analysis.probes import reduce_for_probe


def test_probe_separable_vs_shuffled(mixture_data):
    X, labels = mixture_data
    features = reduce_for_probe(X, 64, 42)
    assert features.shape == (len(X), 64)
    subject = linear_probe(features, labels["subject"], folds=5, seed=42)
    assert subject["accuracy"] > 0.99 and subject["baseline"] < 0.3
    assert subject["baseline"] == pytest.approx(labels["subject"].value_counts().max() / len(X), abs=0.01)
    shuffled = np.random.default_rng(0).permutation(labels["subject"].to_numpy())
    chance = linear_probe(features, shuffled, folds=5, seed=42)
    assert abs(chance["accuracy"] - chance["baseline"]) < 0.06
    # Letters are random with respect to the geometry too.
    letter = linear_probe(features, labels["gold"], folds=5, seed=42)
    assert abs(letter["accuracy"] - letter["baseline"]) < 0.06


def test_probe_is_seeded(mixture_data):
    X, labels = mixture_data
    first = linear_probe(X[:400, :32], labels["gold"][:400], folds=3, seed=1)
    assert first == linear_probe(X[:400, :32], labels["gold"][:400], folds=3, seed=1)


def test_probe_reports_why_it_cannot_run():
    X = np.random.default_rng(0).standard_normal((12, 4))
    assert linear_probe(X, ["a"] * 12)["note"] == "only one class"
    res = linear_probe(X, list("aabbccddeeff"), folds=5)
    assert np.isnan(res["accuracy"]) and "no class has 5 members" in res["note"]
