"""The measured constants of `repgeom plan`: the throughput benchmarks' results turned into FLOP/s and written into
src/repgeom/resources/costs/throughput.yaml, entry by entry, its comments and every other entry kept as they are.

  python benchmarks/plan_constants.py --dry-run   # what it would write
  python benchmarks/plan_constants.py

Reads, where they exist (docs/benchmarks.md, "Constants of `repgeom plan`"):
  benchmarks/results/extract_throughput.json    the extractor's run  -> devices.KIND.forward_flops_per_s.DTYPE
  benchmarks/results/finetune_throughput.json   the stage's run      -> devices.KIND.train_flops_per_s.DTYPE
  benchmarks/results/analysis_speed.json        this project's kNN   -> devices.KIND.knn_flops_per_s
  benchmarks/results/gpu_check/gpu_check.json   the same three from benchmarks/gpu_check.sh on a GPU (its CPU dry
                                                run measures nothing and is skipped)
The FLOP are counted by repgeom.costs.flops, as `repgeom plan` counts a job's, so the plan divides the same counts
by these rates. KIND is the device's: `cpu`, whose rate is for the constants' `cores` (the benchmark's rate per
thread times them), or a GPU's by its name.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from repgeom.costs.architecture import Architecture
from repgeom.costs.flops import extraction_flops, knn_flops, training_flops

RESULTS = Path(__file__).resolve().parent / "results"
CONSTANTS = Path(__file__).resolve().parents[1] / "src" / "repgeom" / "resources" / "costs" / "throughput.yaml"
# GPU kinds by a word of the device's name; an A100's by its memory, which its name usually states.
GPU_KINDS = {"H100": "h100-80gb", "H200": "h200-141gb"}
A100_80GB_ABOVE_GIB = 60
# A one-line entry of the constants: `  key: {value: ..., source: "..."}`.
YAML_KEY = re.compile(r"^(?P<indent> *)(?P<key>[\w.-]+):(?P<rest>.*)$")


class ResultError(Exception):
    """A result cannot be turned into a constant; the message says why."""


@dataclass(frozen=True)
class Rate:
    key: tuple[str, ...]  # the entry's path in the constants: ("devices", "cpu", "forward_flops_per_s", "bfloat16")
    flops_per_s: float
    source: str

    @property
    def value_text(self) -> str:
        # Three significant digits (the runs vary more than that), and always a dot: YAML 1.1 reads 5e+10 as a string.
        return f"{self.flops_per_s:.2e}"


def device_kind(device: str, memory_gib: float | None = None) -> str:
    """The constants' kind of a benchmark's device: `cpu`, or a GPU's from its name (an A100's also from its
    memory, given or read from the name)."""
    if device.lower().startswith("cpu"):
        return "cpu"
    kind = next((kind for word, kind in GPU_KINDS.items() if word in device), None)
    if kind:
        return kind
    if "A100" in device:
        stated = re.search(r"(\d+)\s*GB", device)
        memory_gib = memory_gib or (float(stated.group(1)) if stated else None)
        if memory_gib is None:
            raise ResultError(f"the A100 {device!r} does not state its memory: 40 or 80 GB?")
        return "a100-80gb" if memory_gib > A100_80GB_ABOVE_GIB else "a100-40gb"
    raise ResultError(f"no constants for the device {device!r} (known: CPU, A100, {', '.join(GPU_KINDS)})")


def source(result: Mapping, kind: str, measured: str, cores: int, via: str | None) -> str:
    """How the constant was measured: the command (and the check that ran it), the commit, the device, what it gave."""
    command = f"{via} ({result['command']})" if via else result["command"]
    scaled = (f", scaled from {result['threads']} threads to {cores} cores"
              if kind == "cpu" and result["threads"] != cores else "")
    return f"measured: {command} at {result['commit']} on {result['device']}, {measured}{scaled}"


def device_rate(flops_per_s: float, kind: str, threads: int, cores: int) -> float:
    """A CPU rate is for the constants' `cores` (a job's scales with its own): the run's per thread times them."""
    return flops_per_s * cores / threads if kind == "cpu" else flops_per_s


def stage_rate(result: Mapping, work: str, flops: float, cores: int, via: str | None,
               memory_gib: float | None) -> Rate:
    """A stage's FLOP over its production path's seconds: the `work` rate of the run's device and dtype."""
    production = result["production"]
    kind = device_kind(result["device"], memory_gib)
    measured = f"{production['tokens'] / production['seconds']:,.0f} tokens/s"
    return Rate(("devices", kind, work, result["dtype"]),
                device_rate(flops / production["seconds"], kind, result["threads"], cores),
                source(result, kind, measured, cores, via))


def extraction_rate(result: Mapping, cores: int, via: str | None = None, memory_gib: float | None = None) -> Rate:
    """The extractor's forward_flops_per_s."""
    flops = extraction_flops(Architecture.from_hf_config(result["config"]), result["prompt_lengths"])
    return stage_rate(result, "forward_flops_per_s", flops, cores, via, memory_gib)


def training_rate(result: Mapping, cores: int, via: str | None = None, memory_gib: float | None = None) -> Rate:
    """The fine-tuning stage's train_flops_per_s."""
    flops = training_flops(Architecture.from_hf_config(result["config"]), result["padded_lengths"])
    return stage_rate(result, "train_flops_per_s", flops, cores, via, memory_gib)


def knn_rates(result: Mapping, cores: int, via: str | None = None, memory_gib: float | None = None) -> list[Rate]:
    """This project's exact kNN, 2 N^2 D FLOP over its seconds: knn_flops_per_s of the CPU run and of the GPU run,
    those the result has (the DADApy reference path is not the workflow's)."""
    machine, runs = result["machine"], result["runs"]
    devices = {"b_project_cpu": f"CPU ({machine['cpu']}, {result['threads']} threads)"}
    if machine.get("gpu_device") == "cuda":
        devices["c_project_gpu"] = machine["gpu"]
    rates = []
    for run, device in devices.items():
        if run not in runs:
            continue
        seconds = runs[run]["stages_s"]["knn"]
        kind = device_kind(device, memory_gib)
        measured = f"N {result['n']}, D {result['d']}, the kNN in {seconds:.2f} s"
        rates.append(Rate(("devices", kind, "knn_flops_per_s"),
                          device_rate(knn_flops(result["n"], result["d"]) / seconds, kind, result["threads"], cores),
                          source({**result, "device": device}, kind, measured, cores, via)))
    return rates


def gpu_check_rates(report: Mapping, cores: int) -> list[Rate]:
    """The three results benchmarks/gpu_check.sh gathered, on the GPU its environment names."""
    if report["dry_run"]:
        return []  # tiny shapes on the CPU, to test the check: nothing measured
    device = (report.get("environment") or {}).get("device")
    memory_gib = device.get("memory_gib") if isinstance(device, Mapping) else None
    via = "benchmarks/gpu_check.sh"
    rates = []
    if report.get("extract"):
        rates.append(extraction_rate(report["extract"], cores, via, memory_gib))
    if report.get("finetune"):
        rates.append(training_rate(report["finetune"], cores, via, memory_gib))
    if report.get("analysis"):
        rates += knn_rates(report["analysis"], cores, via, memory_gib)
    return rates


READERS = {"extract": lambda result, cores: [extraction_rate(result, cores)],
           "finetune": lambda result, cores: [training_rate(result, cores)],
           "analysis": knn_rates, "gpu_check": gpu_check_rates}


def measured_rates(results: list[tuple[str, Path]], cores: int) -> list[Rate]:
    """The rates of the results (a READERS name, its path) whose files exist; a later one replaces an earlier of the
    same entry."""
    rates = {}
    for name, path in results:
        if not path.is_file():
            print(f"{path}: not there, skipped")
            continue
        try:
            found = READERS[name](json.loads(path.read_text()), cores)
        except KeyError as err:
            raise ResultError(f"{path} has no {err.args[0]!r}: run the benchmark again at this commit") from None
        except ResultError as err:
            raise ResultError(f"{path}: {err}") from None
        rates.update({rate.key: rate for rate in found})
    return list(rates.values())


def rewrite(text: str, rates: list[Rate]) -> str:
    """The constants' text with the one-line entry of each rate replaced by `{value, source}`; every other line as
    it was."""
    wanted = {rate.key: rate for rate in rates}
    lines = text.splitlines(keepends=True)
    within: list[tuple[int, str]] = []  # (indent, key) of the mappings the current line is in
    for i, line in enumerate(lines):
        match = YAML_KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while within and within[-1][0] >= indent:
            within.pop()
        within.append((indent, match["key"]))
        rate = wanted.pop(tuple(key for _, key in within), None)
        if rate is None:
            continue
        if not re.fullmatch(r"\s*\{.*\}\s*", match["rest"]):
            raise ResultError(f"{'.'.join(rate.key)} is not a one-line {{value, source}} entry: edit it by hand")
        lines[i] = (f"{match['indent']}{match['key']}: {{value: {rate.value_text}, "
                    f"source: {json.dumps(rate.source, ensure_ascii=False)}}}\n")
    if wanted:
        raise ResultError("the constants have no entry " + ", ".join(".".join(key) for key in wanted)
                          + ": add it (with any value) first")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Several results of a kind: one per dtype, say.
    parser.add_argument("--extract", type=Path, nargs="+", default=[RESULTS / "extract_throughput.json"])
    parser.add_argument("--finetune", type=Path, nargs="+", default=[RESULTS / "finetune_throughput.json"])
    parser.add_argument("--analysis", type=Path, nargs="+", default=[RESULTS / "analysis_speed.json"])
    parser.add_argument("--gpu-check", type=Path, nargs="+", default=[RESULTS / "gpu_check" / "gpu_check.json"])
    parser.add_argument("--constants", type=Path, default=CONSTANTS, help="the file to rewrite")
    parser.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    args = parser.parse_args(argv)

    text = args.constants.read_text()
    cores = yaml.safe_load(text)["devices"]["cpu"]["cores"]
    results = [(name, path) for name in READERS for path in getattr(args, name)]
    try:
        rates = measured_rates(results, cores)
        rewritten = rewrite(text, rates)
    except ResultError as err:
        print(f"plan_constants: {err}", file=sys.stderr)
        return 1
    if not rates:
        print("plan_constants: no results to write", file=sys.stderr)
        return 1
    for rate in rates:
        print(f"{'.'.join(rate.key)}: {rate.value_text} FLOP/s ({rate.source})")
    if args.dry_run:
        print(f"dry run: {args.constants} left as it is")
        return 0
    args.constants.write_text(rewritten)
    print(f"wrote {len(rates)} entries of {args.constants}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
