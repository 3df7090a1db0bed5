"""The prompt-control figure (`variants_{k}shot`, `python -m repgeom.plots variant-ari`): the ARI of the clusters
against layer for the plain k-shot prompt and each of its controls, from the merged metric table."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from repgeom.conditions import parse_condition, shot_condition  # noqa: E402
from repgeom.errors import InputError  # noqa: E402

METRIC_LABELS = {
    "ari_subject": "ARI with subjects",
    "ari_letter": "ARI with answer letters",
}


def metric_by_layer(metrics: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    """layer × condition table of one metric of one model."""
    rows = metrics[(metrics["model"] == model) & (metrics["metric"] == metric)]
    if rows.empty:
        raise InputError(f"metric table has no {metric!r} rows for model {model!r}")
    return rows.pivot_table(index="layer", columns="condition", values="value", aggfunc="first")


def variant_family(conditions, n_shots: int) -> list[str]:
    """The plain `{k}shot` condition first, then its `{k}shot-{variant}` controls, sorted."""
    plain = shot_condition(n_shots)
    controls = sorted(c for c in conditions if (parsed := parse_condition(c)).variant and parsed.shots == n_shots)
    return [plain, *controls] if plain in conditions else controls


def plot_variant_ari(metrics: pd.DataFrame, model: str, n_shots: int, out: str | Path) -> list[str]:
    """Subject ARI and letter ARI against layer, for the plain k-shot prompt and each of its controls."""
    conditions = variant_family(set(metrics.loc[metrics["model"] == model, "condition"]), n_shots)
    if len(conditions) < 2:
        raise InputError(f"model {model!r}: no prompt-control conditions at {n_shots} shots to compare")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True, constrained_layout=True)
    for ax, metric in zip(axes, ("ari_subject", "ari_letter")):
        table = metric_by_layer(metrics, model, metric)
        for condition in conditions:
            style = {"color": "black", "linewidth": 2.5} if condition == conditions[0] else {"linewidth": 1.5}
            ax.plot(table.index, table[condition], marker="o", markersize=3, label=condition, **style)
        ax.set_xlabel("layer")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(title="condition", fontsize=8)
    fig.suptitle(f"{model}: clusters of the last-token representation, {n_shots}-shot prompt controls")
    fig.savefig(out, dpi=120, format="png")
    plt.close(fig)
    return conditions
