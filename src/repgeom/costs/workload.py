"""How much data each job processes: the prompts of each condition and the fine-tuning set's rows, in tokens.

From the best source there is, in order:
1. the run's own files: the prompt files carry each prompt's token count; the sampled fine-tuning set is tokenised;
2. the dataset on disk (a local copy, or the run's generated one): the analysis subset and fine-tuning set drawn as
   the workflow draws them, and a sample of SAMPLE_PROMPTS prompts of each condition built and tokenised;
3. the dataset's published or measured shape (`datasets` in resources/costs/throughput.yaml): the analysis subset's
   size, and a k-shot prompt as a header and k + 1 question blocks.
Tokens are counted with the model's tokenizer where the model is on disk, else from characters
(`chars_per_token`).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from repgeom.conditions import parse_condition
from repgeom.workflow.dataset import dataset_spec, generated_subjects
from repgeom.workflow.plan import prompts_condition
from repgeom.workflow.resources import MMLU_SUBJECTS, MMLU_TEST_ROWS

# Prompts of a condition built and tokenised when only the dataset exists: enough for the mean and the longest
# to settle, few enough for seconds.
SAMPLE_PROMPTS = 256


@dataclass(frozen=True)
class Lengths:
    """Token counts of a set of sequences, whether they were counted (True) or estimated, and the prefixes that
    several of them share ((prefix length, rows) pairs), which the extraction computes once."""
    tokens: np.ndarray
    counted: bool
    shared: tuple[tuple[int, int], ...] = ()

    @property
    def n(self) -> int:
        return len(self.tokens)


class Workload:
    """The token counts of one config's jobs; `tokenizer_folder(model)` gives where a model's tokenizer is (None
    when it is not on disk)."""

    def __init__(self, config: Mapping, constants: Mapping, tokenizer_folder):
        self.config, self.constants, self.tokenizer_folder = config, constants, tokenizer_folder
        self.results = Path(config["results_dir"])

    @functools.cached_property
    def shape(self) -> Mapping:
        """The `datasets` entry for the run's dataset: its generator's kind, else MMLU's."""
        kind = (self.config["dataset"].get("generate") or {}).get("kind", "mmlu")
        return self.constants["datasets"][kind]

    @functools.cached_property
    def table(self) -> pd.DataFrame | None:
        """The dataset's canonical table when it is on disk (never downloaded)."""
        from repgeom.data.mmlu import load_dataset_table

        generated = self.results / "dataset"
        spec = dataset_spec(self.config, str(generated) if self.config["dataset"].get("generate") else None)
        if not spec.get("path") or not Path(spec["path"]).is_dir():
            return None
        return load_dataset_table(spec)

    @functools.cached_property
    def analysis_subset(self) -> pd.DataFrame | None:
        from repgeom.data.sampling import analysis_subset

        sampling = self.config["sampling"]
        if self.table is None:
            return None
        return analysis_subset(self.table, sampling["max_per_subject"], sampling["seed"], sampling.get("subset_mask"))

    def analysis_rows(self) -> int:
        if self.analysis_subset is not None:
            return len(self.analysis_subset)
        cap, generate = self.config["sampling"]["max_per_subject"], self.config["dataset"].get("generate")
        if generate:
            return len(generated_subjects(self.config)) * min(cap, generate["n_test"])
        return self.shape.get("analysis_rows", {}).get(cap, min(MMLU_SUBJECTS * cap, MMLU_TEST_ROWS))

    def finetune_rows(self) -> int:
        cap, generate = self.config["sampling"]["finetune_max_per_subject"], self.config["dataset"].get("generate")
        if self.has_finetune_data():
            return len(self.finetune_texts())
        if generate:
            return len(generated_subjects(self.config)) * min(cap, generate["n_dev"] + generate["n_validation"])
        return self.shape.get("finetune_rows", {}).get(cap, self.shape["subjects"] * cap)

    @functools.cache
    def tokenizer(self, model: str):
        folder = self.tokenizer_folder(model)
        if not folder or not Path(folder, "tokenizer_config.json").is_file():
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)

    def count(self, model: str, texts: list[str]) -> tuple[np.ndarray, bool]:
        """Tokens of each text (with BOS), and whether a tokenizer counted them."""
        tokenizer = self.tokenizer(model)
        if tokenizer is None:
            return np.array([1 + round(len(text) / self.shape["chars_per_token"]) for text in texts]), False
        return np.array([len(ids) for ids in tokenizer(texts)["input_ids"]]), True

    def prompt_lengths(self, model: str, condition: str) -> Lengths:
        """Token counts of a condition's prompts: a fine-tuned condition's are the 0-shot ones, counted once."""
        return self.prompts_lengths(model, prompts_condition(condition))

    @functools.cache
    def prompts_lengths(self, model: str, condition: str) -> Lengths:
        """Token counts of the prompts of a condition that has prompts of its own (k-shot, or a control)."""
        parsed = parse_condition(condition)
        path = self.results / "prompts" / model / f"{condition}.parquet"
        if path.is_file():
            frame = pd.read_parquet(path, columns=["prompt", "n_tokens"])
            return Lengths(frame["n_tokens"].to_numpy(), True, self.shared_prefixes(model, frame["prompt"].tolist()))
        max_length = self.config["models"][model]["max_length"]
        if self.analysis_subset is not None:
            sampled = self.sampled_prompts(parsed.shots)
            counts, _ = self.count(model, sampled)
            # The sample's lengths stand for the whole subset's.
            scale = self.analysis_rows() / len(sampled)
            shared = tuple((length, round(rows * scale)) for length, rows in self.shared_prefixes(model, sampled))
            return Lengths(np.resize(np.minimum(counts, max_length), self.analysis_rows()), False, shared)
        header, block = self.shape["header_tokens"], self.shape["block_tokens"]
        length = min(int(round(header + (parsed.shots + 1) * block)), max_length)
        # A base k-shot condition's prompts of one subject share their header and shots (the controls reorder or
        # relabel shots per prompt).
        prefix = int(header + parsed.shots * block) if parsed.variant is None else 0
        rows, subjects = self.analysis_rows(), self.subjects()
        shared = ((prefix, rows // subjects),) * subjects if prefix >= self.min_shared_prefix() else ()
        return Lengths(np.full(rows, length), False, shared)

    def min_shared_prefix(self) -> int:
        return self.config["extraction"].get("min_shared_prefix", 0)

    def subjects(self) -> int:
        generated = self.config["dataset"].get("generate")
        return len(generated_subjects(self.config)) if generated else self.shape["subjects"]

    def shared_prefixes(self, model: str, prompts: list[str]) -> tuple[tuple[int, int], ...]:
        """The prefixes the extraction computes once (repgeom.extract.batching.shared_prefix_groups, over the whole
        set rather than per row chunk): none when no tokenizer is on disk to find them."""
        from repgeom.extract.batching import shared_prefix_groups

        tokenizer, min_length = self.tokenizer(model), self.min_shared_prefix()
        if tokenizer is None or not min_length:
            return ()
        groups = shared_prefix_groups(tokenizer(prompts)["input_ids"], min_length)
        return tuple((group.length, len(group.rows)) for group in groups if group.length)

    def sampled_prompts(self, shots: int) -> list[str]:
        """k-shot prompts of SAMPLE_PROMPTS questions of the analysis subset, with their subject's first k dev rows
        (the prompt controls reorder or relabel those shots: the same length)."""
        from repgeom.data.prompts import dev_shots, k_shot_prompt

        subset = self.analysis_subset
        rows = subset.sample(min(SAMPLE_PROMPTS, len(subset)), random_state=0)
        pool = dev_shots(self.table, shots)
        return [k_shot_prompt(row, pool[row["subject"]]) for _, row in rows.iterrows()]

    @functools.cache
    def finetune_texts(self) -> list[str]:
        """The fine-tuning set's texts: the run's sampled file, else drawn from the dataset as the workflow draws it
        (its `sampled_shots` hold-out aside)."""
        path = self.results / "data" / "finetune_set.parquet"
        if path.is_file():
            return pd.read_parquet(path, columns=["text"])["text"].tolist()
        from repgeom.data.sampling import finetune_set

        sampling = self.config["sampling"]
        return finetune_set(self.table, sampling["finetune_max_per_subject"], sampling["seed"])["text"].tolist()

    def has_finetune_data(self) -> bool:
        return (self.results / "data" / "finetune_set.parquet").is_file() or self.table is not None

    @functools.cache
    def finetune_lengths(self, model: str) -> Lengths:
        """Token counts of the fine-tuning set's texts (BOS, question block, `Answer:` and the letter)."""
        if self.has_finetune_data():
            counts, counted = self.count(model, self.finetune_texts())
            return Lengths(counts, counted)
        return Lengths(np.full(self.finetune_rows(), round(self.shape["block_tokens"])), counted=False)
