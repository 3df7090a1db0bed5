#!/usr/bin/env bash
# The GPU check of issue 28 in one command (docs/gpu.md): the GPU test tier, then the throughput benchmarks, with one
# JSON and one Markdown summary under $OUT.
#
#   bash benchmarks/gpu_check.sh --kit .gpu-kit     # on the lent GPU machine (the kit: `make gpu-kit`)
#   bash benchmarks/gpu_check.sh --cpu-dry-run      # here: the same code paths on the CPU at tiny sizes
#
# Phases, each in its own time limit, all inside a deadline (DEADLINE_S, default 420 s), in order of what matters
# most; a phase that fails is recorded and the next one runs:
#   kit       install the kit into /tmp/site and build dadapy (benchmarks/gpu_kit_install.sh), with --kit
#   env       versions and the device
#   tier      pytest -m gpu tests/gpu (REPGEOM_GPU_TIER_DEVICE=cpu in the dry run), measurements as JSON lines
#   extract   benchmarks/extract_throughput.py: the stage, a plain forward pass and the measured bf16 roofline on a
#             Llama-3-8B shape with the reference's 0/1/2/5-shot length mix
#   analysis  benchmarks/analysis_speed.py: one layer at N 9,181, D 4,096 on the GPU against DADApy alone on the CPU
#   finetune  benchmarks/finetune_throughput.py: LoRA rank 64 under ZeRO-2 on the 8B shape, one GPU
#   summary   benchmarks/gpu_check_summary.py: $OUT/gpu_check.json and $OUT/gpu_check.md
# Everything printed goes to $OUT/gpu_check.log too. Exit status 0 when every phase passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
KIT=""
while (($#)); do
  case $1 in
    --cpu-dry-run) DRY=1 ;;
    --kit) KIT=$2; shift ;;
    *) echo "usage: $0 [--cpu-dry-run] [--kit DIR]" >&2; exit 2 ;;
  esac
  shift
done

OUT=${OUT:-$ROOT/benchmarks/results/gpu_check}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOG=$OUT/gpu_check.log
: >"$LOG"
PYTHON=${PYTHON:-python3}
DEADLINE_S=${DEADLINE_S:-$((DRY ? 1500 : 420))}  # the dry run measures nothing: no deadline to speak of
START=$(date +%s)

export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# dadapy imports jax: on the CPU, and without taking GPU memory (JAX would reserve 75% of the card).
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false

if ((DRY)); then
  export REPGEOM_GPU_TIER_DEVICE=cpu
  EXTRACT_ARGS=(--device cpu --shape tiny --prompts 24 --lengths reference-mix --naive-prompts 4)
  ANALYSIS_ARGS=(--n 800 --d 64 --maxk 50 --subjects 6 --threads 2 --no-project-cpu --small-n 0 --gpu-device cpu)
  FINETUNE_ARGS=(--shape tiny --layers 2 --rows 32 --arms stage --compare-timer)
  LIMITS=(tier=420 extract=120 analysis=120 finetune=240)
else
  EXTRACT_ARGS=(--device cuda --shape 8b --prompts 512 --lengths reference-mix --naive-prompts 32)
  ANALYSIS_ARGS=(--n 9181 --d 4096 --maxk 1000 --threads "$(nproc)" --no-project-cpu --small-n 0)
  FINETUNE_ARGS=(--shape 8b --layers "${FINETUNE_LAYERS:-32}" --rows 64 --arms stage --compare-timer)
  LIMITS=(tier=210 extract=90 analysis=90 finetune=150)
fi
limit_of() { local entry; for entry in "${LIMITS[@]}"; do [[ ${entry%%=*} == "$1" ]] && echo "${entry#*=}"; done; }

# phase NAME LIMIT_S COMMAND...: runs it within min(LIMIT_S, time left), logs it, records {phase, rc, seconds}.
phase() {
  local name=$1 limit=$2 left rc began
  shift 2
  left=$((DEADLINE_S - ($(date +%s) - START)))
  if ((left < 20)); then
    echo "== $name: skipped, the deadline of ${DEADLINE_S}s is reached" | tee -a "$LOG"
    echo "{\"phase\": \"$name\", \"rc\": null, \"seconds\": 0, \"skipped\": true}" >>"$WORK/phases.jsonl"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  began=$(date +%s%N)
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local ms=$((($(date +%s%N) - began) / 1000000))
  local seconds="$((ms / 1000)).$(printf %03d $((ms % 1000)))"
  echo "== $name: exit $rc after ${seconds}s" | tee -a "$LOG"
  echo "{\"phase\": \"$name\", \"rc\": $rc, \"seconds\": $seconds}" >>"$WORK/phases.jsonl"
}

if [[ -n $KIT ]]; then
  phase kit 120 bash benchmarks/gpu_kit_install.sh "$KIT" /tmp/site
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
phase env 60 "$PYTHON" benchmarks/gpu_check_summary.py --environment "$WORK/environment.json"
phase tier "$(limit_of tier)" env REPGEOM_GPU_TIER_RECORD="$WORK/tier.jsonl" \
  "$PYTHON" -m pytest -m gpu tests/gpu -p no:cacheprovider -q -rA --durations=0 --junitxml="$WORK/tier.xml"
phase extract "$(limit_of extract)" "$PYTHON" benchmarks/extract_throughput.py "${EXTRACT_ARGS[@]}" --out "$WORK/extract.json"
phase analysis "$(limit_of analysis)" "$PYTHON" benchmarks/analysis_speed.py "${ANALYSIS_ARGS[@]}" --out "$WORK/analysis.json"
phase finetune "$(limit_of finetune)" "$PYTHON" benchmarks/finetune_throughput.py "${FINETUNE_ARGS[@]}" --out "$WORK/finetune.json"

"$PYTHON" benchmarks/gpu_check_summary.py --work "$WORK" --out "$OUT" --dry-run "$DRY" --seconds "$(($(date +%s) - START))" \
  2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$status"
