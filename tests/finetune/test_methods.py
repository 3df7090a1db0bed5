"""Each method trains and loads back with `PeftModel.from_pretrained` alone; prefix tuning works with grouped-query
attention; LoRA targets are found by name for the architecture."""
import json

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DynamicCache

from repgeom.finetune import FinetuneError, checkpoint_steps
from repgeom.finetune.methods import VERTICES_FILE, mean_squared_cosine, resolve_target_modules
from repgeom.models.loading import load_tokenizer

QUESTIONS = ["What is 3 plus 3?\nA. 3\nB. 6\nC. 4\nD. 9\nAnswer:", "What is 12 plus 5?\nA. 17\nB. 12\nC. 13\nD. 24\nAnswer:"]


def test_lora_targets_resolve_by_role_or_name(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    roles = ("q", "k", "v", "o", "gate", "up", "down")
    assert resolve_target_modules(model, roles) == [f"{role}_proj" for role in roles]
    assert resolve_target_modules(model, ("q_proj", "lm_head")) == ["q_proj", "lm_head"]
    with pytest.raises(FinetuneError, match=r"target module\(s\) \['qkv', 'attn'\] not found in LlamaForCausalLM; "
                                            r"its Linear layers are named \['down_proj', 'gate_proj', 'k_proj'"):
        resolve_target_modules(model, ("q", "qkv", "attn"))


def test_prefix_tuning_with_grouped_query_attention(tiny_llama_dir):
    """peft's prefix for a model with fewer key/value heads than heads (4 and 2) acts as keys and values of the
    right shape in every layer: the same logits as the base model given that cache by hand, batched or not."""
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    config = base.config
    assert config.num_key_value_heads < config.num_attention_heads
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3)).eval()
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    batch = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    head_dim = config.hidden_size // config.num_attention_heads
    prefix = model.prompt_encoder["default"].embedding.weight.view(3, config.num_hidden_layers * 2,
                                                                   config.num_key_value_heads, head_dim)
    cache = DynamicCache(config=config)
    for layer in range(config.num_hidden_layers):
        keys, values = (prefix[:, 2 * layer + i].transpose(0, 1)[None].expand(2, -1, -1, -1) for i in (0, 1))
        cache.update(keys, values, layer)
    mask = torch.cat([torch.ones(2, 3, dtype=torch.long), batch["attention_mask"]], dim=1)
    with torch.no_grad():
        expected = base(input_ids=batch["input_ids"], attention_mask=mask, past_key_values=cache).logits
        got = model(**batch).logits
        alone = model(**tokenizer(QUESTIONS[:1], return_tensors="pt")).logits
        plain = base(**batch).logits
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(alone[0], got[0, :alone.shape[1]], atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the prefix does act


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "prefix_subspace"])
def test_prompt_learning_methods_train_and_load(method, tiny_llama_dir, finetune_set, tmp_path, cli,
                                                deepspeed_configs):
    params = {"method": method, "epochs": 1, "num_virtual_tokens": 4, "micro_batch": 8, "subspace_vertices": 3}
    out = tmp_path / "out"
    result = cli("--model", tiny_llama_dir, "--train", finetune_set, "--out", out, "--params-json", json.dumps(params),
                 "--deepspeed", deepspeed_configs["zero2"], "--model-dtype", "float32")  # compared in float32 below
    assert result.returncode == 0, result.stderr
    steps = json.loads((out / "checkpoints.json").read_text())
    assert steps == checkpoint_steps(37, params) == {"step1": 1, "step2": 2, "step3": 3, "epoch1": 3}
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    batch = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)(**batch).logits
    outputs = {}
    for name in ("step1", "epoch1"):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), out / "checkpoints" / name)
        assert model.peft_config["default"].peft_type.value == method.replace("subspace", "tuning").upper()
        with torch.no_grad():
            outputs[name] = model.eval()(**batch).logits
    # Prompt tuning adds its virtual tokens to the sequence; prefix tuning only to the attention cache.
    assert outputs["epoch1"].shape[1] == plain.shape[1] + (4 if method == "prompt_tuning" else 0)
    assert (outputs["epoch1"] - outputs["step1"]).abs().max() > 1e-4  # training moved the prompt
    if method == "prefix_subspace":
        for name in steps:
            vertices = load_file(out / "checkpoints" / name / VERTICES_FILE)["vertices"]
            centre = load_file(out / "checkpoints" / name / "adapter_model.safetensors")["prompt_embeddings"]
            assert vertices.shape == (3, *centre.shape)
            torch.testing.assert_close(vertices.mean(0), centre)  # the adapter is the simplex centre
            assert mean_squared_cosine(vertices) < 0.05  # distinct vertices, kept apart by the penalty
        assert (out / "train_log.csv").read_text().splitlines()[0].endswith(",cos_penalty")
