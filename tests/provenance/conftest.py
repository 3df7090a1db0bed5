"""Synthetic activation groups (synthetic.py), a stand-in code checkout, and a helper to run the job wrapper."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SYNTHETIC = Path(__file__).with_name("synthetic.py")


def _load_synthetic():
    spec = importlib.util.spec_from_file_location("provenance_synthetic", SYNTHETIC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic = _load_synthetic()


@pytest.fixture(scope="session")
def groups():
    """The synthetic group helpers: group_spec, chunk_data, write_group, and their file (for subprocesses)."""
    return synthetic


@pytest.fixture(scope="session")
def synthetic_group():
    return synthetic.write_group


def run_wrapper(cwd, meta, inputs=(), outputs=(), command=(), extra_inputs=(), extra_outputs=(), output_globs=(),
                env=None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m repgeom.provenance run ...` in `cwd`, as a Snakemake rule's shell would call it."""
    import json

    argv = [sys.executable, "-m", "repgeom.provenance", "run", "--meta", json.dumps(meta),
            "--inputs", *map(str, inputs), "--outputs", *map(str, outputs)]
    if extra_inputs:
        argv += ["--extra-inputs", *map(str, extra_inputs)]
    if extra_outputs:
        argv += ["--extra-outputs", *map(str, extra_outputs)]
    if output_globs:
        argv += ["--extra-output-globs", *map(str, output_globs)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*argv, "--", *command], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=120, **kwargs)


@pytest.fixture(scope="session")
def code_repo(tmp_path_factory):
    """A git checkout standing in for the code, so records do not depend on the live working tree."""
    repo = tmp_path_factory.mktemp("code")
    (repo / "stage.py").write_text("print('v1')\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    return repo


@pytest.fixture(scope="session")
def wrap(code_repo):
    """run_wrapper with the stand-in checkout as the code whose version records carry."""
    def call(cwd, meta, **kwargs):
        env = {"REPGEOM_CODE_DIR": str(code_repo), **kwargs.pop("env", {})}
        return run_wrapper(cwd, meta, env=env, **kwargs)
    return call
