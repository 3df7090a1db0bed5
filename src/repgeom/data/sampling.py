"""Subsets: the analysis subset of the test split (a seeded per-subject draw, or the rows a boolean mask selects)
and the seeded fine-tuning set."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from repgeom.data.mmlu import DatasetError
from repgeom.data.prompts import question_block


def sample_per_subject(rows: pd.DataFrame, max_per_subject: int, seed: int) -> pd.DataFrame:
    """At most `max_per_subject` rows of each subject (subjects in sorted order, one generator for all),
    kept in source order; subjects at or under the cap are kept whole."""
    rng = np.random.default_rng(seed)
    picked = []
    for _, group in rows.groupby("subject", sort=True):
        if len(group) > max_per_subject:
            group = group.iloc[np.sort(rng.choice(len(group), size=max_per_subject, replace=False))]
        picked.append(group)
    return pd.concat(picked, ignore_index=True)


def analysis_subset(table: pd.DataFrame, max_per_subject: int, seed: int,
                    mask_path: str | Path | None = None) -> pd.DataFrame:
    """The test questions to analyse: those the mask file selects (in test-split order), else at most
    `max_per_subject` per subject drawn with `seed`."""
    test = table[table["split"] == "test"]
    if test.empty:
        raise DatasetError("split 'test' is empty: nothing to analyse")
    if mask_path is not None:
        return test[read_subset_mask(mask_path, len(test))].reset_index(drop=True)
    return sample_per_subject(test, max_per_subject, seed)


def read_subset_mask(path: str | Path, n_test: int) -> np.ndarray:
    """A .npy file holding one entry per test question, in the canonical test-split order (subjects sorted, each
    in source order: the order of cais/mmlu's `all` test split), True for a question to keep. Its dtype is bool, or
    an integer type holding only 0 and 1 (masks saved as uint8/int); anything else is refused, naming the file."""
    where = f"subset mask {str(path)!r}"
    try:
        with open(path, "rb") as handle:
            mask = np.lib.format.read_array(handle, allow_pickle=False)
    except OSError as err:
        raise DatasetError(f"{where}: cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise DatasetError(f"{where}: not a NumPy .npy array file ({err})") from None
    if mask.ndim != 1:
        raise DatasetError(f"{where}: shape {mask.shape}, expected a 1-D mask with one entry per test question")
    if mask.dtype.kind in "iu":
        stray = np.flatnonzero((mask != 0) & (mask != 1))
        if stray.size:
            raise DatasetError(f"{where}: integer entries must be 0 or 1 (a mask, not question indices); entry "
                               f"{stray[0]} is {mask[stray[0]]}")
        mask = mask.astype(bool)
    elif mask.dtype != bool:
        raise DatasetError(f"{where}: dtype {mask.dtype}, expected bool (or integers 0/1)")
    if len(mask) != n_test:
        raise DatasetError(f"{where}: {len(mask)} entries, but the test split has {n_test} questions (one entry "
                           "each, in test-split order)")
    if not mask.any():
        raise DatasetError(f"{where}: selects no test question")
    return mask


def finetune_set(table: pd.DataFrame, max_per_subject: int, seed: int, exclude_ids=()) -> pd.DataFrame:
    """Dev + validation, capped per subject; training text = question block + `Answer:` + ` {letter}`.
    `exclude_ids` keeps out rows used elsewhere (the `sampled_shots` pool)."""
    pool = table[table["split"].isin(["dev", "validation"]) & ~table["question_id"].isin(list(exclude_ids))]
    if pool.empty:
        raise DatasetError("splits 'dev' and 'validation' are empty: no fine-tuning data")
    rows = sample_per_subject(pool, max_per_subject, seed)
    prompts = [question_block(row) for _, row in rows.iterrows()]
    return pd.DataFrame({
        "question_id": rows["question_id"], "subject": rows["subject"], "gold": rows["answer"],
        "split": rows["split"], "prompt": prompts,
        "text": [f"{p} {gold}" for p, gold in zip(prompts, rows["answer"])],
    })
