"""Reading and checking the figure commands' inputs: every problem is an `InputError` naming the file and what is
missing, so the command can stop with one line instead of a traceback."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from repgeom.analysis.params import AnalysisParams
from repgeom.conditions import finetuned_condition, parse_condition
from repgeom.errors import InputError, json_option  # a figure input is missing, unreadable or lacks what the figures need
from repgeom.tables import LENS_TABLE_COLUMNS

METRIC_COLUMNS = ("model", "condition", "layer", "metric", "scale", "value", "error")
OVERLAP_COLUMNS = ("model", "condition_a", "condition_b", "layer_a", "layer_b", "metric", "k", "value")


def read_table(path: str | Path, columns: Sequence[str], what: str, allow_empty: bool = False) -> pd.DataFrame:
    """A parquet or CSV table (by suffix) with at least `columns` and, unless `allow_empty`, one row."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as err:  # pyarrow and pandas raise many kinds
        raise InputError(f"{path}: cannot read the {what}: {err}") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: the {what} lacks column(s) {', '.join(missing)} "
                         f"(it has {', '.join(map(str, frame.columns)) or 'none'})")
    if frame.empty and not allow_empty:
        raise InputError(f"{path}: the {what} is empty")
    return frame


def check_model(frame: pd.DataFrame, model: str, path: str | Path, what: str) -> None:
    if not (frame["model"] == model).any():
        known = ", ".join(sorted(map(str, frame["model"].dropna().unique())))
        raise InputError(f"{path}: the {what} has no rows for model {model!r} (it has: {known})")


def check_conditions(frame: pd.DataFrame, columns: Sequence[str], path: str | Path, what: str) -> None:
    for column in columns:
        for name in frame[column].dropna().unique():
            try:
                parse_condition(str(name))
            except ValueError as err:
                raise InputError(f"{path}: the {what}'s column {column}: {err}") from None


def read_lens(path: str | Path) -> pd.DataFrame:
    """The lens table (`tables/lens.csv`): it may lack a model, or have no rows at all, where the groups were
    extracted before the logit lens was kept (the lens figures then say so)."""
    lens = read_table(path, LENS_TABLE_COLUMNS, "lens table", allow_empty=True)
    check_conditions(lens, ["condition"], path, "lens table")
    return lens


def parse_settings(text: str, option: str = "--settings-json") -> AnalysisParams:
    """The analysis parameters (config `analysis.params`; keys left out take the reference values), as JSON or a
    JSON file."""
    params = json_option(text, option)
    try:
        return AnalysisParams.coerce(params)
    except (TypeError, ValueError) as err:
        raise InputError(f"{option}: {err}") from None


def steps_from_runs(specs: list[str]) -> dict[str, int]:
    """`METHOD=FILE` per training run, FILE being its checkpoints.json ({checkpoint: step}): the steps of the
    fine-tuned conditions `ft-{method}-{checkpoint}`, each an integer >= 0."""
    steps = {}
    for spec in specs:
        method, sep, path = spec.partition("=")
        if not sep or not method or not path:
            raise InputError(f"--checkpoints {spec!r}: expected METHOD=PATH/checkpoints.json")
        option = f"--checkpoints {spec}"
        run = json_option(path, option)
        for checkpoint, step in run.items():
            name = finetuned_condition(method, checkpoint)
            try:
                parse_condition(name)
            except ValueError as err:
                raise InputError(f"{option}: {err}") from None
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise InputError(f"{option}: the step of {name!r} must be an integer >= 0, got {step!r}")
            steps[name] = step
    return steps


def steps_by_model(specs: list[str], models: Sequence[str]) -> dict[str, dict[str, int]]:
    """`MODEL:METHOD=FILE` per model and training run: each model's fine-tuned conditions' steps (`steps_from_runs`)."""
    runs: dict[str, list[str]] = {model: [] for model in models}
    for spec in specs:
        model, sep, run = spec.partition(":")
        if not sep or model not in runs:
            raise InputError(f"--checkpoints {spec!r}: expected MODEL:METHOD=PATH/checkpoints.json with MODEL one of "
                             f"--models ({', '.join(models)})")
        runs[model].append(run)
    return {model: steps_from_runs(model_runs) for model, model_runs in runs.items()}
