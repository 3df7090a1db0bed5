"""Per-prompt predictions and micro/macro accuracy of one condition, written as the extraction job's output."""
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


def write_accuracy(frame: pd.DataFrame, path: str | Path, extra: dict | None = None) -> dict:
    """Write the table atomically (`repgeom.io.atomic_path`), its summary in the parquet metadata; return it."""
    path = Path(path)
    summary = accuracy_summary(frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), SUMMARY_KEY: json.dumps({**summary, **(extra or {})}).encode()}
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
    return summary


def read_accuracy_metadata(path: str | Path) -> dict:
    """The summary (and model/condition details) stored with an accuracy table."""
    return json.loads(pq.read_schema(path).metadata[SUMMARY_KEY])
