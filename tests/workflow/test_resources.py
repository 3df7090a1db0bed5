"""Job resources and config checks as the rules get them, tested without Snakemake (repgeom.workflow)."""
from pathlib import Path
from types import SimpleNamespace

import yaml

from repgeom.analysis.params import layer_memory_mb
from repgeom.workflow.config import cross_section_errors
from repgeom.workflow.resources import MMLU_TEST_ROWS, JobResources, analysis_points, warning_seconds

ROOT = Path(__file__).resolve().parents[2]


def config(name="config.yaml", **hardware):
    loaded = yaml.safe_load((ROOT / "config" / name).read_text())
    loaded["hardware"].update(hardware)
    return loaded


def jobs(cfg, width=576, subjects=6):
    return JobResources(cfg, hidden_size=lambda model: width, generated_subjects=subjects)


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


def test_every_job_is_one_node_and_training_is_warned_before_its_time_limit():
    """Slurm's `--gpus=N` counts over the whole job, so every job asks for one node; the fine-tuning asks for SIGUSR1
    a tenth of its runtime (1 to 10 minutes) before the limit, for each attempt's runtime."""
    cfg = config(jobs={"default": {"gpus": 0, "cpus": 1, "mem_mb": 100, "runtime": 5},
                       "finetune": {"gpus": 8, "cpus": 1, "mem_mb": 100, "runtime": 300}})
    resources = jobs(cfg).resources("finetune")
    assert resources["nodes"] == 1 and jobs(cfg).resources("sample")["nodes"] == 1
    assert [resources["slurm_extra"](SimpleNamespace(model="m"), attempt) for attempt in (1, 2)] == \
        ["--signal=USR1@600", "--signal=USR1@600"]
    assert [warning_seconds(minutes) for minutes in (1, 10, 50, 100, 1000)] == [60, 60, 300, 600, 600]
    assert "slurm_extra" not in jobs(cfg).resources("extract")
    assert not {"slurm_partition", "slurm_account"} & set(resources), "the cluster's profile places jobs"
    # The launcher's rank count is the map's GPUs, whatever resource a profile asks Slurm for them with.
    assert jobs(cfg).gpus("finetune", "m") == 8


def test_cross_section_errors_name_the_key():
    assert cross_section_errors(config()) == [] and cross_section_errors(config("tiny.yaml")) == []
    cfg = config("tiny.yaml")
    cfg["dataset"]["generate"]["kind"] = "facts"
    cfg["finetune"]["methods"]["lora"]["lora_r"] = 0
    problems = cross_section_errors(cfg)
    assert problems[0].startswith("models.tiny-llama.build: a built model learns from the invented dataset")
    assert problems[1].startswith("finetune.methods.lora: ") and "lora_r" in problems[1]
