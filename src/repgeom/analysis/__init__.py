"""Per-layer geometry of LLM representations: exact kNN (`neighbors`), DADApy IDs, density, ADP and overlaps
(`geometry`), local ID (`local_id`), linear probes (`probes`), one layer's metric rows (`layer`), parameters
(`params`). Entry point: `python -m repgeom.analysis {layers,overlap} ...`; metrics: METRICS.md."""
