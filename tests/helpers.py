"""Helpers shared by the test files: one way to run Snakemake on the workflow, and one way to run a repgeom entry
point, in a subprocess (optionally under two torchrun ranks, optionally killed part-way). Importable as `helpers`
(tests/conftest.py puts this folder on sys.path, the `--import-mode=importlib` equivalent of pytest's
`pythonpath = ["tests"]`)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
SNAKEFILE = ROOT / "Snakefile"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# `launcher` of `run_module`: two ranks on the CPU (gloo).
TWO_RANKS = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
# A rank's "rank R of W" line in one write: ranks share one stdout, and a print() of several pieces interleaves
# character by character with the other rank's when Python runs unbuffered (CI once read "rankrank  10  ofof  22").
RANK_SCRIPT = ("import os\n"
               "rank, world = os.environ.get('RANK', '0'), os.environ.get('WORLD_SIZE', '1')\n"
               "os.write(1, f'rank {rank} of {world}\\n'.encode())\n")
# Its sitecustomize.py kills a process at a point named in the environment.
FAULTS = Path(__file__).resolve().parent / "faults"


def snakemake_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`base` (default: this process's environment) with this venv's bin first on PATH (the rules call
    `python`), offline Hugging Face, and `extra`."""
    env = dict(os.environ if base is None else base)
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", **OFFLINE, **extra)
    return env


def run_snakemake(*args: str, workdir: str | Path | None = None, snakefile: str | Path | None = SNAKEFILE,
                  env: Mapping[str, str] | None = None, timeout: float = 300,
                  cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`python -m snakemake [--snakefile S] [--directory W] ARGS` with output captured as text; `env` defaults
    to `snakemake_env()`. The caller checks the return code."""
    command = [sys.executable, "-m", "snakemake"]
    if snakefile is not None:
        command += ["--snakefile", str(snakefile)]
    if workdir is not None:
        command += ["--directory", str(workdir)]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          env=dict(snakemake_env() if env is None else env), timeout=timeout, cwd=cwd)


def run_module(module: str, *args, env_extra: Mapping[str, str] | None = None, launcher: Sequence[str] = (),
               timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a subprocess (under `launcher`, e.g. torchrun, if given): offline, one thread,
    without the distributed variables of an enclosing launcher."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           **(env_extra or {})}
    for name in RANK_VARIABLES:
        env.pop(name, None)
    command = [*launcher, "-m", module] if launcher else [sys.executable, "-m", module]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def sigkill_after(count: int, event: str) -> dict[str, str]:
    """`env_extra` of `run_module` under which the process SIGKILLs itself after `count` events: "chunks" (row
    chunks the extraction has written) or "steps" (optimizer steps of the fine-tuning); see tests/faults."""
    return {**faults_path(), f"REPGEOM_TEST_SIGKILL_AFTER_{event.upper()}": str(count)}


def signal_after(count: int, event: str, signal: str) -> dict[str, str]:
    """As `sigkill_after`, with another signal (e.g. "USR1"), which the process may handle."""
    return {**sigkill_after(count, event), "REPGEOM_TEST_SIGNAL": signal}


def faults_path() -> dict[str, str]:
    """The PYTHONPATH under which tests/faults applies its REPGEOM_TEST_* variables."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, (str(FAULTS), os.environ.get("PYTHONPATH"))))}


def saved_llama(folder: Path, tokenizer, **architecture) -> Path:
    """A random Llama of this architecture (build_llama's keywords), saved with its tokenizer to `folder`."""
    from repgeom.models.build import build_llama, save_model

    save_model(build_llama(tokenizer, seed=0, **architecture), tokenizer, folder)
    return folder
