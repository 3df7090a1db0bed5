#!/usr/bin/env bash
# How well `repgeom plan` predicts a run it has not seen: run config/tiny.yaml and the default config in fresh
# folders, calibrate the plan on the tiny run, and compare its plan of the default run with what happened
# (per-rule wall time and bytes written). The latest numbers, with the machine and commit: docs/plan.md.
#   bash benchmarks/plan_accuracy.sh [OUT]      (default OUT: benchmarks/results/plan_accuracy; ~15 min on 2 cores)
# With --runs-only the script stops after the two runs; with --plan-only it reuses them.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
MODE=all
[[ "${1:-}" == --runs-only || "${1:-}" == --plan-only ]] && { MODE="${1#--}"; shift; }
OUT="$(mkdir -p "${1:-$REPO/benchmarks/results/plan_accuracy}" && cd "${1:-$REPO/benchmarks/results/plan_accuracy}" && pwd)"
if [[ "$MODE" != plan-only ]]; then
    for run in tiny default; do
        rm -rf "$OUT/$run" && mkdir -p "$OUT/$run"
        config="$REPO/config/config.yaml"; [[ $run == tiny ]] && config="$REPO/config/tiny.yaml"
        (cd "$OUT/$run" && snakemake -s "$REPO/Snakefile" --cores 2 --configfile "$config" > snakemake.log 2>&1)
    done
fi
[[ "$MODE" == runs-only ]] && exit 0
cd "$OUT"
repgeom plan "$REPO/config/config.yaml" --calibrate tiny/results --compare default/results \
    --write-constants calibrated_on_tiny.yaml --json plan.json | tee plan.txt
# The targets: each rule's wall time within 35 %, the bytes written in all within 5 % (exit status 1 otherwise).
python - <<'CHECK'
import json
rows = json.load(open("plan.json"))["comparison"]
late = [f"{r['rule']} {r['time_ratio']:.2f}" for r in rows if abs(r["time_ratio"] - 1) > 0.35]
planned, measured = (sum(r[key] for r in rows) for key in ("planned_bytes", "measured_bytes"))
print(f"rules within 35 % of their wall time: {len(rows) - len(late)} of {len(rows)}"
      + (f" (not: {', '.join(late)})" if late else ""))
print(f"bytes written: planned {planned:,}, measured {measured:,}, ratio {planned / measured:.4f}")
raise SystemExit(bool(late) or abs(planned / measured - 1) > 0.05)
CHECK
