"""What a run makes, from its config: the conditions of each model, the blocks of layers its analysis jobs take, and
the conditions the figures across models compare. Every condition name comes from `repgeom.conditions`."""
from __future__ import annotations

from collections.abc import Callable, Mapping

from repgeom.conditions import (finetuned_condition, last_checkpoint, last_checkpoint_method, parse_condition,
                                shot_condition)
from repgeom.finetune.params import method_params
from repgeom.finetune.plan import checkpoint_steps


def finetune_methods(config: Mapping) -> list[str]:
    """The fine-tuning methods the config trains, sorted (the same settings in another key order are the same run)."""
    return sorted((config.get("finetune") or {}).get("methods", {}))


def base_conditions(config: Mapping) -> list[str]:
    """`{k}shot` for each configured shot count, by k."""
    return [shot_condition(k) for k in sorted(config["shots"])]


def variant_conditions(config: Mapping) -> list[str]:
    """`{k}shot-{variant}` for each prompt control and its shot counts, by variant then k."""
    return [shot_condition(k, name) for name, ks in sorted(config["variants"].items()) for k in sorted(ks)]


def run_conditions(config: Mapping) -> list[str]:
    """The conditions known before anything runs: base k-shot prompts, then prompt controls."""
    return base_conditions(config) + variant_conditions(config)


def finetuned_steps(config: Mapping, n_rows: Callable[[], int]) -> dict[str, int]:
    """Condition `ft-{method}-{checkpoint}` -> optimizer steps done, for every adapter the config trains.

    `n_rows()` gives the fine-tuning set's rows; it is called only when the config fine-tunes (in the workflow it
    waits for the data to be sampled)."""
    methods = finetune_methods(config)
    if not methods:
        return {}
    rows = n_rows()
    return {finetuned_condition(method, name): step
            for method in methods
            for name, step in checkpoint_steps(rows, method_params(config["finetune"], method)).items()}


def prompts_condition(condition: str) -> str:
    """The condition whose prompts a condition reads: a fine-tuned one reads the 0-shot prompts."""
    return shot_condition(0) if parse_condition(condition).is_finetuned else condition


def adapter_checkpoint(condition: str) -> tuple[str, str] | None:
    """(method, checkpoint) of the adapter a fine-tuned condition reads; None for the base model."""
    parsed = parse_condition(condition)
    return (parsed.method, parsed.checkpoint) if parsed.is_finetuned else None


def layer_blocks(n_layers: int, layers_per_job: int) -> list[str]:
    """`first-last` spans of `layers_per_job` of the `n_layers` stored layers: one analysis job each."""
    return [f"{first}-{min(first + layers_per_job, n_layers) - 1}" for first in range(0, n_layers, layers_per_job)]


def compared_conditions(config: Mapping) -> list[str]:
    """The conditions the figures across models compare: `model_comparison.conditions`, by default the fewest and
    the most shots and each fine-tuning method's last checkpoint."""
    named = (config.get("model_comparison") or {}).get("conditions")
    if named:
        return list(named)
    shots = sorted({min(config["shots"]), max(config["shots"])})
    return [shot_condition(k) for k in shots] + [last_checkpoint(method) for method in finetune_methods(config)]


def compared_condition_errors(config: Mapping) -> list[str]:
    """A line naming the compared conditions this run does not make, if any; a fine-tuned one is known by its method
    (its checkpoints are known once the data is sampled). Only a run with two or more models compares them."""
    if len(config["models"]) < 2:
        return []
    made, methods = run_conditions(config), finetune_methods(config)

    def method_of(name: str) -> str | None:
        last = last_checkpoint_method(name)
        if last is not None:
            return last
        try:
            return parse_condition(name).method
        except ValueError:
            return None

    unknown = [name for name in compared_conditions(config) if name not in made and method_of(name) not in methods]
    if not unknown:
        return []
    return [f"model_comparison.conditions: {', '.join(unknown)} not made by this run (it makes {', '.join(made)}, "
            f"and ft-{{method}}-{{checkpoint}} / ft-{{method}}-last for the fine-tuning methods: "
            f"{', '.join(methods) or 'none'})"]
