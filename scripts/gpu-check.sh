#!/usr/bin/env bash
# The CUDA path checked and timed in one command (bench/gpu_check.py holds the steps; README "GPU").
#
#   bash scripts/gpu-check.sh --prepare        # here: write the ignored carry folder .gpu-check (items, tokenizer)
#   bash scripts/gpu-check.sh                  # on the GPU machine, with .gpu-check carried
#   bash scripts/gpu-check.sh --cpu-dry-run    # every step on this CPU at tiny sizes; CUDA-only steps skipped
#
# Steps: wheels (install what the carry folder brings), environment, cuda-tests (pytest -m cuda), then one
# `model` step per model (SmolLM2-135M, gemma-3-270m, Llama-3.2-1B, Llama-3-8B shapes with random bf16
# weights: engine items/s, tokens/s, share of a plain matmul, naive baseline, budget sweep). Each step runs in
# its own process under a time limit and a deadline for the whole run (--budget), its output goes to the log,
# and its status goes to the table printed last: pass, FAIL, skipped (why), or NOT RUN (time budget). The
# exit status is 1 when any step that could run did not pass. Files (under $OUT, else build/gpu-check/):
# gpu-check.log (every step's output), table.txt, figures.json, cuda-tests.xml.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=device
CARRY=""
OUT_DIR="${OUT:-$REPO/build/gpu-check}"
BUDGET_S=540            # the device allows 600 s a command; the table needs a few seconds after the last step
# The 8B shape second: it sets the memory figures, and the deadline stops the last steps first.
MODELS="smollm2-135m,llama-3-8b,gemma-3-270m,llama-3.2-1b"
ITEMS=200 NAIVE_ITEMS=24 SWEEP_ITEMS=100
SWEEP="1024x65536,2048x65536,4096x65536,2048x16384,2048x262144"
WORKERS=4               # pytest-xdist workers for the CUDA tests (they compile kernels: CPU-bound)
LIMIT=""
WHEELS=()
TESTS=1

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --prepare [--limit N] [--wheel NAME==VERSION]... | --cpu-dry-run; --carry DIR, --out DIR,"
  echo "         --budget SECONDS, --models LIST (empty: none), --items N, --naive-items N, --sweep-items N,"
  echo "         --sweep ROWSxBUDGET,..., --workers N, --no-tests (skip the cuda-tests step, e.g. to rerun models)"
}

while (($#)); do
  case "$1" in
    --prepare) MODE=prepare ;;
    --cpu-dry-run) MODE=dry-run ;;
    --carry) CARRY="$2"; shift ;;
    --out) OUT_DIR="$2"; shift ;;
    --budget) BUDGET_S="$2"; shift ;;
    --models) MODELS="$2"; shift ;;
    --items) ITEMS="$2"; shift ;;
    --naive-items) NAIVE_ITEMS="$2"; shift ;;
    --sweep-items) SWEEP_ITEMS="$2"; shift ;;
    --sweep) SWEEP="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --no-tests) TESTS=0 ;;
    --limit) LIMIT="$2"; shift ;;
    --wheel) WHEELS+=("--wheel" "$2"); shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [[ -n "${PYTHON:-}" ]]; then :
elif [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"
else PYTHON=python3; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
HELPER=("$PYTHON" "$REPO/bench/gpu_check.py")

if [[ $MODE == prepare ]]; then
  CARRY="${CARRY:-$REPO/.gpu-check}"
  "${HELPER[@]}" prepare --carry "$CARRY" ${LIMIT:+--limit "$LIMIT"} ${WHEELS[@]+"${WHEELS[@]}"} || exit 1
  echo "carry folder $CARRY: $(du -sh "$CARRY" | cut -f1); with the working tree it must stay under 64 MiB"
  exit 0
fi

mkdir -p "$OUT_DIR" || exit 1
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/models" "$WORK/notes"
LOG="$OUT_DIR/gpu-check.log"
: >"$LOG"
STEPS="$WORK/steps.tsv"
DEADLINE=$((SECONDS + BUDGET_S))
FAILED=0
if [[ $MODE == dry-run ]]; then
  DEVICE=cpu DTYPE=float32 TINY=(--tiny)  # bf16 matmuls run ~50x slower than fp32 on a CPU without AVX-512 bf16
  CARRY="${CARRY:-$WORK/carry}"
  ITEMS=3 NAIVE_ITEMS=1 SWEEP_ITEMS=1 SWEEP="64x256,256x1024" WORKERS=0
else
  DEVICE=cuda DTYPE=bfloat16 TINY=()
  CARRY="${CARRY:-$REPO/.gpu-check}"
fi

record() {  # name status seconds note
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" >>"$STEPS"
  printf '%-24s %-22s %6ss  %s\n' "$1" "$2" "$3" "${4:0:160}"
}

# run_step NAME CAP_SECONDS COMMAND...: exit 0 pass, 3 skipped (the note says why), anything else FAIL.
run_step() {
  local name="$1" cap="$2"; shift 2
  local left=$((DEADLINE - SECONDS)) note="$WORK/notes/$name" start=$SECONDS rc
  if ((left < 20)); then
    record "$name" "NOT RUN" 0 "the run's time budget (${BUDGET_S} s, --budget) was spent before this step"
    FAILED=1
    return
  fi
  ((cap > left)) && cap=$left
  : >"$note"
  printf '\n==== %s (at most %s s) %s\n' "$name" "$cap" "$(date -u +%H:%M:%S)" >>"$LOG"
  if command -v timeout >/dev/null && ! declare -F "$1" >/dev/null; then
    timeout --kill-after=10 "$cap" "$@" >>"$LOG" 2>&1; rc=$?
  else  # a shell function (the wheels step) runs without a limit: it only unpacks files
    "$@" >>"$LOG" 2>&1; rc=$?
  fi
  local took=$((SECONDS - start)) text
  text="$(head -c 400 "$note" 2>/dev/null)"
  case $rc in
    0) record "$name" pass "$took" "$text" ;;
    3) record "$name" "${text%% (*}" "$took" "$text" ;;
    124|137) record "$name" "FAIL (timed out)" "$took" "stopped after ${cap} s; $text"; FAILED=1 ;;
    *) record "$name" "FAIL (exit $rc)" "$took" "${text:-see the log}"; FAILED=1 ;;
  esac
  if ((rc != 0 && rc != 3)); then  # the end of a failing step's output, so the reply shows why
    echo "---- last lines of $name:"
    awk -v s="==== $name " 'index($0, s) == 1 {keep = 1; n = 0} keep {buf[n++ % 25] = $0}
      END {for (i = (n > 25 ? n - 25 : 0); i < n; i++) print "  " buf[i % 25]}' "$LOG"
  fi
}

echo "gpu-check ($MODE): log $LOG; steps:"
if [[ $MODE == dry-run ]]; then
  run_step prepare 120 "${HELPER[@]}" prepare --carry "$CARRY" --limit "$ITEMS"
fi

install_wheels() {
  shopt -s nullglob
  local wheels=("$CARRY"/wheels/*.whl)
  if ((${#wheels[@]} == 0)); then
    echo "nothing to install: the carry folder brings no wheel" | tee "$WORK/notes/wheels"
    return 0
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "${wheels[@]}" || return 1
  echo "installed ${#wheels[@]} wheel(s): ${wheels[*]##*/}" | tee "$WORK/notes/wheels"
}
run_step wheels 120 install_wheels
[[ -d "$WORK/site" ]] && export PYTHONPATH="$WORK/site:$PYTHONPATH"

run_step environment 60 bash -c 'command -v nvidia-smi >/dev/null && nvidia-smi; exec "$@"' _ \
  "${HELPER[@]}" env --carry "$CARRY" --device "$DEVICE" --note "$WORK/notes/environment"

if ((TESTS)); then
  run_step cuda-tests 300 "${HELPER[@]}" cuda-tests --junit "$OUT_DIR/cuda-tests.xml" --workers "$WORKERS" \
    --note "$WORK/notes/cuda-tests"
else
  record cuda-tests "skipped: --no-tests" 0 "asked for with --no-tests"
fi

MODEL_LIST=()
[[ -n "$MODELS" ]] && IFS=, read -ra MODEL_LIST <<<"$MODELS"
for model in ${MODEL_LIST[@]+"${MODEL_LIST[@]}"}; do
  run_step "model $model" 180 "${HELPER[@]}" model "$model" --carry "$CARRY" --device "$DEVICE" --dtype "$DTYPE" \
    ${TINY[@]+"${TINY[@]}"} --items "$ITEMS" --naive-items "$NAIVE_ITEMS" --sweep-items "$SWEEP_ITEMS" --sweep "$SWEEP" \
    --out "$WORK/models/$model.json" --note "$WORK/notes/model $model"
done

COMMIT="$(git -C "$REPO" describe --always --dirty 2>/dev/null)" ||  # no git history in the device's copy
  COMMIT="unknown, carry prepared at $(sed -n 's/.*"prepared_at_commit": "\([^"]*\)".*/\1/p' "$CARRY/manifest.json" 2>/dev/null)"
HEADER="gpu-check ($MODE) $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $COMMIT, $((SECONDS)) s"
echo
if ! "${HELPER[@]}" table --work "$WORK" --json "$OUT_DIR/figures.json" --header "$HEADER" >"$OUT_DIR/table.txt" \
    2>>"$LOG"; then
  # The table needs Python; when that is what failed, the step records still show every status.
  { echo "$HEADER"; echo "(the table step failed: raw step records)"; cat "$STEPS"; } >"$OUT_DIR/table.txt"
  FAILED=1
fi
cat "$OUT_DIR/table.txt" >>"$LOG"
cat "$OUT_DIR/table.txt"
exit $FAILED
