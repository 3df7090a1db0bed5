import numpy as np
import pytest
from matplotlib import pyplot as plt

from repgeom.plots import FIGURE_NAMES
from repgeom.plots.model_figures import (
    NoData,
    model_figures,
    plot_ari,
    plot_data_overlap,
    plot_id_gride,
    plot_label_overlap,
    plot_local_id_steps,
    plot_logit_lens,
    plot_n_clusters,
    plot_probe,
)
from repgeom.analysis.params import AnalysisParams
from repgeom.plots.accuracy_figure import plot_accuracy_table
from repgeom.plots.parts import FigureInputs, settings_footer

SHOWN = ["0shot", "1shot", "2shot", "5shot", "ft-lora-epoch1", "ft-lora-epoch2", "ft-lora-epoch3", "ft-lora-epoch4"]


def legend_conditions(fig, which=0):
    """Legend entries with the '(step N)' suffix removed."""
    return [text.get_text().split(" (")[0] for text in fig.legends[which].get_texts()]


def assert_readable(fig):
    """Every text inside the canvas; legends clear of the axes, of the title and of each other."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    texts = [t for t in fig.texts if t.get_text()]
    for attr in ("_suptitle", "_supxlabel"):
        if getattr(fig, attr, None) is not None:
            texts.append(getattr(fig, attr))
    for ax in fig.axes:
        texts += [ax.xaxis.label, ax.yaxis.label, ax.title]
    for text in (t for t in texts if t.get_text()):
        box = text.get_window_extent(renderer)
        assert box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1, f"{text.get_text()!r} cut left/right"
        assert box.y0 >= canvas.y0 - 1 and box.y1 <= canvas.y1 + 1, f"{text.get_text()!r} cut top/bottom"
    legends = [legend.get_window_extent(renderer) for legend in fig.legends]
    for i, box in enumerate(legends):
        assert box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1 and box.y0 >= -1 and box.y1 <= canvas.y1 + 1
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "legend covers an axes"
        if getattr(fig, "_suptitle", None) is not None:
            assert not box.overlaps(fig._suptitle.get_window_extent(renderer)), "legend covers the title"
        for other in legends[i + 1:]:
            assert not box.overlaps(other), "legends overlap"


LAYERWISE = {"id_gride": plot_id_gride, "n_clusters": plot_n_clusters, "ari": plot_ari,
             "label_overlap": plot_label_overlap, "probe": plot_probe}


def inputs(tables, steps=None, model="m", **kwargs):
    """The figure inputs of `model` from the synthetic (metrics, overlap, accuracy) tables."""
    metrics, overlap, accuracy = tables
    return FigureInputs(model, metrics, overlap, accuracy, steps=steps or {}, **kwargs)


@pytest.mark.parametrize("name", list(LAYERWISE))
def test_layerwise_figures_label_axes_and_list_the_shown_conditions(name, tables, synthetic):
    fig = LAYERWISE[name](inputs(tables, synthetic.STEPS))
    try:
        assert all(ax.get_xlabel().startswith("layer") and ax.get_ylabel() for ax in fig.axes)
        expected = SHOWN + (["majority baseline"] if name == "probe" else [])
        assert legend_conditions(fig) == expected
        assert "(step 16)" in fig.legends[0].get_texts()[5].get_text()
        assert fig._suptitle.get_text().startswith("m: ")
        assert_readable(fig)
    finally:
        plt.close(fig)


def test_logit_lens_beside_the_letter_ari(tables, lens, synthetic):
    fig = plot_logit_lens(inputs(tables, synthetic.STEPS, lens=lens))
    try:
        accuracy, probability, ari = fig.axes
        assert legend_conditions(fig) == SHOWN
        assert all(ax.get_xlabel().startswith("layer") for ax in fig.axes)
        assert "A–D" in accuracy.get_ylabel() and "A–D" in probability.get_ylabel() and "ARI" in ari.get_ylabel()
        rows = lens[(lens.model == "m") & (lens.condition == "5shot")].sort_values("layer")
        for ax, column in ((accuracy, "accuracy"), (probability, "gold_prob")):
            line = next(line for line in ax.lines if line.get_label() == "5shot")
            assert list(line.get_xdata()) == [0, 1, 2, 3, 4]  # the lens has layer 0, where the ARI has no value
            np.testing.assert_allclose(line.get_ydata(), rows[column])
        assert list(next(line for line in ari.lines if line.get_label() == "5shot").get_xdata()) == [1, 2, 3, 4]
        footer = fig._supxlabel.get_text().replace("\n", " ")
        assert "renormalised over A-D" in footer and "ADP clustering" in footer
        assert_readable(fig)
    finally:
        plt.close(fig)
    with pytest.raises(NoData, match="the lens table has no rows for model 'm'"):
        plot_logit_lens(inputs(tables, lens=lens[lens.model != "m"]))
    with pytest.raises(NoData, match="no lens table was given"):
        plot_logit_lens(inputs(tables))


def test_id_uses_the_configured_gride_scale_with_error_bars(tables, synthetic):
    metrics = tables[0]
    fig = plot_id_gride(inputs(tables, synthetic.STEPS, params=AnalysisParams(id_scale_index=4)))
    ax = fig.axes[0]
    # errorbar containers, one per condition, each holding the data line
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    rows = metrics[(metrics.model == "m") & (metrics.metric == "id_gride") & (metrics.scale == 32)
                   & (metrics.condition == "2shot") & (metrics.layer > 0)].sort_values("layer")
    assert list(lines["2shot"].get_xdata()) == [1, 2, 3, 4]  # layer 0 is NaN and left out
    np.testing.assert_allclose(np.asarray(lines["2shot"].get_ydata(), float), rows["value"])
    assert "n2 = 32" in ax.get_ylabel()
    plt.close(fig)
    with pytest.raises(NoData, match="id_gride values at scale 128"):
        plot_id_gride(inputs(tables, params=AnalysisParams(id_scale_index=6)))


def test_local_id_against_step_uses_the_step_mapping_deduped(tables, synthetic):
    metrics, _, accuracy = tables
    fig = plot_local_id_steps(inputs(tables, synthetic.STEPS))
    try:
        expected = [0, 1, 2, 3, 5, 8, 13, 16, 20, 24, 32]  # 0 = 0shot; step8/epoch1 and step32/epoch4 once each
        local, token, acc = fig.axes
        assert len(local.lines) == 4  # layers 1-4 (layer 0 has no value)
        for ax in fig.axes:
            assert ax.get_xlabel().startswith("optimizer step") and ax.get_ylabel()
        for line in local.lines + token.lines:
            assert list(line.get_xdata()) == expected
        assert [line.get_label() for line in token.lines] == ["layer 2", "layer 4"]
        micro = next(line for line in acc.lines if line.get_label() == "fine-tuned, micro")
        assert list(micro.get_xdata()) == expected
        by_condition = accuracy[accuracy.model == "m"].set_index("condition")["micro"]
        assert micro.get_ydata()[-1] == pytest.approx(by_condition["ft-lora-epoch4"])
        assert micro.get_ydata()[0] == pytest.approx(by_condition["0shot"])
        assert legend_conditions(fig, 0) == ["layer 1", "layer 2", "layer 3", "layer 4"]
        assert "5shot" in legend_conditions(fig, 1)
        assert_readable(fig)
    finally:
        plt.close(fig)


def test_data_overlap_compares_each_shot_with_the_last_checkpoint(tables, synthetic):
    fig = plot_data_overlap(inputs(tables, synthetic.STEPS))
    try:
        top, bottom = fig.axes
        assert [line.get_label() for line in top.lines] == ["0shot", "1shot", "2shot", "5shot"]
        assert "ft-lora-epoch4" in top.get_title()
        assert [line.get_label().split(" (")[0] for line in bottom.lines] == SHOWN[4:]
        # pairs are stored in either order: (5shot, ft-lora-epoch4) has the same level -> overlap 1
        assert list(top.lines[3].get_xdata()) == [1, 2, 3, 4]
        np.testing.assert_allclose(top.lines[3].get_ydata(), 1.0)
        assert "k = 30" in top.get_ylabel() and bottom.get_xlabel().startswith("layer")
        assert legend_conditions(fig) == SHOWN
        assert_readable(fig)
    finally:
        plt.close(fig)


def test_accuracy_table_lists_every_condition_in_order_with_steps(tables, synthetic):
    fig = plot_accuracy_table(inputs(tables, synthetic.STEPS))
    names = [row[0] for row in fig.table_cells]
    assert names[:5] == ["0shot", "1shot", "2shot", "5shot", "5shot-shuffled"]
    assert len(names) == len(synthetic.CONDITIONS) and names[-1] == "ft-lora-step32"
    assert dict((row[0], row[1]) for row in fig.table_cells)["ft-lora-epoch2"] == "16"
    assert_readable(fig)
    plt.close(fig)


def test_model_figures_say_why_when_there_is_nothing_to_show(synthetic):
    base = synthetic.BASE + synthetic.CONTROLS
    metrics = synthetic.metric_rows(conditions=base)
    metrics = metrics[~metrics.metric.str.startswith("probe")]
    figures = model_figures(metrics, synthetic.overlap_rows(conditions=base), synthetic.accuracy_rows(conditions=base),
                            "m", {}, {"id_scale_index": 4})
    try:
        assert list(figures) == list(FIGURE_NAMES)
        empty = {name: getattr(fig, "nothing_to_show", None) for name, fig in figures.items()}
        assert "no fine-tuned condition" in empty["data_overlap"]
        assert "no fine-tuned checkpoint" in empty["local_id_steps"]
        assert "probe_subject / probe_letter" in empty["probe"]
        assert "no lens table was given" in empty["logit_lens"]
        assert {name for name, reason in empty.items() if reason is None} == {
            "id_gride", "n_clusters", "ari", "label_overlap", "accuracy_table"}
        assert legend_conditions(figures["ari"]) == synthetic.BASE  # the control is left out
        for name in ("probe", "local_id_steps"):
            assert "Nothing to show" in " ".join(t.get_text() for t in figures[name].texts)
            assert_readable(figures[name])
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_other_models_rows_are_ignored_and_an_unknown_model_has_nothing(tables):
    with pytest.raises(NoData, match="no rows for model 'nope'"):
        plot_ari(inputs(tables, model="nope"))
    fig = plot_ari(inputs(tables, model="other"))
    assert legend_conditions(fig) == ["0shot", "1shot", "2shot", "5shot"]
    plt.close(fig)


def test_footers_state_the_settings():
    params = AnalysisParams(maxk=100, id_scale_index=3, Z=2.0, class_fraction=0.25, overlap_k=20,
                            local_id_neighbors=64)
    assert "(n1, n2) = (8, 16)" in settings_footer("id_gride", params)
    assert "Z = 2" in settings_footer("ari", params) and "n2 = 16" in settings_footer("n_clusters", params)
    assert "floor(0.25" in settings_footer("label_overlap", params)
    assert "k = 20" in settings_footer("data_overlap", params)
    assert "L = 64" in settings_footer("local_id_steps", params)
