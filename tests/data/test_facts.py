import csv
import filecmp
import json
import re
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from repgeom.data import facts
from repgeom.data.mmlu import DatasetError, load_dataset_table

PARAMS = {"seed": 7, "n_dev": 5, "n_validation": 20, "n_test": 50}
SHIPPED = resources.files("repgeom").joinpath("resources", "facts")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("facts")
    summary = facts.generate(out, **PARAMS)
    return out, summary, load_dataset_table({"path": str(out)})


@pytest.fixture(scope="module")
def question_index():
    """question text -> (relation, item), over every wording of every item (the generator's own pools)."""
    relations = facts.build_relations(facts.load_tables(), np.random.default_rng(PARAMS["seed"]))
    index = {}
    for rels in relations.values():
        for relation in rels:
            for item in relation.items:
                for wording in relation.wordings:
                    index[relation.render(wording, item)] = (relation, item)
    return index


def read_csv(name):
    """A table read independently of the module's reader."""
    with SHIPPED.joinpath(f"{name}.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_layout_and_row_counts(generated):
    out, summary, table = generated
    subjects = set(facts.SUBJECT_AREAS)
    assert summary["subjects"] == len(subjects) == 6
    assert summary["n_test"] == 6 * PARAMS["n_test"]
    assert not (out / "pretrain_corpus.json").exists()
    assert json.loads((out / "subject_areas.json").read_text()) == facts.SUBJECT_AREAS
    areas = list(facts.SUBJECT_AREAS.values())
    assert areas.count("STEM") >= 2 and areas.count("non-STEM") >= 2
    for folder in ("dev", "val", "test"):
        assert {p.name for p in (out / folder).iterdir()} == {f"{s}_{folder}.csv" for s in subjects}
    counts = table.groupby(["split", "subject"]).size().to_dict()
    for subject in subjects:
        assert counts["dev", subject] == PARAMS["n_dev"]
        assert counts["validation", subject] == PARAMS["n_validation"]
        assert counts["test", subject] == PARAMS["n_test"]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    facts.generate(tmp_path / "a", **PARAMS)
    facts.generate(tmp_path / "b", **PARAMS)
    facts.generate(tmp_path / "c", **{**PARAMS, "seed": PARAMS["seed"] + 1})
    files = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 3 * 6 + 1
    assert filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)[0] == files
    csvs = [f for f in files if f.endswith(".csv")]
    assert filecmp.cmpfiles(tmp_path / "a", tmp_path / "c", csvs, shallow=False)[0] == []


def test_every_gold_answer_is_true_and_every_distractor_false(generated, question_index):
    _, _, table = generated
    tables = {}
    for _, row in table.iterrows():
        relation, item = question_index[row["question"]]  # every question is one of the known wordings
        assert relation.subject == row["subject"]
        gold = row[row["answer"]]
        wrong = [row[letter] for letter in "ABCD" if letter != row["answer"]]
        assert gold == item.answer
        if relation.source is not None:
            name, ask, answer = relation.source
            rows = tables.setdefault(name, read_csv(name))
            true = {r[answer] for r in rows if r[ask] == item.x}
            assert true == {gold}, (row["question"], gold, true)
            assert not true & set(wrong), (row["question"], wrong)
            continue
        numbers = [int(n) for n in re.findall(r"\d+", row["question"])]
        expected = {"addition": lambda a, b: a + b, "subtraction": lambda a, b: a - b,
                    "multiplication": lambda a, b: a * b}.get(relation.name)
        if expected is not None:
            a, b = numbers
            if "subtracted from" in row["question"]:
                a, b = b, a
            assert int(gold) == expected(a, b), row["question"]
        else:
            assert sorted(numbers) == sorted(int(row[letter]) for letter in "ABCD")
            assert int(gold) == (max if relation.name == "largest" else min)(numbers), row["question"]


def test_known_facts_spot_check(generated):
    """A few facts written out here, not read from the tables: the tables hold them, and any question
    of the dataset that asks one has it as gold."""
    _, _, table = generated
    spot = {("countries", "country", "capital"): {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi",
                                                   "Canada": "Ottawa", "United States": "Washington, D.C."},
            ("elements", "name", "symbol"): {"iron": "Fe", "sodium": "Na", "gold": "Au", "potassium": "K"},
            ("plurals", "noun", "plural"): {"mouse": "mice", "child": "children", "knife": "knives"},
            ("past_tense", "verb", "past"): {"go": "went", "buy": "bought", "hit": "hit"},
            ("si_units", "quantity", "unit"): {"force": "newton", "pressure": "pascal", "mass": "kilogram"}}
    for (name, key, value), known in spot.items():
        rows = {r[key]: r[value] for r in read_csv(name)}
        assert {k: rows.get(k) for k in known} == known
    patterns = {"What is the capital of (?:the )?(.+)\\?": spot["countries", "country", "capital"],
                "What is the chemical symbol for (.+)\\?": spot["elements", "name", "symbol"],
                "What is the plural of '(.+)'\\?": spot["plurals", "noun", "plural"],
                "What is the past tense of '(.+)'\\?": spot["past_tense", "verb", "past"],
                "What is the SI unit of (.+)\\?": spot["si_units", "quantity", "unit"]}
    for _, row in table.iterrows():
        for pattern, known in patterns.items():
            match = re.fullmatch(pattern, row["question"])
            if match and match.group(1) in known:
                assert row[row["answer"]] == known[match.group(1)], row["question"]
    # The comma inside a choice and inside a question survives the CSV round trip.
    comparisons = table[(table["subject"] == "elementary_mathematics") & table["question"].str.contains(", ")]
    assert len(comparisons) > 0 and all(len(q.split(", ")) >= 3 for q in comparisons["question"])


def test_four_distinct_choices_and_unique_questions(generated):
    _, _, table = generated
    for _, row in table.iterrows():
        assert len({row[letter] for letter in "ABCD"}) == 4, row["question"]
        assert all(row[letter] for letter in "ABCD") and row["question"] == row["question"].strip()
    assert not table.duplicated(["question"]).any()


def test_no_fact_shared_between_splits(generated, question_index):
    _, _, table = generated
    facts_by_split = {split: {question_index[q][1].fact for q in rows["question"]}
                      for split, rows in table.groupby("split")}
    assert not facts_by_split["test"] & facts_by_split["dev"]
    assert not facts_by_split["test"] & facts_by_split["validation"]
    assert not facts_by_split["dev"] & facts_by_split["validation"]
    pairs = {split: set(zip(rows["question"], [r[a] for r, a in zip(rows.to_dict("records"), rows["answer"])]))
             for split, rows in table.groupby("split")}
    assert not pairs["test"] & (pairs["dev"] | pairs["validation"])


def test_several_relations_and_wordings_per_subject(generated, question_index):
    _, _, table = generated
    for subject, rows in table.groupby("subject"):
        used = {}
        for question in rows["question"]:
            relation, item = question_index[question]
            wording = next(w for w in relation.wordings if relation.render(w, item) == question)
            used.setdefault(relation.name, set()).add(wording)
        assert len(used) >= 2, subject
        assert sum(len(w) >= 2 for w in used.values()) >= 2, (subject, used)
        assert sum(len(w) for w in used.values()) >= 6, (subject, used)
    # The shipped relations themselves: at least two wordings each, at least two per subject.
    relations = facts.build_relations(facts.load_tables(), np.random.default_rng(0))
    for subject, rels in relations.items():
        assert len(rels) >= 2
        assert all(len(r.wordings) >= 2 and r.items for r in rels), subject


def test_gold_letters_roughly_balanced(tmp_path):
    facts.generate(tmp_path, seed=1, n_dev=5, n_validation=20, n_test=100)
    table = load_dataset_table({"path": str(tmp_path)})
    counts = table["answer"].value_counts()
    n = len(table)  # 750 rows: a letter's count has standard deviation ~12 around 187
    assert set(counts.index) == set("ABCD")
    assert all(abs(counts[letter] - n / 4) < 0.2 * n / 4 for letter in "ABCD"), counts.to_dict()


def copy_tables(tmp_path) -> Path:
    target = tmp_path / "tables"
    target.mkdir()
    for name in facts.TABLES:
        with resources.as_file(SHIPPED.joinpath(f"{name}.csv")) as path:
            shutil.copy(path, target / f"{name}.csv")
    return target


def test_tables_dir_copy_gives_the_same_dataset(tmp_path):
    tables = copy_tables(tmp_path)
    small = {"seed": 3, "n_dev": 2, "n_validation": 2, "n_test": 3}
    facts.generate(tmp_path / "a", **small)
    facts.generate(tmp_path / "b", **small, tables_dir=tables)
    assert (tmp_path / "a/test/geography_test.csv").read_bytes() == (tmp_path / "b/test/geography_test.csv").read_bytes()


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("France,Paris,Europe,euro", "France,,Europe,euro"), r"empty cell in column 'capital'"),
    (lambda text: text.replace("country,capital,continent,currency", "country,capital,continent"),
     r"lacks column\(s\) \['currency'\]"),
    (lambda text: text.replace("Germany,Berlin,Europe,euro", "Germany,Paris,Europe,euro"), r"capital 'Paris' already appears"),
    (lambda text: text.replace("Italy,Rome,Europe,euro", "Italy,Rome,Europe"), r"has 3 cell\(s\)"),
])
def test_malformed_table_names_the_file_and_row(tmp_path, edit, message):
    tables = copy_tables(tmp_path)
    path = tables / "countries.csv"
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(facts.FactsTableError, match=message) as info:
        facts.generate(tmp_path / "out", **PARAMS, tables_dir=tables)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DatasetError)
    assert str(path) in str(info.value)
    if "header" not in message and "lacks" not in message:
        assert re.search(r"line \d+", str(info.value))
    assert not (tmp_path / "out").exists()


def test_bad_integer_and_unknown_family_element(tmp_path):
    tables = copy_tables(tmp_path)
    elements = tables / "elements.csv"
    elements.write_text(elements.read_text(encoding="utf-8").replace("iron,Fe,26", "iron,Fe,twenty-six"), encoding="utf-8")
    with pytest.raises(facts.FactsTableError, match=r"elements\.csv: row at line 27: column 'atomic_number'"):
        facts.load_tables(tables)
    (tmp_path / "second").mkdir()
    tables = copy_tables(tmp_path / "second")
    families = tables / "element_families.csv"
    families.write_text(families.read_text(encoding="utf-8") + "unobtainium,noble gas\n", encoding="utf-8")
    with pytest.raises(facts.FactsTableError, match=r"element_families\.csv: data row 43: element 'unobtainium'"):
        facts.load_tables(tables)


def test_too_many_questions_names_the_subject(tmp_path):
    capacities = facts.generate(tmp_path / "ok", seed=0, n_dev=1, n_validation=1, n_test=1)["capacity"]
    assert min(capacities.values()) >= 5 + 20 + 100
    smallest = min(capacities, key=capacities.get)
    n_test = capacities[smallest] - 5 - 20 + 1
    with pytest.raises(facts.FactsPoolError, match=rf"subject '{smallest}' can supply at most {capacities[smallest]}"):
        facts.generate(tmp_path / "big", seed=0, n_dev=5, n_validation=20, n_test=n_test)
    with pytest.raises(ValueError, match="n_test must be a positive integer"):
        facts.generate(tmp_path / "zero", seed=0, n_dev=5, n_validation=20, n_test=0)


def test_every_table_question_names_its_table_columns_and_near_rule():
    """The questions are data (`questions.yaml` beside the tables): each names a shipped table, columns of it and a
    near-answer rule that exists; a relation and its inverse ask about one fact, keyed by the same column."""
    questions = facts.load_questions()
    for question in questions:
        columns = facts.TABLES[question.table].columns
        assert {question.ask, question.answer, question.key} <= set(columns), question.name
        assert question.subject in facts.SUBJECT_AREAS and len(question.wordings) >= 2, question.name
    keys = {}
    for question in questions:
        assert keys.setdefault((question.table, question.fact), question.key) == question.key, question.name
    assert len({question.name for question in questions}) == len(questions) == 27
    assert [r.name for r in facts.table_relations(facts.load_tables())] == [q.name for q in questions]


@pytest.mark.parametrize("text, message", [
    ("- {subject: geography, name: x}", "record 1 is not a question"),
    ("- {subject: geography, name: x, fact: f, table: planets, ask: a, answer: b, key: a, wordings: [w]}",
     "record 1 (x) names an unknown table or near rule"),
    ("{not: a list}", "expected a list of question records, got dict"),
    ("- [unclosed", "the questions file is unreadable"),
])
def test_a_malformed_questions_file_is_named(tmp_path, text, message):
    (tmp_path / "questions.yaml").write_text(text)
    with pytest.raises(facts.FactsTableError, match=re.escape(message)):
        facts.load_questions(tmp_path / "questions.yaml")
