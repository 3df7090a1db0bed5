"""An MMLU-format dataset of real facts, for a real pretrained model (no pre-training corpus).

Six subjects ask about small hand-checked tables shipped in `repgeom/resources/facts/` (see SOURCES.md
there) or about generated arithmetic. Each subject mixes several relations (capital of a country, the
country of a capital, its continent, its currency; ...) and each relation has several wordings, so that
a subject's questions are not all one template. A relation and its inverse ask about the same fact (the
capital of France, the country whose capital is Paris): every fact is asked at most once in the whole
dataset, so no split shares a fact with another.

Distractors are other values of the same relation that are certainly wrong for the question (other
capitals, other chemical symbols), taken first from a "near" list where the relation has one (capitals
on the same continent, symbols with the same initial, misformed plurals such as "mouses"). The gold
letter is drawn uniformly. Every draw comes from one `numpy.random.default_rng(seed)`, so a seed gives
byte-identical files. The files follow the original MMLU release layout (dev/ val/ test/ header-less
CSVs), like `synthetic.generate`, so the workflow reads them through the same loader.
"""
from __future__ import annotations

import csv
import functools
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from repgeom.data.mmlu import CSV_SPLIT_NAMES, DatasetError
from repgeom.letters import ANSWER_LETTERS
from repgeom.errors import InputError

# subject -> macro-area (STEM against non-STEM, as the prompt controls need). The order is the write order.
SUBJECT_AREAS = {
    "geography": "non-STEM",
    "english_vocabulary": "non-STEM",
    "biology": "STEM",
    "chemistry": "STEM",
    "physics": "STEM",
    "elementary_mathematics": "STEM",
}


class FactsTableError(DatasetError):
    """A malformed fact table; the message names the table file and the row."""


class FactsPoolError(DatasetError):
    """More questions asked of a subject than it has facts to ask about without repeats."""


@dataclass(frozen=True)
class TableSpec:
    columns: tuple[str, ...]
    unique: tuple[str, ...]  # columns whose values must not repeat, so that questions stay unambiguous
    integer: tuple[str, ...] = ()


TABLES = {
    "countries": TableSpec(("country", "capital", "continent", "currency"), ("country", "capital")),
    "elements": TableSpec(("name", "symbol", "atomic_number"), ("name", "symbol", "atomic_number"),
                          integer=("atomic_number",)),
    "element_families": TableSpec(("element", "family"), ("element",)),
    "animals": TableSpec(("animal", "group"), ("animal",)),
    "animal_young": TableSpec(("animal", "young"), ("animal",)),
    "antonyms": TableSpec(("word", "antonym"), ("word", "antonym")),
    "plurals": TableSpec(("noun", "plural"), ("noun", "plural")),
    "past_tense": TableSpec(("verb", "past"), ("verb", "past")),
    "si_units": TableSpec(("quantity", "unit", "symbol"), ("quantity", "unit", "symbol")),
    "si_prefixes": TableSpec(("prefix", "symbol", "factor"), ("prefix", "symbol", "factor")),
    "instruments": TableSpec(("instrument", "measures"), ("instrument", "measures")),
}

QUESTIONS_FILE = "questions.yaml"


@dataclass(frozen=True)
class TableQuestion:
    """Questions "`ask` -> `answer`" over the rows of table `table`, in several wordings (`{x}`: the asked value;
    `{the_x}`, `{a_x}`, `{A_x}`: with an article); one record of `questions.yaml` beside the tables."""
    subject: str
    name: str
    fact: str              # what is asked about; the same for a relation and its inverse
    table: str
    ask: str               # the column the question names
    answer: str            # the column that answers it
    key: str               # the column naming the fact's row (the same for a relation and its inverse)
    wordings: tuple[str, ...]
    near: str | None = None  # a rule of NEAR_ANSWERS: plausible wrong answers, drawn first


# ---------------------------------------------------------------------------------------------- tables

def table_location(name: str, tables_dir: str | Path | None = None):
    """The table file: `tables_dir/{name}.csv`, or the one shipped in the package."""
    if tables_dir is not None:
        return Path(tables_dir) / f"{name}.csv"
    return resources.files("repgeom").joinpath("resources", "facts", f"{name}.csv")


def read_table(name: str, tables_dir: str | Path | None = None) -> list[dict[str, str]]:
    """Read and check one table: header with the spec's columns, no empty cell, unique key columns."""
    spec = TABLES[name]
    path = table_location(name, tables_dir)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, FileNotFoundError) as err:
        raise FactsTableError(f"{where}: fact table {name!r} is unreadable ({err})") from err
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise FactsTableError(f"{where}: the table is empty; expected a header row {list(spec.columns)}")
    header = [cell.strip() for cell in header]
    missing = [c for c in spec.columns if c not in header]
    if missing:
        raise FactsTableError(f"{where}: header (row 1) lacks column(s) {missing}; found {header}, "
                              f"expected {list(spec.columns)}")
    if len(set(header)) != len(header):
        raise FactsTableError(f"{where}: header (row 1) repeats a column name: {header}")
    rows: list[dict[str, str]] = []
    seen: dict[str, dict[str, int]] = {c: {} for c in spec.unique}
    for cells in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        at = f"{where}: row at line {line}"
        if len(cells) != len(header):
            raise FactsTableError(f"{at} has {len(cells)} cell(s), the header {len(header)}: {cells}")
        row = {c: cell.strip() for c, cell in zip(header, cells)}
        for column in spec.columns:
            if not row[column]:
                raise FactsTableError(f"{at}: empty cell in column {column!r}")
        for column in spec.integer:
            if not row[column].lstrip("-").isdigit():
                raise FactsTableError(f"{at}: column {column!r} must be an integer, found {row[column]!r}")
        for column in spec.unique:
            if row[column] in seen[column]:
                raise FactsTableError(f"{at}: {column} {row[column]!r} already appears at line "
                                      f"{seen[column][row[column]]}; each {column} may appear once")
            seen[column][row[column]] = line
        rows.append({c: row[c] for c in spec.columns})
    if not rows:
        raise FactsTableError(f"{where}: the table has a header but no rows")
    return rows


def load_questions(path: str | Path | None = None) -> list[TableQuestion]:
    """The questions asked of the tables (default: the shipped `questions.yaml` beside them; a list of records with
    TableQuestion's fields), or FactsTableError naming the file and the record."""
    import yaml

    path = resources.files("repgeom").joinpath("resources", "facts", QUESTIONS_FILE) if path is None else Path(path)
    try:
        records = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise FactsTableError(f"{path}: the questions file is unreadable ({err})") from None
    if not isinstance(records, list):
        raise FactsTableError(f"{path}: expected a list of question records, got {type(records).__name__}")
    questions = []
    for number, record in enumerate(records, 1):
        try:
            question = TableQuestion(**{**record, "wordings": tuple(record.get("wordings") or ())})
        except (TypeError, AttributeError) as err:
            raise FactsTableError(f"{path}: record {number} is not a question ({err})") from None
        if question.table not in TABLES or question.near not in (None, *NEAR_ANSWERS) or not question.wordings:
            raise FactsTableError(f"{path}: record {number} ({question.name}) names an unknown table or near rule, "
                                  "or has no wording")
        questions.append(question)
    return questions


def load_tables(tables_dir: str | Path | None = None) -> dict[str, list[dict[str, str]]]:
    tables = {name: read_table(name, tables_dir) for name in TABLES}
    names = {row["name"] for row in tables["elements"]}
    for i, row in enumerate(tables["element_families"]):
        if row["element"] not in names:
            raise FactsTableError(f"{table_location('element_families', tables_dir)}: data row {i + 1}: element "
                                  f"{row['element']!r} is not in the elements table")
    return tables


# ------------------------------------------------------------------------------------------- relations

@dataclass(frozen=True)
class Item:
    """One possible question: the fields its wordings use, the gold answer and its wrong answers."""
    relation: str
    fact: tuple          # the fact asked about; each fact is asked at most once in the dataset
    x: str               # what the question asks about, as it reads in the question
    fields: dict = field(hash=False)
    answer: str
    near: tuple[str, ...]  # plausible wrong answers, drawn first
    far: tuple[str, ...]   # the other wrong answers, to fill up to three


@dataclass(frozen=True)
class Relation:
    subject: str
    name: str
    wordings: tuple[str, ...]
    items: tuple[Item, ...]
    # (table, column asked about, column answered) for a table relation; None for a generated one.
    source: tuple[str, str, str] | None = None

    def render(self, wording: str, item: Item) -> str:
        return wording.format(**item.fields).strip()


def _with_the(name: str) -> str:
    """Country names that take the definite article in running text."""
    return f"the {name}" if name.startswith("United ") or name in ("Netherlands", "Philippines") else name


def _with_a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _text_fields(x: str) -> dict:
    a_x = _with_a(x)
    return {"x": x, "the_x": _with_the(x), "a_x": a_x, "A_x": a_x[0].upper() + a_x[1:]}


def table_relation(question: TableQuestion, rows: list[dict]) -> Relation:
    """The questions of `question` ("ask -> answer") over its table's `rows`. A question whose `ask` value has several
    true answers is left out (the inverse of a many-to-one relation asks only about values held by one row); wrong
    answers are the relation's other answers that are not true for the question, those of its `near` rule first."""
    subject, name, fact, table = question.subject, question.name, question.fact, question.table
    ask, answer, key = question.ask, question.answer, question.key
    near = None if question.near is None else functools.partial(NEAR_ANSWERS[question.near], rows, question)
    truth: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        truth[row[ask]].add(row[answer])
    values = sorted({row[answer] for row in rows})
    items = []
    for row in rows:
        x, gold = row[ask], row[answer]
        if len(truth[x]) != 1:
            continue
        wrong = [v for v in values if v not in truth[x]]
        preferred = []
        for v in (near(row) if near else []):
            if v not in truth[x] and v != gold and v not in preferred:
                preferred.append(v)
        others = tuple(v for v in wrong if v not in preferred)
        if len(preferred) + len(others) < 3:
            continue
        items.append(Item(name, (table, fact, row[key]), x, _text_fields(x), gold, tuple(preferred), others))
    return Relation(subject, name, question.wordings, tuple(items), (table, ask, answer))


def _plural_traps(row: dict) -> list[str]:
    """Misformed plurals: the regular endings applied where they do not belong, a doubled plural, the
    bare noun."""
    noun, plural = row["noun"], row["plural"]
    traps = []
    if not noun.endswith("s"):
        traps.append(noun + "s")
    if not noun.endswith("e"):
        traps.append(noun + "es")
    if noun.endswith("y"):
        traps += [noun[:-1] + "ies", noun + "s"]
    if not plural.endswith("s"):
        traps.append(plural + "s")
    traps.append(noun)
    return traps


def _regular_past(verb: str) -> str:
    if verb.endswith("e"):
        return verb + "d"
    vowels = "aeiou"
    if (len(verb) <= 4 and len(verb) >= 3 and verb[-1] not in vowels + "wxy" and verb[-2] in vowels
            and verb[-3] not in vowels):
        return verb + verb[-1] + "ed"
    return verb + "ed"


def _third_person(verb: str) -> str:
    return verb + ("es" if verb.endswith(("s", "x", "ch", "sh", "o")) else "s")


def _past_traps(row: dict) -> list[str]:
    """Regularised pasts ("goed", "wented"), the third person ("goes") and the bare verb."""
    verb, past = row["verb"], row["past"]
    return [_regular_past(verb), past + ("d" if past.endswith("e") else "ed"), _third_person(verb), verb]


def _same_continent(rows: list[dict], question: TableQuestion, row: dict) -> list[str]:
    """The answers of the countries on the same continent."""
    return [r[question.answer] for r in rows if r["continent"] == row["continent"]]


def _atomic_number_within_8(rows: list[dict], question: TableQuestion, row: dict) -> list[str]:
    """The answers of the elements at most 8 places away in the periodic table."""
    return [r[question.answer] for r in rows if abs(int(r["atomic_number"]) - int(row["atomic_number"])) <= 8]


def _same_initial(rows: list[dict], question: TableQuestion, row: dict) -> list[str]:
    """The answers that start like the asked value (case-insensitive): symbols with the element's initial, …"""
    initial = row[question.ask][:1].lower()
    return [r[question.answer] for r in rows if r[question.answer][:1].lower() == initial]


def _same_exponent_sign(rows: list[dict], question: TableQuestion, row: dict) -> list[str]:
    """Powers of ten on the same side of 1."""
    below_one = row[question.answer].startswith("10^-")
    return [r[question.answer] for r in rows if r[question.answer].startswith("10^-") == below_one]


# How a relation finds plausible wrong answers for a row of its table (`TableQuestion.near`), drawn first.
NEAR_ANSWERS: dict[str, Callable[[list[dict], TableQuestion, dict], list[str]]] = {
    "same_continent": _same_continent,
    "atomic_number_within_8": _atomic_number_within_8,
    "same_initial": _same_initial,
    "same_exponent_sign": _same_exponent_sign,
    "plural_traps": lambda rows, question, row: _plural_traps(row),
    "past_traps": lambda rows, question, row: _past_traps(row),
}


def table_relations(tables: dict, questions: list[TableQuestion] | None = None) -> list[Relation]:
    """Every relation of the questions (default: the shipped `load_questions()`) over the loaded tables, in order."""
    return [table_relation(question, tables[question.table]) for question in questions or load_questions()]


def _number_item(relation: str, fact: tuple, fields: dict, gold: int, candidates) -> Item:
    near = []
    for c in candidates:
        if c >= 0 and c != gold and str(c) not in near:
            near.append(str(c))
    if len(near) < 3:
        raise ValueError(f"{relation} {fields}: fewer than three wrong answers among {list(candidates)}")
    return Item(relation, fact, " ".join(str(v) for v in fields.values()), fields, str(gold), tuple(near), ())


def _math_relations(rng: np.random.Generator) -> list[Relation]:
    """Arithmetic on small numbers and the largest/smallest of four; each operand order, and the order of
    the four numbers in the question, is drawn once here."""
    subject = "elementary_mathematics"
    addition, subtraction, multiplication, largest, smallest = [], [], [], [], []
    for a in range(1, 21):
        for b in range(a, 21):
            x, y = (a, b) if rng.random() < 0.5 else (b, a)
            s = a + b
            addition.append(_number_item("addition", ("addition", a, b), {"a": x, "b": y}, s,
                                         [s + 1, s - 1, s + 2, s - 2, s + 10, s - 10]))
    for a in range(2, 21):
        for b in range(1, a):
            d = a - b
            subtraction.append(_number_item("subtraction", ("subtraction", a, b), {"a": a, "b": b}, d,
                                            [d + 1, d - 1, d + 2, d - 2, a + b, d + 10]))
    for a in range(2, 13):
        for b in range(a, 13):
            x, y = (a, b) if rng.random() < 0.5 else (b, a)
            p = a * b
            multiplication.append(_number_item("multiplication", ("multiplication", a, b), {"a": x, "b": y}, p,
                                               [(a + 1) * b, (a - 1) * b, a * (b + 1), a * (b - 1), a + b, p + 10]))
    for name, out, pick in (("largest", largest, max), ("smallest", smallest, min)):
        seen = set()
        while len(out) < 150:
            numbers = [int(v) for v in rng.choice(np.arange(1, 100), size=4, replace=False)]
            key = tuple(sorted(numbers))
            if key in seen:
                continue
            seen.add(key)
            gold = pick(numbers)
            out.append(_number_item(name, (name, key), {f"n{i + 1}": n for i, n in enumerate(numbers)}, gold,
                                    [n for n in numbers if n != gold]))
    return [
        Relation(subject, "addition", ("What is {a} plus {b}?", "What is {a} + {b}?",
                                       "What is the sum of {a} and {b}?", "Calculate {a} + {b}."), tuple(addition)),
        Relation(subject, "subtraction", ("What is {a} minus {b}?", "What is {a} - {b}?",
                                          "What is {b} subtracted from {a}?",
                                          "What is the difference between {a} and {b}?"), tuple(subtraction)),
        Relation(subject, "multiplication", ("What is {a} times {b}?", "What is {a} multiplied by {b}?",
                                             "What is the product of {a} and {b}?"), tuple(multiplication)),
        Relation(subject, "largest", ("Which of the numbers {n1}, {n2}, {n3} and {n4} is the largest?",
                                      "What is the largest of {n1}, {n2}, {n3} and {n4}?",
                                      "Which is the greatest of these numbers: {n1}, {n2}, {n3}, {n4}?"), tuple(largest)),
        Relation(subject, "smallest", ("Which of the numbers {n1}, {n2}, {n3} and {n4} is the smallest?",
                                       "What is the smallest of {n1}, {n2}, {n3} and {n4}?",
                                       "Which is the lowest of these numbers: {n1}, {n2}, {n3}, {n4}?"), tuple(smallest)),
    ]


def build_relations(tables: dict, rng: np.random.Generator) -> dict[str, list[Relation]]:
    """subject -> its relations, in SUBJECT_AREAS order."""
    by_subject: dict[str, list[Relation]] = {subject: [] for subject in SUBJECT_AREAS}
    for relation in table_relations(tables) + _math_relations(rng):
        by_subject[relation.subject].append(relation)
    return by_subject


def capacity(relations: list[Relation]) -> int:
    """How many questions a subject can give without asking a fact twice."""
    return len({item.fact for relation in relations for item in relation.items})


# -------------------------------------------------------------------------------------------- drawing

def draw_items(rng: np.random.Generator, relations: list[Relation], n: int) -> list[Item]:
    """n items, no fact twice, in rounds: each round takes the next unused item of every relation that has
    one left, in a random order, so that the relations stay mixed in every stretch of the list."""
    queues = [[relation.items[i] for i in rng.permutation(len(relation.items))] for relation in relations]
    used: set[tuple] = set()
    drawn: list[Item] = []
    while len(drawn) < n:
        for queue in queues:
            while queue and queue[0].fact in used:
                queue.pop(0)
        live = [q for q in queues if q]
        if not live:
            raise FactsPoolError(f"subject {relations[0].subject!r} ran out of facts after {len(drawn)} questions")
        for i in rng.permutation(len(live)):
            queue = live[i]
            while queue and queue[0].fact in used:
                queue.pop(0)
            if not queue:
                continue
            item = queue.pop(0)
            used.add(item.fact)
            drawn.append(item)
            if len(drawn) == n:
                break
    return drawn


def to_row(rng: np.random.Generator, relation: Relation, item: Item) -> dict:
    """A wording drawn uniformly, three wrong answers (near ones first), the gold at a uniform letter."""
    question = relation.render(relation.wordings[int(rng.integers(len(relation.wordings)))], item)
    near, far = item.near, item.far
    if len(near) >= 3:
        wrong = [near[i] for i in rng.choice(len(near), size=3, replace=False)]
    else:
        wrong = list(near) + [far[i] for i in rng.choice(len(far), size=3 - len(near), replace=False)]
    wrong = [wrong[i] for i in rng.permutation(3)]
    gold = int(rng.integers(4))
    wrong.insert(gold, item.answer)
    return {"question": question, **dict(zip(ANSWER_LETTERS, wrong)), "answer": ANSWER_LETTERS[gold]}


def _check_sizes(n_dev: int, n_validation: int, n_test: int) -> dict[str, int]:
    sizes = {"dev": n_dev, "validation": n_validation, "test": n_test}
    for split, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n_{split} must be a positive integer, got {n!r}")
    return {split: int(n) for split, n in sizes.items()}


def generate(out_dir: str | Path, seed: int, n_dev: int, n_validation: int, n_test: int, *,
             tables_dir: str | Path | None = None) -> dict:
    """Write the dataset (CSV release layout) and `subject_areas.json`; no pre-training corpus.

    Per subject, the first n_dev drawn questions go to dev (they are the few-shot examples, and span
    several relations), the next n_test to test and the rest to validation. `tables_dir` replaces the
    shipped tables (for tests)."""
    sizes = _check_sizes(n_dev, n_validation, n_test)
    total = sum(sizes.values())
    tables = load_tables(tables_dir)
    rng = np.random.default_rng(seed)
    relations = build_relations(tables, rng)
    capacities = {subject: capacity(rels) for subject, rels in relations.items()}
    short = {subject: cap for subject, cap in capacities.items() if cap < total}
    if short:
        detail = "; ".join(f"subject {s!r} can supply at most {cap}" for s, cap in short.items())
        raise FactsPoolError(f"n_dev + n_validation + n_test = {n_dev} + {n_validation} + {n_test} = {total} questions "
                             f"per subject, more than the facts allow without repeats: {detail}")
    by_name = {(r.subject, r.name): r for rels in relations.values() for r in rels}
    rows: dict[str, dict[str, list[dict]]] = {split: {} for split in sizes}
    counts: dict[str, dict[str, int]] = {}
    for subject, rels in relations.items():
        items = draw_items(rng, rels, total)
        parts = {"dev": items[:n_dev], "test": items[n_dev:n_dev + n_test], "validation": items[n_dev + n_test:]}
        for split, part in parts.items():
            rows[split][subject] = [to_row(rng, by_name[subject, item.relation], item) for item in part]
        questions = [row["question"] for split in sizes for row in rows[split][subject]]
        if len(set(questions)) != len(questions):  # a guard: facts are distinct, so their texts are too
            raise RuntimeError(f"subject {subject!r}: a question text repeats")
        counts[subject] = {r.name: sum(item.relation == r.name for item in items) for r in rels}
    out = Path(out_dir)
    for split, folder in CSV_SPLIT_NAMES.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        for subject in SUBJECT_AREAS:
            frame = pd.DataFrame(rows[split][subject], columns=["question", *ANSWER_LETTERS, "answer"])
            frame.to_csv(out / folder / f"{subject}_{folder}.csv", header=False, index=False)
    (out / "subject_areas.json").write_text(json.dumps(SUBJECT_AREAS, indent=2) + "\n")
    return {"subjects": len(SUBJECT_AREAS), **{f"n_{k}": v * len(SUBJECT_AREAS) for k, v in sizes.items()},
            "capacity": capacities, "questions_per_relation": counts}
