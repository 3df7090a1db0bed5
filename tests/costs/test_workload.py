"""Token counts before the run has made its prompts: from a dataset on disk (drawn and tokenised as the workflow
would) and from the dataset's shape alone."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from repgeom.costs.estimate import load_constants
from repgeom.costs.workload import Workload
from repgeom.data import mmlu
from repgeom.data.prompts import dev_shots, k_shot_prompt
from repgeom.data.sampling import analysis_subset, finetune_set

SUBJECTS = ["anatomy", "astronomy", "virology"]
SIZES = {"dev": 5, "validation": 6, "test": 60}


def write_dataset(root):
    """An MMLU release in the hub's parquet layout, with questions of very different lengths."""
    rng = np.random.default_rng(0)
    (root / "all").mkdir(parents=True)
    for split in mmlu.SPLITS:
        rows = [{"question": f"{subject} {split} {i}: " + "why is it so " * int(rng.integers(1, 40)) + "?",
                 "subject": subject, "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], "answer": i % 4}
                for subject in SUBJECTS for i in range(SIZES[split])]
        pd.DataFrame(rows).to_parquet(root / "all" / f"{split}-00000-of-00001.parquet", index=False)
    return root


@pytest.fixture
def config(tmp_path, tiny_llama_dir):
    return {"results_dir": str(tmp_path / "results"),
            "dataset": {"name": "mine", "path": str(write_dataset(tmp_path / "data"))},
            "sampling": {"max_per_subject": 50, "finetune_max_per_subject": 8, "seed": 42},
            "extraction": {"min_shared_prefix": 32},
            "models": {"m": {"path": str(tiny_llama_dir), "max_length": 1024}}}


def test_prompt_lengths_from_the_dataset_on_disk(config, tiny_llama_dir, tiny_tokenizer):
    workload = Workload(config, load_constants(), tokenizer_folder=lambda model: str(tiny_llama_dir))
    table = mmlu.load_local(config["dataset"]["path"])
    subset = analysis_subset(table, 50, 42)
    assert workload.analysis_rows() == len(subset) == 150
    shots = dev_shots(table, 5)
    real = [len(ids) for ids in tiny_tokenizer([k_shot_prompt(row, shots[row["subject"]])
                                                for _, row in subset.iterrows()])["input_ids"]]
    estimate = workload.prompt_lengths("m", "5shot")
    assert not estimate.counted and estimate.n == 150
    # Prompts over the model's context are cut to it (left truncation), as the prompt files count them.
    assert estimate.tokens.mean() == pytest.approx(np.minimum(real, 1024).mean(), rel=0.05)
    assert estimate.tokens.max() == 1024
    # Each subject's prompts share their header and five shots: computed once a subject, as the extraction does.
    assert len(estimate.shared) == len(SUBJECTS)
    assert sum(rows for _, rows in estimate.shared) == pytest.approx(150, abs=3)
    assert all(length > 200 for length, _ in estimate.shared)
    # The fine-tuning set is drawn as the workflow draws it, and every text is counted.
    texts = finetune_set(table, 8, 42)["text"].tolist()
    lengths = workload.finetune_lengths("m")
    assert lengths.counted and workload.finetune_rows() == len(texts) == 24
    assert lengths.tokens.tolist() == [len(ids) for ids in tiny_tokenizer(texts)["input_ids"]]


def test_prompt_files_are_counted_exactly(config, tmp_path):
    folder = tmp_path / "results" / "prompts" / "m"
    folder.mkdir(parents=True)
    pd.DataFrame({"prompt": ["a", "b", "c"], "n_tokens": [10, 30, 20]}).to_parquet(folder / "0shot.parquet")
    workload = Workload(config, load_constants(), tokenizer_folder=lambda model: None)
    for condition in ("0shot", "ft-lora-step3"):  # a fine-tuned condition reads the 0-shot prompts
        lengths = workload.prompt_lengths("m", condition)
        assert lengths.counted and lengths.tokens.tolist() == [10, 30, 20]


def test_without_data_the_dataset_shape_decides(config):
    constants = load_constants()
    config = {**config, "dataset": {"name": "mmlu", "id": "cais/mmlu"},
              "sampling": {"max_per_subject": 200, "finetune_max_per_subject": 20, "seed": 42}}
    workload = Workload(config, constants, tokenizer_folder=lambda model: None)
    shape = constants["datasets"]["mmlu"]
    assert workload.analysis_rows() == 9181 and workload.finetune_rows() == 1065  # the reference run's
    lengths = workload.prompt_lengths("m", "2shot")
    assert not lengths.counted
    assert set(lengths.tokens) == {round(shape["header_tokens"] + 3 * shape["block_tokens"])}
    # A subject's header and shots, computed once for its 9,181 / 57 prompts; not for a control's reordered shots.
    assert lengths.shared == ((int(shape["header_tokens"] + 2 * shape["block_tokens"]), 9181 // 57),) * 57
    assert workload.prompt_lengths("m", "2shot-shuffled").shared == ()
