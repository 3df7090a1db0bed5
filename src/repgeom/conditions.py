"""Condition names: what a representation was extracted under.

- `{k}shot`: the base model, k-shot prompts (dev order);
- `{k}shot-{variant}`: a prompt control of the k-shot prompt (see `repgeom.data.variants`);
- `ft-{method}-{checkpoint}`: a fine-tuned adapter with 0-shot prompts, `checkpoint` = `step{N}` | `epoch{E}`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Snakemake's wildcard constraint for `condition` is this pattern.
CONDITION_PATTERN = r"\d+shot(-[a-z_]+)?|ft-[a-z_]+-(step|epoch)\d+"
_SHOT = re.compile(r"(?P<shots>\d+)shot(-(?P<variant>[a-z_]+))?")
_FINETUNED = re.compile(r"ft-(?P<method>[a-z_]+)-(?P<checkpoint>(?P<unit>step|epoch)(?P<number>\d+))")


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
    raise ValueError(f"condition {name!r} is not `{{k}}shot`, `{{k}}shot-{{variant}}` or "
                     "`ft-{method}-step{N}` / `ft-{method}-epoch{E}`")


def finetuned_condition(method: str, checkpoint: str) -> str:
    return f"ft-{method}-{checkpoint}"
