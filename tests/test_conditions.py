"""Condition names parse into what the stages need, bad names say what is expected, and every pattern that spells a
condition (the wildcard constraint, the config schema's) comes from `repgeom.conditions`."""
import re
from pathlib import Path

import pytest
import yaml

from repgeom.conditions import (COMPARED_CONDITION_PATTERN, CONDITION_PATTERN, ConditionError, finetuned_condition,
                                last_checkpoint, last_checkpoint_method, parse_condition, shot_condition)
from repgeom.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, shots, variant, method, checkpoint, unit, number", [
    ("0shot", 0, None, None, None, None, None),
    ("5shot-wrong_answers", 5, "wrong_answers", None, None, None, None),
    ("ft-lora-step12", 0, None, "lora", "step12", "step", 12),
    ("ft-prefix_subspace-epoch4", 0, None, "prefix_subspace", "epoch4", "epoch", 4),
])
def test_parse_condition(name, shots, variant, method, checkpoint, unit, number):
    condition = parse_condition(name)
    assert (condition.shots, condition.variant, condition.method, condition.checkpoint) == (shots, variant, method,
                                                                                              checkpoint)
    assert (condition.checkpoint_unit, condition.checkpoint_number) == (unit, number)
    assert condition.is_finetuned == (method is not None)
    assert condition.is_base == (method is None and variant is None)
    assert re.fullmatch(CONDITION_PATTERN, name) and re.fullmatch(COMPARED_CONDITION_PATTERN, name)


@pytest.mark.parametrize("name", ["shot5", "5shots", "ft-lora-12", "ft-LoRA-step1", "ft-lora-step", "5shot-"])
def test_bad_names_are_rejected(name):
    assert not re.fullmatch(CONDITION_PATTERN, name) and not re.fullmatch(COMPARED_CONDITION_PATTERN, name)
    with pytest.raises(ConditionError, match=re.escape(repr(name))):
        parse_condition(name)
    assert issubclass(ConditionError, InputError)


def test_names_are_built_here_and_round_trip():
    assert parse_condition(finetuned_condition("prompt_tuning", "step3")).method == "prompt_tuning"
    assert shot_condition(5) == "5shot" and shot_condition(2, "shuffled") == "2shot-shuffled"
    assert parse_condition(shot_condition(2, "shuffled")).variant == "shuffled"
    assert last_checkpoint("lora") == "ft-lora-last" and last_checkpoint_method("ft-lora-last") == "lora"
    assert last_checkpoint_method("ft-lora-step3") is None and last_checkpoint_method("0shot") is None
    assert re.fullmatch(COMPARED_CONDITION_PATTERN, last_checkpoint("prefix_tuning"))
    assert not re.fullmatch(CONDITION_PATTERN, last_checkpoint("lora")), "the last checkpoint is no extracted condition"


def test_the_schema_spells_compared_conditions_as_this_module_does():
    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    items = schema["properties"]["model_comparison"]["properties"]["conditions"]["items"]
    assert items["pattern"] == COMPARED_CONDITION_PATTERN
