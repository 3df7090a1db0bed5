"""Figures across models (repgeom.plots.comparison, `python -m repgeom.plots compare-models`, the workflow's
`model_comparison` rule): models of different depths on one relative-depth axis, a panel per condition, a line per
model; a condition one model lacks is an error naming the model and the condition."""
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import ROOT, run_snakemake

from repgeom.errors import InputError
from repgeom.plots import COMPARISON_NAMES
from repgeom.plots.__main__ import main
from repgeom.plots.comparison import comparison_figures
from repgeom.tables import LENS_TABLE_COLUMNS, with_lens_metrics

WANTED = ["0shot", "5shot", "ft-lora-last"]
SETTINGS = '{"id_scale_index": 4}'


def model_rows(synthetic, model, n_layers, conditions=None):
    """A model's metric rows with its logit lens's (as `compare-models` joins them)."""
    conditions = conditions or synthetic.CONDITIONS
    return with_lens_metrics(synthetic.metric_rows(model=model, n_layers=n_layers, conditions=conditions),
                             synthetic.lens_rows(model=model, n_layers=n_layers, conditions=conditions))


@pytest.fixture
def two_models(synthetic):
    """model 'a' with 4 blocks (5 stored layers) and model 'b' with 8 blocks (9 stored layers)."""
    return {"a": model_rows(synthetic, "a", 5), "b": model_rows(synthetic, "b", 9)}


def test_models_share_the_relative_depth_axis(two_models, synthetic):
    steps = {"a": synthetic.STEPS, "b": synthetic.STEPS}
    figures = comparison_figures(two_models, WANTED, steps, {"id_scale_index": 4})
    assert list(figures) == list(COMPARISON_NAMES)
    assert not any(hasattr(fig, "nothing_to_show") for fig in figures.values())
    panels = figures["models_ari_subject"].axes[:3]
    assert [ax.get_title() for ax in panels] == ["0shot", "5shot", "ft-lora-last: ft-lora-epoch4"]
    for ax in panels:
        a, b = ax.get_lines()
        assert (a.get_label(), b.get_label()) == ("a (L = 4)", "b (L = 8)")
        # layer 0 has no value (degenerate); layers 1..L at layer / L
        np.testing.assert_allclose(a.get_xdata(), np.arange(1, 5) / 4)
        np.testing.assert_allclose(b.get_xdata(), np.arange(1, 9) / 8)
    # ft-lora-last is each model's last checkpoint; Gride at n2 = 2 ** (id_scale_index + 1) = 32
    rows = two_models["b"]
    expected = rows[(rows["metric"] == "id_gride") & (rows["condition"] == "ft-lora-epoch4") & (rows["scale"] == 32)]
    a, b = figures["models_id_gride"].axes[2].containers  # with the standard error
    assert b.get_label() == "b (L = 8)"
    np.testing.assert_allclose(np.asarray(b.lines[0].get_ydata(), float), expected["value"].to_numpy(float)[1:])
    # The logit lens has a value at layer 0 too.
    a, b = figures["models_lens_accuracy"].axes[1].get_lines()
    np.testing.assert_allclose(b.get_xdata(), np.arange(9) / 8)
    lens = rows[(rows["metric"] == "lens_accuracy") & (rows["condition"] == "5shot")].sort_values("layer")
    np.testing.assert_allclose(b.get_ydata(), lens["value"])


@pytest.mark.parametrize(("b_conditions", "message"), [
    (["0shot", "1shot", "ft-lora-epoch4"], "model 'b' has no rows for condition '5shot' to compare (its conditions: "
                                           "0shot, 1shot, ft-lora-epoch4)"),
    (["0shot", "5shot"], "model 'b' has no checkpoint of method 'lora' to compare"),
])
def test_a_condition_one_model_lacks_is_named(two_models, synthetic, b_conditions, message):
    two_models["b"] = model_rows(synthetic, "b", 9, b_conditions)
    with pytest.raises(InputError, match=re.escape(message)):
        comparison_figures(two_models, WANTED, {"a": synthetic.STEPS, "b": synthetic.STEPS})


def test_compare_models_command(synthetic, tmp_path, caplog):
    caplog.set_level("INFO")
    metrics, lens = tmp_path / "all.parquet", tmp_path / "lens.csv"
    pd.concat([synthetic.metric_rows(model="a"), synthetic.metric_rows(model="b", n_layers=9)],
              ignore_index=True).to_parquet(metrics)
    pd.concat([synthetic.lens_rows(model="a"), synthetic.lens_rows(model="b", n_layers=9)],
              ignore_index=True).to_csv(lens, index=False)
    checkpoints = tmp_path / "checkpoints.json"
    checkpoints.write_text(pd.Series({c.removeprefix("ft-lora-"): s for c, s in synthetic.STEPS.items()}).to_json())
    args = ["compare-models", "--metrics", str(metrics), "--lens", str(lens), "--models", "b", "a",
            "--conditions", *WANTED,
            "--checkpoints", f"a:lora={checkpoints}", f"b:lora={checkpoints}", "--settings-json", SETTINGS,
            "--out-dir", str(tmp_path / "figures")]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(f"{n}.png" for n in COMPARISON_NAMES)
    assert "nothing to show" not in caplog.text

    assert main([*args[:-1], str(tmp_path / "bad"), "--conditions", "0shot", "2shot-shuffled"]) == 1
    assert f"{metrics}: model 'b' has no rows for condition '2shot-shuffled'" in caplog.text
    assert main([*args, "--checkpoints", f"c:lora={checkpoints}"]) == 1
    assert "--checkpoints 'c:lora=" in caplog.text and "MODEL one of --models (b, a)" in caplog.text
    assert not (tmp_path / "bad").exists()

    # Groups extracted before the logit lens was kept: an empty lens table, the other figures as before.
    caplog.clear()
    pd.DataFrame(columns=list(LENS_TABLE_COLUMNS)).to_csv(lens, index=False)
    assert main([*args[:-1], str(tmp_path / "no-lens")]) == 0
    assert "models_lens_accuracy: nothing to show: no model has finite lens_accuracy values" in caplog.text
    assert "models_ari_subject: drawn" in caplog.text


def two_model_config(tmp_path, **comparison):
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["models"]["tiny-llama-b"] = config["models"]["tiny-llama"]
    if comparison:
        config["model_comparison"] = comparison
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return run_snakemake("results/figures/models_ari_subject.png", "-n", "-p", "--cores", "1", "--configfile",
                         "config.yaml", workdir=tmp_path, cwd=tmp_path)


@pytest.mark.slow
def test_the_rule_runs_with_two_models_and_checks_the_conditions(tmp_path):
    result = two_model_config(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # the default: the fewest and the most shots, each method's last checkpoint
    assert "python -m repgeom.plots compare-models" in result.stdout
    assert "--models tiny-llama tiny-llama-b --conditions 0shot 5shot ft-lora-last --checkpoints" in result.stdout
    result = two_model_config(tmp_path, conditions=["0shot", "3shot", "ft-adam-last"])
    assert result.returncode != 0
    assert "model_comparison.conditions: 3shot, ft-adam-last not made by this run" in result.stdout + result.stderr
