"""The reference paper's figures for one model, from the merged metric, overlap, accuracy and lens tables.

Each `plot_*` function is the registry's drawing function of one figure: it takes the figure's inputs
(`parts.FigureInputs`: the long-form tables, any number of models, of which it keeps `model`'s rows) and returns a
matplotlib Figure, or raises `NoData` saying why there is nothing to draw. `model_figures` builds the whole set,
turning a `NoData` into a figure that says "nothing to show" and why, so that every file in `FIGURE_NAMES`
always exists (the workflow declares them all as outputs); `parts.write_figures` writes them atomically.

| file (`{name}.png`, `.pdf` with --pdf) | function | content |
|---|---|---|
| `id_gride` | `plot_id_gride` | Gride ID at n2 = 2**(id_scale_index + 1) against layer, with its standard error |
| `n_clusters` | `plot_n_clusters` | number of ADP clusters (no halo) against layer |
| `ari` | `plot_ari` | ARI of the ADP clusters with subjects (left) and with answer letters (right) against layer |
| `label_overlap` | `plot_label_overlap` | label overlap with subjects (left) and with answer letters (right) against layer |
| `data_overlap` | `plot_data_overlap` | χ_k between each k-shot condition and each method's last checkpoint (top); between 0-shot and each shown checkpoint (bottom); against layer |
| `probe` | `plot_probe` | linear-probe accuracy for subject (left) and letter (right) against layer, majority baseline dotted |
| `logit_lens` | `plot_logit_lens` | logit lens on the answer letters: constrained accuracy and gold-letter probability against layer, beside the letter ARI |
| `local_id_steps` | `plot_local_id_steps` | mean local ID against optimizer step, one line per layer (last-token rows; the token sample too where extracted), next to accuracy against step; one row per method |
| `accuracy_table` | `repgeom.plots.accuracy_figure.plot_accuracy_table` | accuracy of every condition, as a table |

The figure set, its order, labels and titles, and which function draws each: `repgeom.plots.registry`. What every
figure is made of (series, legend, settings line): `repgeom.plots.parts`. Which conditions the layer-wise figures
show and how they are coloured: `repgeom.plots.selection`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from repgeom.analysis.params import AnalysisParams, gride_scale  # noqa: E402
from repgeom.conditions import shot_condition  # noqa: E402
from repgeom.plots.parts import (FigureInputs, conditions_with_data, empty_panel, finish_figure,  # noqa: E402
                                 metric_series, nothing_to_show, title_and_footer)
from repgeom.plots.registry import FIGURE_NAMES, FIGURE_TITLES, NoData, drawer  # noqa: E402
from repgeom.plots.selection import (  # noqa: E402
    base_conditions,
    condition_styles,
    final_checkpoints,
    layerwise_conditions,
    shown_checkpoints,
    step_series,
)
from repgeom.tables import with_lens_metrics  # noqa: E402

LAYER_LABEL = "layer (input of block i; last = final norm)"
STEP_LABEL = "optimizer step (0 = base model, 0-shot prompt)"
CHANCE = 0.25


ZERO_SHOT = shot_condition(0)  # the base model on the prompts the fine-tuned checkpoints read


@dataclass(frozen=True)
class Panel:
    metric: str
    ylabel: str
    title: str = ""
    ylim: tuple[float, float] | None = None
    baseline: str | None = None  # a metric drawn as one dotted black line (mean over the shown conditions)


def _keep(names, conditions: Sequence[str] | None) -> list[str]:
    names = {n for n in names if pd.notna(n)}
    return sorted(names if conditions is None else names & set(conditions))


def layer_figure(inputs: FigureInputs, name: str, panels: Sequence[Panel], title: str, *,
                 metrics: pd.DataFrame | None = None, scale: float | None = None, errorbars: bool = False) -> Figure:
    """Panels of metrics against layer, one line per shown condition (`selection.layerwise_conditions`), with the
    settings line of figure `name`; `metrics`: another metric table than the inputs' (e.g. joined with the lens)."""
    model, steps = inputs.model, inputs.steps
    rows = (inputs if metrics is None else FigureInputs(model, metrics)).model_rows("metrics", "metric table")
    wanted = [panel.metric for panel in panels]
    available = _keep(conditions_with_data(rows, wanted, scale), inputs.conditions)
    shown = layerwise_conditions(available, steps)
    if not shown:
        at = f" at scale {scale:g}" if scale is not None else ""
        raise NoData(f"the metric table has no finite {' / '.join(wanted)} values{at} for model {model!r} under "
                     "a base k-shot or fine-tuned condition")
    styles = condition_styles(shown, steps)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + 2.6, 4.3), squeeze=False,
                             layout="constrained")
    for ax, panel in zip(axes[0], panels):
        drawn = 0
        for condition in shown:
            found = metric_series(rows, panel.metric, condition, scale)
            if found.empty:
                continue
            drawn += 1
            style = dict(styles[condition], markersize=4, linewidth=1.6)
            if errorbars and np.isfinite(found["error"]).any():
                ax.errorbar(found["layer"], found["value"], yerr=found["error"].fillna(0), capsize=2,
                            elinewidth=0.9, **style)
            else:
                ax.plot(found["layer"], found["value"], **style)
        if panel.baseline:
            base = rows[rows["metric"] == panel.baseline]
            base = base[base["condition"].isin(shown)].astype({"value": float}).groupby("layer")["value"].mean()
            if np.isfinite(base).any():
                ax.plot(base.index, base.values, color="black", linestyle=":", linewidth=1.4,
                        label="majority baseline")
        if not drawn:
            empty_panel(ax, f"no finite {panel.metric} values")
        ax.set_xlabel(LAYER_LABEL)
        ax.set_ylabel(panel.ylabel)
        if panel.title:
            ax.set_title(panel.title, fontsize=10)
        if panel.ylim:
            ax.set_ylim(*panel.ylim)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return finish_figure(fig, axes, f"{model}: {title}", inputs.footer(name))


def plot_id_gride(inputs: FigureInputs) -> Figure:
    """Gride ID at n2 of `id_scale_index` against layer, with its standard error."""
    n2 = gride_scale(inputs.params.id_scale_index)
    panel = Panel("id_gride", f"intrinsic dimension (Gride, n2 = {n2:g})")
    return layer_figure(inputs, "id_gride", [panel], f"intrinsic dimension (Gride at n1 = {n2 / 2:g}, n2 = {n2:g})",
                        scale=n2, errorbars=True)


def plot_n_clusters(inputs: FigureInputs) -> Figure:
    panel = Panel("n_clusters", "number of ADP clusters")
    return layer_figure(inputs, "n_clusters", [panel], "number of density peaks (ADP clusters, no halo)")


def plot_ari(inputs: FigureInputs) -> Figure:
    panels = [Panel("ari_subject", "ARI with subjects", "clusters vs subjects", (-0.05, 1.05)),
              Panel("ari_letter", "ARI with answer letters", "clusters vs answer letters", (-0.05, 1.05))]
    return layer_figure(inputs, "ari", panels, "adjusted Rand index of the ADP clusters")


def plot_label_overlap(inputs: FigureInputs) -> Figure:
    panels = [Panel("label_overlap_subject", "label overlap (subjects)", "neighbours sharing the subject",
                    (0, 1.05)),
              Panel("label_overlap_letter", "label overlap (answer letters)", "neighbours sharing the answer letter",
                    (0, 1.05))]
    return layer_figure(inputs, "label_overlap", panels, "label overlap of the nearest neighbours")


def plot_probe(inputs: FigureInputs) -> Figure:
    panels = [Panel("probe_subject", "probe accuracy (subject)", "linear probe: subject", (0, 1.05),
                    baseline="probe_subject_baseline"),
              Panel("probe_letter", "probe accuracy (answer letter)", "linear probe: answer letter", (0, 1.05),
                    baseline="probe_letter_baseline")]
    return layer_figure(inputs, "probe", panels, "linear-probe accuracy (cross-validated)", errorbars=True)


def plot_logit_lens(inputs: FigureInputs) -> Figure:
    """The logit lens on the answer letters against layer (the lens table, `repgeom.tables.lens_table`): constrained
    accuracy and mean gold-letter probability renormalised over A-D, beside the letter ARI of the ADP clusters (from
    the metric table), a line per shown condition."""
    if inputs.lens is None:
        raise NoData("no lens table was given")
    if not (inputs.lens["model"] == inputs.model).any():
        raise NoData(f"the lens table has no rows for model {inputs.model!r} (a group extracted before the logit lens "
                     "was kept has none: delete it and extract again)")
    panels = [Panel("lens_accuracy", "accuracy (argmax over A–D)", "logit lens: accuracy", (-0.02, 1.02)),
              Panel("lens_gold_prob", "gold-letter probability (within A–D)", "logit lens: gold-letter probability",
                    (-0.02, 1.02)),
              Panel("ari_letter", "ARI with answer letters", "clusters vs answer letters", (-0.05, 1.05))]
    return layer_figure(inputs, "logit_lens", panels, FIGURE_TITLES["logit_lens"],
                        metrics=with_lens_metrics(inputs.metrics, inputs.lens))


def _pair(rows: pd.DataFrame, a: str, b: str) -> pd.Series:
    """value by layer of the overlap between conditions a and b at the same layer (either order)."""
    mask = ((rows["condition_a"] == a) & (rows["condition_b"] == b)) | (
        (rows["condition_a"] == b) & (rows["condition_b"] == a))
    found = rows[mask].astype({"value": float}).groupby("layer_a")["value"].first().sort_index()
    return found[np.isfinite(found)]


def plot_data_overlap(inputs: FigureInputs) -> Figure:
    """Top row: χ_k between each base k-shot condition and a method's last checkpoint, against layer; bottom row:
    χ_k between 0-shot (the base model on the prompts the checkpoints see) and each shown checkpoint; a column
    per fine-tuning method."""
    model, steps = inputs.model, inputs.steps
    rows = inputs.model_rows("overlap", "overlap table")
    rows = rows[(rows["metric"] == "data_overlap") & (rows["layer_a"] == rows["layer_b"])
                & (rows["condition_a"] != rows["condition_b"])]
    names = _keep(set(rows["condition_a"]) | set(rows["condition_b"]), inputs.conditions)
    finals = final_checkpoints(names, steps)
    bases = base_conditions(names)
    if not finals:
        raise NoData(f"the overlap table has no fine-tuned condition for model {model!r}, so there is no "
                     "fine-tuned representation to compare the k-shot ones with")
    if not bases:
        raise NoData(f"the overlap table has no base k-shot condition for model {model!r}")
    checkpoints = shown_checkpoints(names, steps)
    styles = condition_styles(bases + [c for cs in checkpoints.values() for c in cs] + list(finals.values()), steps)
    ks = sorted(pd.to_numeric(rows["k"], errors="coerce").dropna().unique())
    k = ", ".join(f"{v:g}" for v in ks) or "?"
    fig, axes = plt.subplots(2, len(finals), figsize=(5.2 * len(finals) + 2.8, 7.6), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    for col, (method, final) in enumerate(finals.items()):
        top, bottom = axes[0, col], axes[1, col]
        for base in bases:
            found = _pair(rows, base, final)
            if not found.empty:
                top.plot(found.index, found.values, markersize=4, **styles[base])
        top.set_title(f"k-shot (ICL) vs {final} (fine-tuned, last checkpoint)", fontsize=9.5)
        if ZERO_SHOT in names:
            for checkpoint in checkpoints[method]:
                found = _pair(rows, ZERO_SHOT, checkpoint)
                if not found.empty:
                    bottom.plot(found.index, found.values, markersize=4, **styles[checkpoint])
            bottom.set_title(f"{ZERO_SHOT} (base model) vs {method} checkpoints", fontsize=9.5)
        else:
            empty_panel(bottom, f"no {ZERO_SHOT} condition to compare the checkpoints with")
        for ax in (top, bottom):
            if not ax.lines and not ax.texts:
                empty_panel(ax, "no overlap rows for these pairs")
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(f"data overlap χ_k (k = {k})")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        bottom.set_xlabel(LAYER_LABEL)
    return finish_figure(fig, axes, f"{model}: {FIGURE_TITLES['data_overlap']}", inputs.footer("data_overlap"),
                         legend_title="the other condition")


def _spread_layers(layers: Sequence[int], n: int) -> list[int]:
    layers = sorted(layers)
    if len(layers) <= n:
        return layers
    return sorted({layers[i] for i in np.round(np.linspace(0, len(layers) - 1, n)).astype(int)})


def plot_local_id_steps(inputs: FigureInputs, max_layers: int = 8) -> Figure:
    """Per fine-tuning method (a row): mean local ID against optimizer step, a line per layer (at most
    `max_layers`, evenly spread over the layers that have values), for the last-token rows and, where extracted,
    the all-token sample; then constrained accuracy (micro solid, macro dashed) against step, with each k-shot
    prompt's accuracy on the base model as a dotted horizontal line. Step 0 is `0shot` (the base model on the same
    0-shot prompts); a checkpoint saved under two names at one step is drawn once."""
    model, steps = inputs.model, inputs.steps
    rows = inputs.model_rows("metrics", "metric table")
    acc = inputs.model_rows("accuracy", "accuracy table")
    names = _keep(set(rows["condition"]) | set(acc["condition"]), inputs.conditions)
    series = step_series(names, steps)
    if not series:
        raise NoData(f"model {model!r} has no fine-tuned checkpoint with a known optimizer step in the tables, so "
                     "there is nothing to place against step (fine-tuning is off, or the step mapping is empty)")
    finetuned = {c for s in series.values() for _, c in s}
    local = [m for m in ("local_id_mean", "token_local_id_mean") if conditions_with_data(rows, [m]) & finetuned]
    start = [(0, ZERO_SHOT)] if ZERO_SHOT in names else []
    cmap = matplotlib.colormaps["viridis"]
    fig, axes = plt.subplots(len(series), len(local) + 1, figsize=(4.8 * (len(local) + 1) + 2.4,
                                                                   3.9 * len(series)),
                             squeeze=False, layout="constrained")
    base_acc = acc[acc["condition"].isin(base_conditions(names)) & (acc["condition"] != ZERO_SHOT)]
    base_colours = condition_styles(base_conditions(names))
    panels = {}  # (row, metric) -> (rows of the metric, layer x condition table, layers drawn)
    for row, (method, points) in enumerate(series.items()):
        order = [condition for _, condition in start + points]
        for metric in local:
            found = rows[(rows["metric"] == metric) & rows["condition"].isin(order)].astype({"value": float})
            table = found.pivot_table(index="layer", columns="condition", values="value", aggfunc="first")
            table = table.reindex(columns=order)
            layers = _spread_layers([layer for layer in table.index if np.isfinite(table.loc[layer]).any()],
                                    max_layers)
            panels[row, metric] = found, table, layers
    # one colour per layer drawn anywhere, by rank (dark = early, yellow = late), the same in every panel
    drawn = sorted({layer for _, _, layers in panels.values() for layer in layers})
    colour = {layer: cmap(i / max(len(drawn) - 1, 1)) for i, layer in enumerate(drawn)}
    for row, (method, points) in enumerate(series.items()):
        points = start + points
        xs = np.array([step for step, _ in points], dtype=float)
        order = [condition for _, condition in points]
        for col, metric in enumerate(local):
            ax = axes[row, col]
            found, table, layers = panels[row, metric]
            for layer in layers:
                ax.plot(xs, table.loc[layer].to_numpy(dtype=float), marker="o", markersize=3.5,
                        color=colour[layer], label=f"layer {layer:g}")
            scale = pd.to_numeric(found["scale"], errors="coerce").dropna().unique()
            what = "last token of each prompt" if metric == "local_id_mean" else "all-token sample"
            neighbours = f", L = {scale[0]:g}" if len(scale) == 1 else ""
            ax.set_title(f"{method}: mean local ID ({what}{neighbours})", fontsize=9.5)
            ax.set_ylabel("mean local ID")
            if not layers:
                empty_panel(ax, f"no finite {metric} values")
        ax = axes[row, len(local)]
        by_condition = acc.groupby("condition").first()
        for column, style in (("micro", "-"), ("macro", "--")):
            ys = [float(by_condition.at[c, column]) if c in by_condition.index else np.nan for c in order]
            ax.plot(xs, ys, color="tab:red", linestyle=style, marker="s", markersize=3.5,
                    label=f"fine-tuned, {column}")
        for _, base in base_acc.iterrows():
            ax.axhline(float(base["micro"]), color=base_colours[base["condition"]]["color"], linestyle=":",
                       linewidth=1.3, label=f"{base['condition']} (base model, micro)")
        ax.axhline(CHANCE, color="0.5", linestyle="-.", linewidth=0.9, label="chance (0.25)")
        ax.set_title(f"{method}: accuracy (constrained to A–D)", fontsize=9.5)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        for ax in axes[row]:
            ax.set_xscale("symlog", linthresh=1)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.set_xlim(left=-0.1 if start else None)
            ax.set_xlabel(STEP_LABEL)
            ax.grid(alpha=0.3)
    _two_legends(fig, axes, len(local))
    title_and_footer(fig, f"{model}: {FIGURE_TITLES['local_id_steps']}", inputs.footer("local_id_steps"))
    return fig


def _two_legends(fig: Figure, axes, n_local: int) -> None:
    """Layers (local-ID panels) in one legend, accuracy lines in another, both outside on the right."""
    def collect(panels):
        handles = {}
        for ax in panels:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        return handles

    layers = collect(axes[:, :n_local].ravel())
    layers = dict(sorted(layers.items(), key=lambda item: float(item[0].split()[-1])))
    lines = collect(axes[:, n_local].ravel())
    if layers:
        fig.legend(list(layers.values()), list(layers), loc="outside right upper", title="layer (local ID)",
                   fontsize=8, title_fontsize=9)
    if lines:
        fig.legend(list(lines.values()), list(lines), loc="outside right lower", title="accuracy", fontsize=8,
                   title_fontsize=9)


def model_figures(metrics: pd.DataFrame, overlap: pd.DataFrame, accuracy: pd.DataFrame, model: str,
                  steps: Mapping[str, int] | None, params: AnalysisParams | Mapping | None = None, *,
                  conditions: Sequence[str] | None = None, lens: pd.DataFrame | None = None) -> dict[str, Figure]:
    """Every figure of `FIGURE_NAMES` for one model, each drawn by its registry function; a figure without data
    (the logit lens without a `lens` table) says so (and why) instead."""
    inputs = FigureInputs(model, metrics, overlap, accuracy, lens, dict(steps or {}), AnalysisParams.coerce(params),
                          conditions)
    figures = {}
    for name in FIGURE_NAMES:
        try:
            figures[name] = drawer(name)(inputs)
        except NoData as reason:
            figures[name] = nothing_to_show(name, model, str(reason))
    return figures


__all__ = [
    "FIGURE_NAMES", "FigureInputs", "NoData", "Panel", "layer_figure", "model_figures", "plot_ari",
    "plot_data_overlap", "plot_id_gride", "plot_label_overlap", "plot_local_id_steps", "plot_logit_lens",
    "plot_n_clusters", "plot_probe",
]
