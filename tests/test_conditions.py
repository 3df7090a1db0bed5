"""Condition names parse into what the stages need, and bad names say what is expected."""
import re

import pytest

from repgeom.conditions import CONDITION_PATTERN, finetuned_condition, parse_condition


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
    assert re.fullmatch(CONDITION_PATTERN, name)


@pytest.mark.parametrize("name", ["shot5", "5shots", "ft-lora-12", "ft-LoRA-step1", "ft-lora-step", "5shot-"])
def test_bad_names_are_rejected(name):
    assert not re.fullmatch(CONDITION_PATTERN, name)
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        parse_condition(name)


def test_finetuned_condition_round_trips():
    assert parse_condition(finetuned_condition("prompt_tuning", "step3")).method == "prompt_tuning"
