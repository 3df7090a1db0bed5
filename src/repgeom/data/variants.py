"""Prompt controls: k-shot prompts whose shots are altered in one named way each (docs/protocol.md §2.5).

Every variant keeps the plain k-shot layout, header + k shot blocks + query block, and changes only the
shots (and, for `gibberish`, the header). The query block is always the real `question_block` of the
query, so the representation is read at the same `Answer:` token as in the plain prompt. Each shot
block ends in "\\n\\n", as in the plain prompt. The blocks, with {q} the question, {choices} the four
lines `A. …\\n` … `D. …\\n` and {L} a letter:

    plain (prompts.shot_text)  {q}\\n{choices}Answer: {L}\\n\\n
    shuffled                   plain blocks of the first k dev shots, in a seeded random order
    wrong_answers              plain blocks, each {L} a seeded random letter other than the gold one
    cross_subject              plain blocks of the first k dev shots of a subject of the other macro-area
                               (STEM against non-STEM), under the query's own header
    question_only              {q}\\n\\n
    answer_only                Answer: {L}\\n\\n
    no_answer                  {q}\\n{choices}\\n          (no `Answer:` line)
    no_choices                 {q}\\nAnswer: {L}\\n\\n
    gibberish                  plain blocks whose question and choices have every word replaced by a
                               seeded pseudo-word of the same length (digits by random digits, the
                               case of the first letter and all punctuation kept), and {L} a seeded
                               random letter; the header is turned to gibberish the same way. Only the
                               query block stays real: the control keeps the prompt's length and format
                               and removes its content.
    sampled_shots              plain blocks of k shots drawn without replacement, in drawn order, from
                               the subject's pool: its dev rows plus 8 seeded validation rows (13 a
                               subject in MMLU). `sampled_shots_pool_ids` lists those validation rows, to
                               keep them out of the fine-tuning set.

The ablated forms keep the inner line breaks of the plain block (the reference code instead put a blank
line between the question and the choices or the answer line), so each differs from a plain shot only
by what it drops.

Randomness: every draw comes from a generator seeded by a SHA-256 hash of (seed, variant, key), the
key being the query's question_id (per-query draws) or a subject (the borrowed subject of
`cross_subject`, the validation rows of the `sampled_shots` pool). A prompt therefore does not change
when other rows are added, and the same seed gives byte-identical prompts.
"""
from __future__ import annotations

import hashlib
import json
import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from repgeom.data.mmlu import DatasetError
from repgeom.letters import ANSWER_LETTERS
from repgeom.data.prompts import dev_shots, question_block, shot_text, subject_header
from repgeom.errors import InputError

AREAS = ("STEM", "non-STEM")
POOL_VALIDATION_PER_SUBJECT = 8
# Pseudo-words alternate consonants and vowels so they read as words rather than noise.
CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"
WORD_OR_NUMBER = re.compile(r"[^\W\d_]+|\d+")


def seeded_rng(seed: int, variant: str, key: str) -> np.random.Generator:
    """A generator that depends only on (seed, variant, key): hashlib, not hash(), which is salted per process."""
    digest = hashlib.sha256(f"{seed}/{variant}/{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def load_subject_areas(path: str | Path | None = None) -> dict[str, str]:
    """subject -> "STEM" | "non-STEM" from a JSON object; by default the shipped 57 MMLU subjects."""
    if path is None:
        text = (resources.files("repgeom") / "resources" / "mmlu_subject_areas.json").read_text()
        where = "the shipped mmlu_subject_areas.json"
    else:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise DatasetError(f"subject areas file {str(path)!r} is unreadable: {err}") from err
        where = str(path)
    try:
        areas = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(areas, dict):
        raise DatasetError(f"{where}: expected a JSON object subject -> area, found {type(areas).__name__}")
    bad = areas_outside_known(areas, areas)
    if bad:
        raise DatasetError(f"{where}: area(s) {bad} are not one of {list(AREAS)}")
    return areas


def areas_outside_known(areas: dict[str, str], subjects) -> dict[str, str]:
    return {subject: areas[subject] for subject in sorted(subjects) if areas[subject] not in AREAS}


def check_subject_areas(table: pd.DataFrame, areas: dict[str, str]) -> None:
    """Every subject of the table needs a macro-area, STEM or non-STEM."""
    missing = sorted(set(table["subject"]) - set(areas))
    if missing:
        raise DatasetError(f"subject(s) {missing} have no macro-area; add each to the subject areas file "
                           f"with one of {list(AREAS)}")
    bad = areas_outside_known(areas, set(table["subject"]))
    if bad:
        raise DatasetError(f"subject area(s) {bad} are not one of {list(AREAS)}")


def pool_validation_rows(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The validation rows of the `sampled_shots` pool: 8 per subject (all of them where fewer), in source order."""
    validation = table[table["split"] == "validation"]
    picked = [validation.iloc[:0]]  # keeps the columns when there is no validation row
    for subject, rows in validation.groupby("subject", sort=True):
        size = min(POOL_VALIDATION_PER_SUBJECT, len(rows))
        chosen = seeded_rng(seed, "sampled_shots", subject).choice(len(rows), size=size, replace=False)
        picked.append(rows.iloc[np.sort(chosen)])
    return pd.concat(picked)


def sampled_shots_pool_ids(table: pd.DataFrame, seed: int) -> list[str]:
    """question_ids of the validation rows that `sampled_shots` may show as shots (exclude them from fine-tuning)."""
    return pool_validation_rows(table, seed)["question_id"].tolist()


class ShotSource:
    """What the variants draw shots from, for one call of `variant_prompts`; each part is built on first use."""

    def __init__(self, table: pd.DataFrame, n_shots: int, seed: int, variant: str, areas: dict[str, str]):
        self.table, self.n_shots, self.seed, self.variant, self.areas = table, n_shots, seed, variant, areas

    def rng(self, key: str) -> np.random.Generator:
        return seeded_rng(self.seed, self.variant, key)

    @cached_property
    def first_shots(self) -> dict[str, list]:
        return dev_shots(self.table, self.n_shots)

    @cached_property
    def subjects_by_area(self) -> dict[str, list[str]]:
        """Subjects with dev shots, by macro-area, sorted: the candidates a query may borrow shots from."""
        check_subject_areas(self.table, self.areas)
        return {area: sorted(s for s in self.first_shots if self.areas[s] == area) for area in AREAS}

    def borrowed_subject(self, subject: str) -> str:
        """A seeded subject of the other macro-area, drawn once per query subject."""
        by_area = self.subjects_by_area  # checks the areas first
        other_area = next(area for area in AREAS if area != self.areas[subject])
        candidates = by_area[other_area]
        if not candidates:
            raise DatasetError(f"cross_subject: subject {subject!r} is {self.areas[subject]} and the dataset has "
                               f"no {other_area} subject with {self.n_shots} dev shots to borrow")
        return candidates[int(self.rng(subject).integers(len(candidates)))]

    @cached_property
    def shot_pools(self) -> dict[str, list]:
        """subject -> its dev rows (dev order), then its pool validation rows (source order)."""
        pool = pd.concat([self.table[self.table["split"] == "dev"], pool_validation_rows(self.table, self.seed)])
        return {subject: [row for _, row in rows.iterrows()] for subject, rows in pool.groupby("subject", sort=True)}


# Each variant maps (query row, shot source) to the prompt up to the query block.
PrefixBuilder = Callable[[pd.Series, ShotSource], str]


def own_header_with(query, blocks) -> str:
    return subject_header(query["subject"]) + "".join(blocks)


def shuffled(query, source: ShotSource) -> str:
    shots = source.first_shots[query["subject"]]
    order = source.rng(query["question_id"]).permutation(len(shots))
    return own_header_with(query, (shot_text(shots[i]) for i in order))


def wrong_letter(rng: np.random.Generator, gold: str) -> str:
    wrong = [letter for letter in ANSWER_LETTERS if letter != gold]
    return wrong[int(rng.integers(len(wrong)))]


def wrong_answers(query, source: ShotSource) -> str:
    rng = source.rng(query["question_id"])
    shots = source.first_shots[query["subject"]]
    return own_header_with(query, (shot_text(dict(s, answer=wrong_letter(rng, s["answer"]))) for s in shots))


def cross_subject(query, source: ShotSource) -> str:
    shots = source.first_shots[source.borrowed_subject(query["subject"])]
    return own_header_with(query, (shot_text(s) for s in shots))


def question_only_shot(row) -> str:
    return f"{row['question']}\n\n"


def answer_only_shot(row) -> str:
    return f"Answer: {row['answer']}\n\n"


def no_answer_shot(row) -> str:
    # The question block minus its final `Answer:` is the question and its four choice lines.
    return question_block(row).removesuffix("Answer:") + "\n"


def no_choices_shot(row) -> str:
    return f"{row['question']}\nAnswer: {row['answer']}\n\n"


def first_shots_as(shot_format: Callable[[pd.Series], str]) -> PrefixBuilder:
    """A variant showing the first k dev shots of the query's subject, each written by `shot_format`."""
    def build(query, source: ShotSource) -> str:
        return own_header_with(query, (shot_format(s) for s in source.first_shots[query["subject"]]))
    return build


def pseudo_word(rng: np.random.Generator, like: str) -> str:
    """Random digits for a number; otherwise a consonant-vowel word of the same length and initial case."""
    if like.isdigit():
        return "".join(str(d) for d in rng.integers(10, size=len(like)))
    start = int(rng.integers(2))
    letters = [CONSONANTS[rng.integers(len(CONSONANTS))] if (i + start) % 2 == 0 else VOWELS[rng.integers(len(VOWELS))]
               for i in range(len(like))]
    word = "".join(letters)
    return word.capitalize() if like[0].isupper() else word


def gibberish_like(text: str, rng: np.random.Generator) -> str:
    """`text` with every word and number replaced by a pseudo-word of the same length; the rest kept."""
    return WORD_OR_NUMBER.sub(lambda match: pseudo_word(rng, match.group()), text)


def gibberish(query, source: ShotSource) -> str:
    rng = source.rng(query["question_id"])
    header = gibberish_like(subject_header(query["subject"]), rng)
    shots = [dict(s, **{field: gibberish_like(s[field], rng) for field in ("question", *ANSWER_LETTERS)},
                  answer=ANSWER_LETTERS[int(rng.integers(len(ANSWER_LETTERS)))])
             for s in source.first_shots[query["subject"]]]
    return header + "".join(shot_text(s) for s in shots)


def sampled_shots(query, source: ShotSource) -> str:
    pool = source.shot_pools.get(query["subject"], [])
    if len(pool) < source.n_shots:
        raise DatasetError(f"sampled_shots: subject {query['subject']!r} has {len(pool)} dev and pool validation "
                           f"examples, fewer than the {source.n_shots} shots asked for")
    picks = source.rng(query["question_id"]).choice(len(pool), size=source.n_shots, replace=False)
    return own_header_with(query, (shot_text(pool[i]) for i in picks))


VARIANTS: dict[str, PrefixBuilder] = {
    "shuffled": shuffled,
    "wrong_answers": wrong_answers,
    "cross_subject": cross_subject,
    "question_only": first_shots_as(question_only_shot),
    "answer_only": first_shots_as(answer_only_shot),
    "no_answer": first_shots_as(no_answer_shot),
    "no_choices": first_shots_as(no_choices_shot),
    "gibberish": gibberish,
    "sampled_shots": sampled_shots,
}


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise InputError(f"unknown prompt variant {variant!r}; known variants: {', '.join(VARIANTS)}")


def variant_prompts(table: pd.DataFrame, subset: pd.DataFrame, n_shots: int, variant: str, seed: int,
                    areas: dict[str, str]) -> list[str]:
    """One `variant` prompt with `n_shots` shots per row of `subset` (test rows of `table`), in order."""
    check_variant(variant)
    if n_shots < 1:
        raise InputError(f"prompt variant {variant!r} alters the shots: n_shots must be at least 1, got {n_shots}")
    source = ShotSource(table, n_shots, seed, variant, areas)
    build = VARIANTS[variant]
    return [build(query, source) + question_block(query) for _, query in subset.iterrows()]
