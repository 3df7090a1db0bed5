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


def _table_relation(subject: str, name: str, fact: str, wordings: tuple[str, ...], table: str,
                    rows: list[dict], ask: str, answer: str, key: str,
                    near: Callable[[dict], list[str]] | None = None) -> Relation:
    """Questions "ask -> answer" over a table's rows. `key` names the fact's row (the same for a relation
    and its inverse). A question whose `ask` value has several true answers is left out (the inverse of
    a many-to-one relation asks only about values held by one row); wrong answers are the relation's
    other answers that are not true for the question."""
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
    return Relation(subject, name, wordings, tuple(items), (table, ask, answer))


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


def _same_initial(column: str, rows: list[dict], of: Callable[[dict], str]):
    """Near answers: `column` values of rows whose `column` starts like `of(row)` (case-insensitive)."""
    def near(row: dict) -> list[str]:
        initial = of(row)[:1].lower()
        return [r[column] for r in rows if r[column][:1].lower() == initial]
    return near


def _table_relations(tables: dict) -> list[Relation]:
    countries, elements, families = tables["countries"], tables["elements"], tables["element_families"]
    units, prefixes, instruments = tables["si_units"], tables["si_prefixes"], tables["instruments"]

    def same_continent(column: str):
        return lambda row: [r[column] for r in countries if r["continent"] == row["continent"]]

    def near_number(column: str, width: int = 8):
        z = {r["name"]: int(r["atomic_number"]) for r in elements}
        return lambda row: [r[column] for r in elements
                            if abs(int(r["atomic_number"]) - z[row["name"]]) <= width]

    def R(*args, **kwargs):
        return _table_relation(*args, **kwargs)

    return [
        # geography
        R("geography", "capital_of", "capital",
          ("What is the capital of {the_x}?", "Which city is the capital of {the_x}?",
           "What is the capital city of {the_x}?"),
          "countries", countries, "country", "capital", "country", near=same_continent("capital")),
        R("geography", "country_of_capital", "capital",
          ("{x} is the capital of which country?", "Which country has {x} as its capital?",
           "Of which country is {x} the capital?"),
          "countries", countries, "capital", "country", "country", near=same_continent("country")),
        R("geography", "continent_of", "continent",
          ("On which continent is {the_x}?", "Which continent is {the_x} located in?",
           "In which continent is {the_x} located?"),
          "countries", countries, "country", "continent", "country"),
        R("geography", "currency_of", "currency",
          ("What is the currency of {the_x}?", "Which currency is used in {the_x}?",
           "What is the official currency of {the_x}?"),
          "countries", countries, "country", "currency", "country"),
        # chemistry
        R("chemistry", "symbol_of_element", "symbol",
          ("What is the chemical symbol for {x}?", "Which symbol represents the element {x}?",
           "What is the symbol of the element {x}?"),
          "elements", elements, "name", "symbol", "name",
          near=_same_initial("symbol", elements, lambda r: r["name"])),
        R("chemistry", "element_of_symbol", "symbol",
          ("Which element has the chemical symbol {x}?", "The chemical symbol {x} stands for which element?",
           "Which element is represented by the symbol {x}?"),
          "elements", elements, "symbol", "name", "name",
          near=_same_initial("name", elements, lambda r: r["symbol"])),
        R("chemistry", "atomic_number_of_element", "atomic_number",
          ("What is the atomic number of {x}?", "How many protons does an atom of {x} have?",
           "What is the atomic number of the element {x}?"),
          "elements", elements, "name", "atomic_number", "name", near=near_number("atomic_number")),
        R("chemistry", "element_of_atomic_number", "atomic_number",
          ("Which element has the atomic number {x}?", "Which element is number {x} in the periodic table?",
           "Which element has atomic number {x}?"),
          "elements", elements, "atomic_number", "name", "name", near=near_number("name")),
        R("chemistry", "family_of_element", "family",
          ("To which family of elements does {x} belong?", "What kind of element is {x}?",
           "Which family of the periodic table does {x} belong to?"),
          "element_families", families, "element", "family", "element"),
        # biology
        R("biology", "group_of_animal", "group",
          ("What type of animal is the {x}?", "To which group of animals does the {x} belong?",
           "Which animal group does the {x} belong to?"),
          "animals", tables["animals"], "animal", "group", "animal"),
        R("biology", "young_of_animal", "young",
          ("What is a young {x} called?", "What is the name for a baby {x}?",
           "What do you call the young of the {x}?"),
          "animal_young", tables["animal_young"], "animal", "young", "animal"),
        R("biology", "animal_of_young", "young",
          ("Which animal's young is called {a_x}?", "{A_x} is the young of which animal?",
           "Which animal's baby is known as {a_x}?"),
          "animal_young", tables["animal_young"], "young", "animal", "animal"),
        # english vocabulary
        R("english_vocabulary", "antonym_of", "antonym",
          ("What is the opposite of '{x}'?", "Which word means the opposite of '{x}'?",
           "Which of the following is an antonym of '{x}'?"),
          "antonyms", tables["antonyms"], "word", "antonym", "word"),
        R("english_vocabulary", "plural_of", "plural",
          ("What is the plural of '{x}'?", "What is the plural form of the noun '{x}'?",
           "Which of the following is the correct plural of '{x}'?"),
          "plurals", tables["plurals"], "noun", "plural", "noun", near=_plural_traps),
        R("english_vocabulary", "singular_of", "plural",
          ("What is the singular of '{x}'?", "'{x}' is the plural of which noun?",
           "What is the singular form of '{x}'?"),
          "plurals", tables["plurals"], "plural", "noun", "noun"),
        R("english_vocabulary", "past_tense_of", "past",
          ("What is the past tense of '{x}'?", "What is the simple past tense of the verb '{x}'?",
           "Which of the following is the past tense of '{x}'?"),
          "past_tense", tables["past_tense"], "verb", "past", "verb", near=_past_traps),
        R("english_vocabulary", "verb_of_past_tense", "past",
          ("'{x}' is the past tense of which verb?", "Of which verb is '{x}' the past tense?"),
          "past_tense", tables["past_tense"], "past", "verb", "verb"),
        # physics
        R("physics", "unit_of_quantity", "unit",
          ("What is the SI unit of {x}?", "In which SI unit is {x} measured?",
           "Which of the following is the SI unit of {x}?"),
          "si_units", units, "quantity", "unit", "unit"),
        R("physics", "quantity_of_unit", "unit",
          ("The {x} is the SI unit of which quantity?", "Which physical quantity has the {x} as its SI unit?",
           "What does the SI unit {x} measure?"),
          "si_units", units, "unit", "quantity", "unit"),
        R("physics", "symbol_of_unit", "unit_symbol",
          ("What is the symbol for the {x}?", "Which symbol is used for the SI unit {x}?",
           "What is the symbol of the unit {x}?"),
          "si_units", units, "unit", "symbol", "unit",
          near=_same_initial("symbol", units, lambda r: r["unit"])),
        R("physics", "unit_of_symbol", "unit_symbol",
          ("Which SI unit has the symbol {x}?", "The unit symbol {x} stands for which unit?",
           "Which unit is written with the symbol {x}?"),
          "si_units", units, "symbol", "unit", "unit",
          near=_same_initial("unit", units, lambda r: r["symbol"])),
        R("physics", "factor_of_prefix", "prefix_factor",
          ("What factor does the SI prefix {x} stand for?", "The SI prefix {x} multiplies a unit by which factor?",
           "Which power of ten does the prefix {x} denote?"),
          "si_prefixes", prefixes, "prefix", "factor", "prefix",
          near=lambda row: [r["factor"] for r in prefixes if r["factor"].startswith("10^-") == row["factor"].startswith("10^-")]),
        R("physics", "prefix_of_factor", "prefix_factor",
          ("Which SI prefix stands for a factor of {x}?", "Which prefix multiplies a unit by {x}?"),
          "si_prefixes", prefixes, "factor", "prefix", "prefix"),
        R("physics", "symbol_of_prefix", "prefix_symbol",
          ("What is the symbol of the SI prefix {x}?", "Which symbol is used for the prefix {x}?"),
          "si_prefixes", prefixes, "prefix", "symbol", "prefix"),
        R("physics", "prefix_of_symbol", "prefix_symbol",
          ("Which SI prefix has the symbol {x}?", "The prefix symbol {x} stands for which prefix?"),
          "si_prefixes", prefixes, "symbol", "prefix", "prefix"),
        R("physics", "quantity_of_instrument", "instrument",
          ("What does {a_x} measure?", "What is {a_x} used to measure?", "Which quantity is measured with {a_x}?"),
          "instruments", instruments, "instrument", "measures", "instrument"),
        R("physics", "instrument_for_quantity", "instrument",
          ("Which instrument is used to measure {x}?", "Which instrument measures {x}?"),
          "instruments", instruments, "measures", "instrument", "instrument"),
    ]


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
    for relation in _table_relations(tables) + _math_relations(rng):
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
