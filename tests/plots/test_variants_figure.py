import numpy as np
import pandas as pd
import pytest

from repgeom.plots.__main__ import main
from repgeom.plots.variants_figure import metric_by_layer, variant_family


def metric_table(conditions, n_layers=5):
    rows = []
    for c, condition in enumerate(conditions):
        for layer in range(n_layers):
            for metric in ("ari_subject", "ari_letter"):
                rows.append({"model": "m", "condition": condition, "layer": layer, "metric": metric,
                             "scale": pd.NA, "value": (c + 1) * layer / 10, "error": np.nan, "note": ""})
    return pd.DataFrame(rows)


def test_variant_family_puts_plain_first():
    conditions = {"0shot", "5shot", "5shot-wrong_answers", "5shot-cross_subject", "2shot-shuffled"}
    assert variant_family(conditions, 5) == ["5shot", "5shot-cross_subject", "5shot-wrong_answers"]


def test_metric_by_layer_pivots():
    table = metric_by_layer(metric_table(["5shot", "5shot-shuffled"]), "m", "ari_subject")
    assert table.shape == (5, 2) and table.loc[4, "5shot-shuffled"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no 'id_gride' rows for model 'm'"):
        metric_by_layer(metric_table(["5shot"]), "m", "id_gride")


def test_variant_figure_is_a_png(tmp_path, caplog):
    caplog.set_level("INFO")
    metric_table(["0shot", "5shot", "5shot-shuffled", "5shot-gibberish"]).to_parquet(tmp_path / "m.parquet")
    out = tmp_path / "fig.png"
    assert main(["variant-ari", "--metrics", str(tmp_path / "m.parquet"), "--model", "m", "--shots", "5",
                 "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "5shot, 5shot-gibberish, 5shot-shuffled" in caplog.text


def test_no_controls_is_an_error_and_no_file(tmp_path, caplog):
    metric_table(["0shot", "5shot"]).to_parquet(tmp_path / "m.parquet")
    out = tmp_path / "fig.png"
    assert main(["variant-ari", "--metrics", str(tmp_path / "m.parquet"), "--model", "m", "--shots", "5",
                 "--out", str(out)]) == 1
    assert "no prompt-control conditions at 5 shots" in caplog.text and not out.exists()
