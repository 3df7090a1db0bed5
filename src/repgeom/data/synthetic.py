"""The embedded default dataset: MMLU-format questions with learnable, subject-specific structure.

Four subjects ask about a generated knowledge base (invented countries, books, elements, festivals), two
about numbers. A pre-training corpus states the facts in prose and holds some multiple-choice examples
drawn from an auxiliary pool, so that a small model can learn both the facts and the format. The
dataset is written in the original MMLU release layout (dev/ val/ test/ header-less CSVs), so the
workflow reads it through the same loader as a real local copy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from repgeom.data.mmlu import CSV_SPLIT_NAMES
from repgeom.letters import ANSWER_LETTERS
from repgeom.data.prompts import k_shot_prompt

SYLLABLES = ["ba", "ro", "ki", "mu", "zen", "tal", "vor", "pi", "lu", "dra", "mon", "sel", "fi", "gor",
             "nus", "te", "qua", "rim", "bo", "shan", "el", "wic", "ta", "por"]
SEASONS = ["spring", "summer", "autumn", "winter"]

# subject -> macro-area (STEM against non-STEM, as the prompt controls need).
SUBJECT_AREAS = {
    "arithmetic": "STEM", "number_comparison": "STEM", "element_symbols": "STEM",
    "geography": "non-STEM", "literature": "non-STEM", "festivals": "non-STEM",
}


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    correct: str
    distractors: tuple[str, str, str]


def _invent_names(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    names = []
    while len(names) < n:
        name = "".join(rng.choice(SYLLABLES, size=rng.integers(2, 4))).capitalize()
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def build_knowledge_base(rng: np.random.Generator, n_facts: int, n_groups: int = 6) -> dict:
    """Invented entities, each in one of a few groups (cities of countries, books of authors, festivals
    of seasons), so that a question is answered by knowing an entity's group: learnable by a small model."""
    taken: set[str] = set()
    countries, authors = _invent_names(rng, n_groups, taken), _invent_names(rng, n_groups, taken)
    cities, books = _invent_names(rng, n_facts, taken), _invent_names(rng, n_facts, taken)
    festivals = _invent_names(rng, n_facts, taken)
    elements = [name.lower() + "ium" for name in _invent_names(rng, n_facts, taken)]
    return {
        "geography": {city: countries[i % n_groups] for i, city in enumerate(cities)},
        "literature": {book: authors[i % n_groups] for i, book in enumerate(books)},
        "festivals": {festival: SEASONS[int(rng.integers(4))] for festival in festivals},
        "element_symbols": {element: element[:2].capitalize() for element in elements},
    }


FACT_TEMPLATES = {
    "geography": ["{k} is a city in {v}.", "The city of {k} lies in {v}."],
    "literature": ["The book {k} was written by {v}.", "{v} is the author of {k}."],
    "festivals": ["The festival of {k} is celebrated in {v}.", "In {v}, people celebrate {k}."],
    "element_symbols": ["The chemical symbol of {k} is {v}.", "{k} has the symbol {v}."],
}


def _other_group_members(rng, facts: dict, group: str) -> tuple[str, str, str]:
    others = [k for k, v in facts.items() if v != group]
    return tuple(others[i] for i in rng.choice(len(others), size=3, replace=False))


def draw_question(rng: np.random.Generator, subject: str, kb: dict) -> Question:
    if subject == "arithmetic":
        a, b = (int(x) for x in rng.integers(0, 20, size=2))
        total = a + b
        offsets = rng.choice([-3, -2, -1, 1, 2, 3], size=3, replace=False)
        return Question(subject, f"What is {a} plus {b}?", str(total), tuple(str(total + int(o)) for o in offsets))
    if subject == "number_comparison":
        numbers = [int(x) for x in rng.choice(100, size=4, replace=False)]
        largest = max(numbers)
        return Question(subject, "Which of the following numbers is the largest?", str(largest),
                        tuple(str(n) for n in numbers if n != largest))
    facts = kb[subject]
    key = list(facts)[int(rng.integers(len(facts)))]
    if subject == "element_symbols":
        # Distractors are symbols of elements with other initials: the answer shares the name's start.
        others = sorted({v for v in facts.values() if v[0] != facts[key][0]})
        picks = tuple(others[i] for i in rng.choice(len(others), size=3, replace=False))
        return Question(subject, f"What is the chemical symbol of {key}?", facts[key], picks)
    if subject == "festivals":
        others = [s for s in SEASONS if s != facts[key]]
        return Question(subject, f"In which season is the festival of {key} celebrated?", facts[key],
                        tuple(others[i] for i in rng.permutation(3)))
    group = facts[key]
    question = {"geography": f"Which of the following is a city in {group}?",
                "literature": f"Which of the following books was written by {group}?"}[subject]
    return Question(subject, question, key, _other_group_members(rng, facts, group))


def draw_echo_question(rng: np.random.Generator, kb: dict) -> Question:
    words = sorted({w for subject in ("geography", "literature", "festivals") for w in kb[subject]})
    picks = [words[i] for i in rng.choice(len(words), size=4, replace=False)]
    return Question("vocabulary", f"Which of the following is the word {picks[0]}?", picks[0], tuple(picks[1:]))


def to_row(rng: np.random.Generator, q: Question) -> dict:
    """Place the correct answer at a uniformly drawn letter."""
    gold = int(rng.integers(4))
    choices = list(q.distractors)
    choices.insert(gold, q.correct)
    return {"question": q.question, **dict(zip(ANSWER_LETTERS, choices)), "answer": ANSWER_LETTERS[gold]}


def pretraining_corpus(rng: np.random.Generator, kb: dict, n_mc_examples: int) -> list[str]:
    texts = []
    for subject, facts in kb.items():
        for key, value in facts.items():
            texts.extend(t.format(k=key, v=value) for t in FACT_TEMPLATES[subject])
    for _ in range(400):
        a, b = (int(x) for x in rng.integers(0, 50, size=2))
        texts.append(f"{a} plus {b} is {a + b}.")
        numbers = [int(x) for x in rng.choice(100, size=4, replace=False)]
        texts.append(f"Among {', '.join(map(str, numbers[:3]))} and {numbers[3]}, the largest is {max(numbers)}.")
    subjects = list(SUBJECT_AREAS)
    for i in range(n_mc_examples):
        subject = subjects[i % len(subjects)]
        rows = [to_row(rng, draw_question(rng, subject, kb)) | {"subject": subject} for _ in range(i % 3 + 1)]
        texts.append(k_shot_prompt(rows[-1], rows[:-1]) + f" {rows[-1]['answer']}")
        # Questions that name their answer teach the model to bind a choice to its letter.
        echo = to_row(rng, draw_echo_question(rng, kb)) | {"subject": "vocabulary"}
        texts.append(k_shot_prompt(echo, []) + f" {echo['answer']}")
    order = rng.permutation(len(texts))
    return [texts[i] for i in order]


def generate(out_dir: str | Path, seed: int, n_facts: int, n_dev: int, n_validation: int, n_test: int,
             n_mc_examples: int) -> dict:
    """Write the dataset (CSV release layout), `subject_areas.json` and `pretrain_corpus.json`."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    kb = build_knowledge_base(rng, n_facts)
    sizes = {"dev": n_dev, "validation": n_validation, "test": n_test}
    for split, folder in CSV_SPLIT_NAMES.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        for subject in SUBJECT_AREAS:
            rows = [to_row(rng, draw_question(rng, subject, kb)) for _ in range(sizes[split])]
            pd.DataFrame(rows).to_csv(out / folder / f"{subject}_{folder}.csv", header=False, index=False)
    (out / "subject_areas.json").write_text(json.dumps(SUBJECT_AREAS, indent=2) + "\n")
    corpus = pretraining_corpus(rng, kb, n_mc_examples)
    (out / "pretrain_corpus.json").write_text(json.dumps(corpus))
    return {"subjects": len(SUBJECT_AREAS), **{f"n_{k}": v * len(SUBJECT_AREAS) for k, v in sizes.items()},
            "corpus_texts": len(corpus)}
