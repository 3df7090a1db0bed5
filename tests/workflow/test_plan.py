"""What a run makes and how its jobs are wired, as the rules get it, tested without Snakemake (repgeom.workflow.plan,
.options, .dataset)."""
import copy
from pathlib import Path

import pytest
import yaml

from repgeom.workflow.dataset import dataset_spec, generated_subjects, generates_dataset, subject_areas
from repgeom.workflow.options import (extraction_parallel, extraction_parallel_option, extraction_ranks, option,
                                      prompt_options, token_sample_option)
from repgeom.workflow.plan import (adapter_checkpoint, compared_condition_errors, compared_conditions,
                                   finetune_methods, finetuned_steps, layer_blocks, prompts_condition, run_conditions)

ROOT = Path(__file__).resolve().parents[2]


def load(name="tiny.yaml") -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def test_conditions_of_a_run():
    config = load()
    config["shots"] = [5, 0, 2]
    config["variants"] = {"wrong_answers": [5, 2], "cross_subject": [5]}
    assert run_conditions(config) == ["0shot", "2shot", "5shot", "5shot-cross_subject", "2shot-wrong_answers",
                                      "5shot-wrong_answers"]
    assert prompts_condition("ft-lora-step3") == "0shot" and prompts_condition("5shot-shuffled") == "5shot-shuffled"
    assert adapter_checkpoint("ft-prompt_tuning-epoch2") == ("prompt_tuning", "epoch2")
    assert adapter_checkpoint("2shot") is None


def test_finetuned_steps_read_the_rows_only_when_the_run_fine_tunes():
    config = load()
    config["finetune"]["methods"] = {"prompt_tuning": {"epochs": 1, "n_checkpoints": 3}, "lora": {"epochs": 2}}
    assert finetune_methods(config) == ["lora", "prompt_tuning"]
    steps = finetuned_steps(config, lambda: 40)  # 3 steps an epoch at an effective batch of 16
    assert steps["ft-lora-epoch2"] == 6 and steps["ft-prompt_tuning-epoch1"] == 3
    assert sorted(steps) == sorted([*(f"ft-lora-step{n}" for n in range(1, 7)), "ft-lora-epoch1", "ft-lora-epoch2",
                                    "ft-prompt_tuning-step1", "ft-prompt_tuning-step2", "ft-prompt_tuning-step3",
                                    "ft-prompt_tuning-epoch1"])
    del config["finetune"]
    assert finetuned_steps(config, lambda: pytest.fail("the data is not read without fine-tuning")) == {}
    assert finetune_methods(config) == []


@pytest.mark.parametrize("n_layers, per_job, blocks", [
    (5, 2, ["0-1", "2-3", "4-4"]),
    (5, 5, ["0-4"]),
    (5, 31, ["0-4"]),
    (31, 31, ["0-30"]),
    (1, 1, ["0-0"]),
])
def test_layer_blocks_cover_every_layer_once(n_layers, per_job, blocks):
    assert layer_blocks(n_layers, per_job) == blocks


def test_compared_conditions_default_and_check():
    config = load()
    config["models"]["other"] = copy.deepcopy(config["models"]["tiny-llama"])
    assert compared_conditions(config) == ["0shot", "5shot", "ft-lora-last"]
    assert compared_condition_errors(config) == []
    config["model_comparison"] = {"conditions": ["2shot", "5shot-shuffled", "ft-lora-step4", "ft-lora-last"]}
    assert compared_conditions(config) == config["model_comparison"]["conditions"]
    assert compared_condition_errors(config) == []
    config["model_comparison"]["conditions"] = ["3shot", "ft-prefix_tuning-last", "ft-prompt_tuning-step2", "0shot"]
    [line] = compared_condition_errors(config)
    assert line.startswith("model_comparison.conditions: 3shot, ft-prefix_tuning-last, ft-prompt_tuning-step2 not "
                           "made by this run (it makes 0shot, 1shot, 2shot, 5shot, 5shot-cross_subject")
    assert line.endswith("for the fine-tuning methods: lora)")
    del config["models"]["other"]  # one model compares nothing
    assert compared_condition_errors(config) == []


def test_prompt_options():
    config = load()
    assert prompt_options(config, "2shot", None) == "--shots 2"
    assert prompt_options(config, "5shot-shuffled", None) == "--shots 5 --variant shuffled --seed 42"
    assert (prompt_options(config, "5shot-cross_subject", "results/dataset/subject_areas.json")
            == "--shots 5 --variant cross_subject --seed 42 --subject-areas results/dataset/subject_areas.json")
    with pytest.raises(ValueError, match="'ft-lora-last' is not"):
        prompt_options(config, "ft-lora-last", None)


@pytest.mark.parametrize("mode, gpus, ranks, flag", [
    ("data", 1, 1, ""), ("data", 4, 4, ""),
    ("device_map", 1, 1, ""), ("device_map", 4, 1, "--device-map auto"),
    ("zero3", 1, 1, ""), ("zero3", 2, 2, "--zero3 zero3"),
])
def test_extraction_parallelism(mode, gpus, ranks, flag):
    assert extraction_ranks(mode, gpus) == ranks and extraction_parallel_option(mode, gpus) == flag


def test_options_from_the_config():
    config = load()
    assert extraction_parallel(config, "tiny-llama") == "data"
    config["models"]["tiny-llama"]["extraction_parallel"] = "zero3"
    assert extraction_parallel(config, "tiny-llama") == "zero3"
    assert token_sample_option(config) == "--token-sample-layers 2,4 --token-sample-size 3000 --seed 42"
    del config["extraction"]["token_sample"]
    assert token_sample_option(config) == ""
    assert option("--adapter", "a/b") == "--adapter a/b" and option("--adapter", "") == option("--x", None) == ""


def test_dataset_sections():
    tiny, default = load(), load("config.yaml")
    assert generates_dataset(tiny) and dataset_spec(tiny, "results/dataset") == {"path": "results/dataset"}
    assert subject_areas(tiny, "results/dataset") == "results/dataset/subject_areas.json"
    assert len(generated_subjects(tiny)) > 1 and generated_subjects(default) != generated_subjects(tiny)
    hub = {**default, "dataset": {"name": "mmlu", "id": "cais/mmlu", "revision": "abc"}}
    assert not generates_dataset(hub)
    assert dataset_spec(hub, None) == {"id": "cais/mmlu", "revision": "abc"} and subject_areas(hub, None) is None
    hub["dataset"]["subject_areas"] = "areas.json"
    assert subject_areas(hub, None) == "areas.json"
