"""The GPU tier (`pytest -m gpu`): the paths no CPU test reaches, run on a GPU on models built from a config with
random weights. Each compares with a reference and states its bound:

1. extraction in bf16 on the GPU against float32 on the CPU: same shapes and ids, every stored row's cosine
   similarity >= ROW_COSINE (median per layer >= MEDIAN_COSINE); a run SIGKILLed mid-way and resumed writes the
   same store, byte for byte, as an uninterrupted one;
2. the device-map and ZeRO-3 paths of the extraction on one GPU give the plain path's rows (cosine >= PATH_COSINE);
3. LoRA under DeepSpeed ZeRO-2 over NCCL: loss finite and falling; SIGKILLed and resumed gives the uninterrupted
   adapter, bit for bit under torch's deterministic algorithms (or, if the GPU is not deterministic, no further
   from it than a second uninterrupted run is); the prefix subspace trains under ZeRO-3;
4. the GPU kNN equals the CPU kNN: the same indices, distances within the kNN's own float64 guarantee;
and, on a GPU only: the letter loss adds no host sync to the forward pass, the weights load to the GPU without a host
copy, and the device map's reserve covers a 70B-wide forward pass.

REPGEOM_GPU_TIER_DEVICE=cpu runs it all on the CPU at tiny sizes (the dry run of benchmarks/gpu_check.sh);
REPGEOM_GPU_TIER_RECORD=FILE appends each test's measurements to FILE as JSON lines (the check's summary).
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gpu_tier import DETERMINISM, finetune_frame, llm_like_layer, on_gpu, read_group, row_cosines, store_files
from helpers import run_module, sigkill_after

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

# 1. bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 0.002). A hidden state's relative error from bf16 weights,
# activations and matmul outputs grows to about 1e-2 over a few blocks, and cosine = 1 - r^2/2 for a relative error
# r, so 0.999 allows r ~ 0.045 at the median and 0.99 allows r ~ 0.14 for any row: 5-10x the expected error, while a
# wrong row, a shifted position or a lost layer gives a cosine near 0.
ROW_COSINE, MEDIAN_COSINE = 0.99, 0.999
# 2. The same bf16 model on the same GPU; the paths differ only in how the weights are held (DeepSpeed's ZeRO-3
# linear computes input @ weight.T rather than F.linear): last-bit differences, r ~ 1e-2 at most.
PATH_COSINE = 0.999
# 4. neighbors.knn: every reported distance within 1e-7 relative of the float64 brute force (its _TRUSTED_REL_ERROR),
# so two devices' distances within twice that of each other.
KNN_DISTANCE_RTOL = 2e-7


def record(name: str, **values) -> None:
    """Append the test's measurements to REPGEOM_GPU_TIER_RECORD (JSON lines), if set."""
    path = os.environ.get("REPGEOM_GPU_TIER_RECORD")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"test": name, **values}, default=float) + "\n")


def device_env(device: torch.device) -> dict[str, str]:
    """The job's GPUs as the launcher says them: 1 on the GPU (checked against CUDA), 0 in the dry run."""
    return {"REPGEOM_JOB_GPUS": "1" if on_gpu(device) else "0"}


# --- 1, 2: extraction -----------------------------------------------------------------------------------------------

N_PROMPTS, CHUNK_ROWS = 48, 8  # 6 row chunks


def extract_args(model, prompts, out: Path, dtype: str, *extra):
    return ("--model", model, "--prompts", prompts, "--store", out / "store.zarr", "--group", "m/c",
            "--accuracy-out", out / "acc.parquet", "--chunk-rows", CHUNK_ROWS, "--max-batch-tokens", 2048,
            "--model-dtype", dtype, "--store-dtype", "float32", *extra)


def extract(out: Path, model, prompts, dtype: str, env: dict, *extra, **kwargs):
    out.mkdir(parents=True, exist_ok=True)
    return run_module("repgeom.extract", *extract_args(model, prompts, out, dtype, *extra), env_extra=env,
                      timeout=600, **kwargs)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory, make_prompts):
    path = tmp_path_factory.mktemp("prompts") / "prompts.parquet"
    make_prompts(N_PROMPTS).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def cpu_float32(tmp_path_factory, tier_model_dir, prompts):
    """The reference: float32 on the CPU (a job given no GPU)."""
    out = tmp_path_factory.mktemp("cpu_float32")
    result = extract(out, tier_model_dir, prompts, "float32", {"REPGEOM_JOB_GPUS": "0"})
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def device_bf16(tmp_path_factory, tier_model_dir, prompts, device):
    """bf16 on the tier's device, uninterrupted."""
    out = tmp_path_factory.mktemp("device_bf16")
    result = extract(out, tier_model_dir, prompts, "bfloat16", device_env(device))
    assert result.returncode == 0, result.stderr
    return out


def compare_rows(got: Path, expected: Path, bound: float, median_bound: float | None = None) -> list[dict]:
    """Same shapes and ids, and the cosine of every row; returns per-layer statistics."""
    got_layers, got_meta = read_group(got / "store.zarr")
    ref_layers, ref_meta = read_group(expected / "store.zarr")
    assert len(got_layers) == len(ref_layers)
    assert got_meta["question_id"].tolist() == ref_meta["question_id"].tolist()
    stats = []
    for layer, (a, b) in enumerate(zip(got_layers, ref_layers)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.isfinite(a).all()
        cosines = row_cosines(a, b)
        stats.append({"layer": layer, "min_cosine": float(cosines.min()), "median_cosine": float(np.median(cosines)),
                      "max_relative_difference": float(np.abs(a - b).max() / np.abs(b).max())})
        assert cosines.min() >= bound, stats[-1]
        if median_bound is not None:
            assert np.median(cosines) >= median_bound, stats[-1]
    return stats


def test_bf16_extraction_on_the_device_matches_float32_on_the_cpu(device_bf16, cpu_float32, device):
    stats = compare_rows(device_bf16, cpu_float32, ROW_COSINE, MEDIAN_COSINE)
    record("extraction_bf16_vs_cpu_float32", device=str(device), bound=ROW_COSINE, median_bound=MEDIAN_COSINE,
           worst_row_cosine=min(s["min_cosine"] for s in stats), layers=stats)


def test_killed_extraction_resumes_to_the_same_store(device_bf16, tier_model_dir, prompts, device, tmp_path):
    env = device_env(device)
    killed = extract(tmp_path, tier_model_dir, prompts, "bfloat16", {**env, **sigkill_after(2, "chunks")})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "acc.parquet").exists()
    resumed = extract(tmp_path, tier_model_dir, prompts, "bfloat16", env)
    assert resumed.returncode == 0, resumed.stderr
    assert "4 of 6 row chunks to compute (2 done before)" in resumed.stderr
    same = store_files(tmp_path / "store.zarr") == store_files(device_bf16 / "store.zarr")
    record("extraction_kill_resume", device=str(device), identical_store=same)
    assert same
    assert (tmp_path / "acc.parquet").read_bytes() == (device_bf16 / "acc.parquet").read_bytes()


@pytest.mark.parametrize("path", ["device_map", "zero3"])
def test_device_map_and_zero3_give_the_plain_rows(path, device_bf16, tier_model_dir, prompts, device, tmp_path):
    extra = ("--device-map", "auto") if path == "device_map" else ("--zero3", "zero3")
    result = extract(tmp_path, tier_model_dir, prompts, "bfloat16", device_env(device), *extra)
    assert result.returncode == 0, result.stderr
    stats = compare_rows(tmp_path, device_bf16, PATH_COSINE)
    record(f"extraction_{path}_vs_plain", device=str(device), bound=PATH_COSINE,
           worst_row_cosine=min(s["min_cosine"] for s in stats),
           max_relative_difference=max(s["max_relative_difference"] for s in stats))


# --- 3: LoRA under DeepSpeed ZeRO-2 ---------------------------------------------------------------------------------

# 37 rows, 16 per step: 6 steps over 2 epochs, saved after steps 1, 3 and 6; dropout on, so that a resume must restore
# the random state.
LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "lr": 0.01, "micro_batch": 4, "seed": 3, "epochs": 2,
        "n_checkpoints": 2}


def finetune(out: Path, model, train, params: dict, config: str, device, env: dict | None = None):
    """The stage's CLI in its own process, under torch's deterministic algorithms (tests/gpu/determinism)."""
    path = os.pathsep.join(filter(None, (str(DETERMINISM), os.environ.get("PYTHONPATH"))))
    env = {**device_env(device), **(env or {}), "PYTHONPATH": path}
    # bf16 on the GPU; float32 in the dry run (the same path; a CPU without bf16 units emulates it, slowly).
    dtype = "bfloat16" if on_gpu(device) else "float32"
    return run_module("repgeom.finetune", "--model", model, "--train", train, "--out", out, "--params-json",
                      json.dumps(params), "--deepspeed", config, "--model-dtype", dtype, env_extra=env, timeout=600)


def adapters(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {name: load_file(out / "checkpoints" / name / "adapter_model.safetensors")
            for name in json.loads((out / "checkpoints.json").read_text())}


def largest_difference(got: dict, expected: dict) -> float:
    assert got.keys() == expected.keys()
    worst = 0.0
    for name in expected:
        assert got[name].keys() == expected[name].keys()
        for key in expected[name]:
            worst = max(worst, float((got[name][key].float() - expected[name][key].float()).abs().max()))
    return worst


def read_log(out: Path) -> list[dict]:
    with open(out / "train_log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "finetune_set.parquet"
    finetune_frame(37).to_parquet(path)  # batches of 16: each epoch ends on a batch of 5
    return path


@pytest.fixture(scope="module")
def lora_uninterrupted(tmp_path_factory, tier_model_dir, train_set, device):
    out = tmp_path_factory.mktemp("lora") / "out"
    result = finetune(out, tier_model_dir, train_set, LORA, "zero2", device)
    assert result.returncode == 0, result.stderr
    if on_gpu(device):
        assert "on cuda:0" in result.stderr, result.stderr[-2000:]
    return out


def test_lora_loss_is_finite_and_falls(lora_uninterrupted, device):
    losses = [float(row["loss"]) for row in read_log(lora_uninterrupted)]
    steps = [float(row["step_time_s"]) for row in read_log(lora_uninterrupted)]
    record("lora_zero2_loss", device=str(device), losses=losses, median_step_s=float(np.median(steps)))
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


def test_lora_killed_and_resumed_gives_the_uninterrupted_adapter(lora_uninterrupted, tier_model_dir, train_set,
                                                                  device, tmp_path):
    out = tmp_path / "out"
    killed = finetune(out, tier_model_dir, train_set, LORA, "zero2", device, sigkill_after(5, "steps"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = finetune(out, tier_model_dir, train_set, LORA, "zero2", device)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after step 3" in resumed.stderr
    difference = largest_difference(adapters(out), adapters(lora_uninterrupted))
    noise = None
    if difference > 0:
        # Not bit for bit: the bound is the GPU's own run-to-run spread, from a second uninterrupted run.
        again = tmp_path / "again"
        assert finetune(again, tier_model_dir, train_set, LORA, "zero2", device).returncode == 0
        noise = largest_difference(adapters(again), adapters(lora_uninterrupted))
    record("lora_zero2_kill_resume", device=str(device), max_abs_difference=difference, run_to_run=noise)
    assert difference == 0 or difference <= noise, (difference, noise)


def test_prefix_subspace_trains_under_zero3(tier_model_dir, train_set, device, tmp_path):
    """Its vertex table's indices follow the table to the GPU (ZeRO-3 moves parameters, not buffers)."""
    params = {"method": "prefix_subspace", "num_virtual_tokens": 4, "subspace_vertices": 3, "lr": 0.01,
              "epochs": 1, "micro_batch": 4, "seed": 0}
    result = finetune(tmp_path / "out", tier_model_dir, train_set, params, "zero3", device)
    assert result.returncode == 0, result.stderr
    losses = [float(row["loss"]) for row in read_log(tmp_path / "out")]
    record("prefix_subspace_zero3", device=str(device), losses=losses)
    assert losses and all(math.isfinite(loss) for loss in losses)


# --- 4: kNN ---------------------------------------------------------------------------------------------------------

def test_gpu_knn_equals_cpu_knn(device):
    from repgeom.analysis.neighbors import knn

    n, d, maxk = (9181, 4096, 1000) if on_gpu(device) else (600, 64, 30)  # the paper configs' maxk
    X = llm_like_layer(n, d)
    torch.set_num_threads(os.cpu_count() or 1)
    import time

    start = time.perf_counter()
    cpu_dist, cpu_ind = knn(X, maxk, device="cpu")
    cpu_s = time.perf_counter() - start
    knn(X[:2000], maxk, device=device)  # warm-up: kernels, cuBLAS handles
    start = time.perf_counter()
    dist, ind = knn(X, maxk, device=device)
    device_s = time.perf_counter() - start
    same_indices = bool(np.array_equal(ind, cpu_ind))
    nonzero = cpu_dist > 0
    relative = float(np.max(np.abs(dist[nonzero] - cpu_dist[nonzero]) / cpu_dist[nonzero]))
    record("knn_gpu_vs_cpu", device=str(device), n=n, d=d, maxk=maxk, same_indices=same_indices,
           differing_indices=int((ind != cpu_ind).sum()), max_relative_distance_difference=relative, cpu_s=cpu_s,
           device_s=device_s)
    assert same_indices
    assert relative <= KNN_DISTANCE_RTOL and np.array_equal(dist[~nonzero], cpu_dist[~nonzero])


# --- GPU only: host syncs, host copies, the device map's reserve ----------------------------------------------------

def cuda_only(device):
    if not on_gpu(device):
        pytest.skip("measures CUDA itself (synchronisations, device memory)")


def count_syncs(fn) -> tuple[object, int]:
    """(fn(), how many times it made the host wait for the GPU), by torch's sync debug mode."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message) for w in caught)


def test_letter_loss_adds_no_host_sync(device, tier_model_dir, train_set):
    cuda_only(device)
    from transformers import AutoModelForCausalLM

    from repgeom.finetune.data import collate, encode_finetune_set, letter_losses
    from repgeom.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tier_model_dir))
    batch = collate(encode_finetune_set(train_set, tokenizer, None), np.arange(8), tokenizer.pad_token_id)
    batch = {key: value.to(device) for key, value in batch.items()}
    model = AutoModelForCausalLM.from_pretrained(tier_model_dir, dtype=torch.bfloat16).to(device).eval()
    with torch.no_grad():
        letter_losses(model, batch, 0)  # warm-up
        _, forward = count_syncs(lambda: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                               logits_to_keep=batch["keep_positions"]).logits)
        _, collated = count_syncs(lambda: letter_losses(model, batch, 0))
        labels_only = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        _, from_labels = count_syncs(lambda: letter_losses(model, labels_only, 0))
    record("letter_loss_syncs", forward=forward, letter_loss=collated, letter_loss_from_labels=from_labels)
    assert collated <= forward < from_labels


def test_weights_load_to_the_gpu_without_a_host_copy(device, tmp_path):
    """Loaded on the host then moved, each data-parallel rank held the whole model in host memory."""
    cuda_only(device)
    from gpu_tier import peak_anonymous_memory
    from transformers import AutoModelForCausalLM, LlamaConfig

    from repgeom.models.loading import load_model

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=4)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(tmp_path / "model")
    del model
    torch.cuda.empty_cache()
    _, before = peak_anonymous_memory(lambda: None)
    loaded, direct = peak_anonymous_memory(lambda: load_model(str(tmp_path / "model"), device=device,
                                                              dtype="bfloat16"))
    assert next(loaded.parameters()).device == device
    del loaded
    torch.cuda.empty_cache()
    _, via_host = peak_anonymous_memory(
        lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.bfloat16).to(device))
    record("host_peak_loading", model_bytes=size, direct_extra_bytes=direct - before,
           via_host_extra_bytes=via_host - before)
    assert direct - before < 0.5 * size


LLAMA3_70B_WIDTH = dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                        num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                        tie_word_embeddings=False)


def test_device_map_reserve_covers_a_70b_wide_forward_pass(device, tmp_path):
    """The 70B layout's per-GPU peak: two blocks of the 70B width with its embedding and LM head, through the
    extraction's own forward pass (last-token rows, the logit lens) at the default GPU batch: the memory it takes
    beside the weights stays under what `device_map_max_memory` leaves free for it."""
    cuda_only(device)
    import importlib.util

    from transformers import AutoModelForCausalLM, LlamaConfig

    from repgeom.extract.job import ExtractionSettings
    from repgeom.models.loading import DEFAULT_RESERVED_BATCH_TOKENS, GPU_OVERHEAD_BYTES, forward_reserve_bytes

    spec = importlib.util.spec_from_file_location(
        "extract_throughput", Path(__file__).resolve().parents[2] / "benchmarks" / "extract_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = LlamaConfig(**LLAMA3_70B_WIDTH, num_hidden_layers=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    weights = torch.cuda.memory_allocated(device)
    tokens = DEFAULT_RESERVED_BATCH_TOKENS
    token_lists = bench.synthetic_prompts(256, 128, 40, 48, 400, vocab=config.vocab_size, seed=0)
    settings = ExtractionSettings(store_dtype="bfloat16", max_batch_tokens=tokens, chunk_rows=128,
                                  min_shared_prefix=0)
    rows = max(len(batch) for batch in bench.chunk_batches(token_lists, settings.chunk_rows, tokens))
    run, _ = bench.run_extractor(model, token_lists, device, tmp_path, settings)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    used = torch.cuda.max_memory_allocated(device) - weights
    reserve = forward_reserve_bytes(config, tokens, rows=rows) - GPU_OVERHEAD_BYTES
    record("device_map_reserve_70b_width", batch_tokens=tokens, rows=rows, peak_beside_weights=used,
           reserve_without_overhead=reserve, fraction=used / reserve)
    assert used <= reserve
