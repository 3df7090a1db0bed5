"""Per-layer geometry of LLM representations: exact kNN, DADApy IDs / density / ADP / overlaps, local ID,
linear probes. Entry point: `python -m repgeom.analysis {layers,overlap} ...`; metrics: METRICS.md."""
import importlib
import os

# torch and sklearn each bring an OpenMP runtime; with the default active wait policy the idle
# threads of one spin on the cores the other needs (the kNN ran 2x slower after a sklearn call).
# Set before torch is imported; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Public name -> submodule. Loaded on first use: the workflow imports `params` while it parses, and
# importing torch, DADApy and jax there cost every Snakemake job 5 s.
_EXPORTS = {
    "ClusteringError": "geometry", "dadapy_reference": "geometry", "data_overlap": "geometry",
    "label_overlap": "geometry", "deduplicate": "neighbors", "duplicate_rows": "neighbors", "knn": "neighbors",
    "AnalysisInputError": "layer", "analyze_layer": "layer", "local_twonn": "local_id",
    "AnalysisParams": "params", "linear_probe": "probes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
