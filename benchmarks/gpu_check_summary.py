"""The two ends of benchmarks/gpu_check.sh: `--environment FILE` records the versions and the device before the check;
`--work DIR --out OUT` gathers what the phases wrote into OUT/gpu_check.json and OUT/gpu_check.md (the goals of issue
28 and whether each is met) and exits 1 unless every phase and every tier test passed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "accelerate", "deepspeed", "zarr", "numcodecs", "dadapy", "numpy",
            "scipy", "sklearn", "pandas", "tokenizers", "safetensors")
# Issue 28's goals: (name, section, how to read it, target).
GOALS = {
    "extraction >= 0.85 of a plain forward pass": ("extract", lambda r: r["extractor_vs_plain"], 0.85),
    "extraction >= 0.60 of the measured bf16 roofline":
        ("extract", lambda r: r["measured_roofline_fraction"]["extractor"], 0.60),
    "one analysis layer on the GPU >= 20x DADApy alone on the CPU":
        ("analysis", lambda r: r["runs"]["c_project_gpu"]["speedup_all_metrics"], 20.0),
}


def environment(path: Path) -> None:
    found = {"python": sys.version.split()[0], "machine": platform.machine()}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "?")
        except Exception as err:  # noqa: BLE001 - a package that fails to import is what this records
            found[name] = f"not importable: {type(err).__name__}: {err}"
    import torch

    found["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found["device"] = {"name": props.name, "memory_gib": props.total_memory / 2**30,
                           "multiprocessors": props.multi_processor_count, "count": torch.cuda.device_count()}
    else:
        found["device"] = "cpu"
    path.write_text(json.dumps(found, indent=2) + "\n")
    print(json.dumps(found, indent=2))


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def tier_tests(work: Path) -> list[dict]:
    """Each test of the tier's junit XML: name, outcome (passed, failed, skipped), seconds, message."""
    path = work / "tier.xml"
    if not path.is_file():
        return []
    tests = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (found.get("message") or "")[:500]
        tests.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                      "message": message})
    return tests


def goals(report: dict) -> dict:
    met = {}
    for name, (section, read, target) in GOALS.items():
        try:
            value = float(read(report[section]))
        except (KeyError, TypeError):
            met[name] = {"value": None, "target": target, "met": None}
            continue
        met[name] = {"value": value, "target": target, "met": value >= target}
    return met


def markdown(report: dict) -> str:
    env = report.get("environment") or {}
    device = env.get("device")
    device_name = device.get("name") if isinstance(device, dict) else str(device)
    lines = [f"# GPU check{' (CPU dry run: tiny shapes, not a measurement)' if report['dry_run'] else ''}", "",
             f"Device: {device_name}; torch {env.get('torch')}, CUDA {env.get('cuda')}, transformers "
             f"{env.get('transformers')}, peft {env.get('peft')}, deepspeed {env.get('deepspeed')}, zarr "
             f"{env.get('zarr')}, dadapy {env.get('dadapy')}; {report['seconds']} s in all.", "",
             "| phase | exit | seconds |", "| --- | --- | --- |"]
    lines += [f"| {p['phase']} | {'skipped' if p.get('skipped') else p['rc']} | {p['seconds']} |"
              for p in report["phases"]]
    lines += ["", "## Tier", "", "| test | outcome | seconds |", "| --- | --- | --- |"]
    lines += [f"| {t['name']} | {t['outcome']} | {t['seconds']:.1f} |" for t in report["tier"]["tests"]]
    lines += ["", "| measurement | values |", "| --- | --- |"]
    for entry in report["tier"]["records"]:
        values = {k: v for k, v in entry.items() if k not in ("test", "layers", "losses")}
        lines.append(f"| {entry['test']} | {json.dumps(values, default=float)[:300]} |")
    lines += ["", "## Goals", "", "| goal | value | target | met |", "| --- | --- | --- | --- |"]
    for name, goal in report["goals"].items():
        value = "n/a" if goal["value"] is None else f"{goal['value']:.3g}"
        lines.append(f"| {name} | {value} | {goal['target']} | {goal['met']} |")
    extract, finetune, analysis = report.get("extract"), report.get("finetune"), report.get("analysis")
    lines += ["", "## Throughput", ""]
    if extract:
        lines.append(f"Extraction, {extract['model']} ({extract['dtype']}), {extract['prompts']} prompts, "
                     f"{extract['tokens']} tokens (median {extract['median_prompt_tokens']:.0f}); matmul "
                     f"{extract['matmul_rate_flops'] / 1e12:.1f} TFLOP/s measured:")
        lines.append("")
        lines += [f"- {name}: {rate:,.0f} tokens/s, {100 * extract['measured_roofline_fraction'][name]:.1f}% of "
                  "the measured roofline" for name, rate in extract["tokens_per_s"].items()]
        lines.append("")
    if finetune:
        lines.append(f"LoRA (rank {finetune['params']['lora_r']}), {finetune['shape']} shape, {finetune['layers']} "
                     f"layers, {finetune['rows']} rows, one rank:")
        lines.append("")
        lines += [f"- {arm}: {r['tokens_per_s']:,.0f} tokens/s, median step {r.get('median_step_s', 0):.3f} s, "
                  f"peak {r['peak_memory_bytes'] / 2**30:.1f} GiB" for arm, r in finetune["arms"].items()]
        lines.append("")
    if analysis:
        lines.append(f"Analysis of one layer, N {analysis['n']}, D {analysis['d']}, maxk {analysis['maxk']}:")
        lines.append("")
        lines += [f"- {name}: {run['all_metrics_s']:.2f} s all metrics ({run['speedup_all_metrics']:.1f}x of "
                  f"DADApy alone), {'identical to DADApy' if run['identical_to_reference'] else 'DIFFERS'}"
                  for name, run in analysis["runs"].items()]
    return "\n".join(lines) + "\n"


def summary(work: Path, out: Path, dry_run: bool, seconds: int) -> int:
    phases = [json.loads(line) for line in (work / "phases.jsonl").read_text().splitlines()] \
        if (work / "phases.jsonl").is_file() else []
    records = [json.loads(line) for line in (work / "tier.jsonl").read_text().splitlines()] \
        if (work / "tier.jsonl").is_file() else []
    report = {"dry_run": dry_run, "seconds": seconds, "environment": read_json(work / "environment.json"),
              "phases": phases, "tier": {"tests": tier_tests(work), "records": records},
              "extract": read_json(work / "extract.json"), "analysis": read_json(work / "analysis.json"),
              "finetune": read_json(work / "finetune.json")}
    report["goals"] = goals(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    failed = [p["phase"] for p in phases if p.get("skipped") or p["rc"] != 0]
    failed += [t["name"] for t in report["tier"]["tests"] if t["outcome"] == "failed"]
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}"
          + (f"; not passed: {', '.join(failed)}" if failed else "; every phase passed"))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--environment", type=Path, help="write the versions and the device to this JSON file")
    parser.add_argument("--work", type=Path, help="the phases' folder")
    parser.add_argument("--out", type=Path, help="where gpu_check.json and gpu_check.md go")
    parser.add_argument("--dry-run", type=int, default=0)
    parser.add_argument("--seconds", type=int, default=0)
    args = parser.parse_args()
    if args.environment:
        environment(args.environment)
        return 0
    return summary(args.work, args.out, bool(args.dry_run), args.seconds)


if __name__ == "__main__":
    sys.exit(main())
