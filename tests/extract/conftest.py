"""Tiny models of several architectures and adapters for the extraction tests, all saved with `save_pretrained`
and loaded by path as the workflow does, and the CLI run in a subprocess."""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_module


def _save(model, tokenizer, tmp_path_factory, name):
    out = tmp_path_factory.mktemp(name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _build(config_class, model_class, tokenizer, **kwargs):
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kwargs)
    torch.manual_seed(1)
    return model_class(config)


ARCHITECTURES = {
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"use_parallel_residual": True}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"num_key_value_heads": 1, "head_dim": 8}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 2}),
}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tiny_tokenizer, tiny_llama_dir):
    """name -> folder, for Llama (the shared fixture) and tiny GPT-NeoX, Qwen2, Gemma and Mistral models."""
    import transformers

    dirs = {"llama": tiny_llama_dir}
    for name, (config_name, model_name, extra) in ARCHITECTURES.items():
        model = _build(getattr(transformers, config_name), getattr(transformers, model_name), tiny_tokenizer, **extra)
        dirs[name] = _save(model, tiny_tokenizer, tmp_path_factory, name)
    return dirs


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory, tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    # Random A and B (the default B = 0 would leave the model unchanged).
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora")
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def prompt_tuning_dir(tmp_path_factory, tiny_llama_dir):
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    out = tmp_path_factory.mktemp("prompt_tuning")
    get_peft_model(base, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5)).save_pretrained(out)
    return out


def forward_reference(model, tokenizer, prompts: pd.DataFrame, hook: str, max_length: int = 512):
    """Per prompt, unbatched and unpadded: ([L+1, S, D] full-sequence representations, [4] letter log-probabilities).

    `model` may be a peft model: prompt tuning then puts its virtual tokens first in S."""
    from repgeom.extract.batching import encode_prompts
    from repgeom.models.loading import answer_letter_token_ids

    letters = list(answer_letter_token_ids(tokenizer).values())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    norms = [block.input_layernorm for block in base.base_model.layers]
    results = []
    for ids in encode_prompts(tokenizer, prompts["prompt"].tolist(), max_length):
        seen = []
        handles = [norm.register_forward_hook(lambda m, i, out: seen.append(out[0])) for norm in norms]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        for handle in handles:
            handle.remove()
        hidden = [h[0] for h in out.hidden_states]
        rows = hidden if hook == "residual" else seen + hidden[-1:]
        results.append((torch.stack(rows).numpy(), torch.log_softmax(out.logits[0, -1], -1)[letters].numpy()))
    return results


def lens_reference(model, tokenizer, prompts: pd.DataFrame, max_length: int = 512) -> np.ndarray:
    """The logit lens on the answer letters by hand, per prompt, unbatched and unpadded: [N, L+1, 4], for i < L the
    model's own final norm and LM head applied to `output_hidden_states[i]` (the residual stream entering block i) at
    the last token, log-softmax over the vocabulary in float32; layer L the model's prediction."""
    from repgeom.extract.batching import encode_prompts
    from repgeom.models.loading import answer_letter_token_ids

    letters = list(answer_letter_token_ids(tokenizer).values())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.base_model  # LlamaModel, GPTNeoXModel, ...
    norm = inner.norm if hasattr(inner, "norm") else inner.final_layer_norm
    head = base.get_output_embeddings()
    lens = []
    for ids in encode_prompts(tokenizer, prompts["prompt"].tolist(), max_length):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            # hidden_states: the L blocks' inputs, then the final norm's output
            logits = torch.cat([*(head(norm(hidden[:, -1])) for hidden in out.hidden_states[:-1]), out.logits[:, -1]])
        lens.append(torch.log_softmax(logits.float(), dim=-1)[:, letters].numpy())
    return np.stack(lens)


@pytest.fixture(scope="session")
def lens_by_hand():
    return lens_reference


@pytest.fixture(scope="session")
def cli():
    """`cli(*args, env_extra=None, launcher=())`: `python -m repgeom.extract ARGS` in a subprocess."""
    return functools.partial(run_module, "repgeom.extract", timeout=240)


@pytest.fixture(scope="session")
def reference():
    return forward_reference

