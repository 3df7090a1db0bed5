"""Process-level behaviour: resuming after a real SIGKILL, and two ranks under torchrun (data parallel over gloo,
and DeepSpeed ZeRO-3 on the CPU) giving the one-rank result."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TWO_RANKS, sigkill_after

from repgeom.store import StoreError, n_layers, read_layer

pytestmark = pytest.mark.slow


def cli_args(model, prompts, out: Path, *extra):
    return ("--model", model, "--prompts", prompts, "--store", out / "store.zarr", "--group", "m/c",
            "--accuracy-out", out / "acc.parquet", "--chunk-rows", "5", "--max-batch-tokens", "200",
            "--token-sample-layers", "1", "--token-sample-size", "40", "--model-dtype", "float32", *extra)


def files_of(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def all_layers(store):
    return np.stack([read_layer(store, "m/c", layer)[0] for layer in range(n_layers(store, "m/c"))], axis=1)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, tiny_llama_dir, make_prompts, cli):
    """The reference: one uninterrupted single-process run of the CLI."""
    out = tmp_path_factory.mktemp("one_rank")
    prompts = out / "prompts.parquet"
    make_prompts(24).to_parquet(prompts)
    result = cli(*cli_args(tiny_llama_dir, prompts, out))
    assert result.returncode == 0, result.stderr
    return prompts, out


def test_resume_after_sigkill_is_bitwise_identical(one_rank, tiny_llama_dir, tmp_path, cli):
    prompts, reference = one_rank
    killed = cli(*cli_args(tiny_llama_dir, prompts, tmp_path), env_extra=sigkill_after(2, "chunks"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "acc.parquet").exists()
    with pytest.raises(StoreError, match=r"incomplete \(2 of 5 row chunks"):
        read_layer(tmp_path / "store.zarr", "m/c", 0)

    resumed = cli(*cli_args(tiny_llama_dir, prompts, tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert "3 of 5 row chunks to compute (2 done before)" in resumed.stderr
    assert files_of(tmp_path / "store.zarr") == files_of(reference / "store.zarr")
    assert (tmp_path / "acc.parquet").read_bytes() == (reference / "acc.parquet").read_bytes()


def test_two_ranks_data_parallel(one_rank, tiny_llama_dir, tmp_path, cli):
    prompts, reference = one_rank
    # Another batch size too: rows are owned by chunk, so none is dropped or duplicated either way.
    result = cli(*cli_args(tiny_llama_dir, prompts, tmp_path), "--max-batch-tokens", "120", launcher=TWO_RANKS)
    assert result.returncode == 0, result.stderr
    assert "rank 1/2: 2 of 5 row chunks" in result.stderr and "rank 0/2: 3 of 5 row chunks" in result.stderr
    check_same_as_one_rank(tmp_path, reference)


def test_two_ranks_zero3(one_rank, tiny_llama_dir, tmp_path, cli):
    prompts, reference = one_rank
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    result = cli(*cli_args(tiny_llama_dir, prompts, tmp_path), "--zero3", config, launcher=TWO_RANKS, timeout=400)
    assert result.returncode == 0, result.stderr
    # Rank 1 owns fewer rows, so it must run discarded passes to keep the collective forward passes in step.
    discarded = [int(n) for n in re.findall(r"ZeRO-3 lockstep: \d+ forward passes, (\d+) discarded", result.stderr)]
    assert len(discarded) == 2 and max(discarded) > 0 and min(discarded) == 0
    check_same_as_one_rank(tmp_path, reference)


def test_concurrent_jobs_share_a_store(one_rank, tiny_llama_dir, tmp_path):
    """Several extraction jobs create groups of one store at once (Snakemake runs them in parallel)."""
    prompts, reference = one_rank
    store = tmp_path / "store.zarr"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([sys.executable, "-m", "repgeom.extract", "--model", str(tiny_llama_dir), "--prompts",
                              str(prompts), "--store", str(store), "--group", f"m/{name}", "--accuracy-out",
                              str(tmp_path / f"{name}.parquet"), "--chunk-rows", "5", "--model-dtype", "float32"],
                             stderr=subprocess.PIPE, text=True, env=env) for name in ("a", "b")]
    for job in jobs:
        assert job.wait(timeout=240) == 0, job.stderr.read()
    expected = read_layer(reference / "store.zarr", "m/c", 1)[0]
    for name in ("a", "b"):
        np.testing.assert_allclose(read_layer(store, f"m/{name}", 1)[0], expected, atol=2e-5, rtol=1e-4)


def check_same_as_one_rank(out: Path, reference: Path):
    np.testing.assert_allclose(all_layers(out / "store.zarr"), all_layers(reference / "store.zarr"),
                               atol=2e-5, rtol=1e-4)
    ours, theirs = read_layer(out / "store.zarr", "m/c", 0)[1], read_layer(reference / "store.zarr", "m/c", 0)[1]
    pd.testing.assert_frame_equal(ours, theirs)
    accuracy, expected = pd.read_parquet(out / "acc.parquet"), pd.read_parquet(reference / "acc.parquet")
    pd.testing.assert_frame_equal(accuracy, expected, atol=1e-4)
