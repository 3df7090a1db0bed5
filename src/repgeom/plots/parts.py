"""What every figure of the report is made of: its inputs (`FigureInputs`), a metric's series against layer, the
legend, title and settings line (`finish_figure`), the note of an empty panel, the "nothing to show" stand-in, the
settings line of each figure (`settings_footer`), and writing the figures. Used by the per-model figures
(`model_figures`, `accuracy_figure`) and the figures across models (`comparison`)."""
from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from repgeom.analysis.params import AnalysisParams, gride_scale  # noqa: E402
from repgeom.io import atomic_path  # noqa: E402
from repgeom.plots.registry import FIGURE_TITLES, NoData  # noqa: E402

LENS_SETTINGS = ("logit lens: the final norm and the LM head applied to the residual stream entering block i at the last "
                 "token (layer L: the model's prediction), log-softmax over the full vocabulary; accuracy: argmax over "
                 "the letter tokens A-D; probability: the gold letter's, renormalised over A-D")


@dataclass(frozen=True)
class FigureInputs:
    """What every drawing function of the registry (`repgeom.plots.registry`) gets: the model, the merged tables it
    reads (None: not given), the optimizer step of each fine-tuned condition, the analysis settings and the
    conditions to show (None: all)."""
    model: str
    metrics: pd.DataFrame | None = None
    overlap: pd.DataFrame | None = None
    accuracy: pd.DataFrame | None = None
    lens: pd.DataFrame | None = None
    steps: Mapping[str, int] = field(default_factory=dict)
    params: AnalysisParams = field(default_factory=AnalysisParams)
    conditions: Sequence[str] | None = None

    def model_rows(self, table: str, what: str) -> pd.DataFrame:
        """The rows of this model in table `table` ("metrics", "overlap", …), or NoData saying why there are none."""
        frame = getattr(self, table)
        if frame is None:
            raise NoData(f"no {what} was given")
        rows = frame[frame["model"] == self.model]
        if rows.empty:
            raise NoData(f"the {what} has no rows for model {self.model!r}")
        return rows

    def footer(self, name: str) -> str:
        """The settings line of figure `name` (`settings_footer`)."""
        return settings_footer(name, self.params)


def metric_series(rows: pd.DataFrame, metric: str, condition: str, scale: float | None = None) -> pd.DataFrame:
    """layer, value, error of one metric and condition, by layer (finite values only; at one scale if given)."""
    mask = (rows["metric"] == metric) & (rows["condition"] == condition)
    if scale is not None:
        mask &= np.isclose(pd.to_numeric(rows["scale"], errors="coerce").astype(float), scale)
    found = rows.loc[mask, ["layer", "value", "error"]].astype(float)
    found = found[np.isfinite(found["value"])].groupby("layer", as_index=False).first()
    return found.sort_values("layer")


def conditions_with_data(rows: pd.DataFrame, metrics: Sequence[str], scale: float | None = None) -> set[str]:
    """Conditions with at least one finite value of any of the metrics (at one scale if given)."""
    mask = rows["metric"].isin(metrics) & np.isfinite(pd.to_numeric(rows["value"], errors="coerce").astype(float))
    if scale is not None:
        mask &= np.isclose(pd.to_numeric(rows["scale"], errors="coerce").astype(float), scale)
    return set(rows.loc[mask, "condition"])


def finish_figure(fig: Figure, axes, title: str, footer: str, legend_title: str = "condition") -> Figure:
    """One legend outside the axes (right), the title, and the settings line under the axes."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    labels.sort(key=lambda label: label == "majority baseline")  # reference lines after the conditions
    if handles:
        fig.legend([handles[label] for label in labels], labels, loc="outside right upper", title=legend_title,
                   fontsize=8, title_fontsize=9)
    title_and_footer(fig, title, footer)
    return fig


def title_and_footer(fig: Figure, title: str, footer: str) -> None:
    """The title at the top left (clear of the legend at the top right); the settings under the axes, wrapped
    to the figure's width."""
    fig.suptitle(title, fontsize=12, x=0.01, ha="left")
    if footer:
        width = int(fig.get_figwidth() * 15)
        fig.supxlabel(textwrap.fill(footer, width), fontsize=7.5, color="0.25", x=0.01, ha="left")


def empty_panel(ax, text: str) -> None:
    """A note in the middle of a panel that has nothing to draw."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.4", wrap=True)


def nothing_to_show(name: str, model: str, reason: str) -> Figure:
    """A figure that says there is nothing to show, and why (the workflow declares every figure)."""
    fig = plt.figure(figsize=(8, 2.6))
    fig.text(0.5, 0.72, f"{model}: {FIGURE_TITLES.get(name, name)}", ha="center", va="center", fontsize=13,
             weight="bold")
    fig.text(0.5, 0.38, "Nothing to show: " + textwrap.fill(reason, 90), ha="center", va="center", fontsize=10)
    fig.nothing_to_show = reason
    return fig


def settings_footer(name: str, params: AnalysisParams) -> str:
    """The analysis settings a figure depends on, as one line under it (`name`: a figure's, or "lens": the logit
    lens's alone)."""
    n2 = gride_scale(params.id_scale_index)
    clusters = (f"ADP clustering with Z = {params.Z:g}, no halo, on the kNN density (k = {params.density_k}) with "
                f"the Gride ID at n2 = {n2}; maxk = {params.maxk}")
    lines = {
        "id_gride": f"Gride ID at ranks (n1, n2) = ({n2 // 2}, {n2}) (id_scale_index = {params.id_scale_index}, "
                    f"range_max = {params.range_max}); error bars: standard error; maxk = {params.maxk}",
        "n_clusters": clusters,
        "ari": clusters + "; ARI against the subject and the gold letter of each prompt",
        "label_overlap": f"each point's floor({params.class_fraction:g} × class size) nearest neighbours; mean over "
                         f"classes (macro); maxk = {params.maxk}",
        "data_overlap": f"χ_k with k = {params.overlap_k}: the fraction of the k nearest neighbours two "
                        "representations of the same prompts share, at the same layer; fine-tuned checkpoints "
                        "see the 0-shot prompts",
        "probe": f"multinomial logistic regression on the first {params.probe_pca_dim} principal components, "
                 f"{params.probe_folds} stratified folds; error bars: standard deviation over folds",
        "lens": LENS_SETTINGS,
        "logit_lens": f"{LENS_SETTINGS}; letter ARI: {clusters}",
        "local_id_steps": f"local ID: TwoNN in each point's L = {params.local_id_neighbors} nearest neighbours, the "
                          f"largest {params.local_id_discard:.0%} of r2/r1 dropped; step 0 = the base model, "
                          "0-shot prompt; accuracy: argmax over the letter tokens A-D",
        "accuracy_table": "",
    }
    common = "all distances Euclidean on the distinct rows in float64"
    return "; ".join(filter(None, [lines.get(name, ""), common if name not in ("accuracy_table", "lens") else ""]))


def write_figures(figures: Mapping[str, Figure], out_dir: str | Path, pdf: bool = False,
                  dpi: int = 130) -> list[Path]:
    """`{name}.png` (and `{name}.pdf`) for each figure, each written atomically; the figures are closed."""
    out_dir = Path(out_dir)
    written = []
    for name, fig in figures.items():
        for suffix in (".png", ".pdf") if pdf else (".png",):
            path = out_dir / f"{name}{suffix}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=suffix[1:], dpi=dpi)
            written.append(path)
        plt.close(fig)
    return written


__all__ = ["FigureInputs", "LENS_SETTINGS", "NoData", "conditions_with_data", "empty_panel", "finish_figure",
           "gride_scale", "metric_series", "nothing_to_show", "settings_footer", "title_and_footer",
           "write_figures"]
