"""The accuracy table of one model drawn as a figure (`accuracy_table` of the figure set); the table itself,
`tables/accuracy.csv`, is `repgeom.tables`."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402

from repgeom.conditions import parse_condition  # noqa: E402
from repgeom.plots.parts import FigureInputs  # noqa: E402
from repgeom.plots.registry import NoData  # noqa: E402
from repgeom.plots.selection import checkpoint_step, order_conditions  # noqa: E402
from repgeom.tables import ACCURACY_COLUMNS  # noqa: E402

TABLE_HEADER = ["condition", "step", "prompts", "micro", "macro", "micro\n(argmax)", "macro\n(argmax)"]
ROW_COLOURS = {"base": "white", "control": "#eeeeee", "finetuned": "#fdebd6"}


def plot_accuracy_table(inputs: FigureInputs):
    """Every condition of the model (base k-shot by k, each followed by its prompt controls, then fine-tuned
    checkpoints by method and step) with its accuracy, drawn as a table; controls shaded grey, checkpoints orange."""
    model, steps = inputs.model, inputs.steps
    rows = inputs.model_rows("accuracy", "accuracy table")
    if inputs.conditions is not None:
        rows = rows[rows["condition"].isin(inputs.conditions)]
    if rows.empty:
        raise NoData(f"the accuracy table has no rows for model {model!r} under the conditions shown")
    rows = rows.groupby("condition").first()
    cells, colours = [], []
    for name in order_conditions(rows.index, steps):
        row, condition = rows.loc[name], parse_condition(name)
        step = checkpoint_step(condition, steps)
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


__all__ = ["plot_accuracy_table"]
