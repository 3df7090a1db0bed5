"""Tiny models of several architectures, adapters and prompt sets for the extraction tests, all saved with
`save_pretrained` and loaded by path as the workflow does."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

SUBJECTS = ["high_school_biology", "abstract_algebra", "world_religions"]


def prompt_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """MMLU-shaped prompts with 0-3 shots, so lengths vary and batches need padding."""
    rows = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        n_shots = (i * 7 + seed) % 4
        shots = "".join(f"What is {j} times {i}?\nA. {j}\nB. {i * j}\nC. {i}\nD. {j + i}\nAnswer: B\n\n"
                        for j in range(n_shots))
        query = f"What is {i} plus {i % 5}?\nA. {i}\nB. {i + i % 5}\nC. {i + 1}\nD. {2 * i}\nAnswer:"
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        rows.append({"question_id": f"{subject}-{i}", "subject": subject, "gold": "ABCD"[(i * 3 + seed) % 4],
                     "n_shots": n_shots, "prompt": header + shots + query, "n_tokens": 0, "truncated": False})
    return pd.DataFrame(rows)


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.parquet"
    prompt_frame(24).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def make_prompts():
    return prompt_frame


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


def run_cli(*args, env_extra=None, launcher=(), timeout=240):
    """Run `python -m repgeom.extract` in a subprocess (optionally under a launcher such as torchrun)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           **(env_extra or {})}
    command = [*launcher, "-m", "repgeom.extract"] if launcher else [sys.executable, "-m", "repgeom.extract"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


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


@pytest.fixture(scope="session")
def cli():
    return run_cli


@pytest.fixture(scope="session")
def reference():
    return forward_reference


def extract_group(model_dir, prompts_file, out_dir, adapter=None, **settings):
    """Extract in this process into OUT_DIR/store.zarr group m/c: (store, [N, L+1, D] layers, accuracy frame)."""
    import numpy as np

    from repgeom.extract.run import ExtractionJob, ExtractionSettings
    from repgeom.store import n_layers, read_layer

    store, accuracy = out_dir / "store.zarr", out_dir / "acc.parquet"
    settings.setdefault("max_batch_tokens", 300)
    settings.setdefault("model_dtype", "float32")  # the references are float32 forward passes
    settings.setdefault("chunk_rows", 10)
    ExtractionJob(str(model_dir), prompts_file, store, "m/c", accuracy, ExtractionSettings(**settings),
                  adapter=str(adapter) if adapter else None).run()
    stored = np.stack([read_layer(store, "m/c", layer)[0] for layer in range(n_layers(store, "m/c"))], axis=1)
    return store, stored, pd.read_parquet(accuracy)


@pytest.fixture(scope="session")
def extract():
    return extract_group

