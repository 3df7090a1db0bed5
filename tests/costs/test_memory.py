"""The memory model against the peak RSS of real runs: fine-tuning and extraction, in subprocesses, on a model of
SmolLM2-135M's width (6 blocks, random weights) with prompts of 250 and 1,000 tokens."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from transformers import AutoConfig

from repgeom.costs.architecture import Architecture
from repgeom.costs.memory import extraction_peak_mb, pass_tokens, training_peak_mb

TOLERANCE = 0.3  # relative, of the measured peak
# One optimizer step of four rows in one forward pass (the budget takes them all), float32, LoRA rank 8.
PARAMS = {"lora_r": 8, "lora_alpha": 16, "epochs": 1, "effective_batch": 4, "micro_batch": 4,
          "max_batch_tokens": 4096, "n_checkpoints": 1}
# The peak resident memory of the process that ran the module: its own address space's high-water mark (VmHWM).
# Not getrusage's ru_maxrss, which Linux carries across execve: after a vfork from pytest it reports pytest's size.
PEAK_RSS = ("import runpy, sys\n"
            "sys.argv = sys.argv[1:]\n"
            "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as stop:\n    assert not stop.code, stop.code\n"
            "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
            "print('PEAK_MB', int(hwm.split()[1]) / 1024)\n")


def peak_rss_mb(module: str, *args) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, module, *map(str, args)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.rsplit("PEAK_MB", 1)[1])


@pytest.fixture(scope="module")
def smol_width_dir(tmp_path_factory, tiny_tokenizer):
    from helpers import saved_llama

    return saved_llama(tmp_path_factory.mktemp("smol_width"), tiny_tokenizer, hidden_size=576, num_layers=6,
                       num_heads=9, num_kv_heads=3, intermediate_size=1536, max_position_embeddings=2048)


def long_question(tokenizer, tokens: int) -> str:
    """A question whose prompt (with choices and `Answer:`) is about `tokens` tokens."""
    words = " ".join(f"cell{i % 50}" for i in range(tokens))
    ids = tokenizer(words, add_special_tokens=False)["input_ids"][: tokens - 20]
    return tokenizer.decode(ids)


def rows_frame(tokenizer, longest: int) -> pd.DataFrame:
    """Four fine-tuning rows (and prompts), the first about `longest` tokens, the others short."""
    rows = []
    for i in range(4):
        question = long_question(tokenizer, longest) if i == 0 else f"What is {i} plus {i}?"
        prompt = f"{question}\nA. {i}\nB. {2 * i}\nC. {i + 1}\nD. {3 * i}\nAnswer:"
        gold = "ABCD"[i]
        rows.append({"question_id": f"biology-{i}", "subject": "biology", "gold": gold, "split": "dev",
                     "n_shots": 0, "prompt": prompt, "text": f"{prompt} {gold}", "n_tokens": 0, "truncated": False})
    return pd.DataFrame(rows)


def measured_and_estimated(kind: str, model_dir, tmp_path, longest: int) -> tuple[float, float, int]:
    from repgeom.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    frame = rows_frame(tokenizer, longest)
    data = tmp_path / f"{kind}{longest}.parquet"
    frame.to_parquet(data)
    row_tokens = max(len(ids) for ids in tokenizer(frame["text"].tolist())["input_ids"])
    arch = Architecture.from_hf_config(AutoConfig.from_pretrained(model_dir))
    if kind == "training":
        measured = peak_rss_mb("repgeom.finetune", "--model", model_dir, "--train", data, "--out",
                               tmp_path / f"ft{longest}", "--params-json", json.dumps(PARAMS), "--deepspeed",
                               "zero2", "--model-dtype", "float32")
        estimate = training_peak_mb(arch, dtype_bytes=4, micro_batch=4, max_batch_tokens=PARAMS["max_batch_tokens"],
                                    longest_row=row_tokens, lora_rank=PARAMS["lora_r"])
    else:
        measured = peak_rss_mb("repgeom.extract", "--model", model_dir, "--prompts", data, "--store",
                               tmp_path / f"store{longest}.zarr", "--group", "m/c", "--accuracy-out",
                               tmp_path / f"acc{longest}.parquet", "--max-batch-tokens", 4096, "--model-dtype",
                               "float32")
        estimate = extraction_peak_mb(arch, dtype_bytes=4, max_batch_tokens=4096, longest_prompt=row_tokens)
    return measured, estimate.host_mb, row_tokens


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["training", "extraction"])
def test_estimate_is_near_the_measured_peak_and_grows_with_the_longest_row(smol_width_dir, tmp_path, kind):
    short = measured_and_estimated(kind, smol_width_dir, tmp_path, 250)
    long = measured_and_estimated(kind, smol_width_dir, tmp_path, 1000)
    print(kind, "measured, estimated, tokens:", short, long)
    assert long[2] >= 1000
    for measured, estimate, _ in (short, long):
        assert abs(estimate - measured) <= TOLERANCE * measured
    # The growth from 250 to 1,000 tokens, within the same tolerance of the larger peak (the extraction's grows by
    # 60-230 MB from run to run: allocator noise of the size of its attention term).
    assert abs((long[1] - short[1]) - (long[0] - short[0])) <= TOLERANCE * long[0]


def test_a_pass_is_as_many_longest_rows_as_the_budget_takes():
    assert pass_tokens(1024, 1000, 4) == 1000
    assert pass_tokens(1024, 250, 4) == 1000
    assert pass_tokens(1024, 2000, 4) == 2000  # a row over the budget is its own pass
    assert pass_tokens(4096, 100, 4) == 400  # no more rows than the micro-batch


def test_training_memory_follows_the_pass_not_the_micro_batch():
    arch = Architecture(n_layers=30, hidden_size=576, intermediate_size=1536, n_heads=9, n_kv_heads=3,
                        vocab_size=49152, tied_embeddings=True)
    common = dict(dtype_bytes=4, micro_batch=4, longest_row=1017, lora_rank=8)
    one_pass = training_peak_mb(arch, max_batch_tokens=4 * 1017, **common).host_mb
    split = training_peak_mb(arch, max_batch_tokens=1024, **common).host_mb
    assert one_pass > 3 * (split - 1000)
    sharded = training_peak_mb(arch, max_batch_tokens=1024, world_size=8, zero_stage=3, on_gpu=True, **common)
    assert sharded.gpu_mb < training_peak_mb(arch, max_batch_tokens=1024, on_gpu=True, **common).gpu_mb
    with pytest.raises(ValueError, match="parallel must be"):
        extraction_peak_mb(arch, dtype_bytes=2, max_batch_tokens=1024, longest_prompt=100, parallel="pipeline")
