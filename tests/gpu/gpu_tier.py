"""What the GPU tier's tests share: its device, its model shapes, its data, and the bounds of its comparisons."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
DETERMINISM = HERE / "determinism"  # its sitecustomize: deterministic algorithms, then tests/faults' injection
DEVICE_VARIABLE = "REPGEOM_GPU_TIER_DEVICE"

# Llama shapes built from a config (random weights; the device cannot receive the default's GGUF file).
MODEL_SHAPES = {
    "gpu": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1408),
    "dry_run": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128),
}


def tier_device() -> torch.device | None:
    """cuda:0 where CUDA is; the CPU when REPGEOM_GPU_TIER_DEVICE=cpu (the dry run); else None (skip)."""
    forced = os.environ.get(DEVICE_VARIABLE, "").strip()
    if forced:
        return torch.device(forced)
    return torch.device("cuda", 0) if torch.cuda.is_available() else None


def on_gpu(device: torch.device) -> bool:
    return device.type == "cuda"


def finetune_frame(n: int) -> pd.DataFrame:
    """Rows as `repgeom.data sample` writes them (tests/finetune/conftest.py's shape): lengths differ."""
    rows = []
    for i in range(n):
        gold = "ABCD"[(i * 3) % 4]
        question = f"What is {i} plus {i % 7}" + " and then one more" * (i % 3) + "?"
        prompt = f"{question}\nA. {i}\nB. {i + i % 7}\nC. {i + 1}\nD. {2 * i}\nAnswer:"
        rows.append({"question_id": f"q-{i}", "subject": "s", "gold": gold, "split": "validation",
                     "prompt": prompt, "text": f"{prompt} {gold}"})
    return pd.DataFrame(rows)


def llm_like_layer(n: int, d: int, n_subjects: int = 57, seed: int = 0) -> np.ndarray:
    """float32 rows shaped like an LLM layer: low-dimensional blobs per subject on a large common offset, plus noise
    (benchmarks/analysis_speed.py's generator)."""
    rng = np.random.default_rng(seed)
    subject = rng.integers(0, n_subjects, n)
    X = 20 * rng.standard_normal(d) + 1.5 * rng.standard_normal((n_subjects, d))[subject]
    for s in range(n_subjects):
        rows = np.flatnonzero(subject == s)
        X[rows] += rng.standard_normal((len(rows), 8)) @ rng.standard_normal((8, d))
    return (X + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of a with the same row of b, in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def store_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def read_group(store: Path, group: str = "m/c") -> tuple[list[np.ndarray], pd.DataFrame]:
    """Every stored layer's rows and the rows' metadata."""
    from repgeom.store import n_layers, read_layer

    layers, meta = [], None
    for layer in range(n_layers(store, group)):
        X, meta = read_layer(store, group, layer)
        layers.append(X)
    return layers, meta


def peak_anonymous_memory(fn, interval: float = 0.002) -> tuple[object, int]:
    """(fn(), the most anonymous resident memory (RssAnon) this process held while fn ran, in bytes): the host
    copies, not the mapped weight files (page cache), which VmHWM would count too."""
    import threading
    import time

    def read() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) * 1024

    peak, done = [read()], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], read())
            time.sleep(interval)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = fn()
    finally:
        done.set()
        watcher.join()
    return result, max(peak[0], read())
