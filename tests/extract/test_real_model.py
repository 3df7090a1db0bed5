"""Extraction on the default's real model (SmolLM2-135M-Instruct, imported from its GGUF file) equals what the
model's own modules compute: forward hooks on each block's input norm, and `output_hidden_states` (through the final
norm and the LM head, for the logit lens)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from repgeom.data import facts, mmlu, prompts
from repgeom.store import read_letter_lens


@pytest.fixture(scope="module")
def fact_prompts(tmp_path_factory):
    """Eight real-facts prompts of the default's dataset, at 0 and 2 shots (lengths differ: batches pad)."""
    folder = tmp_path_factory.mktemp("facts")
    facts.generate(folder / "dataset", seed=0, n_dev=5, n_validation=2, n_test=4)
    table = mmlu.load_dataset_table({"path": str(folder / "dataset")})
    test = table[table["split"] == "test"].head(8).reset_index(drop=True)
    rows = []
    for i, row in test.iterrows():
        shots = prompts.dev_shots(table, i % 2 * 2)[row["subject"]]
        rows.append({"question_id": row["question_id"], "subject": row["subject"], "gold": row["answer"],
                     "n_shots": len(shots), "prompt": prompts.k_shot_prompt(row, shots), "n_tokens": 0})
    path = folder / "prompts.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["block_input_norm", "residual"])
def test_real_model_extraction_equals_its_modules(smollm2_dir, fact_prompts, tmp_path, extract, reference, lens_by_hand,
                                                  hook):
    from repgeom.models.loading import answer_letter_token_ids, load_model, load_tokenizer

    store, stored, accuracy = extract(smollm2_dir, fact_prompts, tmp_path, hook=hook, chunk_rows=3)
    tokenizer = load_tokenizer(str(smollm2_dir))
    assert answer_letter_token_ids(tokenizer) == {"A": 330, "B": 389, "C": 340, "D": 422}
    model = load_model(str(smollm2_dir), dtype="float32")
    expected = reference(model, tokenizer, pd.read_parquet(fact_prompts), hook)
    assert stored.shape == (8, 31, 576)
    for row, (layers, letter_logprob) in enumerate(expected):
        np.testing.assert_allclose(stored[row], layers[:, -1], rtol=1e-4, atol=1e-4, err_msg=f"prompt {row}")
    letters = {"A": 0, "B": 1, "C": 2, "D": 3}
    predicted = [letters[p] for p in accuracy["pred_letter"]]
    assert predicted == [int(np.argmax(logprob)) for _, logprob in expected]
    lens = lens_by_hand(model, tokenizer, pd.read_parquet(fact_prompts))
    np.testing.assert_allclose(read_letter_lens(store, "m/c")[0], lens, rtol=1e-4, atol=1e-4)
