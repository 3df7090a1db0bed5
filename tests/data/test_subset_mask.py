"""`sampling.subset_mask`: a boolean .npy mask over the test split selects the analysis subset instead of the
seeded draw; a bad mask is refused naming the file; the workflow's `sample` job reads it as an input, by the path
the config gives."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import ROOT, run_snakemake

from repgeom.data import synthetic
from repgeom.data.__main__ import main
from repgeom.data.mmlu import DatasetError
from repgeom.data.sampling import read_subset_mask

PARAMS = {"seed": 1, "n_facts": 30, "n_dev": 5, "n_validation": 6, "n_test": 20, "n_mc_examples": 10}
N_TEST = 6 * 20  # 6 subjects


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    synthetic.generate(out, **PARAMS)
    return out


def sample(dataset, out, mask):
    return main(["sample", "--dataset-json", json.dumps({"path": str(dataset)}), "--max-per-subject", "3",
                 "--finetune-max-per-subject", "7", "--seed", "42", "--subset-mask", str(mask),
                 "--questions-out", str(out / "q.parquet"), "--subset-out", str(out / "s.parquet"),
                 "--finetune-out", str(out / "f.parquet")])


@pytest.mark.parametrize("dtype", [bool, np.uint8])
def test_selection_is_the_masks_rows_in_test_split_order(dataset, tmp_path, dtype):
    mask = np.random.default_rng(0).random(N_TEST) < 0.3
    np.save(tmp_path / "mask.npy", mask.astype(dtype))
    assert sample(dataset, tmp_path, tmp_path / "mask.npy") == 0
    questions, subset = pd.read_parquet(tmp_path / "q.parquet"), pd.read_parquet(tmp_path / "s.parquet")
    # test-split order: subjects sorted, each in source order ("test/{subject}/{row:05d}" sorts so)
    test_ids = sorted(questions.loc[questions["split"] == "test", "question_id"])
    assert len(test_ids) == N_TEST
    assert subset["question_id"].tolist() == [qid for qid, keep in zip(test_ids, mask) if keep]
    assert list(subset.columns) == list(questions.columns)  # the same rows as a seeded draw would give


def write_npz(path, mask):
    """A .npz archive under the name `path` (np.savez would add `.npz` to it)."""
    with open(path, "wb") as handle:
        np.savez(handle, mask=mask)


@pytest.mark.parametrize(("write", "message"), [
    (lambda p: np.save(p, np.ones(N_TEST - 1, bool)), f"{N_TEST - 1} entries, but the test split has {N_TEST} "),
    (lambda p: np.save(p, np.ones(N_TEST, np.float32)), "dtype float32, expected bool (or integers 0/1)"),
    (lambda p: np.save(p, np.arange(N_TEST)),
     "integer entries must be 0 or 1 (a mask, not question indices); entry 2 is 2"),
    (lambda p: np.save(p, np.ones((N_TEST, 1), bool)), "shape (120, 1), expected a 1-D mask"),
    (lambda p: np.save(p, np.zeros(N_TEST, bool)), "selects no test question"),
    (lambda p: write_npz(p, np.ones(N_TEST, bool)), "not a NumPy .npy array file"),
    (lambda p: p.write_text("1\n0\n1\n"), "not a NumPy .npy array file"),
    (lambda p: np.save(p, np.array([True, "x"], dtype=object), allow_pickle=True), "not a NumPy .npy array file"),
    (lambda p: None, "cannot read it"),
])
def test_bad_mask_is_named(tmp_path, write, message):
    path = tmp_path / "mask.npy"
    write(path)
    with pytest.raises(DatasetError, match="^" + re.escape(f"subset mask '{path}': {message}")):
        read_subset_mask(path, N_TEST)


def test_bad_mask_stops_the_command_in_one_line(dataset, tmp_path, caplog):
    np.save(tmp_path / "mask.npy", np.ones(7, bool))
    assert sample(dataset, tmp_path, tmp_path / "mask.npy") == 1
    assert f"mask.npy': 7 entries, but the test split has {N_TEST} questions" in caplog.text
    assert not list(tmp_path.glob("*.parquet"))


@pytest.mark.slow
def test_sample_job_reads_the_mask_by_the_configs_path(tmp_path):
    """An input (a changed mask re-runs `sample`; the wrapper hashes it into the record), named as the config
    names it: no absolute path in the command or the parameters Snakemake compares between runs."""
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["sampling"]["subset_mask"] = "masks/reference.npy"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "reference.npy", np.ones(3, bool))
    result = run_snakemake("results/data/analysis_subset.parquet", "-n", "-p", "--cores", "1",
                           "--configfile", "config.yaml", workdir=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    command = next(line for line in result.stdout.splitlines() if "repgeom.data sample" in line)
    assert "--inputs results/dataset masks/reference.npy --outputs" in command
    assert "--subset-mask masks/reference.npy --questions-out" in command
    assert str(tmp_path) not in command
