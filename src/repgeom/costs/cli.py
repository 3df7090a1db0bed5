"""`repgeom plan CONFIG`: what a run will cost before it is submitted (docs/plan.md).

Prints per rule and in total: jobs, GPUs per job, GPU-hours, CPU-hours, peak memory per job, bytes written and
tokens processed; a warning for every job whose estimate exceeds what the config's `hardware` map asks for it; and
the makespan on a cluster. `--calibrate RESULTS_DIR` first fits the constants to a finished run and says how far the
plan was from it; `--compare RESULTS_DIR` says how far this plan is from a finished run of the same config.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from repgeom.conditions import parse_condition
from repgeom.costs import calibrate
from repgeom.costs.dag import dry_run, local_rules, parse_dry_run, with_finetuned_conditions
from repgeom.costs.estimate import CostModel, Estimate, PlanError, load_constants
from repgeom.costs.schedule import Cluster, list_schedule, misfits
from repgeom.errors import InputError
from repgeom.workflow.plan import finetuned_steps

SCHEMA = Path(__file__).resolve().parents[3] / "config" / "schema.yaml"
RESOLVED_CONFIG = "config.resolved.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repgeom plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the run's config (YAML or JSON)")
    p.add_argument("--cluster", default=None, metavar="NODESxGPUS[:CPUS]",
                   help="nodes x GPUs per node (and cores per node); default: this machine, 1x0:<its cores>")
    p.add_argument("--gpu", default="a100-80gb", help="the cluster's GPU kind: a `devices` key of the constants "
                   "(a100-40gb, a100-80gb, h100-80gb, h200-141gb); default a100-80gb")
    p.add_argument("--constants", help="a constants file (default: the shipped resources/costs/throughput.yaml)")
    p.add_argument("--calibrate", metavar="RESULTS_DIR", help="fit the constants to this finished run first")
    p.add_argument("--write-constants", metavar="FILE", help="write the (calibrated) constants here")
    p.add_argument("--compare", metavar="RESULTS_DIR", help="compare the plan with this finished run of CONFIG")
    p.add_argument("--remaining", action="store_true",
                   help="plan only the jobs the run has left (default: the whole run, as if nothing were done)")
    p.add_argument("--json", metavar="FILE", help="also write the plan as JSON")
    return p


def read_config(path: str | Path, results_dir: str | Path | None = None) -> dict:
    """The config with the schema's defaults, checked as the workflow checks it (one line per problem)."""
    from repgeom.provenance.audit import load_config
    from repgeom.workflow.config import config_errors, cross_section_errors

    config = load_config(path, SCHEMA)
    problems = config_errors(config, SCHEMA)
    problems = problems or cross_section_errors(config)
    if problems:
        raise PlanError(f"invalid config {path}: " + "; ".join(problems))
    if results_dir is not None:
        config["results_dir"] = str(Path(results_dir).resolve())
    return config


def planned_jobs(config: Mapping, model: CostModel, forceall: bool):
    """The jobs of the workflow's dry run for `config`, with the fine-tuned conditions added when not yet known."""
    with tempfile.TemporaryDirectory() as folder:
        config_file = Path(folder) / "config.yaml"
        config_file.write_text(yaml.safe_dump(dict(config)))
        jobs = parse_dry_run(dry_run(config_file, forceall=forceall), local_rules())
    finetuned = finetuned_steps(config, model.workload.finetune_rows)
    return with_finetuned_conditions(jobs, {c: parse_condition(c).method for c in finetuned})


def estimates_for(config: Mapping, constants: Mapping, gpu: str, forceall: bool) -> list[Estimate]:
    model = CostModel(config, constants, gpu)
    # A target rule such as `all` writes nothing and runs nothing.
    return [model.estimate(job) for job in planned_jobs(config, model, forceall) if job.outputs]


def job_warnings(estimates: Sequence[Estimate], constants: Mapping) -> tuple[list[str], list[str]]:
    """(errors, warnings): a job whose weights and activations exceed its GPU's memory can never run; one that
    exceeds the runtime or memory its hardware map asks for is killed (and retried with more)."""
    errors, warnings = [], []
    for e in estimates:
        job = e.job
        if job.local:
            continue
        if job.gpus:
            limit_gb, need_gb = constants["devices"][e.device]["memory_gb"], e.gpu_mb * 2**20 / 1e9
            if need_gb > limit_gb:
                errors.append(f"{job.name} needs {need_gb:.0f} GB on each of its {job.gpus} GPU(s) (weights and "
                              f"activations), but one {e.device} GPU has {limit_gb} GB")
        runtime = job.resources.get("runtime")
        if isinstance(runtime, int) and e.seconds > runtime * 60:
            warnings.append(f"{job.name}: estimated {e.seconds / 60:.0f} min, over the {runtime} min it asks for")
        mem = job.resources.get("mem_mb")
        if isinstance(mem, int) and e.host_mb > mem:
            warnings.append(f"{job.name}: estimated peak memory {e.host_mb:,.0f} MB, over the {mem:,} MB it asks for")
    return errors, warnings


def first_per_rule(errors: Sequence[str]) -> str:
    """The first problem of each rule (a line names one job), and how many jobs more have one."""
    firsts = {}
    for line in errors:
        firsts.setdefault(line.split("[", 1)[0].split(" ", 1)[0], line)
    more = len(errors) - len(firsts)
    return "; ".join(firsts.values()) + (f" (and {more} more job(s) alike)" if more else "")


def rule_rows(estimates: Sequence[Estimate]) -> list[dict]:
    rows = []
    for rule, group in calibrate.by_rule(estimates).items():
        rows.append({"rule": rule, "jobs": len(group), "local": group[0].job.local,
                     "gpus_per_job": max(e.job.gpus for e in group),
                     "gpu_hours": sum(e.gpu_hours for e in group), "cpu_hours": sum(e.cpu_hours for e in group),
                     "peak_mb_per_job": max(e.host_mb for e in group),
                     "gpu_mb_per_job": max(e.gpu_mb for e in group),
                     "bytes_written": sum(e.bytes_written for e in group), "tokens": sum(e.tokens for e in group),
                     "seconds_per_job": sum(e.seconds for e in group) / len(group),
                     "counted": all(e.counted for e in group)})
    return sorted(rows, key=lambda row: (-row["gpu_hours"], -row["cpu_hours"], row["rule"]))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))))


def print_plan(rows: Sequence[dict], totals: dict, cluster: Cluster, makespan: float) -> None:
    print_table(
        ["rule", "jobs", "GPUs/job", "GPU-h", "CPU-h", "time/job", "peak mem/job", "GPU mem/job", "writes",
         "tokens"],
        [[r["rule"] + (" (local)" if r["local"] else ""), r["jobs"], r["gpus_per_job"], f"{r['gpu_hours']:.2f}",
          f"{r['cpu_hours']:.2f}", human_time(r["seconds_per_job"]), human_bytes(r["peak_mb_per_job"] * 2**20),
          human_bytes(r["gpu_mb_per_job"] * 2**20) if r["gpu_mb_per_job"] else "-", human_bytes(r["bytes_written"]),
          f"{r['tokens']:,}" + ("" if r["counted"] else " (est.)") if r["tokens"] else "-"] for r in rows])
    print(f"total: {totals['jobs']} jobs, {totals['gpu_hours']:.2f} GPU-hours, {totals['cpu_hours']:.2f} CPU-hours, "
          f"{human_bytes(totals['bytes_written'])} written, {totals['tokens']:,} tokens")
    print(f"makespan on {cluster}: {human_time(makespan)}")


def print_comparison(rows: Sequence[dict], title: str) -> None:
    print(title)
    print_table(["rule", "jobs", "planned", "measured", "plan/measured", "planned writes", "measured writes",
                 "plan/measured"],
                [[r["rule"], r["jobs"], human_time(r["planned_s"]), human_time(r["measured_s"]),
                  f"{r['time_ratio']:.2f}", human_bytes(r["planned_bytes"]), human_bytes(r["measured_bytes"]),
                  f"{r['bytes_ratio']:.3f}" if r["measured_bytes"] else "-"] for r in rows])


def finished_config(results_dir: str | Path) -> dict:
    path = Path(results_dir) / RESOLVED_CONFIG
    if not path.is_file():
        raise InputError(f"{path} does not exist: give the results folder of a finished run")
    return read_config(path, results_dir)


def run_plan(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    constants = load_constants(args.constants)
    if args.calibrate:
        run_config = finished_config(args.calibrate)
        before = estimates_for(run_config, constants, args.gpu, forceall=True)
        measured = calibrate.measure(before, run_config["results_dir"])
        constants = calibrate.fit_constants(constants, before, measured, f"{args.calibrate} ({len(measured)} jobs)")
        after = estimates_for(run_config, constants, args.gpu, forceall=True)
        print_comparison(calibrate.comparison_rows(before, measured),
                         f"calibration on {args.calibrate}: the plan before fitting against the run")
        print_comparison(calibrate.comparison_rows(after, measured), "... and after fitting")
        print()
    if args.write_constants:
        Path(args.write_constants).write_text(yaml.safe_dump(constants, sort_keys=False, width=120))
    config = read_config(args.config, args.compare)
    cluster = Cluster.parse(args.cluster, os.cpu_count() or 1) if args.cluster else Cluster(1, 0, os.cpu_count() or 1)
    estimates = estimates_for(config, constants, args.gpu, forceall=not args.remaining)
    errors, warnings = job_warnings(estimates, constants)
    # A job no node can hold comes first: its memory per GPU is moot until it has its GPUs.
    errors = misfits([e.job for e in estimates], cluster) + errors
    if errors:
        raise PlanError(first_per_rule(errors))
    schedule = list_schedule([e.job for e in estimates], {e.job.jobid: e.seconds for e in estimates}, cluster)
    rows = rule_rows(estimates)
    totals = {key: sum(r[key] for r in rows) for key in ("jobs", "gpu_hours", "cpu_hours", "bytes_written", "tokens")}
    print_plan(rows, totals, cluster, schedule.makespan_s)
    for line in warnings:
        print(f"warning: {line}")
    comparison = None
    if args.compare:
        comparison = calibrate.comparison_rows(estimates, calibrate.measure(estimates, config["results_dir"]))
        print_comparison(comparison, f"the plan against the finished run {args.compare}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": str(args.config), "cluster": vars(cluster), "gpu": args.gpu, "rules": rows, "totals": totals,
            "makespan_s": schedule.makespan_s, "warnings": warnings, "comparison": comparison,
            "jobs": [{"name": e.job.name, "rule": e.job.rule, "wildcards": e.job.wildcards, "gpus": e.job.gpus,
                      "cpus": e.job.cpus, "seconds": e.seconds, "host_mb": e.host_mb, "gpu_mb": e.gpu_mb,
                      "bytes_written": e.bytes_written, "tokens": e.tokens, "start_s": schedule.start[e.job.jobid]}
                     for e in estimates],
            "constants": constants}, indent=1, default=str))
    return 0
