"""Tables of the report stage: the accuracy per model and condition (`tables/accuracy.csv`, from the extract
stage's per-prompt accuracy files) and the merged long-form tables (`metrics/*.parquet`, stacked from their parts).

Run as `python -m repgeom.plots accuracy-table` and `python -m repgeom.plots concat` (the workflow's commands);
the accuracy table drawn as a figure is `repgeom.plots.accuracy_figure`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from repgeom.errors import InputError
from repgeom.extract.accuracy import accuracy_summary
from repgeom.io import atomic_path, read_parquet_table, write_parquet

ACCURACY_COLUMNS = ("model", "condition", "n", "micro", "macro", "micro_argmax", "macro_argmax")


def accuracy_table(paths: list[str | Path]) -> pd.DataFrame:
    """One row per `extract/{model}/{condition}.accuracy.parquet`, recomputed from the per-prompt rows."""
    rows = []
    for path in map(Path, paths):
        summary = accuracy_summary(read_parquet_table(path, "accuracy file", InputError))
        rows.append({"model": path.parent.name, "condition": path.name.removesuffix(".accuracy.parquet"), **summary})
    return pd.DataFrame(rows, columns=list(ACCURACY_COLUMNS))


def write_accuracy_table(paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """`accuracy_table(paths)` written atomically as CSV (4 decimals) to `out`; returns the table."""
    table = accuracy_table(paths)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return table


def concat_tables(paths: list[str | Path]) -> pd.DataFrame:
    """The parquet tables at `paths` stacked into one (an `InputError` naming a missing or unreadable one)."""
    return pd.concat([read_parquet_table(path, "table", InputError) for path in paths], ignore_index=True)


def write_concat(paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """`concat_tables(paths)` written as parquet to `out`; returns the table."""
    table = concat_tables(paths)
    write_parquet(table, out)
    return table


__all__ = ["ACCURACY_COLUMNS", "accuracy_table", "concat_tables", "write_accuracy_table", "write_concat"]
