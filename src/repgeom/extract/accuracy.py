"""What the extraction job writes about one condition's predictions: per prompt, the prediction and micro/macro
accuracy (`write_accuracy`); per layer, the logit lens on the answer letters (`write_lens`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from repgeom.io import atomic_path
from repgeom.letters import ANSWER_LETTERS

SUMMARY_KEY = b"repgeom.accuracy"
LENS_KEY = b"repgeom.lens"
LENS_COLUMNS = ("layer", "n", "accuracy", "gold_prob", "gold_prob_full")


def accuracy_frame(meta: pd.DataFrame, letter_logprob: np.ndarray, argmax_token: np.ndarray,
                   letter_ids: dict[str, int], tokenizer) -> pd.DataFrame:
    """One row per prompt: the full-vocabulary argmax (decoded) and the constrained argmax over the letters,
    their correctness, and each letter's log-probability."""
    gold_ids = meta["gold"].map(letter_ids).to_numpy()
    frame = meta[["question_id", "subject", "gold"]].reset_index(drop=True).copy()
    frame["pred_argmax"] = [tokenizer.decode([int(token)]) for token in argmax_token]
    frame["pred_letter"] = np.array(ANSWER_LETTERS)[letter_logprob.argmax(axis=1)]
    frame["correct"] = frame["pred_letter"] == frame["gold"]
    frame["correct_argmax"] = argmax_token == gold_ids
    for i, letter in enumerate(ANSWER_LETTERS):
        frame[f"logprob_{letter}"] = letter_logprob[:, i].astype(np.float64)
    return frame


def accuracy_summary(frame: pd.DataFrame) -> dict:
    """micro (over prompts) and macro (mean over subjects) accuracy of the constrained prediction, the same two
    for the full-vocabulary argmax (`*_argmax`), and the number of prompts `n`."""
    by_subject = frame.groupby("subject")
    return {
        "micro": float(frame["correct"].mean()),
        "macro": float(by_subject["correct"].mean().mean()),
        "micro_argmax": float(frame["correct_argmax"].mean()),
        "macro_argmax": float(by_subject["correct_argmax"].mean().mean()),
        "n": int(len(frame)),
    }


def lens_frame(gold, letter_lens: np.ndarray) -> pd.DataFrame:
    """One row per layer of the logit lens `letter_lens` [N, n_layers, 4] (log-probabilities of A-D over the full
    vocabulary) against the gold letters [N]: `accuracy`, the fraction of prompts whose most probable letter is the
    gold one (constrained, as the accuracy table's); `gold_prob`, the mean gold-letter probability renormalised over
    the four letters (0.25 when the layer cannot tell them apart); `gold_prob_full`, its mean over the full
    vocabulary (near 0 while the layer's readout puts its mass on other tokens); and the number of prompts `n`."""
    lens = np.asarray(letter_lens, dtype=np.float64)
    gold_index = np.array([ANSWER_LETTERS.index(letter) for letter in gold], dtype=np.int64)
    gold_logprob = np.take_along_axis(lens, gold_index[:, None, None], axis=2)[..., 0]  # [N, n_layers]
    renormalised = gold_logprob - np.logaddexp.reduce(lens, axis=2)
    return pd.DataFrame({
        "layer": np.arange(lens.shape[1]),
        "n": np.full(lens.shape[1], len(lens)),
        "accuracy": (lens.argmax(axis=2) == gold_index[:, None]).mean(axis=0),
        "gold_prob": np.exp(renormalised).mean(axis=0),
        "gold_prob_full": np.exp(gold_logprob).mean(axis=0),
    }, columns=list(LENS_COLUMNS))


def _write_with_metadata(frame: pd.DataFrame, path: str | Path, key: bytes, metadata: dict) -> None:
    """The table as parquet, written atomically (`repgeom.io.atomic_path`), with `metadata` as JSON under `key`."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                      key: json.dumps(metadata).encode()}), tmp)


def write_accuracy(frame: pd.DataFrame, path: str | Path, extra: dict | None = None) -> dict:
    """Write the table atomically, its summary in the parquet metadata; return it."""
    summary = accuracy_summary(frame)
    _write_with_metadata(frame, path, SUMMARY_KEY, {**summary, **(extra or {})})
    return summary


def write_lens(frame: pd.DataFrame, path: str | Path, extra: dict | None = None) -> None:
    """Write a `lens_frame` table atomically, `extra` (the group, the model) in the parquet metadata."""
    _write_with_metadata(frame, path, LENS_KEY, extra or {})


def read_accuracy_metadata(path: str | Path) -> dict:
    """The summary (and model/condition details) stored with an accuracy table."""
    return json.loads(pq.read_schema(path).metadata[SUMMARY_KEY])
