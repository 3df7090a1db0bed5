"""Tables for the report: accuracy per model and condition (CSV), and the same for one model as a figure."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from repgeom.errors import InputError
from repgeom.extract.accuracy import accuracy_summary
from repgeom.io import read_parquet_table

ACCURACY_COLUMNS = ["model", "condition", "n", "micro", "macro", "micro_argmax", "macro_argmax"]


def accuracy_table(paths: list[str | Path]) -> pd.DataFrame:
    """One row per `extract/{model}/{condition}.accuracy.parquet`, recomputed from the per-prompt rows."""
    rows = []
    for path in map(Path, paths):
        summary = accuracy_summary(read_parquet_table(path, "accuracy file", InputError))
        rows.append({"model": path.parent.name, "condition": path.name.removesuffix(".accuracy.parquet"), **summary})
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


TABLE_HEADER = ["condition", "step", "prompts", "micro", "macro", "micro\n(argmax)", "macro\n(argmax)"]
ROW_COLOURS = {"base": "white", "control": "#eeeeee", "finetuned": "#fdebd6"}


def plot_accuracy_table(accuracy: pd.DataFrame, model: str, *, steps: Mapping[str, int] | None = None,
                        conditions: Sequence[str] | None = None):
    """Every condition of `model` (base k-shot by k, each followed by its prompt controls, then fine-tuned
    checkpoints by method and step) with its accuracy, drawn as a table; controls shaded grey, checkpoints orange."""
    import matplotlib.pyplot as plt

    from repgeom.conditions import parse_condition
    from repgeom.plots.geometry import NoData
    from repgeom.plots.selection import checkpoint_step, order_conditions

    rows = accuracy[accuracy["model"] == model]
    if conditions is not None:
        rows = rows[rows["condition"].isin(conditions)]
    if rows.empty:
        raise NoData(f"the accuracy table has no rows for model {model!r}")
    rows = rows.groupby("condition").first()
    cells, colours = [], []
    for name in order_conditions(rows.index, steps):
        row, condition = rows.loc[name], parse_condition(name)
        step = checkpoint_step(condition, steps or {})
        cells.append([name, "–" if step is None else str(step), str(int(row["n"])),
                      *(f"{float(row[c]):.3f}" for c in ACCURACY_COLUMNS[3:])])
        kind = "finetuned" if condition.is_finetuned else "control" if condition.variant else "base"
        colours.append([ROW_COLOURS[kind]] * len(TABLE_HEADER))
    height = 1.3 + 0.27 * (len(cells) + 2)
    fig = plt.figure(figsize=(8.6, height))
    ax = fig.add_axes((0.02, 0.55 / height, 0.96, 1 - 1.25 / height))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=TABLE_HEADER, cellColours=colours, cellLoc="center",
                     colWidths=[0.34, 0.08, 0.1, 0.1, 0.1, 0.14, 0.14], bbox=(0, 0, 1, 1))
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (r, c), cell in table.get_celld().items():
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#dde6f0")
        elif c == 0:
            cell.set_text_props(ha="left")
            cell.PAD = 0.03
    fig.suptitle(f"{model}: accuracy per condition (chance = 0.25)", fontsize=12, y=1 - 0.25 / height)
    fig.text(0.02, 0.2 / height,
             "micro: fraction of prompts answered right; macro: mean over subjects. Constrained: argmax over the "
             "letter tokens A-D;\nargmax: over the full vocabulary. step: optimizer steps of a fine-tuned checkpoint "
             "(0-shot prompts). Grey: prompt controls.", fontsize=7.5, color="0.25", va="bottom")
    fig.table_cells = cells
    return fig
