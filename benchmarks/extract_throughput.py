"""Extraction throughput in tokens/s, three ways on the same model and prompts in one run (docs/design.md §11).

  python benchmarks/extract_throughput.py               # GPU: random Llama-3-8B shape in bf16; CPU: a small Llama
  python benchmarks/extract_throughput.py --prompts 48  # quicker
  python benchmarks/extract_throughput.py --lengths reference-mix --naive-prompts 0   # as benchmarks/gpu_check.sh
  python benchmarks/extract_throughput.py --shape smollm2 --dtype bfloat16   # the CPU constant of `repgeom plan`

(a) extractor: the production path (`repgeom.extract.forward.extract_rank_share`: hooks that keep only last-token rows,
    length-sorted batches, asynchronous copies to pinned memory, a writer thread) into a temporary zarr store,
    timed until every chunk is durably written.
(b) naive: batch 1, `output_hidden_states=True`, every layer's [1, S, D] copied to the CPU (the reference's way).
(c) plain: the batches of (a), a forward pass with logits for the last position only; nothing kept.
Targets: (a) >= 85% of (c), and >= 10x (b). Also the fraction of the roofline: tokens/s x 2 x P FLOP against the
matmul rate measured in the same run (a square product of MATMUL_SIDE in the model's dtype: on a GPU the dense bf16
rate the card gives now) and, on a GPU, against its datasheet peak; P = parameters of the blocks and final norm (the
embedding is a lookup, and the LM head runs on one token per prompt). Target on a GPU: (a) >= 60% of the measured
roofline. The model is built from its config: no download.

Prompt lengths: `five-shot` (the default) spreads them like 5-shot MMLU; `reference-mix` mixes the reference's
conditions, 0-, 1-, 2- and 5-shot in equal parts (config/paper_llama3_8b.yaml's shots), each a header and k + 1
question blocks of MMLU-like length (mean 110 tokens, 40-600).
Prints a table and writes benchmarks/results/extract_throughput.json, with what benchmarks/plan_constants.py needs to
turn the extractor's tokens/s into FLOP/s: the model's config, the dtype, each prompt's length, the commit.
The latest numbers, with the machine and commit: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from repgeom.extract.batching import length_batches, pad_batch, position_ids
from repgeom.distributed import RankInfo
from repgeom.extract.hooks import find_hook_points
from repgeom.extract.model_setup import ExtractionModel
from repgeom.extract.forward import DEFAULT_BATCH_TOKENS, extract_rank_share
from repgeom.extract.job import ExtractionSettings
from repgeom.provenance.records import short_commit
from repgeom.store import read_layer
from repgeom.store.writing import GroupSpec, open_group_for_writing

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                 tie_word_embeddings=False)
SMALL_LLAMA = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False)
# The CPU dry run of benchmarks/gpu_check.sh: the same code, in seconds.
TINY_LLAMA = dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False)
# The default run's model (config/config.yaml), for the CPU constants of `repgeom plan`.
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                    tie_word_embeddings=True)
SHAPES = {"8b": (LLAMA3_8B, "random Llama-3-8B shape"), "small": (SMALL_LLAMA, "small random Llama"),
          "tiny": (TINY_LLAMA, "tiny random Llama"), "smollm2": (SMOLLM2_135M, "random SmolLM2-135M shape")}
MATMUL_SIDE = {"cuda": 8192, "cpu": 1024}
# Dense bf16 tensor-core peaks (FLOP/s), by device name.
BF16_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
PAD_ID = 0
LETTER_IDS = [32, 33, 34, 35]


def default_shape(device: torch.device) -> str:
    return "8b" if device.type == "cuda" else "small"


def build_model(device: torch.device, shape: str | None = None,
                dtype_name: str | None = None) -> tuple[torch.nn.Module, torch.dtype, str]:
    """The random model of `shape` in `dtype_name` (default: bf16 on a GPU, float32 on the CPU)."""
    default = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, dtype_name) if dtype_name else default
    layout, name = SHAPES[shape or default_shape(device)]
    config = LlamaConfig(**layout)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return model, dtype, name


def reference_mix_prompts(n: int, vocab: int, seed: int, scale: float = 1.0) -> list[list[int]]:
    """Token ids with the lengths of the reference's conditions mixed: 0-, 1-, 2- and 5-shot in equal parts, each a
    header of 15 tokens and k + 1 question blocks of lognormal length (mean 110, sd 50, clipped to 40-600), times
    `scale` (the dry run's shorter prompts)."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(np.log(1 + (50 / 110) ** 2))
    lengths = []
    for i in range(n):
        shots = (0, 1, 2, 5)[i % 4]
        blocks = np.clip(rng.lognormal(np.log(110) - sigma ** 2 / 2, sigma, shots + 1), 40, 600)
        lengths.append(max(4, int(scale * (15 + blocks.sum()))))
    order = rng.permutation(n)  # conditions interleaved, as a store's rows are not
    return [rng.integers(100, vocab, lengths[i]).tolist() for i in order]


def matmul_rate(device: torch.device, dtype: torch.dtype, side: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of a square matrix product in `dtype` on `device` (2 side^3 FLOP each), on random data, the median of
    `repeats` after a warm-up: the roofline's rate, measured in the run."""
    side = side or MATMUL_SIDE[device.type]
    a, b = (torch.randn(side, side, device=device, dtype=dtype) for _ in range(2))
    times = []
    for i in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * side ** 3 / float(np.median(times))


def synthetic_prompts(n: int, mean: int, sd: int, low: int, high: int, vocab: int, seed: int) -> list[list[int]]:
    """Token ids with lengths spread like k-shot MMLU prompts (BOS-free random ids: throughput only)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.normal(mean, sd, n), low, high).astype(int)
    return [rng.integers(100, vocab, length).tolist() for length in lengths]


def chunk_batches(token_lists, chunk_rows: int, max_batch_tokens: int) -> list[list[list[int]]]:
    """The batches the extractor runs: length-sorted within each row chunk."""
    lengths = np.array([len(ids) for ids in token_lists])
    batches = []
    for start in range(0, len(token_lists), chunk_rows):
        for rows in length_batches(lengths[start:start + chunk_rows], max_batch_tokens):
            batches.append([token_lists[start + r] for r in rows])
    return batches


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_tokens_per_s(fn, n_tokens: int, device) -> tuple[float, float]:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    return n_tokens / seconds, seconds


@torch.no_grad()
def plain_forward(model, batches, device):
    for batch in batches:
        input_ids, mask = (t.to(device) for t in pad_batch(batch, PAD_ID))
        model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False,
              logits_to_keep=1)


@torch.no_grad()
def naive_loop(model, token_lists, device) -> np.ndarray:
    """The reference's way; returns the final hidden state of each prompt's last token, for a sanity check."""
    last = []
    for ids in token_lists:
        out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True, use_cache=False)
        on_host = [h.to("cpu") for h in out.hidden_states]
        last.append(on_host[-1][0, -1].float().numpy())
    return np.stack(last)


def run_extractor(model, token_lists, device, store_dir: Path, settings: ExtractionSettings):
    loaded = ExtractionModel(model=model, input_device=device, prompt_learning=False)
    points = find_hook_points(model, settings.hook, torch.tensor([token_lists[0][:16]], device=device))
    n = len(token_lists)
    prompts = pd.DataFrame({"question_id": [f"q{i}" for i in range(n)], "subject": ["s"] * n, "gold": ["A"] * n})
    spec = GroupSpec(identity={"store_dtype": settings.store_dtype}, layer_names=[p.name for p in points],
                     hidden_size=model.config.hidden_size, chunk_rows=settings.chunk_rows, prompts=prompts,
                     letter_lens=True)  # as the stage keeps it
    store = store_dir / "benchmark.zarr"
    group = open_group_for_writing(store, "bench/run", spec)

    def extract():
        extract_rank_share(loaded, points, token_lists, group, settings, PAD_ID, LETTER_IDS, RankInfo(0, 1, 0),
                           lockstep=False, label="benchmark")
        group.mark_complete({})

    return extract, store


def block_parameters(model) -> int:
    skip = {id(p) for p in model.get_input_embeddings().parameters()}
    skip |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def bf16_peak(device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int, help="prompts in the run (default 1024 GPU, 64 CPU)")
    parser.add_argument("--naive-prompts", type=int, help="prompts of the naive loop, a subset (default 128 GPU, 24 CPU)")
    parser.add_argument("--max-batch-tokens", type=int, help="default: the extractor's default for the device")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU, if not in the built-in table")
    parser.add_argument("--shape", choices=list(SHAPES), help="model shape (default: 8b on a GPU, small on the CPU)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                        help="the model's dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--lengths", choices=("five-shot", "reference-mix"), default="five-shot",
                        help="prompt lengths: 5-shot-like (default) or the reference's 0/1/2/5-shot mix")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "extract_throughput.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    shape_name = args.shape or default_shape(device)
    model, dtype, model_name = build_model(device, shape_name, args.dtype)
    n_prompts = args.prompts or (1024 if on_gpu else 64)
    tiny = args.shape == "tiny"
    if args.lengths == "reference-mix":
        token_lists = reference_mix_prompts(n_prompts, model.config.vocab_size, seed=0,
                                            scale=1.0 if on_gpu and not tiny else 0.25)
    else:
        shape = (700, 250, 150, 2000) if on_gpu else (200, 80, 50, 400)  # mean, sd, min, max tokens (5-shot-like)
        token_lists = synthetic_prompts(n_prompts, *shape, vocab=model.config.vocab_size, seed=0)
    n_naive = min(n_prompts, (128 if on_gpu else 24) if args.naive_prompts is None else args.naive_prompts)
    settings = ExtractionSettings(store_dtype="bfloat16" if on_gpu else "float32",
                                  max_batch_tokens=args.max_batch_tokens or DEFAULT_BATCH_TOKENS[device.type],
                                  chunk_rows=-(-n_prompts // 4))  # several chunks, so writing overlaps computing
    batches = chunk_batches(token_lists, settings.chunk_rows, settings.max_batch_tokens)
    n_tokens = sum(len(ids) for ids in token_lists)
    n_naive_tokens = sum(len(ids) for ids in token_lists[:n_naive])

    plain_forward(model, batches[:1], device)  # warm-up: kernels, allocator
    with tempfile.TemporaryDirectory() as tmp:
        extract, store = run_extractor(model, token_lists, device, Path(tmp), settings)
        results = {"extractor": timed_tokens_per_s(extract, n_tokens, device)}
        results["plain forward"] = timed_tokens_per_s(lambda: plain_forward(model, batches, device), n_tokens, device)
        naive_last = []
        if n_naive:
            results["naive loop"] = timed_tokens_per_s(
                lambda: naive_last.append(naive_loop(model, token_lists[:n_naive], device)), n_naive_tokens, device)
        stored_last = read_layer(store, "bench/run", -1)[0][:n_naive]
    agreement = (float(np.abs(stored_last - naive_last[0]).max() / np.abs(naive_last[0]).max()) if n_naive
                 else None)
    rate = matmul_rate(device, dtype)

    extractor, plain = (results[k][0] for k in ("extractor", "plain forward"))
    naive = results["naive loop"][0] if n_naive else None
    flop_per_token = 2 * block_parameters(model)
    report = {
        "device": torch.cuda.get_device_name(device) if on_gpu else f"CPU ({platform.processor() or 'unknown'}, "
                                                                     f"{torch.get_num_threads()} threads)",
        "threads": torch.get_num_threads(), "commit": short_commit(),
        "command": shlex.join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
        "model": model_name, "shape": shape_name, "config": SHAPES[shape_name][0],
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "block_parameters": block_parameters(model), "prompts": n_prompts, "tokens": n_tokens,
        "naive_prompts": n_naive, "max_batch_tokens": settings.max_batch_tokens, "chunk_rows": settings.chunk_rows,
        "tokens_per_s": {k: v[0] for k, v in results.items()}, "seconds": {k: v[1] for k, v in results.items()},
        "production": {"path": "extractor", "tokens": n_tokens, "seconds": results["extractor"][1]},
        "lengths": args.lengths, "prompt_lengths": [len(ids) for ids in token_lists],
        "median_prompt_tokens": float(np.median([len(ids) for ids in token_lists])),
        "extractor_vs_plain": extractor / plain, "extractor_vs_naive": extractor / naive if naive else None,
        "matmul_rate_flops": rate, "matmul_side": MATMUL_SIDE[device.type],
        "measured_roofline_fraction": {k: v[0] * flop_per_token / rate for k, v in results.items()},
        "targets_met": {"extractor >= 0.85 plain": extractor >= 0.85 * plain,
                        "extractor >= 0.60 measured roofline": extractor * flop_per_token >= 0.60 * rate},
        "last_layer_max_relative_difference_vs_naive": agreement,
    }
    if naive:
        report["targets_met"]["extractor >= 10x naive"] = extractor >= 10 * naive
    if on_gpu and (peak := bf16_peak(device, args.peak_tflops)):
        report["bf16_peak_flops"] = peak
        report["roofline_fraction"] = {k: v[0] * flop_per_token / peak for k, v in results.items()}

    print(f"{report['model']} ({report['dtype']}) on {report['device']}: {n_prompts} prompts, {n_tokens} tokens")
    print(f"  matmul {MATMUL_SIDE[device.type]}^3 in {dtype}: {rate / 1e12:.1f} TFLOP/s (measured; the roofline's rate)")
    for name, (tokens_per_s, seconds) in results.items():
        roofline = report.get("roofline_fraction", {}).get(name)
        print(f"  {name:14s} {tokens_per_s:12,.0f} tokens/s  {seconds:8.2f} s"
              f"  {100 * report['measured_roofline_fraction'][name]:5.1f}% of the measured roofline"
              + (f", {100 * roofline:5.1f}% of the datasheet's" if roofline is not None else ""))
    print(f"  extractor / plain forward = {report['extractor_vs_plain']:.2f} (target >= 0.85)"
          + (f"; extractor / naive loop = {report['extractor_vs_naive']:.1f}x (target >= 10x)" if naive else ""))
    if agreement is not None:
        print(f"  last layer vs naive loop: max relative difference {agreement:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
