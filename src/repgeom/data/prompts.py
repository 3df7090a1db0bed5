"""Prompt text exactly as the reference protocol writes it (docs/protocol.md §2.2, truncation §2.4), and left truncation."""
from __future__ import annotations

import pandas as pd

from repgeom.data.mmlu import DatasetError
from repgeom.letters import ANSWER_LETTERS
from repgeom.errors import InputError


def subject_header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def question_block(row) -> str:
    """`{question}\\nA. …\\nD. …\\nAnswer:`, from a canonical-table row (fields already stripped)."""
    choices = "".join(f"{letter}. {row[letter]}\n" for letter in ANSWER_LETTERS)
    return f"{row['question']}\n{choices}Answer:"


def shot_text(row) -> str:
    return f"{question_block(row)} {row['answer']}\n\n"


def k_shot_prompt(query, shots: list) -> str:
    return subject_header(query["subject"]) + "".join(shot_text(s) for s in shots) + question_block(query)


def dev_shots(table: pd.DataFrame, n_shots: int, source=None) -> dict[str, list]:
    """The first k dev rows of each subject, in dev order (the reference default).

    `source` names where the dev rows come from, for the error when a subject has too few: a string (e.g. the
    questions file) or a function of the subject (e.g. naming the subject's dev file too).
    """
    dev = table[table["split"] == "dev"]
    shots = {}
    for subject, rows in dev.groupby("subject", sort=True):
        if len(rows) < n_shots:
            where = source(subject) if callable(source) else source
            raise DatasetError(
                f"subject {subject!r} has {len(rows)} dev examples{f' in {where}' if where else ''}, fewer than the "
                f"{n_shots} shots asked for: ask for at most {len(rows)} shots, or give the subject more dev rows")
        shots[subject] = [row for _, row in rows.head(n_shots).iterrows()]
    return shots


def truncate_left(tokenizer, text: str, max_length: int) -> tuple[str, int, bool]:
    """Cut whole tokens off the left until the prompt (with BOS) fits; return (text, n_tokens, truncated)."""
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    n_special = len(tokenizer("", add_special_tokens=True)["input_ids"])
    budget = max_length - n_special
    if budget < 1:
        raise InputError(f"max_length {max_length} leaves no room for text after {n_special} special token(s)")
    n_text = len(encoded["input_ids"])
    if n_text <= budget:
        return text, n_text + n_special, False
    start_char = encoded["offset_mapping"][n_text - budget][0]
    kept = text[start_char:]
    # Re-tokenising a cut string can merge differently at the seam: trim until it really fits.
    while len(tokenizer(kept, add_special_tokens=False)["input_ids"]) > budget:
        kept = kept[1:]
    return kept, len(tokenizer(kept, add_special_tokens=False)["input_ids"]) + n_special, True


def tokenize_prompts(frame: pd.DataFrame, tokenizer, max_length: int) -> pd.DataFrame:
    """Add `n_tokens` and `truncated`, replacing prompts over the context by their left-truncated text."""
    results = [truncate_left(tokenizer, text, max_length) for text in frame["prompt"]]
    out = frame.copy()
    out["prompt"] = [r[0] for r in results]
    out["n_tokens"] = pd.array([r[1] for r in results], dtype="int64")
    out["truncated"] = [r[2] for r in results]
    return out
