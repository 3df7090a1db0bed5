"""Stored representations equal a plain per-prompt forward pass: `output_hidden_states` for the residual stream, a
forward hook on each block's input norm for `block_input_norm`, and the logit lens the final norm and LM head applied
to `output_hidden_states`; for several architectures, under length-sorted batches with padding on either side, and
under left truncation."""
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from repgeom.extract.hooks import UnsupportedArchitecture, find_hook_points
from repgeom.models.loading import load_tokenizer
from repgeom.store import group_attrs, read_layer, read_letter_lens

ATOL = 2e-5


def last_token_reference(reference, model_dir, prompts, hook, max_length=512):
    """[N, L+1, D] last-token rows and [N, 4] letter log-probabilities of a plain per-prompt forward pass."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    results = reference(model, load_tokenizer(str(model_dir)), prompts, hook, max_length)
    return np.stack([reps[:, -1] for reps, _ in results]), np.stack([logprob for _, logprob in results])


@pytest.mark.parametrize(("arch", "hook"), [(arch, "block_input_norm") for arch in ("llama", "gpt_neox", "qwen2",
                                                                                    "gemma", "mistral")]
                         + [(arch, "residual") for arch in ("llama", "gpt_neox", "gemma")])
def test_matches_plain_forward(arch, hook, model_dirs, prompts_file, tmp_path, reference, extract, lens_by_hand):
    store, stored, accuracy = extract(model_dirs[arch], prompts_file, tmp_path, hook=hook)
    expected, logprobs = last_token_reference(reference, model_dirs[arch], pd.read_parquet(prompts_file), hook)
    assert stored.shape == expected.shape == (24, 3, 32 if arch != "llama" else 64)
    np.testing.assert_allclose(stored, expected, atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(accuracy[[f"logprob_{x}" for x in "ABCD"]].to_numpy(), logprobs, atol=1e-4)
    model = AutoModelForCausalLM.from_pretrained(model_dirs[arch]).eval()
    lens = lens_by_hand(model, load_tokenizer(str(model_dirs[arch])), pd.read_parquet(prompts_file))
    np.testing.assert_allclose(read_letter_lens(store, "m/c")[0], lens, atol=1e-4, rtol=1e-4)
    names = group_attrs(store, "m/c")["layer_names"]
    assert names[-1].endswith("norm:output") and len(names) == 3
    assert all(("input_layernorm" in n) == (hook == "block_input_norm") for n in names[:-1])


def test_left_padding_and_truncation(model_dirs, prompts_file, tmp_path, reference, extract, lens_by_hand):
    prompts = pd.read_parquet(prompts_file)
    store, stored, _ = extract(model_dirs["llama"], prompts_file, tmp_path, padding_side="left", max_length=48)
    expected, _ = last_token_reference(reference, model_dirs["llama"], prompts, "block_input_norm", max_length=48)
    tokenizer = load_tokenizer(str(model_dirs["llama"]))
    assert max(len(ids) for ids in tokenizer(prompts["prompt"].tolist())["input_ids"]) > 48  # some are truncated
    np.testing.assert_allclose(stored, expected, atol=ATOL, rtol=1e-4)
    lens = lens_by_hand(AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).eval(), tokenizer, prompts, 48)
    np.testing.assert_allclose(read_letter_lens(store, "m/c")[0], lens, atol=1e-4, rtol=1e-4)


def test_read_layer_frame_and_accuracy(model_dirs, prompts_file, tmp_path, extract):
    store, stored, accuracy = extract(model_dirs["qwen2"], prompts_file, tmp_path)
    values, frame = read_layer(store, "m/c", -1, dtype=np.float64)
    assert values.dtype == np.float64 and np.array_equal(values, stored[:, -1])
    prompts = pd.read_parquet(prompts_file)
    assert frame["question_id"].tolist() == prompts["question_id"].tolist()  # the prompt file's order
    assert list(frame.columns) == ["question_id", "subject", "gold", "pred", "correct"]
    assert (frame["pred"] == accuracy["pred_letter"]).all()
    summary = group_attrs(store, "m/c")["accuracy"]
    assert summary["micro"] == pytest.approx(accuracy["correct"].mean())
    assert summary["macro"] == pytest.approx(accuracy.groupby("subject")["correct"].mean().mean())


class NoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"num_hidden_layers": 2})()
        self.linear = torch.nn.Linear(4, 4)


def test_unsupported_architecture_is_named():
    with pytest.raises(UnsupportedArchitecture, match="NoBlocks.*ModuleList of 2"):
        find_hook_points(NoBlocks(), "block_input_norm", torch.tensor([[1, 2]]))


def test_post_norm_blocks_have_no_block_input_norm(tiny_tokenizer):
    from transformers import Olmo2Config, Olmo2ForCausalLM

    config = Olmo2Config(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)
    model = Olmo2ForCausalLM(config).eval()
    assert len(find_hook_points(model, "residual", torch.tensor([[1, 2, 3]]))) == 3
    with pytest.raises(UnsupportedArchitecture, match="use hook 'residual'"):
        find_hook_points(model, "block_input_norm", torch.tensor([[1, 2, 3]]))
