"""`repgeom plan` as a user runs it: on the test config (its jobs from the workflow's own dry run), with a bad
config, and with a cluster that cannot hold a job."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from repgeom.costs.cli import read_config
from repgeom.costs.estimate import load_constants
from repgeom.costs.workload import Workload
from repgeom.workflow.plan import finetuned_steps, run_conditions
from repgeom.provenance.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # each plan runs the workflow's dry run (~10 s)


def plan(capsys, *args) -> tuple[int, str, str]:
    code = main(["plan", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_of_the_test_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = plan(capsys, ROOT / "config/tiny.yaml", "--cluster", "1x0:2", "--json", "plan.json")
    assert code == 0, out
    result = json.loads(Path("plan.json").read_text())
    config = read_config(ROOT / "config/tiny.yaml")
    rules = {row["rule"]: row for row in result["rules"]}
    # Before sampling, the fine-tuned conditions follow from the fine-tuning set's size: 6 subjects x (5 dev +
    # 14 validation questions) = 114 rows.
    workload = Workload(config, load_constants(), tokenizer_folder=lambda model: None)
    assert workload.finetune_rows() == 114
    expected = set(run_conditions(config)) | set(finetuned_steps(config, lambda: 114))
    extracts = [job for job in result["jobs"] if job["rule"] == "extract"]
    assert {job["wildcards"]["condition"] for job in extracts} == expected and len(extracts) == len(expected)
    assert rules["analyze_layers"]["jobs"] == len(extracts) * 2  # 5 stored layers in blocks of 3
    # The store: every stored layer of every prompt, in whole chunks, float32.
    rows = workload.analysis_rows()
    assert rows == 600
    width = 128
    store = rules["extract"]["bytes_written"]
    assert store >= len(extracts) * 5 * rows * width * 4
    # The makespan is at least the longest chain and at most everything in a row.
    seconds = sum(job["seconds"] for job in result["jobs"])
    assert max(job["start_s"] + job["seconds"] for job in result["jobs"]) == pytest.approx(result["makespan_s"])
    assert result["makespan_s"] <= seconds
    assert "makespan on 1 x 0 GPUs (2 cores a node)" in out


def test_invalid_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    config = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    config["shots"] = ["five"]
    bad.write_text(yaml.safe_dump(config))
    code, out, err = plan(capsys, bad)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"repgeom plan: error: invalid config {bad}: shots.0: 'five' is not of type "
                                        "'integer'"]


def test_a_cluster_that_cannot_hold_a_job_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = plan(capsys, ROOT / "config/paper_llama3_70b.yaml", "--cluster", "2x1", "--gpu", "a100-40gb")
    assert code == 1 and out == ""
    line, = err.strip().splitlines()
    assert re.search(r"extract\[model=llama-3-70b, condition=\w+\] needs 5 GPUs on one node, but the cluster's "
                     r"nodes have 1", line)
    assert "finetune[model=llama-3-70b, method=lora] needs 8 GPUs on one node" in line


def test_a_model_too_large_for_its_gpus_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((ROOT / "config/paper_llama3_70b.yaml").read_text())
    config["hardware"]["models"]["llama-3-70b"]["extract"]["gpus"] = 1
    path = tmp_path / "one_gpu.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = plan(capsys, path, "--cluster", "1x8", "--gpu", "a100-40gb")
    assert code == 1
    line, = err.strip().splitlines()
    assert re.search(r"extract\[model=llama-3-70b, condition=\w+\] needs 14\d GB on each of its 1 GPU\(s\) "
                     r"\(weights and activations\), but one a100-40gb GPU has 40 GB", line)


def test_unknown_gpu_kind_names_the_known_ones(tmp_path, capsys):
    code, _, err = plan(capsys, ROOT / "config/tiny.yaml", "--gpu", "v100")
    assert code == 1 and "--gpu v100: not a device of the cost model (known: a100-40gb, a100-80gb" in err
