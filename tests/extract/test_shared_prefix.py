"""Prompts that share their header and shots compute them once and continue from the key/value cache: the stored
rows, letter log-probabilities, logit lens and token sample equal whole-prompt passes (float32, up to rounding)."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from repgeom.store import read_letter_lens, read_token_sample

SUBJECTS = ["high_school_biology", "abstract_algebra", "world_religions"]


def few_shot_frame(n: int) -> pd.DataFrame:
    """Each subject's prompts share three shots (as MMLU's dev shots are); every fourth prompt has none."""
    rows = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        shots = "" if i % 4 == 3 else "".join(
            f"What is {j} times {len(subject)}?\nA. {j}\nB. {j * len(subject)}\nC. 1\nD. 0\nAnswer: B\n\n"
            for j in range(3))
        query = f"What is {i} plus {i % 5}?\nA. {i}\nB. {i + i % 5}\nC. {i + 1}\nD. {2 * i}\nAnswer:"
        rows.append({"question_id": f"{subject}-{i}", "subject": subject, "gold": "ABCD"[i % 4],
                     "n_shots": 0 if i % 4 == 3 else 3, "prompt": header + shots + query, "n_tokens": 0})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def few_shot_prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("few_shot") / "prompts.parquet"
    few_shot_frame(20).to_parquet(path)
    return path


def extract_both(extract, model_dir, prompts, tmp_path, caplog, **settings):
    """(shared, whole): the same extraction with and without shared prefixes; the first must have shared some."""
    sample = {"token_sample_layers": [0, 2], "token_sample_size": 150}
    with caplog.at_level(logging.INFO, logger="repgeom.extract"):
        shared = extract(model_dir, prompts, tmp_path / "shared", **sample, **settings)
    assert "shared prefixes" in caplog.text
    whole = extract(model_dir, prompts, tmp_path / "whole", min_shared_prefix=0, **sample, **settings)
    return shared, whole


def assert_same_extraction(shared, whole):
    (store, stored, accuracy), (whole_store, whole_stored, whole_accuracy) = shared, whole
    np.testing.assert_allclose(stored, whole_stored, rtol=1e-5, atol=1e-5)
    letter_columns = [c for c in accuracy.columns if c.startswith("logprob_")]
    assert letter_columns
    np.testing.assert_allclose(accuracy[letter_columns], whole_accuracy[letter_columns], rtol=1e-5, atol=1e-5)
    assert accuracy["pred_letter"].tolist() == whole_accuracy["pred_letter"].tolist()
    np.testing.assert_allclose(read_letter_lens(store, "m/c")[0], read_letter_lens(whole_store, "m/c")[0], rtol=1e-5,
                               atol=1e-5)
    for layer in (0, 2):
        (sample, where), (whole_sample, whole_where) = (read_token_sample(s, "m/c", layer) for s in (store, whole_store))
        assert sample.shape == (150, stored.shape[2])
        pd.testing.assert_frame_equal(where, whole_where)
        np.testing.assert_allclose(sample, whole_sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_shared_prefixes_store_what_whole_prompts_give(tiny_llama_dir, few_shot_prompts, tmp_path, extract, reference,
                                                       lens_by_hand, caplog, padding_side):
    from repgeom.models.loading import load_model, load_tokenizer

    shared, whole = extract_both(extract, tiny_llama_dir, few_shot_prompts, tmp_path, caplog,
                                 padding_side=padding_side, chunk_rows=8, max_batch_tokens=400)
    assert_same_extraction(shared, whole)
    tokenizer, model = load_tokenizer(str(tiny_llama_dir)), load_model(str(tiny_llama_dir), dtype="float32")
    prompts = pd.read_parquet(few_shot_prompts)
    for row, (layers, _) in enumerate(reference(model, tokenizer, prompts.head(4), "block_input_norm")):
        np.testing.assert_allclose(shared[1][row], layers[:, -1], rtol=1e-4, atol=1e-4)
    lens = read_letter_lens(shared[0], "m/c")[0]
    np.testing.assert_allclose(lens[:4], lens_by_hand(model, tokenizer, prompts.head(4)), rtol=1e-4, atol=1e-4)


def test_shared_prefixes_under_a_lora_adapter(tiny_llama_dir, lora_dir, few_shot_prompts, tmp_path, extract, caplog):
    shared, whole = extract_both(extract, tiny_llama_dir, few_shot_prompts, tmp_path, caplog, adapter=lora_dir,
                                 chunk_rows=20)
    assert_same_extraction(shared, whole)


def test_each_batch_continues_the_prefix_cache_without_changing_or_deep_copying_it(tiny_llama_dir, monkeypatch):
    """Batches of several sizes continue one prefix's cache: each gets the prefix's keys and values repeated for its
    rows (`forward.repeated_cache`), as a deep copy gave them, bit for bit, while the prefix's own cache keeps its
    tensors (the same objects, the same values) for the next batch, and no tensor of it is deep-copied."""
    import copy

    import torch

    from repgeom.extract.forward import repeated_cache
    from repgeom.models.loading import load_model

    model = load_model(str(tiny_llama_dir), dtype="float32")
    prefix = torch.arange(5, 25).unsqueeze(0)
    with torch.no_grad():
        cache = model(input_ids=prefix, use_cache=True).past_key_values
    kept = [(layer.keys, layer.values) for layer in cache.layers]
    values = [(keys.clone(), vals.clone()) for keys, vals in kept]

    def continue_prefix(past, rows):
        ids = torch.arange(30, 30 + 4 * rows).reshape(rows, 4)
        with torch.no_grad():
            return model(input_ids=ids, past_key_values=past, use_cache=True).logits

    expected = {}
    for rows in (3, 1, 5):  # as the old code did it: a deep copy of the whole cache for each batch
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(rows)
        expected[rows] = continue_prefix(past, rows)

    def no_deep_copy(tensor, memo):
        raise AssertionError("a tensor of the prefix cache was deep-copied")

    monkeypatch.setattr(torch.Tensor, "__deepcopy__", no_deep_copy)
    for rows in (3, 1, 5):
        assert torch.equal(continue_prefix(repeated_cache(cache, rows), rows), expected[rows])
        for layer, (keys, vals), (key_values, value_values) in zip(cache.layers, kept, values):
            assert layer.keys is keys and layer.values is vals, "the prefix's cache was given other tensors"
            assert torch.equal(keys, key_values) and torch.equal(vals, value_values), "the prefix's cache was written"
    assert cache.get_seq_length() == prefix.shape[1]
