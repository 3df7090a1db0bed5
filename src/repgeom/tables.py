"""Tables of the report stage: the accuracy per model and condition (`tables/accuracy.csv`, from the extract
stage's per-prompt accuracy files), the logit lens per model, condition and layer (`tables/lens.csv`, from its lens
files) and the merged long-form tables (`metrics/*.parquet`, stacked from their parts).

Run as `python -m repgeom.plots accuracy-table`, `lens-table` and `concat` (the workflow's commands); the accuracy
table drawn as a figure is `repgeom.plots.accuracy_figure`, the lens `repgeom.plots.model_figures.plot_logit_lens`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from repgeom.errors import InputError
from repgeom.extract.accuracy import LENS_COLUMNS, accuracy_summary
from repgeom.io import atomic_path, read_parquet_table, write_parquet

ACCURACY_COLUMNS = ("model", "condition", "n", "micro", "macro", "micro_argmax", "macro_argmax")
LENS_TABLE_COLUMNS = ("model", "condition", *LENS_COLUMNS)
# The lens table's values as metrics of the long-form metric table, so that the figures draw them like the others.
LENS_METRICS = {"accuracy": "lens_accuracy", "gold_prob": "lens_gold_prob", "gold_prob_full": "lens_gold_prob_full"}


def _model_and_condition(path: Path, suffix: str) -> dict[str, str]:
    """The model and condition of an extract stage file `extract/{model}/{condition}{suffix}`."""
    return {"model": path.parent.name, "condition": path.name.removesuffix(suffix)}


def accuracy_table(paths: list[str | Path]) -> pd.DataFrame:
    """One row per `extract/{model}/{condition}.accuracy.parquet`, recomputed from the per-prompt rows."""
    rows = []
    for path in map(Path, paths):
        summary = accuracy_summary(read_parquet_table(path, "accuracy file", InputError))
        rows.append({**_model_and_condition(path, ".accuracy.parquet"), **summary})
    return pd.DataFrame(rows, columns=list(ACCURACY_COLUMNS))


def lens_table(paths: list[str | Path]) -> pd.DataFrame:
    """The rows of every `extract/{model}/{condition}.lens.parquet` (one per layer; none for a group extracted before
    the lens was kept), each with its model and condition."""
    frames = []
    for path in map(Path, paths):
        frame = read_parquet_table(path, "lens file", InputError, LENS_COLUMNS)
        if len(frame):
            frames.append(frame.assign(**_model_and_condition(path, ".lens.parquet")))
    if not frames:
        return pd.DataFrame(columns=list(LENS_TABLE_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(LENS_TABLE_COLUMNS)]


def _write_csv(table: pd.DataFrame, out: str | Path) -> pd.DataFrame:
    """`table` written atomically as CSV (4 decimals) to `out`; returns it."""
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return table


def write_accuracy_table(paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """`accuracy_table(paths)` written atomically as CSV (4 decimals) to `out`; returns the table."""
    return _write_csv(accuracy_table(paths), out)


def write_lens_table(paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """`lens_table(paths)` written atomically as CSV (4 decimals) to `out`; returns the table."""
    return _write_csv(lens_table(paths), out)


def with_lens_metrics(metrics: pd.DataFrame, lens: pd.DataFrame) -> pd.DataFrame:
    """The long-form metric table `metrics` (model, condition, layer, metric, scale, value, error, ...) with the lens
    table's values appended as the metrics `LENS_METRICS`, a row per layer without scale or error, so that the
    figures draw them like the others."""
    if lens.empty:
        return metrics
    long = lens.melt(id_vars=["model", "condition", "layer"], value_vars=list(LENS_METRICS), var_name="metric")
    long = long.assign(metric=long["metric"].map(LENS_METRICS), scale=np.nan, error=np.nan)
    return pd.concat([metrics, long], ignore_index=True)


def concat_tables(paths: list[str | Path]) -> pd.DataFrame:
    """The parquet tables at `paths` stacked into one (an `InputError` naming a missing or unreadable one)."""
    return pd.concat([read_parquet_table(path, "table", InputError) for path in paths], ignore_index=True)


def write_concat(paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """`concat_tables(paths)` written as parquet to `out`; returns the table."""
    table = concat_tables(paths)
    write_parquet(table, out)
    return table


__all__ = ["ACCURACY_COLUMNS", "LENS_METRICS", "LENS_TABLE_COLUMNS", "accuracy_table", "concat_tables", "lens_table",
           "with_lens_metrics", "write_accuracy_table", "write_concat", "write_lens_table"]
