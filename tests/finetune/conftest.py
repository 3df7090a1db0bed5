"""Fine-tuning sets shaped like the data stage's output, and the CLI run in a subprocess, optionally under torchrun.

Training always runs in its own process: DeepSpeed keeps its process groups for the life of a process."""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pytest
from helpers import TWO_RANKS, run_module

DEEPSPEED_CONFIGS = Path(__file__).resolve().parents[2] / "src/repgeom/resources/deepspeed"
ZERO2, ZERO3 = DEEPSPEED_CONFIGS / "zero2.json", DEEPSPEED_CONFIGS / "zero3.json"
SUBJECTS = ["high_school_biology", "abstract_algebra", "world_religions"]


def finetune_frame(n: int) -> pd.DataFrame:
    """Rows as `repgeom.data sample` writes them: a question block ending in `Answer:`, and text = prompt + ' ' + gold."""
    rows = []
    for i in range(n):
        gold = "ABCD"[(i * 3) % 4]
        question = f"What is {i} plus {i % 7}" + " and then one more" * (i % 3) + "?"  # lengths differ
        prompt = f"{question}\nA. {i}\nB. {i + i % 7}\nC. {i + 1}\nD. {2 * i}\nAnswer:"
        rows.append({"question_id": f"{SUBJECTS[i % 3]}-{i}", "subject": SUBJECTS[i % 3], "gold": gold,
                     "split": "dev" if i % 5 == 0 else "validation", "prompt": prompt, "text": f"{prompt} {gold}"})
    return pd.DataFrame(rows)


@pytest.fixture
def finetune_set(tmp_path):
    """37 rows: with batches of 16, each epoch ends on a batch of 5."""
    path = tmp_path / "finetune_set.parquet"
    finetune_frame(37).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def cli():
    """`cli(*args, env_extra=None, launcher=(), timeout=300)`: `python -m repgeom.finetune ARGS` in a subprocess."""
    return functools.partial(run_module, "repgeom.finetune")


@pytest.fixture(scope="session")
def make_finetune_frame():
    return finetune_frame


@pytest.fixture(scope="session")
def deepspeed_configs():
    return {"zero2": ZERO2, "zero3": ZERO3, "torchrun": TWO_RANKS}
