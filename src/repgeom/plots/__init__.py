"""Figures of the report. The figure set (`FIGURE_NAMES`: the files `python -m repgeom.plots figures` writes per
model, `{name}.png`, and `{name}.pdf` with --pdf; `FIGURE_LABELS`: their labels in the report) and the figures
across models (`COMPARISON_NAMES`, `COMPARISON_LABELS`: what `python -m repgeom.plots compare-models` writes) come
from `repgeom.plots.registry`, importable without matplotlib for the workflow's output lists.

Modules: `registry` (the figure sets), `parts` (what every figure is made of: its inputs, series, legend, settings
line; writing figures), `model_figures` (one model's figure set from the merged tables), `comparison` (several models
side by side against relative depth), `accuracy_figure` (the accuracy table drawn as a figure), `variants_figure`
(the prompt-control figure), `selection` (which conditions a figure shows, in which colour), `inputs` (reading and
checking the figure commands' inputs). The tables themselves (accuracy CSV, merged metric tables) are
`repgeom.tables`."""

from repgeom.plots.registry import (COMPARISON_LABELS, COMPARISON_NAMES, COMPARISONS, FIGURE_LABELS, FIGURE_NAMES,
                                    FIGURE_TITLES, FIGURES, NoData)

__all__ = ["COMPARISONS", "COMPARISON_LABELS", "COMPARISON_NAMES", "FIGURES", "FIGURE_LABELS", "FIGURE_NAMES",
           "FIGURE_TITLES", "NoData"]
