"""Figures that put several models side by side (`registry.COMPARISONS`): one per-layer metric each, against relative
depth, a panel per compared condition and a line per model.

Relative depth is layer / L, L being the model's number of blocks, i.e. its highest stored layer (the final norm): 0
is the input of the first block and 1 the final norm, so models of different depths share one axis. The compared
conditions are named as in the metric table, or `ft-{method}-last` for a method's last checkpoint in each model (the
one `selection.final_checkpoints` picks from the model's optimizer steps, as the data-overlap figure does). A
condition that one of the models lacks is an `InputError` naming the model and the condition.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from repgeom.analysis.params import AnalysisParams, gride_scale  # noqa: E402
from repgeom.conditions import last_checkpoint_method  # noqa: E402
from repgeom.errors import InputError  # noqa: E402
from repgeom.plots.parts import finish_figure, metric_series, nothing_to_show, settings_footer  # noqa: E402
from repgeom.plots.registry import COMPARISONS, ComparisonSpec, NoData  # noqa: E402
from repgeom.plots.selection import final_checkpoints  # noqa: E402

DEPTH_LABEL = "relative depth (layer / L: 0 = input of the first block, 1 = final norm)"


def n_blocks(rows: pd.DataFrame) -> int:
    """L: the model's highest stored layer, its final norm's output."""
    return int(rows["layer"].max())


def resolve_conditions(model: str, names, wanted: Sequence[str], steps: Mapping[str, int] | None = None) -> list[str]:
    """`wanted` as conditions of `model`, whose tables hold `names`: `ft-{method}-last` becomes the method's last
    checkpoint (by optimizer step, `steps`), any other name must be among `names`."""
    names = set(names)
    finals = final_checkpoints(names, steps)
    resolved = []
    for name in wanted:
        method = last_checkpoint_method(name)
        if method in finals:
            resolved.append(finals[method])
        elif name in names:
            resolved.append(name)
        else:
            what = f"no checkpoint of method {method!r}" if method else f"no rows for condition {name!r}"
            raise InputError(f"model {model!r} has {what} to compare (its conditions: {', '.join(sorted(names))})")
    return resolved


def plot_comparison(tables: Mapping[str, pd.DataFrame], conditions: Mapping[str, Sequence[str]],
                    wanted: Sequence[str], spec: ComparisonSpec, *, scale: float | None = None,
                    footer: str = "") -> Figure:
    """`spec.metric` against relative depth: a panel per `wanted` condition (each model's own condition for it in
    `conditions`: model -> resolved names), a line per model of `tables` (model -> its metric rows), in that order."""
    colours = matplotlib.colormaps["tab10"]
    fig, axes = plt.subplots(1, len(wanted), figsize=(4.2 * len(wanted) + 2.8, 4.3), sharey=True, squeeze=False,
                             layout="constrained")
    drawn = 0
    for column, (ax, name) in enumerate(zip(axes[0], wanted)):
        for index, (model, rows) in enumerate(tables.items()):
            found = metric_series(rows, spec.metric, conditions[model][column], scale)
            if found.empty:
                continue
            drawn += 1
            depth = n_blocks(rows)
            style = dict(marker="o", markersize=3.5, linewidth=1.6, color=colours(index % colours.N),
                         label=f"{model} (L = {depth})")
            if np.isfinite(found["error"]).any():  # the estimator's standard error (Gride)
                ax.errorbar(found["layer"] / depth, found["value"], yerr=found["error"].fillna(0), capsize=2,
                            elinewidth=0.9, **style)
            else:
                ax.plot(found["layer"] / depth, found["value"], **style)
        shown = sorted({conditions[model][column] for model in tables})
        ax.set_title(name if shown == [name] else f"{name}: {', '.join(shown)}", fontsize=10)
        ax.set_xlabel(DEPTH_LABEL, fontsize=8.5)
        ax.set_xlim(-0.03, 1.03)
        if spec.ylim:
            ax.set_ylim(*spec.ylim)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(spec.ylabel)
    if not drawn:
        at = f" at scale {scale:g}" if scale is not None else ""
        raise NoData(f"no model has finite {spec.metric} values{at} under the compared conditions")
    return finish_figure(fig, axes, spec.title, footer, legend_title="model (L blocks)")


def comparison_figures(tables: Mapping[str, pd.DataFrame], wanted: Sequence[str],
                       steps: Mapping[str, Mapping[str, int]] | None = None,
                       params: AnalysisParams | Mapping | None = None) -> dict[str, Figure]:
    """Every figure of `COMPARISONS` for the models of `tables` (model -> its metric rows) under the `wanted`
    conditions (`steps`: model -> its fine-tuned conditions' optimizer steps, for `ft-{method}-last`); a figure
    without data says so (and why) instead."""
    steps = steps or {}
    conditions = {model: resolve_conditions(model, rows["condition"].dropna(), wanted, steps.get(model))
                  for model, rows in tables.items()}
    params = AnalysisParams.coerce(params)
    figures = {}
    for name, spec in COMPARISONS.items():
        scale = gride_scale(params.id_scale_index) if spec.at_gride_scale else None
        footer = settings_footer(spec.settings, params) if spec.settings else ""
        try:
            figures[name] = plot_comparison(tables, conditions, wanted, spec, scale=scale, footer=footer)
        except NoData as reason:
            figures[name] = nothing_to_show(spec.title, ", ".join(tables), str(reason))
    return figures


__all__ = ["DEPTH_LABEL", "comparison_figures", "n_blocks", "plot_comparison",
           "resolve_conditions"]
