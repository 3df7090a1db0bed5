"""The lens table (`python -m repgeom.plots lens-table`, the workflow's `lens_table` rule): the extract stage's
per-condition lens files stacked with their model and condition, a group from before the lens was kept adding no
rows; and its values as metrics of the long-form metric table, for the figures."""
import numpy as np
import pandas as pd

from repgeom.extract.accuracy import LENS_COLUMNS, lens_frame, write_lens
from repgeom.plots.__main__ import main
from repgeom.tables import LENS_TABLE_COLUMNS, with_lens_metrics


def test_lens_files_stack_into_one_table(tmp_path, caplog):
    folder = tmp_path / "extract" / "m"
    folder.mkdir(parents=True)
    probabilities = np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.1, 0.1]]])
    write_lens(lens_frame(["D"], np.log(probabilities)), folder / "0shot.lens.parquet", {"group": "m/0shot"})
    write_lens(pd.DataFrame(columns=list(LENS_COLUMNS)), folder / "ft-lora-step1.lens.parquet")  # an older group
    out = tmp_path / "lens.csv"
    assert main(["lens-table", "--out", str(out), str(folder / "0shot.lens.parquet"),
                 str(folder / "ft-lora-step1.lens.parquet")]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == list(LENS_TABLE_COLUMNS)
    assert table[["model", "condition", "layer", "n"]].values.tolist() == [["m", "0shot", 0, 1], ["m", "0shot", 1, 1]]
    np.testing.assert_allclose(table[["accuracy", "gold_prob", "gold_prob_full"]], [[1, 0.4, 0.4], [0, 0.125, 0.1]])

    pd.DataFrame({"layer": [0]}).to_parquet(folder / "1shot.lens.parquet")
    assert main(["lens-table", "--out", str(out), str(folder / "1shot.lens.parquet")]) == 1
    assert "1shot.lens.parquet' lacks column(s) ['n', 'accuracy'" in caplog.text


def test_lens_values_join_the_metric_table_as_metrics():
    lens = pd.DataFrame({"model": ["m", "m"], "condition": ["0shot", "0shot"], "layer": [0, 1], "n": [5, 5],
                         "accuracy": [0.2, 0.8], "gold_prob": [0.25, 0.7], "gold_prob_full": [0.01, 0.6]})
    metrics = pd.DataFrame({"model": ["m"], "condition": ["0shot"], "layer": [1], "metric": ["ari_letter"],
                            "scale": [np.nan], "value": [0.3], "error": [np.nan]})
    joined = with_lens_metrics(metrics, lens)
    assert len(joined) == 1 + 6 and joined["scale"].isna().all() and joined["error"].isna().all()
    values = joined.set_index(["metric", "layer"])["value"]
    assert values["lens_accuracy", 1] == 0.8 and values["lens_gold_prob", 0] == 0.25
    assert values["lens_gold_prob_full", 1] == 0.6 and values["ari_letter", 1] == 0.3
    assert with_lens_metrics(metrics, lens.iloc[:0]) is metrics
