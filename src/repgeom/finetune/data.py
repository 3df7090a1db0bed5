"""The fine-tuning set as the model sees it: token ids with labels that are -100 everywhere but the answer letter,
right-padded micro-batches, and the loss on that one token."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from repgeom.io import read_parquet_table
from repgeom.finetune.params import FinetuneError
from repgeom.letters import ANSWER_LETTERS
from repgeom.models.loading import ANSWER_CUE, answer_letter_token_ids

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips
COLUMNS = ("question_id", "gold", "prompt", "text")


@dataclass(frozen=True)
class EncodedSet:
    input_ids: list[list[int]]  # BOS + question block + `Answer:` + the letter token
    question_ids: list[str]
    sha256: str  # of the parquet file: part of the run's identity

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids])


def read_finetune_set(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    frame = read_parquet_table(path, "fine-tuning set", FinetuneError, COLUMNS)
    if frame.empty:
        raise FinetuneError(f"fine-tuning set {str(path)!r} has no rows: there is nothing to train on")
    for row, item in enumerate(frame.itertuples(index=False)):
        where = f"fine-tuning set {str(path)!r}, row {row} (question_id {item.question_id!r})"
        if item.gold not in ANSWER_LETTERS:
            raise FinetuneError(f"{where}: gold {item.gold!r} is not one of {', '.join(ANSWER_LETTERS)}")
        if not item.prompt.endswith(ANSWER_CUE):
            raise FinetuneError(f"{where}: prompt does not end in {ANSWER_CUE!r} (no trailing space)")
        if item.text != f"{item.prompt} {item.gold}":
            raise FinetuneError(f"{where}: text is not prompt + ' ' + gold")
    return frame


def encode_finetune_set(path: str | Path, tokenizer, max_tokens: int | None) -> EncodedSet:
    """Tokenise every row and check that its text is its prompt's tokens plus exactly the answer letter token,
    so that the loss sits on the token that the extraction stage reads the letter from, and that it fits the
    model's context (`max_tokens`)."""
    frame = read_finetune_set(path)
    letter_ids = answer_letter_token_ids(tokenizer)
    texts = tokenizer(frame["text"].tolist())["input_ids"]
    prompts = tokenizer(frame["prompt"].tolist())["input_ids"]
    for row, (text_ids, prompt_ids, gold, qid) in enumerate(zip(texts, prompts, frame["gold"], frame["question_id"])):
        where = f"fine-tuning set {str(path)!r}, row {row} (question_id {qid!r})"
        if text_ids != [*prompt_ids, letter_ids[gold]]:
            raise FinetuneError(f"{where}: the tokenised text is not the tokenised prompt followed by the token of "
                                f"' {gold}' ({letter_ids[gold]}); check that the prompt ends in 'Answer:'")
        if max_tokens is not None and len(text_ids) > max_tokens:
            raise FinetuneError(f"{where}: {len(text_ids)} tokens, over the {max_tokens} the model takes "
                                "(its context less any virtual tokens)")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return EncodedSet(input_ids=texts, question_ids=frame["question_id"].astype(str).tolist(), sha256=digest)


def collate(encoded: EncodedSet, rows: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding, so that each row's tokens keep their positions whatever the batch (peft's prompt learning
    ignores position_ids). Labels are -100 except on the last real token, the answer letter.

    Also where the loss reads, computed here on the host so that `letter_losses` makes no device-to-host sync:
    `label_positions` [B] (each row's labelled token), `keep_positions` [K] (the distinct positions that predict
    them, sorted) and `keep_columns` [B] (each row's column among them)."""
    sequences = [encoded.input_ids[row] for row in rows]
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for i, ids in enumerate(sequences):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
        labels[i, len(ids) - 1] = ids[-1]
    label_positions = torch.tensor([len(ids) - 1 for ids in sequences], dtype=torch.long)
    keep_positions, keep_columns = torch.unique(label_positions - 1, return_inverse=True)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "label_positions": label_positions, "keep_positions": keep_positions, "keep_columns": keep_columns}


def letter_losses(model, batch: dict[str, torch.Tensor], n_prepended: int) -> torch.Tensor:
    """Cross-entropy of each row's labelled token, [B]. Logits are computed only at the positions that predict
    labelled tokens (`logits_to_keep`), not over the whole sequence and vocabulary. `n_prepended`: virtual tokens
    that prompt tuning puts in front of the sequence, which shift every output position.

    A batch from `collate` says where its labels are, so this makes no device-to-host sync (three per micro-step
    otherwise: nonzero, equal and unique); a batch with `labels` alone is read as before."""
    labels = batch["labels"]
    if "label_positions" in batch:
        targets = batch["label_positions"]
        rows = torch.arange(len(labels), device=labels.device)
        keep, column = batch["keep_positions"] + n_prepended, batch["keep_columns"]
    else:
        rows, targets = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)
        if not torch.equal(rows, torch.arange(len(labels), device=labels.device)):
            raise ValueError("each row must carry exactly one labelled token")
        keep, column = torch.unique(targets - 1 + n_prepended, return_inverse=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(logits[rows, column].float(), labels[rows, targets], reduction="none")
