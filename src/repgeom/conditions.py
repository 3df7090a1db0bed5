"""Condition names: what a representation was extracted under. Every name is built and parsed here.

- `{k}shot`: the base model, k-shot prompts (dev order);
- `{k}shot-{variant}`: a prompt control of the k-shot prompt (see `repgeom.data.variants`);
- `ft-{method}-{checkpoint}`: a fine-tuned adapter with 0-shot prompts, `checkpoint` = `step{N}` | `epoch{E}`;
- `ft-{method}-last` (compared conditions only, `model_comparison.conditions`): a method's last checkpoint.

The patterns are built from the same pieces as the parser: Snakemake's wildcard constraint is `CONDITION_PATTERN`,
and the config schema's pattern for `model_comparison.conditions` is `COMPARED_CONDITION_PATTERN` (a test holds
them equal).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from repgeom.errors import InputError

_NUMBER = "[0-9]+"
_NAME = "[a-z_]+"  # a variant or a fine-tuning method
_UNIT = "step|epoch"
LAST = "last"

SHOT_PATTERN = f"{_NUMBER}shot(-{_NAME})?"
FINETUNED_PATTERN = f"ft-{_NAME}-({_UNIT}){_NUMBER}"
# Snakemake's wildcard constraint for `condition`.
CONDITION_PATTERN = f"{SHOT_PATTERN}|{FINETUNED_PATTERN}"
# A condition `model_comparison.conditions` may name (config/schema.yaml).
COMPARED_CONDITION_PATTERN = f"^({SHOT_PATTERN}|ft-{_NAME}-(({_UNIT}){_NUMBER}|{LAST}))$"

_SHOT = re.compile(f"(?P<shots>{_NUMBER})shot(-(?P<variant>{_NAME}))?")
_FINETUNED = re.compile(f"ft-(?P<method>{_NAME})-(?P<checkpoint>(?P<unit>{_UNIT})(?P<number>{_NUMBER}))")
_LAST = re.compile(f"ft-(?P<method>{_NAME})-{LAST}")


class ConditionError(InputError):
    """A condition name that is none of the forms above; the message names it and the forms."""


@dataclass(frozen=True)
class Condition:
    name: str
    shots: int
    variant: str | None = None
    method: str | None = None
    checkpoint: str | None = None

    @property
    def is_finetuned(self) -> bool:
        return self.method is not None

    @property
    def is_base(self) -> bool:
        """The plain `{k}shot` prompt on the base model."""
        return self.method is None and self.variant is None

    @property
    def checkpoint_unit(self) -> str | None:
        """`step` or `epoch` for a fine-tuned condition."""
        return None if self.checkpoint is None else self.checkpoint.rstrip("0123456789")

    @property
    def checkpoint_number(self) -> int | None:
        return None if self.checkpoint is None else int(self.checkpoint[len(self.checkpoint_unit):])


def parse_condition(name: str) -> Condition:
    if match := _SHOT.fullmatch(name):
        return Condition(name, int(match["shots"]), variant=match["variant"])
    if match := _FINETUNED.fullmatch(name):
        return Condition(name, 0, method=match["method"], checkpoint=match["checkpoint"])
    raise ConditionError(f"condition {name!r} is not `{{k}}shot`, `{{k}}shot-{{variant}}` or "
                         "`ft-{method}-step{N}` / `ft-{method}-epoch{E}`")


def shot_condition(shots: int, variant: str | None = None) -> str:
    """`{k}shot`, or `{k}shot-{variant}` for a prompt control."""
    return f"{int(shots)}shot" + (f"-{variant}" if variant else "")


def finetuned_condition(method: str, checkpoint: str) -> str:
    return f"ft-{method}-{checkpoint}"


def last_checkpoint(method: str) -> str:
    """`ft-{method}-last`: the name a compared condition gives a method's last checkpoint."""
    return finetuned_condition(method, LAST)


def last_checkpoint_method(name: str) -> str | None:
    """The method of `ft-{method}-last`; None for any other name."""
    match = _LAST.fullmatch(name)
    return match["method"] if match else None


__all__ = ["COMPARED_CONDITION_PATTERN", "CONDITION_PATTERN", "Condition", "ConditionError", "FINETUNED_PATTERN",
           "LAST", "SHOT_PATTERN", "finetuned_condition", "last_checkpoint", "last_checkpoint_method",
           "parse_condition", "shot_condition"]
