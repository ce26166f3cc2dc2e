#!/usr/bin/env bash
# The GPU check: one command on the GPU machine (one H100, at most 8 minutes in all), run from the
# checkout's root with the data folder carried along (and .whl/ for Kornia):
#
#   bash benchmarks/gpu_check.sh "$OUT"                 # on the GPU machine
#   bash benchmarks/gpu_check.sh OUTDIR --dry-run       # anywhere: print the stages and their limits
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh OUTDIR --cpu-smoke
#                                                       # here: every stage in a tiny CPU version
#
# Stages, each under its own `timeout`, all run even when one fails:
#   setup       Kornia from .whl/*.whl and DALI from /tmp/dali (staged beforehand with the commands in
#               ../shared/gpu/dali-parts.sh) into /tmp/site when present; PYTHONPATH=/tmp/site:$PWD
#   env         nvidia-smi, versions, which optional backends import
#   data        Fashion-MNIST readable under ./data
#   pytest      pytest -m gpu (tests needing the data must not skip: FASTFM_REQUIRE_DATA=1)
#   throughput  benchmarks/throughput.py, every backend (a missing one is reported as missing; one that
#               raises is reported in its rows and fails the stage, the others still measured), with
#               --json, --plot and --trace
#   aug_cost    benchmarks/aug_cost.py --device cuda --json (missing or failing backends: the same)
#   train       scripts/train.py --config configs/fast.yaml, capped by the time left (at most 240 s);
#               hitting the cap stops it with SIGTERM (the trainer saves last.pt) and counts as
#               "capped", not failed; curves.png is drawn from metrics.jsonl when the run did not end
#
# OUTDIR receives at most 8 files (what the GPU machine returns from $OUT): gpu_check.log,
# throughput.json, throughput.png, trace/trace-<backend>.json, aug_cost.json, metrics.jsonl,
# summary.json, curves.png.  Exit status: 0 when no stage failed, 1 otherwise.
set -uo pipefail

out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [--dry-run|--cpu-smoke]}
mode=${2:-gpu}
case "$mode" in
  gpu|--dry-run|--cpu-smoke) ;;
  *) echo "error: unknown option $mode (expected --dry-run or --cpu-smoke)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}     # seconds for the whole check: under 8 minutes with the kill slack
start=$(date +%s)
out=$(mkdir -p "$out" && cd "$out" && pwd)
log="$out/gpu_check.log"
runs=$(mktemp -d /tmp/fastfm-gpu-check.XXXXXX)
trap 'rm -rf "$runs"' EXIT
[ "$mode" = --dry-run ] || : > "$log"
failed=()
summary=()

say() { if [ "$mode" = --dry-run ]; then echo "$*"; else echo "$*" | tee -a "$log"; fi; }

# stage NAME LIMIT_S COMMAND...: run under `timeout` (never past the whole budget), log everything.
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET - ($(date +%s) - start) ))
  (( limit > left )) && limit=$(( left > 5 ? left : 5 ))
  say ""
  say "== $name (limit ${limit} s): $*"
  [ "$mode" = --dry-run ] && return 0
  local t0=$(date +%s)
  timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]} status=ok
  if (( rc == 124 )) && [ "$name" = train ]; then
    status=capped
  elif (( rc != 0 )); then
    status="FAILED (exit $rc$( (( rc == 124 )) && echo ', timed out'))"
    failed+=("$name")
  fi
  summary+=("$(printf '%-11s %-28s %4d s' "$name" "$status" $(( $(date +%s) - t0 )))")
  say "-- $name: $status"
}

if [ "$mode" = --cpu-smoke ]; then
  device=cpu
  throughput_args=(--device cpu --model wrn-10-1 --batch-size 8 --baseline-batch 8 --workers 1
                   --warmup 1 --iters 1 --repeats 1 --trace-steps 1)
  aug_cost_args=(--device cpu --batch-size 16 --iters 1 --repeats 1)
  train_args=(--config configs/cpu.yaml --epochs 1 --data.train_limit 2048 --data.test_limit 500)
  train_limit=120
else
  device=cuda
  # 10 x 3 timed batches per row (not 20 x 5) keeps the stage near a minute on an H100.
  throughput_args=(--device cuda --iters 10 --repeats 3 --trace-steps 2)
  aug_cost_args=(--device cuda)
  train_args=(--config configs/fast.yaml)
  train_limit=240
fi

setup() {
  if [ "$mode" = --cpu-smoke ]; then
    echo "cpu smoke: no wheels installed (the virtual environment has kornia and DALI)"
    return 0
  fi
  if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      || return 1
    echo "installed: $(ls .whl)"
  else
    echo "no .whl/: Kornia will be reported missing"
  fi
  if [ -f /tmp/dali/dali-install.sh ]; then
    bash /tmp/dali/dali-install.sh || return 1
  else
    echo "no /tmp/dali/dali-install.sh (DALI not staged): DALI will be reported missing"
  fi
}

environment() {
  [ "$device" = cuda ] && { nvidia-smi || return 1; }
  "$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "| bf16", torch.cuda.is_bf16_supported())
for name in ("torchvision", "timm", "kornia", "nvidia.dali"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError as exc:
        print(name, "missing:", exc)
EOF
}

data() {
  "$PY" -c "
from fastfm.data.idx import load_split
for split in ('train', 'test'):
    x, y = load_split('data', split)
    print(split, x.shape, y.shape)"
}

# train LIMIT_S ARGS...: the training run, stopped by SIGTERM after LIMIT_S; its files into OUTDIR.
train() {
  local limit=$1 code=0
  shift
  timeout -s TERM -k 30 "$limit" "$PY" scripts/train.py "$@" --out_dir "$runs" --name check \
    --overwrite --train.progress false || code=$?
  for f in metrics.jsonl summary.json curves.png; do
    [ -f "$runs/check/$f" ] && cp "$runs/check/$f" "$out/"
  done
  if [ ! -f "$out/curves.png" ] && [ -f "$out/metrics.jsonl" ]; then
    "$PY" -c "
import json, sys
from fastfm.engine.plots import plot_curves
plot_curves([json.loads(l) for l in open(sys.argv[1]) if l.strip()], sys.argv[2])" \
      "$out/metrics.jsonl" "$out/curves.png" && echo "curves.png drawn from metrics.jsonl (run capped)"
  fi
  return $code
}

export PYTHONPATH=/tmp/site:$PWD FASTFM_REQUIRE_DATA=1
export -f setup environment data train
export PY device mode out runs

say "fastfm GPU check ($mode) in $PWD -> $out, git $(git rev-parse --short HEAD 2>/dev/null || echo '?'), budget ${BUDGET} s"
stage setup 45 bash -c setup
stage env 30 bash -c environment
stage data 20 bash -c data
stage pytest 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider
stage throughput 120 "$PY" benchmarks/throughput.py "${throughput_args[@]}" \
  --json "$out/throughput.json" --plot "$out/throughput.png" --trace "$out/trace"
stage aug_cost 75 "$PY" benchmarks/aug_cost.py "${aug_cost_args[@]}" --json "$out/aug_cost.json"
# The training stage gets what is left of the budget (at most train_limit); its own timeout sends
# SIGTERM a little before the stage's, so the trainer can save and exit.
left=$(( BUDGET - ($(date +%s) - start) - 20 ))
(( left > train_limit )) && left=$train_limit
(( left < 30 )) && left=30
stage train $(( left + 45 )) bash -c 'train "$@"' train "$left" "${train_args[@]}"

[ "$mode" = --dry-run ] && exit 0
say ""
say "== summary ($(( $(date +%s) - start )) s)"
for line in "${summary[@]}"; do say "$line"; done
if (( ${#failed[@]} )); then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "all stages passed"
