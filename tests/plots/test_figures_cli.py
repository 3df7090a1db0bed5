import json

import pandas as pd
import pytest
from PIL import Image

from repgeom.plots import FIGURE_NAMES
from repgeom.plots.__main__ import main

PNG = b"\x89PNG\r\n\x1a\n"
SETTINGS = json.dumps({"maxk": 100, "range_max": 64, "id_scale_index": 4, "local_id_neighbors": 64})


def checkpoints_files(steps, folder) -> list[str]:
    """`METHOD=FILE` per method, each FILE a training run's checkpoints.json ({checkpoint: step})."""
    by_method = {}
    for condition, step in steps.items():
        method, checkpoint = condition.removeprefix("ft-").rsplit("-", 1)
        by_method.setdefault(method, {})[checkpoint] = step
    specs = []
    for method, run in by_method.items():
        (folder / f"{method}.json").write_text(json.dumps(run))
        specs.append(f"{method}={folder / f'{method}.json'}")
    return specs


def figures_args(paths, out_dir, steps, *extra, model="m", settings=SETTINGS):
    checkpoints = ["--checkpoints", *checkpoints_files(steps, paths["metrics"].parent)] if steps else []
    return ["figures", "--metrics", str(paths["metrics"]), "--overlap", str(paths["overlap"]),
            "--accuracy", str(paths["accuracy"]), "--lens", str(paths["lens"]), *checkpoints, "--settings-json",
            settings, "--model", model, "--out-dir", str(out_dir), *extra]


def test_figures_writes_every_named_png_and_pdf(table_files, synthetic, tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "figures" / "m"
    assert main(figures_args(table_files, out, synthetic.STEPS, "--pdf")) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}{suffix}" for name in FIGURE_NAMES for suffix in (".png", ".pdf"))  # nothing temporary left
    for name in FIGURE_NAMES:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 30_000, name
        with Image.open(png) as image:
            width, height = image.size
        assert 600 <= width <= 3000 and 300 <= height <= 2500, (name, image.size)
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert "nothing to show" not in caplog.text


def test_figures_without_finetuning(table_files, synthetic, tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "base-only"
    assert main(figures_args(table_files, out, {}, "--conditions", *synthetic.BASE)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in FIGURE_NAMES)
    assert "local_id_steps: nothing to show: model 'm' has no fine-tuned checkpoint" in caplog.text
    assert "data_overlap: nothing to show" in caplog.text and "ari: drawn" in caplog.text
    assert (out / "local_id_steps.png").stat().st_size > 5_000


def test_a_lens_table_without_rows_leaves_only_the_lens_figure_empty(table_files, synthetic, tmp_path, caplog):
    """Groups extracted before the logit lens was kept give lens files, and a lens table, without rows."""
    caplog.set_level("INFO")
    pd.read_csv(table_files["lens"]).iloc[:0].to_csv(table_files["lens"], index=False)
    out = tmp_path / "figures"
    assert main(figures_args(table_files, out, synthetic.STEPS)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in FIGURE_NAMES)
    assert "logit_lens: nothing to show: the lens table has no rows for model 'm'" in caplog.text
    assert "ari: drawn" in caplog.text and "probe: drawn" in caplog.text


@pytest.mark.parametrize("change, message", [
    (lambda p: pd.read_parquet(p["metrics"]).drop(columns="scale").to_parquet(p["metrics"]),
     "all.parquet: the metric table lacks column(s) scale"),
    (lambda p: pd.read_parquet(p["overlap"]).iloc[:0].to_parquet(p["overlap"]),
     "overlap.parquet: the overlap table is empty"),
    (lambda p: pd.read_csv(p["accuracy"]).drop(columns=["micro", "macro"]).to_csv(p["accuracy"], index=False),
     "accuracy.csv: the accuracy table lacks column(s) micro, macro"),
    (lambda p: pd.read_csv(p["accuracy"]).query("model != 'm'").to_csv(p["accuracy"], index=False),
     "accuracy.csv: the accuracy table has no rows for model 'm' (it has: other)"),
    (lambda p: p["metrics"].write_bytes(b"not parquet"), "all.parquet: cannot read the metric table"),
    (lambda p: p["overlap"].unlink(), "overlap.parquet: overlap table not found"),
    (lambda p: pd.read_parquet(p["metrics"]).replace({"condition": {"1shot": "one shot"}}).to_parquet(p["metrics"]),
     "all.parquet: the metric table's column condition: condition 'one shot' is not"),
    (lambda p: pd.read_csv(p["lens"]).drop(columns="gold_prob").to_csv(p["lens"], index=False),
     "lens.csv: the lens table lacks column(s) gold_prob"),
    (lambda p: pd.read_csv(p["lens"]).replace({"condition": {"1shot": "one shot"}}).to_csv(p["lens"], index=False),
     "lens.csv: the lens table's column condition: condition 'one shot' is not"),
])
def test_bad_input_names_the_file_and_what_is_missing(table_files, synthetic, tmp_path, caplog, capsys, change,
                                                      message):
    change(table_files)
    out = tmp_path / "out"
    assert main(figures_args(table_files, out, synthetic.STEPS)) == 1
    assert message in caplog.text
    assert "Traceback" not in caplog.text + capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("option, value, message", [
    ("--model", "nope", "all.parquet: the metric table has no rows for model 'nope' (it has: m, other)"),
    ("--settings-json", '{"maxk": 100, "bogus": 1}', "--settings-json: unknown analysis parameter(s) ['bogus']"),
    ("--settings-json", "{maxk: 1", "--settings-json is not valid JSON"),
    ("--checkpoints", "lora=missing.json", "is neither JSON nor an existing JSON file"),
    ("--conditions", "7shot", "all.parquet: the metric table has no rows for condition(s) 7shot of model 'm'"),
])
def test_bad_options_are_one_line_errors(table_files, synthetic, tmp_path, caplog, option, value, message):
    args = figures_args(table_files, tmp_path / "out", synthetic.STEPS)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    assert main(args) == 1
    assert message in caplog.text
    assert not (tmp_path / "out").exists()


def test_steps_from_each_training_runs_checkpoints_file(synthetic, tmp_path):
    """The workflow hands each run's checkpoints.json ({checkpoint: step}); conditions are ft-{method}-{checkpoint}."""
    from repgeom.plots.inputs import InputError, steps_from_runs

    assert steps_from_runs(checkpoints_files(synthetic.STEPS, tmp_path)) == synthetic.STEPS
    with pytest.raises(InputError, match="expected METHOD=PATH"):
        steps_from_runs(["lora"])
    for run, message in (({"step1": -1}, "the step of 'ft-lora-step1' must be an integer >= 0"),
                         ({"best": 3}, "condition 'ft-lora-best' is not"),
                         ([1, 2], "bad.json.* must be a JSON object, not list")):
        (tmp_path / "bad.json").write_text(json.dumps(run))
        with pytest.raises(InputError, match=message):
            steps_from_runs([f"lora={tmp_path / 'bad.json'}"])
