import pandas as pd
import pytest

from repgeom.data.mmlu import DatasetError
from repgeom.data.prompts import dev_shots, k_shot_prompt, question_block, subject_header, tokenize_prompts, truncate_left

QUERY = {"subject": "high_school_biology", "question": "Which organelle makes ATP?",
         "A": "Nucleus", "B": "Mitochondrion", "C": "Ribosome", "D": "Golgi body", "answer": "B"}
SHOT = {"subject": "high_school_biology", "question": "What carries oxygen in blood?",
        "A": "Haemoglobin", "B": "Insulin", "C": "Keratin", "D": "Pepsin", "answer": "A"}


def test_zero_shot_prompt_literal():
    assert k_shot_prompt(QUERY, []) == (
        "The following are multiple choice questions (with answers) about high school biology.\n\n"
        "Which organelle makes ATP?\nA. Nucleus\nB. Mitochondrion\nC. Ribosome\nD. Golgi body\nAnswer:"
    )


def test_one_shot_prompt_literal():
    assert k_shot_prompt(QUERY, [SHOT]) == (
        "The following are multiple choice questions (with answers) about high school biology.\n\n"
        "What carries oxygen in blood?\nA. Haemoglobin\nB. Insulin\nC. Keratin\nD. Pepsin\nAnswer: A\n\n"
        "Which organelle makes ATP?\nA. Nucleus\nB. Mitochondrion\nC. Ribosome\nD. Golgi body\nAnswer:"
    )


def test_header_turns_underscores_into_spaces():
    assert subject_header("us_foreign_policy").endswith("about us foreign policy.\n\n")
    assert question_block(QUERY).endswith("Answer:")


def _table(n_dev):
    rows = [{**SHOT, "question": f"q{i}", "split": "dev"} for i in range(n_dev)]
    return pd.DataFrame(rows)


def test_dev_shots_first_k_in_dev_order():
    shots = dev_shots(_table(5), 3)
    assert [s["question"] for s in shots["high_school_biology"]] == ["q0", "q1", "q2"]


def test_too_few_dev_examples_names_subject():
    with pytest.raises(DatasetError, match="high_school_biology.*2 dev examples.*5 shots"):
        dev_shots(_table(2), 5)
    with pytest.raises(DatasetError, match=r"'high_school_biology' has 2 dev examples in questions file 'q.parquet', "
                                           r"fewer than the 5 shots asked for: ask for at most 2 shots"):
        dev_shots(_table(2), 5, source="questions file 'q.parquet'")
    with pytest.raises(DatasetError, match=r"2 dev examples in dev/high_school_biology_dev.csv, fewer"):
        dev_shots(_table(2), 5, source=lambda subject: f"dev/{subject}_dev.csv")


def test_left_truncation_keeps_the_end(tiny_tokenizer):
    text = k_shot_prompt(QUERY, [SHOT] * 5)
    full = len(tiny_tokenizer(text)["input_ids"])
    kept, n_tokens, truncated = truncate_left(tiny_tokenizer, text, 40)
    assert truncated and n_tokens <= 40 and n_tokens == len(tiny_tokenizer(kept)["input_ids"])
    assert text.endswith(kept) and kept.endswith("D. Golgi body\nAnswer:")
    assert truncate_left(tiny_tokenizer, text, full) == (text, full, False)


def test_tokenize_prompts_counts_truncations(tiny_tokenizer):
    frame = pd.DataFrame({"prompt": [k_shot_prompt(QUERY, []), k_shot_prompt(QUERY, [SHOT] * 5)]})
    limit = len(tiny_tokenizer(frame["prompt"][0])["input_ids"])
    out = tokenize_prompts(frame, tiny_tokenizer, limit)
    assert out["truncated"].tolist() == [False, True]
    assert out["n_tokens"][0] == limit and out["n_tokens"][1] <= limit
