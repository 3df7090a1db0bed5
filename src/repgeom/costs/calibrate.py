"""Fit the cost model's constants to a finished run, and say how far a plan was from what happened.

A finished run's Snakemake benchmark files give each job's wall time (`s`); its outputs on disk give the bytes it
wrote. Per rule, the plan splits a job's time into a fixed part (start-up, reading the model) and a variable part
(work over rates). Where a rule's variable part is a small share of its measured time, the run says nothing about
its rates and only its start-up is fitted; otherwise its rates are scaled so that the variable part matches too.
"""
from __future__ import annotations

import copy
import csv
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repgeom.costs.dag import Job
from repgeom.costs.estimate import Estimate, per_rule, value
from repgeom.errors import InputError

# Below this share of a rule's measured time, its variable part is not fitted (start-up dominates).
MIN_VARIABLE_SHARE = 0.3


@dataclass(frozen=True)
class Measured:
    seconds: float
    bytes_written: int


def benchmark_seconds(path: str | Path) -> float:
    """Wall seconds of a Snakemake benchmark file (its last repeat)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        return float(rows[-1]["s"])
    except (OSError, KeyError, IndexError, ValueError) as err:
        raise InputError(f"benchmark file {path}: not a Snakemake benchmark table ({err})") from None


def path_bytes(path: str | Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(Path(root, name).stat().st_size for root, _, names in os.walk(path) for name in names)


def written_paths(job: Job, results_dir: str | Path) -> list[Path]:
    """What a job wrote: its outputs, and what it writes beside them (an extraction its store group, a training run
    its whole folder: adapters, log, state)."""
    paths = [Path(p) for p in job.outputs]
    if job.rule == "extract":
        paths.append(Path(results_dir) / "activations.zarr" / job.wildcards["model"] / job.wildcards["condition"])
    elif job.rule == "finetune":
        paths = [Path(job.outputs[0]).parent]
    return [path for path in paths if path.exists()]


def measure(estimates: Sequence[Estimate], results_dir: str | Path) -> dict[str, Measured]:
    """What each planned job took in the finished run (jobs without a benchmark file are left out)."""
    measured = {}
    for estimate in estimates:
        job = estimate.job
        if job.benchmark and Path(job.benchmark).is_file():
            measured[job.jobid] = Measured(benchmark_seconds(job.benchmark),
                                           sum(map(path_bytes, written_paths(job, results_dir))))
    if not measured:
        raise InputError("no benchmark file of the planned jobs exists: is this a finished run's results folder?")
    return measured


def by_rule(estimates: Sequence[Estimate], key=lambda estimate: estimate.job.rule) -> dict[str, list[Estimate]]:
    rules: dict[str, list[Estimate]] = {}
    for estimate in estimates:
        rules.setdefault(key(estimate), []).append(estimate)
    return rules


def fit_constants(constants: Mapping, estimates: Sequence[Estimate], measured: Mapping[str, Measured],
                  source: str) -> dict:
    """A copy of `constants` with each measured rule's start-up, and the rates its variable part uses, fitted."""
    fitted = copy.deepcopy(dict(constants))
    scales: dict[tuple, list[float]] = {}
    for rule, group in sorted(by_rule(estimates, key=lambda e: e.startup_entry).items()):
        group = [e for e in group if e.job.jobid in measured]
        if not group:
            continue
        times = np.array([measured[e.job.jobid].seconds for e in group])
        variable = np.array([e.variable_s for e in group])
        startup = per_rule(constants, "startup_s", rule)
        fixed_less_startup = np.array([e.fixed_s for e in group]) - startup
        scale = 1.0
        if variable.sum() >= MIN_VARIABLE_SHARE * times.sum():
            if len(group) > 2 and np.ptp(variable) > 0.2 * variable.mean():
                slope, _ = np.polyfit(variable, times, 1)
                scale = max(float(slope), 1e-3)
            else:
                scale = float(np.median((times - fixed_less_startup - startup) / np.maximum(variable, 1e-9)))
                scale = max(scale, 1e-3)
            for key in {key for e in group for key in e.rate_keys}:
                scales.setdefault(key, []).append(scale)
        startup = float(np.median(times - fixed_less_startup - scale * variable))
        fitted["startup_s"][rule] = {"value": round(max(startup, 0.1), 3),
                                     "source": f"calibrated: {source}, {len(group)} {rule} job(s)"}
        # Bytes: what the plan does not model (tables, logs, figures, metadata) is a fixed amount per job.
        modelled = [e.bytes_written - per_rule(constants, "fixed_bytes", rule) for e in group]
        unmodelled = [measured[e.job.jobid].bytes_written - bytes_ for e, bytes_ in zip(group, modelled)]
        fitted.setdefault("fixed_bytes", {})[rule] = {"value": max(int(np.median(unmodelled)), 0),
                                                      "source": f"calibrated: {source}, {len(group)} {rule} job(s)"}
    for key, found in scales.items():
        node = functools.reduce(lambda n, k: n[k], key[:-1], fitted)
        # A time `scale` times the plan's means a rate 1/scale as high (every constant here is a rate).
        rate = value(node[key[-1]]) / np.median(found)
        node[key[-1]] = {"value": float(f"{rate:.4g}"), "source": f"calibrated: {source}"}
    return fitted


def comparison_rows(estimates: Sequence[Estimate], measured: Mapping[str, Measured]) -> list[dict]:
    """Per rule: planned and measured wall time (summed over its jobs) and bytes written, and their ratios."""
    rows = []
    for rule, group in sorted(by_rule(estimates).items()):
        group = [e for e in group if e.job.jobid in measured]
        if not group:
            continue
        planned_s = sum(e.seconds for e in group)
        measured_s = sum(measured[e.job.jobid].seconds for e in group)
        planned_b = sum(e.bytes_written for e in group)
        measured_b = sum(measured[e.job.jobid].bytes_written for e in group)
        rows.append({"rule": rule, "jobs": len(group), "local": group[0].job.local,
                     "planned_s": planned_s, "measured_s": measured_s,
                     "time_ratio": planned_s / measured_s if measured_s else float("nan"),
                     "planned_bytes": planned_b, "measured_bytes": measured_b,
                     "bytes_ratio": planned_b / measured_b if measured_b else float("nan")})
    return rows
