"""Which conditions a figure shows, in which order and colour.

Conventions shared by every per-model figure (`repgeom.plots.model_figures`):

- base k-shot conditions (`{k}shot`) are blue, lighter to darker as k grows, solid lines, round markers;
- fine-tuned checkpoints (`ft-{method}-…`) take one colour family per method (orange for the first method in
  alphabetical order, then green, purple, red, brown), lighter to darker as the optimizer step grows, dashed
  lines, square markers;
- prompt controls (`{k}shot-{variant}`) are left out of these figures: the `variants_{k}shot` figure
  (`plot_variant_ari`) compares each plain k-shot prompt with its controls.

Layer-wise figures show the base k-shot conditions and, of each method, its epoch-end checkpoints (at most
`MAX_CHECKPOINTS` of them, evenly spaced, the last always kept); a method that saved no epoch checkpoint shows
as many of its step checkpoints, spread the same way. A checkpoint saved under two names at the same optimizer
step (the last step is both `step{T}` and `epoch{E}`) is shown once, under its epoch name.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import matplotlib
import numpy as np

from repgeom.conditions import Condition, parse_condition

MAX_CHECKPOINTS = 4
SHOT_CMAP = "Blues"
METHOD_CMAPS = ("Oranges", "Greens", "Purples", "Reds", "copper_r")


def checkpoint_step(condition: Condition, steps: Mapping[str, int]) -> int | None:
    """Optimizer steps done at a fine-tuned checkpoint: the mapping's, else the `step{N}` name's N; None when
    unknown (an epoch checkpoint missing from the mapping) or the condition is not fine-tuned."""
    if not condition.is_finetuned:
        return None
    if condition.name in steps:
        return int(steps[condition.name])
    return condition.checkpoint_number if condition.checkpoint_unit == "step" else None


def _sort_key(condition: Condition, steps: Mapping[str, int]):
    if not condition.is_finetuned:
        return (0, condition.shots, condition.variant is not None, condition.variant or "")
    step = checkpoint_step(condition, steps)
    return (1, condition.method, step if step is not None else float("inf"),
            condition.checkpoint_unit != "epoch", condition.checkpoint_number)


def order_conditions(names: Iterable[str], steps: Mapping[str, int] | None = None) -> list[str]:
    """Base k-shot by k (each followed by its controls, by variant), then fine-tuned by method and step."""
    steps = steps or {}
    return sorted(set(names), key=lambda name: _sort_key(parse_condition(name), steps))


def base_conditions(names: Iterable[str]) -> list[str]:
    """The plain `{k}shot` conditions, by k."""
    return order_conditions(n for n in names if parse_condition(n).is_base)


def step_series(names: Iterable[str], steps: Mapping[str, int] | None = None) -> dict[str, list[tuple[int, str]]]:
    """method -> [(step, condition), …] by step, one condition per (method, step) (the epoch name preferred);
    checkpoints whose step is unknown are left out."""
    steps = steps or {}
    series: dict[str, dict[int, str]] = {}
    for name in order_conditions(names, steps):
        condition = parse_condition(name)
        step = checkpoint_step(condition, steps)
        if step is None:
            continue
        # order_conditions puts the epoch name before the step name at the same step: keep the first.
        series.setdefault(condition.method, {}).setdefault(step, name)
    return {method: sorted(by_step.items()) for method, by_step in sorted(series.items())}


def _spread(items: list, n: int) -> list:
    """At most n items, evenly spaced over the list, the last always kept."""
    if len(items) <= n:
        return items
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))
    return [items[i] for i in picks]


def shown_checkpoints(names: Iterable[str], steps: Mapping[str, int] | None = None,
                      max_checkpoints: int = MAX_CHECKPOINTS) -> dict[str, list[str]]:
    """method -> the checkpoints a layer-wise figure shows: its epoch checkpoints, else its step checkpoints,
    one per optimizer step, at most `max_checkpoints` spread evenly with the last kept."""
    steps = steps or {}
    names = list(names)
    shown = {}
    for method, series in step_series(names, steps).items():
        epochs = [name for _, name in series if parse_condition(name).checkpoint_unit == "epoch"]
        shown[method] = _spread(epochs or [name for _, name in series], max_checkpoints)
    # A method none of whose checkpoints has a known step (epochs missing from the mapping): by epoch number.
    for method, unknown in _unknown_steps(names, steps).items():
        if method not in shown:
            shown[method] = _spread(unknown, max_checkpoints)
    return dict(sorted(shown.items()))


def _unknown_steps(names: list[str], steps: Mapping[str, int]) -> dict[str, list[str]]:
    """method -> its checkpoints whose step is unknown, by checkpoint number."""
    unknown: dict[str, list[str]] = {}
    for name in order_conditions(names, steps):
        condition = parse_condition(name)
        if condition.is_finetuned and checkpoint_step(condition, steps) is None:
            unknown.setdefault(condition.method, []).append(name)
    return unknown


def layerwise_conditions(names: Iterable[str], steps: Mapping[str, int] | None = None,
                         max_checkpoints: int = MAX_CHECKPOINTS) -> list[str]:
    """What a layer-wise figure shows: the base k-shot conditions, then each method's shown checkpoints."""
    names = list(names)
    checkpoints = shown_checkpoints(names, steps, max_checkpoints)
    return base_conditions(names) + [name for method in sorted(checkpoints) for name in checkpoints[method]]


def final_checkpoints(names: Iterable[str], steps: Mapping[str, int] | None = None) -> dict[str, str]:
    """method -> its last checkpoint (highest step; the epoch name when the last step has two names)."""
    steps = steps or {}
    names = list(names)
    final = {method: series[-1][1] for method, series in step_series(names, steps).items()}
    for method, unknown in _unknown_steps(names, steps).items():
        final.setdefault(method, unknown[-1])
    return dict(sorted(final.items()))


def _family(items: list[str], cmap: str) -> dict[str, tuple]:
    colours = matplotlib.colormaps[cmap](np.linspace(0.45, 0.95, len(items)) if len(items) > 1 else [0.8])
    return {name: tuple(colour) for name, colour in zip(items, colours)}


def condition_styles(names: Iterable[str], steps: Mapping[str, int] | None = None) -> dict[str, dict]:
    """Matplotlib line keywords (color, linestyle, marker, label) for each condition, by the conventions above."""
    steps = steps or {}
    names = order_conditions(names, steps)
    styles = {}
    for name, colour in _family(base_conditions(names), SHOT_CMAP).items():
        styles[name] = dict(color=colour, linestyle="-", marker="o", label=name)
    for name in names:  # prompt controls, when a caller shows them: grey, dotted
        if parse_condition(name).variant is not None:
            styles[name] = dict(color="0.45", linestyle=":", marker=".", label=name)
    methods = sorted({parse_condition(n).method for n in names if parse_condition(n).is_finetuned})
    for i, method in enumerate(methods):
        members = [n for n in names if parse_condition(n).method == method]
        for name, colour in _family(members, METHOD_CMAPS[i % len(METHOD_CMAPS)]).items():
            styles[name] = dict(color=colour, linestyle="--", marker="s", label=condition_label(name, steps))
    return styles


def condition_label(name: str, steps: Mapping[str, int] | None = None) -> str:
    """The legend entry: the condition's name, and a fine-tuned checkpoint's optimizer step."""
    step = checkpoint_step(parse_condition(name), steps or {})
    return name if step is None or parse_condition(name).checkpoint_unit == "step" else f"{name} (step {step})"
