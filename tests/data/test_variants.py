"""Prompt controls: literal text of each variant, the property each one promises, seeding, bad input."""
import collections
import json
import re

import pandas as pd
import pytest

from repgeom.data import synthetic
from repgeom.data.mmlu import CANONICAL_COLUMNS, SPLITS, DatasetError, load_local
from repgeom.letters import ANSWER_LETTERS as LETTERS
from repgeom.data.prompts import dev_shots, k_shot_prompt, question_block, subject_header
from repgeom.data.variants import (AREAS, VARIANTS, check_subject_areas, load_subject_areas,
                                   sampled_shots_pool_ids, variant_prompts)

SUBJECT_AREAS = {"anatomy": "STEM", "astronomy": "STEM", "marketing": "non-STEM", "world_religions": "non-STEM"}
SIZES = {"dev": 5, "validation": 10, "test": 6}
SHOT_QUESTION = re.compile(r"^(\w+) (dev|validation) q(\d+)\?$", re.M)

# The 57 subjects of cais/mmlu "all", and the 19 of them in the STEM macro-area of the reference code.
MMLU_SUBJECTS = """abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology
college_chemistry college_computer_science college_mathematics college_medicine college_physics computer_security
conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts
high_school_biology high_school_chemistry high_school_computer_science high_school_european_history
high_school_geography high_school_government_and_politics high_school_macroeconomics high_school_mathematics
high_school_microeconomics high_school_physics high_school_psychology high_school_statistics high_school_us_history
high_school_world_history human_aging human_sexuality international_law jurisprudence logical_fallacies
machine_learning management marketing medical_genetics miscellaneous moral_disputes moral_scenarios nutrition
philosophy prehistory professional_accounting professional_law professional_medicine professional_psychology
public_relations security_studies sociology us_foreign_policy virology world_religions""".split()
MMLU_STEM = """abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science
college_mathematics college_physics computer_security conceptual_physics electrical_engineering
elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science
high_school_mathematics high_school_physics high_school_statistics machine_learning""".split()


@pytest.fixture(scope="module")
def table():
    """A canonical table whose question text names its subject, split and row, and choices name their row."""
    rows = []
    for split in SPLITS:
        for subject in sorted(SUBJECT_AREAS):
            for i in range(SIZES[split]):
                rows.append({"question_id": f"{split}/{subject}/{i:05d}", "split": split, "subject": subject,
                             "question": f"{subject} {split} q{i}?", **{l: f"{i}{l.lower()}" for l in LETTERS},
                             "answer": LETTERS[(i + len(subject)) % 4]})
    return pd.DataFrame(rows, columns=CANONICAL_COLUMNS)


@pytest.fixture(scope="module")
def test_rows(table):
    return table[table["split"] == "test"].reset_index(drop=True)


def prompts_for(table, rows, variant, n_shots=5, seed=0):
    return variant_prompts(table, rows, n_shots, variant, seed, SUBJECT_AREAS)


HEADER = "The following are multiple choice questions (with answers) about anatomy.\n\n"
QUERY = "anatomy test q0?\nA. 0a\nB. 0b\nC. 0c\nD. 0d\nAnswer:"
EXPECTED = {
    "shuffled": HEADER
    + "anatomy dev q0?\nA. 0a\nB. 0b\nC. 0c\nD. 0d\nAnswer: D\n\n"
    + "anatomy dev q2?\nA. 2a\nB. 2b\nC. 2c\nD. 2d\nAnswer: B\n\n"
    + "anatomy dev q1?\nA. 1a\nB. 1b\nC. 1c\nD. 1d\nAnswer: A\n\n" + QUERY,
    "wrong_answers": HEADER  # gold letters are D, A, B
    + "anatomy dev q0?\nA. 0a\nB. 0b\nC. 0c\nD. 0d\nAnswer: B\n\n"
    + "anatomy dev q1?\nA. 1a\nB. 1b\nC. 1c\nD. 1d\nAnswer: B\n\n"
    + "anatomy dev q2?\nA. 2a\nB. 2b\nC. 2c\nD. 2d\nAnswer: A\n\n" + QUERY,
    "cross_subject": HEADER
    + "marketing dev q0?\nA. 0a\nB. 0b\nC. 0c\nD. 0d\nAnswer: B\n\n"
    + "marketing dev q1?\nA. 1a\nB. 1b\nC. 1c\nD. 1d\nAnswer: C\n\n"
    + "marketing dev q2?\nA. 2a\nB. 2b\nC. 2c\nD. 2d\nAnswer: D\n\n" + QUERY,
    "question_only": HEADER + "anatomy dev q0?\n\nanatomy dev q1?\n\nanatomy dev q2?\n\n" + QUERY,
    "answer_only": HEADER + "Answer: D\n\nAnswer: A\n\nAnswer: B\n\n" + QUERY,
    "no_answer": HEADER
    + "anatomy dev q0?\nA. 0a\nB. 0b\nC. 0c\nD. 0d\n\n"
    + "anatomy dev q1?\nA. 1a\nB. 1b\nC. 1c\nD. 1d\n\n"
    + "anatomy dev q2?\nA. 2a\nB. 2b\nC. 2c\nD. 2d\n\n" + QUERY,
    "no_choices": HEADER
    + "anatomy dev q0?\nAnswer: D\n\nanatomy dev q1?\nAnswer: A\n\nanatomy dev q2?\nAnswer: B\n\n" + QUERY,
    "gibberish": "Laz wazevodih ser ucusabul losina pafevanob (meco negapos) nazor etilati.\n\n"
    + "sulalop zej k5?\nA. 5i\nB. 8n\nC. 1i\nD. 4j\nAnswer: C\n\n"
    + "pufifom ces l7?\nA. 8o\nB. 0u\nC. 1o\nD. 8k\nAnswer: D\n\n"
    + "fubuhuf taf h8?\nA. 1f\nB. 1o\nC. 7n\nD. 9j\nAnswer: D\n\n" + QUERY,
    "sampled_shots": HEADER
    + "anatomy validation q9?\nA. 9a\nB. 9b\nC. 9c\nD. 9d\nAnswer: A\n\n"
    + "anatomy validation q8?\nA. 8a\nB. 8b\nC. 8c\nD. 8d\nAnswer: D\n\n"
    + "anatomy validation q6?\nA. 6a\nB. 6b\nC. 6c\nD. 6d\nAnswer: B\n\n" + QUERY,
}


def test_every_variant_has_a_literal():
    assert set(EXPECTED) == set(VARIANTS)


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_literal_prompt(table, test_rows, variant):
    row = test_rows[test_rows["question_id"] == "test/anatomy/00000"]
    assert prompts_for(table, row, variant, n_shots=3) == [EXPECTED[variant]]


def shot_ids(prompt):
    """(subject, split, row) of each shot, read from the fixture's question text."""
    return [(s, split, int(i)) for s, split, i in SHOT_QUESTION.findall(prompt)]


def test_wrong_answers_never_gold(table, test_rows):
    first = dev_shots(table, 5)
    used = set()
    for seed in range(20):
        for (_, query), prompt in zip(test_rows.iterrows(), prompts_for(table, test_rows, "wrong_answers", seed=seed)):
            shots = first[query["subject"]]
            letters = re.findall(r"Answer: ([A-D])\n\n", prompt)
            assert len(letters) == 5 and all(l != s["answer"] for l, s in zip(letters, shots))
            # Apart from the letters, the prompt is the plain one.
            relabelled = [dict(s, answer=l) for s, l in zip(shots, letters)]
            assert prompt == k_shot_prompt(query, relabelled)
            used.update(letters)
    assert used == set(LETTERS)


def test_cross_subject_borrows_from_the_other_area(table, test_rows):
    first = dev_shots(table, 5)
    borrowed_over_seeds = collections.defaultdict(set)
    for seed in range(10):
        borrowed_in_seed = collections.defaultdict(set)
        for (_, query), prompt in zip(test_rows.iterrows(), prompts_for(table, test_rows, "cross_subject", seed=seed)):
            ids = shot_ids(prompt)
            lender = ids[0][0]
            assert SUBJECT_AREAS[lender] != SUBJECT_AREAS[query["subject"]]
            assert ids == [(lender, "dev", i) for i in range(5)]
            # The lender's plain shots under the query's own header and before its own question block.
            assert prompt == k_shot_prompt(query, first[lender])
            borrowed_in_seed[query["subject"]].add(lender)
            borrowed_over_seeds[query["subject"]].add(lender)
        # Drawn once per query subject: every query of a subject borrows from the same one.
        assert all(len(lenders) == 1 for lenders in borrowed_in_seed.values())
    for subject, lenders in borrowed_over_seeds.items():
        assert lenders == {s for s, a in SUBJECT_AREAS.items() if a != SUBJECT_AREAS[subject]}


def test_shuffled_holds_the_plain_shots_in_another_order(table, test_rows):
    first = dev_shots(table, 5)
    reordered = 0
    for (_, query), prompt in zip(test_rows.iterrows(), prompts_for(table, test_rows, "shuffled")):
        plain = k_shot_prompt(query, first[query["subject"]])
        assert sorted(shot_ids(prompt)) == sorted(shot_ids(plain))
        assert collections.Counter(prompt.split("\n\n")) == collections.Counter(plain.split("\n\n"))
        assert prompt.startswith(subject_header(query["subject"])) and prompt.endswith(question_block(query))
        reordered += prompt != plain
    assert reordered >= len(test_rows) // 2


def test_ablated_shots_drop_one_part_each(table, test_rows):
    """Every ablated shot is a block followed by "\n\n", holding exactly the parts its name keeps."""
    first = dev_shots(table, 5)
    blocks = {"question_only": "{question}\n\n",
              "answer_only": "Answer: {answer}\n\n",
              "no_answer": "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n\n",
              "no_choices": "{question}\nAnswer: {answer}\n\n"}
    for variant, block in blocks.items():
        for (_, query), prompt in zip(test_rows.iterrows(), prompts_for(table, test_rows, variant)):
            shots = "".join(block.format(**dict(s)) for s in first[query["subject"]])
            assert prompt == subject_header(query["subject"]) + shots + question_block(query), variant


def test_gibberish_keeps_the_shape_and_the_real_query(table, test_rows):
    first = dev_shots(table, 5)
    for (_, query), prompt in zip(test_rows.iterrows(), prompts_for(table, test_rows, "gibberish")):
        plain = k_shot_prompt(query, first[query["subject"]])
        # Same length, same punctuation and line breaks, same count of choice and answer lines.
        assert re.sub(r"\w", "x", prompt) == re.sub(r"\w", "x", plain)
        assert prompt.count("\nAnswer: ") == 5 and len(re.findall(r"^[A-D]\. ", prompt, re.M)) == 4 * 6
        prefix = prompt.removesuffix(question_block(query))
        # No word of the real header and shots survives (subject names, "following", "questions", ...).
        real_words = set(re.findall(r"[a-z]{4,}", plain.removesuffix(question_block(query))))
        assert prefix != prompt and not real_words & set(re.findall(r"\w+", prefix))


def test_sampled_shots_come_from_dev_plus_eight_validation_rows(table, test_rows):
    pool_ids = sampled_shots_pool_ids(table, seed=0)
    per_subject = collections.Counter(i.split("/")[1] for i in pool_ids)
    assert per_subject == {s: 8 for s in SUBJECT_AREAS} and all(i.startswith("validation/") for i in pool_ids)
    assert pool_ids == sorted(pool_ids)
    assert sampled_shots_pool_ids(table, seed=0) == pool_ids and sampled_shots_pool_ids(table, seed=1) != pool_ids
    pool_rows = {(s, split, int(i)) for split, s, i in (qid.split("/") for qid in pool_ids)}
    splits_shown = set()
    for (_, query), prompt in zip(test_rows.iterrows(), prompts_for(table, test_rows, "sampled_shots")):
        ids = shot_ids(prompt)
        assert len(ids) == len(set(ids)) == 5 and {s for s, _, _ in ids} == {query["subject"]}
        assert all(split == "dev" or (s, split, i) in pool_rows for s, split, i in ids)
        splits_shown.update(split for _, split, _ in ids)
    assert splits_shown == {"dev", "validation"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_same_seed_same_prompts_independent_of_other_rows(table, test_rows, variant):
    prompts = prompts_for(table, test_rows, variant, seed=7)
    assert prompts_for(table, test_rows, variant, seed=7) == prompts
    every_third = test_rows.iloc[::3]
    assert prompts_for(table, every_third, variant, seed=7) == prompts[::3]


@pytest.mark.parametrize("variant", ["shuffled", "wrong_answers", "gibberish", "sampled_shots"])
def test_another_seed_gives_other_draws(table, test_rows, variant):
    assert prompts_for(table, test_rows, variant, seed=0) != prompts_for(table, test_rows, variant, seed=1)


def test_unknown_variant_names_it_and_lists_the_known(table, test_rows):
    with pytest.raises(ValueError, match=r"unknown prompt variant 'shufled'; known variants: shuffled, wrong_answers, "
                                         r"cross_subject, .*sampled_shots"):
        prompts_for(table, test_rows, "shufled")


def test_zero_shots_is_refused(table, test_rows):
    with pytest.raises(ValueError, match="n_shots must be at least 1"):
        prompts_for(table, test_rows, "shuffled", n_shots=0)


def test_subject_without_area_is_named(table, test_rows):
    areas = {s: a for s, a in SUBJECT_AREAS.items() if s != "marketing"}
    with pytest.raises(DatasetError, match=r"\['marketing'\] have no macro-area"):
        variant_prompts(table, test_rows, 2, "cross_subject", 0, areas)
    with pytest.raises(DatasetError, match=r"'marketing': 'humanities'.*not one of \['STEM', 'non-STEM'\]"):
        check_subject_areas(table, {**SUBJECT_AREAS, "marketing": "humanities"})


def test_areas_file_with_a_bad_area_names_file_and_subject(tmp_path):
    path = tmp_path / "areas.json"
    path.write_text(json.dumps({"anatomy": "STEM", "marketing": "business"}))
    with pytest.raises(DatasetError, match=r"areas.json: area\(s\) \{'marketing': 'business'\}"):
        load_subject_areas(path)
    with pytest.raises(DatasetError, match="missing.json.*unreadable"):
        load_subject_areas(tmp_path / "missing.json")


def test_shipped_areas_cover_the_57_mmlu_subjects():
    areas = load_subject_areas()
    assert len(areas) == 57 and sorted(areas) == sorted(MMLU_SUBJECTS)
    assert set(areas.values()) == set(AREAS)
    assert sorted(s for s, a in areas.items() if a == "STEM") == sorted(MMLU_STEM)


def test_generated_dataset_declares_the_areas_cross_subject_needs(tmp_path):
    synthetic.generate(tmp_path, seed=3, n_facts=30, n_dev=5, n_validation=4, n_test=3, n_mc_examples=5)
    table = load_local(tmp_path)
    areas = load_subject_areas(tmp_path / "subject_areas.json")
    test = table[table["split"] == "test"]
    dev_questions = dict(zip(table["question"], table["subject"]))
    for (_, query), prompt in zip(test.iterrows(), variant_prompts(table, test, 2, "cross_subject", 0, areas)):
        shot_questions = [block.split("\n")[0] for block in prompt.split("\n\n")[1:-1]]
        lenders = {dev_questions[q] for q in shot_questions}
        assert len(lenders) == 1 and areas[lenders.pop()] != areas[query["subject"]]
