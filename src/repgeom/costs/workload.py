"""How much data each job processes: the prompts of each condition and the fine-tuning set's rows, in tokens.

Counted from the run's own files where they exist (the prompt files carry each prompt's token count; the
fine-tuning set is tokenised with the model's tokenizer when the model is on disk). Before the run has made them,
estimated from the dataset's published or measured shape (`datasets` in resources/costs/throughput.yaml): the
analysis subset's size, and a k-shot prompt as a header and k + 1 question blocks.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repgeom.conditions import parse_condition
from repgeom.workflow.dataset import generated_subjects
from repgeom.workflow.resources import MMLU_SUBJECTS, MMLU_TEST_ROWS


@dataclass(frozen=True)
class Lengths:
    """Token counts of a set of sequences, and whether they were counted (True) or estimated."""
    tokens: np.ndarray
    counted: bool

    @property
    def n(self) -> int:
        return len(self.tokens)


def dataset_shape(config: Mapping, constants: Mapping) -> Mapping:
    """The `datasets` entry for the run's dataset: its generator's kind, else MMLU's."""
    kind = (config["dataset"].get("generate") or {}).get("kind", "mmlu")
    return constants["datasets"][kind]


def analysis_rows(config: Mapping, constants: Mapping) -> int:
    """The analysis subset's size before sampling: per subject the cap or the test questions there are."""
    cap, generate = config["sampling"]["max_per_subject"], config["dataset"].get("generate")
    if generate:
        return len(generated_subjects(config)) * min(cap, generate["n_test"])
    published = dataset_shape(config, constants).get("analysis_rows", {})
    return published.get(cap, min(MMLU_SUBJECTS * cap, MMLU_TEST_ROWS))


def finetune_rows(config: Mapping, constants: Mapping) -> int:
    """The fine-tuning set's size before sampling: dev + validation per subject, at most the cap."""
    cap, generate = config["sampling"]["finetune_max_per_subject"], config["dataset"].get("generate")
    if generate:
        return len(generated_subjects(config)) * min(cap, generate["n_dev"] + generate["n_validation"])
    shape = dataset_shape(config, constants)
    return shape.get("finetune_rows", {}).get(cap, shape["subjects"] * cap)


def prompt_lengths(config: Mapping, constants: Mapping, model: str, condition: str) -> Lengths:
    """Token counts of a condition's prompts (a fine-tuned condition reads the 0-shot prompts)."""
    parsed = parse_condition(condition)
    shots = 0 if parsed.is_finetuned else parsed.shots
    path = Path(config["results_dir"]) / "prompts" / model / f"{'0shot' if parsed.is_finetuned else condition}.parquet"
    if path.is_file():
        import pandas as pd

        return Lengths(pd.read_parquet(path, columns=["n_tokens"])["n_tokens"].to_numpy(), counted=True)
    shape = dataset_shape(config, constants)
    mean = shape["header_tokens"] + (shots + 1) * shape["block_tokens"]
    length = min(int(round(mean)), config["models"][model]["max_length"])
    return Lengths(np.full(analysis_rows(config, constants), length), counted=False)


def finetune_lengths(config: Mapping, constants: Mapping, tokenizer_folder: str | None) -> Lengths:
    """Token counts of the fine-tuning set's texts (question block, `Answer:` and the letter, after BOS)."""
    path = Path(config["results_dir"]) / "data" / "finetune_set.parquet"
    shape = dataset_shape(config, constants)
    if path.is_file():
        import pandas as pd

        texts = pd.read_parquet(path, columns=["text"])["text"].tolist()
        if tokenizer_folder and Path(tokenizer_folder, "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            ids = AutoTokenizer.from_pretrained(tokenizer_folder)(texts)["input_ids"]
            return Lengths(np.array([len(row) for row in ids]), counted=True)
        return Lengths(np.array([1 + len(text) / shape["chars_per_token"] for text in texts]).round(), counted=False)
    return Lengths(np.full(finetune_rows(config, constants), round(shape["block_tokens"])), counted=False)
