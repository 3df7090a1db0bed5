"""The figure sets, in one place. Standard library only: the workflow imports this at parse time (through
`repgeom.plots`), before any plotting library is needed.

`FIGURES`, the per-model set: each figure's file name, its label in the Snakemake report, its title, and the
function that draws it. A figure is added here (and drawn by the function `draw` names, in
`repgeom.plots.model_figures` or a module of its own, called with a `parts.FigureInputs`), plus its caption
`workflow/report/{name}.rst`; the workflow's outputs, the report's labels and `python -m repgeom.plots figures` follow
from this table.

`COMPARISONS`, the figures across models (a run with two or more models): one per-layer metric each, drawn by
`repgeom.plots.comparison` against relative depth, a line per model and a panel per compared condition. Another
metric of the metric table (or of the lens table: `repgeom.tables.LENS_METRICS`) is one more entry here;
`workflow/report/model_comparison.rst` captions them all.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


class NoData(ValueError):
    """There is nothing to draw; the message says why."""


@dataclass(frozen=True)
class FigureSpec:
    name: str  # file stem: figures/{model}/{name}.png (and .pdf)
    label: str  # the report's "figure" label
    title: str  # the figure's heading (and that of its "nothing to show" stand-in)
    draw: str  # "module:function", called with a `parts.FigureInputs`; returns a Figure or raises NoData


FIGURES: dict[str, FigureSpec] = {spec.name: spec for spec in (
    FigureSpec("id_gride", "intrinsic dimension", "intrinsic dimension (Gride) against layer",
               "repgeom.plots.model_figures:plot_id_gride"),
    FigureSpec("n_clusters", "number of clusters", "number of ADP clusters against layer",
               "repgeom.plots.model_figures:plot_n_clusters"),
    FigureSpec("ari", "ARI (subjects, letters)", "ARI of the ADP clusters with subjects and with answer letters",
               "repgeom.plots.model_figures:plot_ari"),
    FigureSpec("label_overlap", "label overlap", "label overlap with subjects and with answer letters",
               "repgeom.plots.model_figures:plot_label_overlap"),
    FigureSpec("data_overlap", "data overlap ICL vs fine-tuning",
               "data overlap between in-context learning and fine-tuning",
               "repgeom.plots.model_figures:plot_data_overlap"),
    FigureSpec("probe", "linear probes", "linear-probe accuracy against layer",
               "repgeom.plots.model_figures:plot_probe"),
    FigureSpec("logit_lens", "logit lens (answer letters)",
               "logit lens on the answer letters against layer, beside the letter ARI",
               "repgeom.plots.model_figures:plot_logit_lens"),
    FigureSpec("local_id_steps", "local ID and accuracy vs step", "mean local ID and accuracy against fine-tuning step",
               "repgeom.plots.model_figures:plot_local_id_steps"),
    FigureSpec("accuracy_table", "accuracy table", "accuracy per condition",
               "repgeom.plots.accuracy_figure:plot_accuracy_table"),
)}

FIGURE_NAMES: tuple[str, ...] = tuple(FIGURES)
FIGURE_LABELS: dict[str, str] = {name: spec.label for name, spec in FIGURES.items()}
FIGURE_TITLES: dict[str, str] = {name: spec.title for name, spec in FIGURES.items()}


@dataclass(frozen=True)
class ComparisonSpec:
    name: str  # file stem: figures/{name}.png (and .pdf)
    label: str  # the report's "figure" label
    title: str  # the figure's heading
    metric: str  # the per-layer metric drawn (the metric table's `metric` column)
    ylabel: str
    ylim: tuple[float, float] | None = None
    at_gride_scale: bool = False  # a metric with several scales, drawn at n2 of analysis.params.id_scale_index
    settings: str = ""  # the settings line (`parts.settings_footer`): a per-model figure's name, or "lens"


COMPARISONS: dict[str, ComparisonSpec] = {spec.name: spec for spec in (
    ComparisonSpec("models_ari_subject", "ARI with subjects, across models",
                   "ARI of the ADP clusters with subjects, across models", "ari_subject", "ARI with subjects",
                   (-0.05, 1.05), settings="ari"),
    ComparisonSpec("models_ari_letter", "ARI with answer letters, across models",
                   "ARI of the ADP clusters with answer letters, across models", "ari_letter",
                   "ARI with answer letters", (-0.05, 1.05), settings="ari"),
    ComparisonSpec("models_id_gride", "intrinsic dimension, across models",
                   "intrinsic dimension (Gride), across models", "id_gride", "intrinsic dimension (Gride)",
                   at_gride_scale=True, settings="id_gride"),
    ComparisonSpec("models_lens_accuracy", "logit-lens accuracy, across models",
                   "logit-lens accuracy on the answer letters, across models", "lens_accuracy",
                   "logit-lens accuracy (argmax over A–D)", (-0.02, 1.02), settings="lens"),
)}

COMPARISON_NAMES: tuple[str, ...] = tuple(COMPARISONS)
COMPARISON_LABELS: dict[str, str] = {name: spec.label for name, spec in COMPARISONS.items()}


def drawer(name: str) -> Callable:
    """The function that draws figure `name` (imported on first use)."""
    module, _, function = FIGURES[name].draw.partition(":")
    return getattr(importlib.import_module(module), function)


__all__ = ["COMPARISONS", "COMPARISON_LABELS", "COMPARISON_NAMES", "ComparisonSpec", "FIGURES", "FIGURE_LABELS",
           "FIGURE_NAMES", "FIGURE_TITLES", "FigureSpec", "NoData", "drawer"]
