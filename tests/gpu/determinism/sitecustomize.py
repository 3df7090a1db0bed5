"""Test-only: torch's deterministic algorithms in a process started with this folder first on PYTHONPATH (the GPU
tier's kill-and-resume comparisons of training), and then the fault injection of tests/faults, whose sitecustomize
would otherwise be shadowed by this one. cuBLAS needs CUBLAS_WORKSPACE_CONFIG for deterministic products; ops without
a deterministic CUDA kernel warn rather than stop (warn_only), and the tier compares the adapters bit for bit."""
import os
import runpy
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
import torch  # noqa: E402

torch.use_deterministic_algorithms(True, warn_only=True)
# Filling every new tensor with NaN (the default in this mode) makes uninitialised reads visible but costs a pass
# over each allocation; the comparisons do not need it.
torch.utils.deterministic.fill_uninitialized_memory = False
runpy.run_path(str(Path(__file__).resolve().parents[2] / "faults" / "sitecustomize.py"))
