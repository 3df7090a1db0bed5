"""Synthetic merged tables for the figure tests: one model with 0/1/2/5-shot, a 5-shot control and a LoRA run of
32 steps (4 epochs of 8) saved at steps 1, 2, 3, 5, 8, 13, 20, 32 and at each epoch end, over 5 layers; layer 0
is degenerate (NaN, as a layer where every prompt ends in the same token) in the metric tables, not in the logit
lens."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

MODEL = "m"
BASE = ["0shot", "1shot", "2shot", "5shot"]
CONTROLS = ["5shot-shuffled"]
STEP_CKPTS = [1, 2, 3, 5, 8, 13, 20, 32]
STEPS = {**{f"ft-lora-step{s}": s for s in STEP_CKPTS}, **{f"ft-lora-epoch{e}": 8 * e for e in range(1, 5)}}
FINETUNED = list(STEPS)
CONDITIONS = BASE + CONTROLS + FINETUNED
N_LAYERS = 5


def _level(condition: str) -> float:
    """A number in [0, 1] that grows with shots and with fine-tuning steps, so the lines differ."""
    if condition in STEPS:
        return 0.3 + 0.7 * STEPS[condition] / 32
    return int(condition.split("shot")[0]) / 5


def metric_rows(model=MODEL, conditions=CONDITIONS, n_layers=N_LAYERS):
    rng = np.random.default_rng(0)
    rows = []

    def add(condition, layer, metric, value, scale=np.nan, error=np.nan):
        note = "fewer than 3 distinct points" if layer == 0 else ""
        rows.append({"model": model, "condition": condition, "layer": layer, "metric": metric,
                     "scale": scale, "value": np.nan if layer == 0 else float(value),
                     "error": np.nan if layer == 0 else error, "note": note})

    for condition, layer in itertools.product(conditions, range(n_layers)):
        level, depth = _level(condition), layer / (n_layers - 1)
        for i in range(1, 7):
            add(condition, layer, "id_gride", 8 + 10 * depth + 4 * level + i, scale=2.0 ** i, error=0.5 + 0.1 * i)
        add(condition, layer, "id_twonn", 9 + 10 * depth, scale=2.0)
        add(condition, layer, "n_clusters", round(3 + 6 * level * depth))
        add(condition, layer, "ari_subject", level * np.sin(np.pi * depth) * 0.9)
        add(condition, layer, "ari_letter", level * depth ** 2 * 0.5)
        add(condition, layer, "label_overlap_subject", 0.2 + 0.7 * level * np.sin(np.pi * depth))
        add(condition, layer, "label_overlap_letter", 0.25 + 0.4 * level * depth)
        add(condition, layer, "local_id_mean", 12 - 5 * level + 3 * depth + rng.normal(0, 0.1), scale=64.0)
        if layer in (2, 4):
            add(condition, layer, "token_local_id_mean", 20 - 6 * level + depth, scale=64.0)
        add(condition, layer, "probe_subject", 0.3 + 0.6 * level * depth, error=0.02)
        add(condition, layer, "probe_subject_baseline", 1 / 6)
        add(condition, layer, "probe_letter", 0.25 + 0.5 * level * depth ** 2, error=0.03)
        add(condition, layer, "probe_letter_baseline", 0.27)
    return pd.DataFrame(rows)


def overlap_rows(model=MODEL, conditions=CONDITIONS, n_layers=N_LAYERS, k=30):
    rows = []
    for a, b in itertools.combinations(conditions, 2):
        for layer in range(n_layers):
            value = np.nan if layer == 0 else 1 - abs(_level(a) - _level(b)) * layer / n_layers
            rows.append({"model": model, "condition_a": a, "condition_b": b, "layer_a": layer, "layer_b": layer,
                         "metric": "data_overlap", "k": k, "value": value, "note": ""})
    for condition in conditions:
        for layer in range(n_layers - 1):
            rows.append({"model": model, "condition_a": condition, "condition_b": condition, "layer_a": layer,
                         "layer_b": layer + 1, "metric": "data_overlap", "k": k, "value": 0.6, "note": ""})
    return pd.DataFrame(rows)


def accuracy_rows(model=MODEL, conditions=CONDITIONS):
    return pd.DataFrame([{"model": model, "condition": c, "n": 600, "micro": 0.3 + 0.5 * _level(c),
                          "macro": 0.28 + 0.5 * _level(c), "micro_argmax": 0.2 + 0.5 * _level(c),
                          "macro_argmax": 0.19 + 0.5 * _level(c)} for c in conditions])


def lens_rows(model=MODEL, conditions=CONDITIONS, n_layers=N_LAYERS):
    """The lens table (`repgeom.tables.lens_table`): chance at layer 0, rising with depth, shots and steps."""
    rows = []
    for condition, layer in itertools.product(conditions, range(n_layers)):
        level, depth = _level(condition), layer / (n_layers - 1)
        rows.append({"model": model, "condition": condition, "layer": layer, "n": 600,
                     "accuracy": 0.25 + 0.7 * level * depth ** 2, "gold_prob": 0.25 + 0.6 * level * depth ** 3,
                     "gold_prob_full": 0.5 * level * depth ** 4})
    return pd.DataFrame(rows)


@pytest.fixture
def lens():
    """The lens table of the synthetic model plus a second model that the figures must ignore."""
    return pd.concat([lens_rows(), lens_rows(model="other", conditions=BASE)], ignore_index=True)


@pytest.fixture
def tables():
    """metrics, overlap, accuracy: the synthetic model plus a second model that the figures must ignore."""
    return (pd.concat([metric_rows(), metric_rows(model="other", conditions=BASE)], ignore_index=True),
            pd.concat([overlap_rows(), overlap_rows(model="other", conditions=BASE)], ignore_index=True),
            pd.concat([accuracy_rows(), accuracy_rows(model="other", conditions=BASE)], ignore_index=True))


@pytest.fixture
def table_files(tables, lens, tmp_path):
    metrics, overlap, accuracy = tables
    paths = {"metrics": tmp_path / "all.parquet", "overlap": tmp_path / "overlap.parquet",
             "accuracy": tmp_path / "accuracy.csv", "lens": tmp_path / "lens.csv"}
    metrics.to_parquet(paths["metrics"], index=False)
    overlap.to_parquet(paths["overlap"], index=False)
    accuracy.to_csv(paths["accuracy"], index=False)
    lens.to_csv(paths["lens"], index=False)
    return paths


@pytest.fixture
def synthetic():
    """The builders and constants above, for tests that vary the tables."""
    import types

    return types.SimpleNamespace(
        metric_rows=metric_rows, overlap_rows=overlap_rows, accuracy_rows=accuracy_rows, lens_rows=lens_rows,
        MODEL=MODEL, BASE=BASE,
        CONTROLS=CONTROLS, FINETUNED=FINETUNED, CONDITIONS=CONDITIONS, STEPS=STEPS, N_LAYERS=N_LAYERS)
