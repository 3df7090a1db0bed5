"""Job resources and config checks as the rules get them, tested without Snakemake (repgeom.workflow)."""
from pathlib import Path
from types import SimpleNamespace

import yaml

from repgeom.analysis.params import layer_memory_mb
from repgeom.workflow.config import cross_section_errors
from repgeom.workflow.resources import MMLU_TEST_ROWS, JobResources, analysis_points

ROOT = Path(__file__).resolve().parents[2]


def config(name="config.yaml", **hardware):
    loaded = yaml.safe_load((ROOT / "config" / name).read_text())
    loaded["hardware"].update(hardware)
    return loaded


def jobs(cfg, environ=None, width=576, subjects=6):
    return JobResources(cfg, hidden_size=lambda model: width, generated_subjects=subjects, environ=environ or {})


def test_kind_model_override_and_retry_growth():
    cfg = config(models={"big": {"extract": {"gpus": 2, "cpus": 8, "mem_mb": 1000, "runtime": 60}}})
    resources = jobs(cfg).resources("extract")
    assert resources["gpu"](SimpleNamespace(model="smollm2-135m")) == 0
    assert resources["cpus_per_task"](SimpleNamespace(model="smollm2-135m")) == 1  # config.yaml: one core a job
    big = SimpleNamespace(model="big")
    assert [resources["mem_mb"](big, attempt) for attempt in (1, 2, 3)] == [1000, 1500, 2250]
    assert resources["runtime"](big, 2) == 90
    assert jobs(cfg).threads("no_such_kind")(SimpleNamespace()) == cfg["hardware"]["jobs"]["default"]["cpus"]


def test_analysis_memory_is_at_least_one_layer():
    cfg = config()
    points = analysis_points(cfg, 6)
    assert points == max(6 * cfg["sampling"]["max_per_subject"], cfg["extraction"]["token_sample"]["size"])
    need = layer_memory_mb(points, 576, cfg["analysis"]["params"])
    assert jobs(cfg).resources("analyze")["mem_mb"](SimpleNamespace(model="smollm2-135m"), 1) == max(need, 2000)
    assert jobs(cfg, width=None).analysis_memory_mb("smollm2-135m") == 0
    cfg["dataset"] = {"name": "mmlu", "id": "cais/mmlu"}
    cfg["sampling"]["max_per_subject"] = 10_000
    assert analysis_points(cfg, None) == MMLU_TEST_ROWS


def test_slurm_partition_and_account_from_config_else_environment():
    cfg = config(jobs={"default": {"gpus": 0, "cpus": 1, "mem_mb": 100, "runtime": 1},
                       "extract": {"gpus": 1, "cpus": 1, "mem_mb": 100, "runtime": 1}})
    none = jobs(cfg).resources("extract")
    assert "slurm_partition" not in none and "slurm_account" not in none
    environ = {"SLURM_GPU_PARTITION": "gpu", "SLURM_CPU_PARTITION": "cpu", "SLURM_ACCOUNT": "lab"}
    placed = jobs(cfg, environ)
    assert placed.resources("extract")["slurm_partition"](SimpleNamespace(model="m")) == "gpu"
    assert placed.resources("sample")["slurm_partition"](SimpleNamespace()) == "cpu"
    assert placed.resources("sample")["slurm_account"] == "lab"
    cfg["slurm"]["account"] = "mine"
    assert jobs(cfg, environ).resources("sample")["slurm_account"] == "mine"


def test_cross_section_errors_name_the_key():
    assert cross_section_errors(config()) == [] and cross_section_errors(config("tiny.yaml")) == []
    cfg = config("tiny.yaml")
    cfg["dataset"]["generate"]["kind"] = "facts"
    cfg["finetune"]["methods"]["lora"]["lora_r"] = 0
    problems = cross_section_errors(cfg)
    assert problems[0].startswith("models.tiny-llama.build: a built model learns from the invented dataset")
    assert problems[1].startswith("finetune.methods.lora: ") and "lora_r" in problems[1]
