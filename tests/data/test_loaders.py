"""The three MMLU sources give the same table; bad input names the file and row."""
import json

import numpy as np
import pandas as pd
import pytest

from repgeom.data import mmlu, sampling
from repgeom.data.mmlu import DatasetError, load_dataset_table, load_local

SUBJECTS = ["anatomy", "astronomy"]
SIZES = {"dev": 5, "validation": 3, "test": 7}


def _hub_rows(split):
    rows = []
    for subject in SUBJECTS:
        for i in range(SIZES[split]):
            rows.append({"question": f" {subject} {split} question {i}? ", "subject": subject,
                         "choices": [f"c{i}a", f"c{i}b ", f"c{i}c", f"c{i}d"], "answer": (i + len(subject)) % 4})
    return pd.DataFrame(rows)


def write_csv_release(root):
    for split, folder in mmlu.CSV_SPLIT_NAMES.items():
        (root / folder).mkdir(parents=True)
        frame = _hub_rows(split)
        for subject, rows in frame.groupby("subject"):
            out = pd.DataFrame({"q": rows["question"], **{l: rows["choices"].str[i] for i, l in enumerate("ABCD")},
                                "ans": ["ABCD"[a] for a in rows["answer"]]})
            out.to_csv(root / folder / f"{subject}_{folder}.csv", header=False, index=False)
    return root


def write_hub_files(root, fmt):
    (root / "all").mkdir(parents=True)
    for split in mmlu.SPLITS:
        frame = _hub_rows(split)
        if fmt == "parquet":
            frame.to_parquet(root / "all" / f"{split}-00000-of-00001.parquet", index=False)
        else:
            frame.to_json(root / "all" / f"{split}.jsonl", orient="records", lines=True)
    return root


@pytest.fixture
def csv_root(tmp_path):
    return write_csv_release(tmp_path / "csv")


def test_three_sources_give_the_same_table(tmp_path, csv_root, monkeypatch):
    from_csv = load_local(csv_root)
    from_parquet = load_local(write_hub_files(tmp_path / "pq", "parquet"))
    from_jsonl = load_local(write_hub_files(tmp_path / "js", "jsonl"))

    import datasets
    hub = datasets.DatasetDict({s: datasets.Dataset.from_pandas(_hub_rows(s)) for s in mmlu.SPLITS})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or hub)
    from_hub = load_dataset_table({"id": "cais/mmlu"})

    assert calls[0][0] == ("cais/mmlu", "all")
    for other in (from_parquet, from_jsonl, from_hub):
        pd.testing.assert_frame_equal(from_csv, other)
    assert len(from_csv) == 2 * sum(SIZES.values())
    row = from_csv.set_index("question_id").loc["test/anatomy/00002"]
    assert row["question"] == "anatomy test question 2?" and row["B"] == "c2b"
    assert row["answer"] == "ABCD"[(2 + len("anatomy")) % 4]


def test_missing_column_names_file(tmp_path):
    root = write_hub_files(tmp_path / "pq", "parquet")
    path = root / "all" / "dev-00000-of-00001.parquet"
    pd.read_parquet(path).drop(columns="choices").to_parquet(path)
    with pytest.raises(DatasetError, match=r"dev-00000-of-00001.parquet.*missing column.*choices"):
        load_local(root)


def test_bad_answer_names_file_and_row(csv_root):
    path = csv_root / "test" / "astronomy_test.csv"
    raw = pd.read_csv(path, header=None, dtype=str)
    raw.iloc[3, 5] = "E"
    raw.to_csv(path, header=False, index=False)
    # The fourth row of a header-less CSV is line 4 of the file.
    with pytest.raises(DatasetError, match=r"astronomy_test.csv line 4: answer 'E' is outside A-D / 0-3"):
        load_local(csv_root)


def test_bad_answer_line_counts_quoted_line_breaks(csv_root):
    """A question with line breaks (quoted) spans several lines: the line is where the bad row starts."""
    path = csv_root / "test" / "astronomy_test.csv"
    raw = pd.read_csv(path, header=None, dtype=str)
    raw.iloc[1, 0] = "first line\nsecond line\nthird line"
    raw.iloc[4, 5] = "X"
    raw.to_csv(path, header=False, index=False)
    assert path.read_text().splitlines()[6].endswith(",X")  # line 7 of the file, 1-based
    with pytest.raises(DatasetError, match=r"astronomy_test.csv line 7: answer 'X'"):
        load_local(csv_root)


def test_file_line_accounts_for_a_header(tmp_path):
    path = tmp_path / "with_header.csv"
    path.write_text("question,A,B,C,D,answer\nq1,a,b,c,d,A\n\nq2,a,b,c,d,Z\n")
    assert mmlu.file_line(path, 1, header_rows=1) == "line 4"  # the blank line 3 is skipped, as pandas does
    assert mmlu.file_line(path, 0) == "line 1" and mmlu.file_line(path, 5) == "data row 6"


def test_ragged_csv_names_the_file_and_line(csv_root):
    path = csv_root / "dev" / "anatomy_dev.csv"
    path.write_text(path.read_text() + "q,a,b,c,d,A,extra\n")
    with pytest.raises(DatasetError, match=r"anatomy_dev.csv: not a 6-column CSV \(.*line 6"):
        load_local(csv_root)


def test_bad_numeric_answer_in_jsonl(tmp_path):
    root = write_hub_files(tmp_path / "js", "jsonl")
    path = root / "all" / "test.jsonl"
    frame = pd.read_json(path, lines=True)
    frame.loc[5, "answer"] = 4
    frame.to_json(path, orient="records", lines=True)
    with pytest.raises(DatasetError, match=r"test.jsonl line 6: answer 4"):
        load_local(root)


def test_bad_answer_in_parquet_names_the_row(tmp_path):
    root = write_hub_files(tmp_path / "pq", "parquet")
    path = root / "all" / "validation-00000-of-00001.parquet"
    frame = pd.read_parquet(path)
    frame.loc[2, "answer"] = 7
    frame.to_parquet(path)
    with pytest.raises(DatasetError, match=r"validation-00000-of-00001.parquet row 2 \(0-based\): answer 7"):
        load_local(root)


def test_empty_split_is_named(csv_root):
    for path in (csv_root / "val").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="split 'validation' is empty"):
        load_local(csv_root)


def test_missing_local_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset_table({"path": str(tmp_path / "nowhere")})


def test_unreachable_hub_id_says_how_to_use_a_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"cais/mmlu.*offline.*dataset.path"):
        load_dataset_table({"id": "cais/mmlu"})


def test_analysis_subset_is_seeded_balanced_and_ordered(csv_root):
    table = load_local(csv_root)
    first = sampling.analysis_subset(table, max_per_subject=4, seed=42)
    again = sampling.analysis_subset(table, max_per_subject=4, seed=42)
    other = sampling.analysis_subset(table, max_per_subject=4, seed=7)
    pd.testing.assert_frame_equal(first, again)
    assert not first["question_id"].equals(other["question_id"])
    assert first.groupby("subject").size().tolist() == [4, 4]
    assert first["question_id"].is_monotonic_increasing
    whole = sampling.analysis_subset(table, max_per_subject=200, seed=42)
    assert len(whole) == 2 * SIZES["test"]


def test_finetune_set_text(csv_root):
    table = load_local(csv_root)
    ft = sampling.finetune_set(table, max_per_subject=6, seed=42)
    assert len(ft) == 2 * 6 and set(ft["split"]) == {"dev", "validation"}
    row = ft.iloc[0]
    assert row["text"] == row["prompt"] + " " + row["gold"]
    assert not row["prompt"].startswith("The following") and row["prompt"].endswith("\nAnswer:")
