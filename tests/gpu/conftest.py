"""The GPU tier (`pytest -m gpu`, issue 28): fixtures that pick the device and the scale.

Where CUDA is absent the tier skips, so plain `pytest` (CI) passes over it; REPGEOM_GPU_TIER_DEVICE=cpu runs it on
the CPU at tiny sizes, the same code paths (`benchmarks/gpu_check.sh --cpu-dry-run`), so that nothing fails on a
lent GPU that a CPU could have shown."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import gpu_tier`, as tests/conftest.py does for helpers

import gpu_tier  # noqa: E402


@pytest.fixture(autouse=True)
def _gpu_tier_device(request):
    """A `gpu` test runs where CUDA is, or on the CPU when REPGEOM_GPU_TIER_DEVICE=cpu; else it is skipped."""
    if request.node.get_closest_marker("gpu") is None:
        return
    if gpu_tier.tier_device() is None:
        pytest.skip("GPU tier: needs CUDA (or REPGEOM_GPU_TIER_DEVICE=cpu for the CPU dry run)")


@pytest.fixture(scope="session")
def device():
    """torch.device of the tier: cuda:0, or the CPU in the dry run."""
    found = gpu_tier.tier_device()
    if found is None:
        pytest.skip("GPU tier: needs CUDA (or REPGEOM_GPU_TIER_DEVICE=cpu for the CPU dry run)")
    return found


@pytest.fixture(scope="session")
def tier_model_dir(device, tmp_path_factory, tiny_tokenizer):
    """A random Llama built from a config, saved with save_pretrained: on the GPU wide enough for bf16 to matter
    (8 blocks of width 512, grouped-query attention), in the dry run the tests' tiny one (2 blocks of width 64)."""
    from repgeom.models.build import build_llama, save_model

    shape = gpu_tier.MODEL_SHAPES["gpu" if device.type == "cuda" else "dry_run"]
    model = build_llama(tiny_tokenizer, max_position_embeddings=2048, seed=0, **shape)
    out = tmp_path_factory.mktemp("tier_llama")
    save_model(model, tiny_tokenizer, out)
    return out
