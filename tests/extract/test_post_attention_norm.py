"""Hook `post_attention_norm`: the stored rows are the outputs of each block's norm on the residual stream after
attention (Llama's `post_attention_layernorm`) at the last token, then the final norm; the norm is found by the
tensors that flow, not by name, and a model without exactly one such norm gets a clear error."""
import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from repgeom.extract.batching import encode_prompts
from repgeom.extract.hooks import UnsupportedArchitecture, find_hook_points
from repgeom.models.loading import load_tokenizer
from repgeom.store import group_attrs

PROBE = torch.tensor([[1, 2, 3, 4]])


def post_attention_reference(model_dir, prompts: pd.DataFrame) -> np.ndarray:
    """[N, L+1, D]: forward hooks on `model.model.layers[i].post_attention_layernorm`, then the final norm's output
    (the last hidden state), at each prompt's last token, one unpadded prompt at a time."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = []
    for ids in encode_prompts(load_tokenizer(str(model_dir)), prompts["prompt"].tolist(), 512):
        seen = []
        handles = [layer.post_attention_layernorm.register_forward_hook(lambda m, i, out: seen.append(out[0, -1]))
                   for layer in model.model.layers]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        for handle in handles:
            handle.remove()
        rows.append(torch.stack([*seen, out.hidden_states[-1][0, -1]]).numpy())
    return np.stack(rows)


def test_stored_rows_are_the_post_attention_norm_outputs(tiny_llama_dir, prompts_file, tmp_path, extract):
    store, stored, _ = extract(tiny_llama_dir, prompts_file, tmp_path, hook="post_attention_norm")
    expected = post_attention_reference(tiny_llama_dir, pd.read_parquet(prompts_file))
    assert stored.shape == expected.shape == (24, 3, 64)
    np.testing.assert_allclose(stored, expected, atol=2e-5, rtol=1e-4)
    attrs = group_attrs(store, "m/c")
    assert attrs["hook"] == "post_attention_norm"
    assert attrs["layer_names"] == ["model.layers.0.post_attention_layernorm:output",
                                    "model.layers.1.post_attention_layernorm:output", "model.norm:output"]


def tiny(config_name: str, model_name: str, **extra) -> torch.nn.Module:
    config = getattr(transformers, config_name)(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=64, pad_token_id=0, **extra)
    torch.manual_seed(0)
    return getattr(transformers, model_name)(config).eval()


@pytest.mark.parametrize(("config_name", "model_name", "extra", "norm"), [
    # q_norm / k_norm inside attention are not it
    ("Qwen3Config", "Qwen3ForCausalLM", {"num_key_value_heads": 2, "head_dim": 8}, "post_attention_layernorm"),
    # Gemma 2 normalises the attention output before the add: the norm after the add is pre_feedforward_layernorm
    ("Gemma2Config", "Gemma2ForCausalLM", {"num_key_value_heads": 1, "head_dim": 8}, "pre_feedforward_layernorm"),
    ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"use_parallel_residual": False}, "post_attention_layernorm"),
])
def test_found_by_the_residual_it_receives(config_name, model_name, extra, norm):
    model = tiny(config_name, model_name, **extra)
    names = [point.name for point in find_hook_points(model, "post_attention_norm", PROBE)]
    assert names[:-1] == [f"{model.base_model_prefix}.layers.{i}.{norm}:output" for i in range(2)]
    assert names[-1].endswith("norm:output") and len(names) == 3


@pytest.mark.parametrize(("config_name", "model_name", "extra"), [
    ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"use_parallel_residual": True}),  # attention and MLP in parallel
    ("Olmo2Config", "Olmo2ForCausalLM", {}),  # norms on the sublayers' outputs only
])
def test_model_without_one_is_named(config_name, model_name, extra):
    model = tiny(config_name, model_name, **extra)
    with pytest.raises(UnsupportedArchitecture, match=rf"^{model_name}: no norm in its blocks receives the residual "
                                                      r"stream after attention .* use hook 'block_input_norm'"):
        find_hook_points(model, "post_attention_norm", PROBE)


class TwoNormsAfterAttention(torch.nn.Module):
    """Blocks whose residual after attention feeds two norms (say, the MLP's and a router's)."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.input_norm, self.attention = torch.nn.RMSNorm(8), torch.nn.Linear(8, 8)
            self.mlp_norm, self.router_norm, self.mlp = torch.nn.RMSNorm(8), torch.nn.RMSNorm(8), torch.nn.Linear(8, 8)

        def forward(self, x):
            x = x + self.attention(self.input_norm(x))
            return x + self.mlp(self.mlp_norm(x)) + self.router_norm(x)

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"num_hidden_layers": 2})()
        self.embed, self.layers = torch.nn.Embedding(8, 8), torch.nn.ModuleList([self.Block(), self.Block()])
        self.norm = torch.nn.RMSNorm(8)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        hidden = self.embed(input_ids)
        for block in self.layers:
            hidden = block(hidden)
        return self.norm(hidden)


def test_two_candidates_are_ambiguous():
    with pytest.raises(UnsupportedArchitecture, match=r"norms \['mlp_norm', 'router_norm'\] .* is ambiguous"):
        find_hook_points(TwoNormsAfterAttention(), "post_attention_norm", PROBE)
