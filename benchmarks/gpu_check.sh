#!/usr/bin/env bash
# The GPU check: one command on the GPU machine (one H100/H200), run from the checkout's root with the
# data folder carried along (and .whl/ for Kornia):
#
#   bash benchmarks/gpu_check.sh "$OUT"                 # on the GPU machine
#   bash benchmarks/gpu_check.sh OUTDIR --dry-run       # anywhere: the stages, their budgets, the total
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh OUTDIR --cpu-smoke
#                                                       # here: every stage in a tiny CPU version
#
# Budget: 405 s of stage limits (+ at most 15 s of kill slack): at most 7 minutes; 315 s (5.5
# minutes) when DALI was staged (/tmp/dali present), since staging it already took 1 to 2 of the
# session's 15 minutes.  GPU_CHECK_BUDGET_S overrides the total; the training stage gets what the
# others leave.
#
# Stages, each under its own `timeout`, all run even when one fails:
#   setup       Kornia from .whl/*.whl and DALI from /tmp/dali (staged beforehand with the commands in
#               ../shared/gpu/dali-parts.sh) into /tmp/site when present; PYTHONPATH=/tmp/site:$PWD
#   env         nvidia-smi, versions, which optional backends import, and a torch.compile probe on the
#               device (a tiny function): when compiling fails, the later stages run eager
#               (--compile-mode none --matrix-modes none, --train.compile_mode none), and the log says so
#   data        Fashion-MNIST readable under ./data
#   pytest      pytest -m gpu (tests needing the data must not skip: FASTFM_REQUIRE_DATA=1)
#   throughput  benchmarks/throughput.py, every backend (a missing one is reported as missing; one that
#               raises is reported in its rows and fails the stage, the others still measured; the JSON
#               is rewritten after every row), with --json, --plot, --trace and --matrix (WRN-40-4 bf16
#               channels_last: eager / compiled / CUDA graphs x batch 128 / 512, step and full; no
#               cell started in the stage's last 60 s, so the trace, last, keeps its time)
#   aug_cost    benchmarks/aug_cost.py --device cuda --json (op costs in device time, CUDA events)
#   train       scripts/train.py --config configs/fast.yaml, capped by the time left; the cap sends
#               SIGTERM to the trainer alone (timeout --foreground: inductor's compile workers are
#               not signalled), which saves last.pt; hitting it counts as "capped", not failed;
#               curves.png is drawn from metrics.jsonl when the run did not end
#   pack        the profiler traces into one traces.tar.gz under 16 MiB (cut, and said so, if need be)
#   (outputs)   last: OUTDIR must keep to what the machine returns (8 files, 16 MiB each, OUT/a/file),
#               else the check fails (the --cpu-smoke too)
#
# OUTDIR receives 8 files: gpu_check.log, throughput.json, throughput.png, traces.tar.gz,
# aug_cost.json, metrics.jsonl, summary.json, curves.png.  The inductor cache lives under /tmp
# (TORCHINDUCTOR_CACHE_DIR).  Exit status: 0 when no stage failed, 1 otherwise.
set -uo pipefail

out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [--dry-run|--cpu-smoke]}
mode=${2:-gpu}
case "$mode" in
  gpu|--dry-run|--cpu-smoke) ;;
  *) echo "error: unknown option $mode (expected --dry-run or --cpu-smoke)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Planned stage limits in seconds.  Guesses for an H100 (not yet measured): the compile probe is
# ~20 s of the env stage; the throughput matrix compiles WRN-40-4 twice (default, reduce-overhead)
# per batch.  With DALI staged the pytest and throughput stages are cut (the matrix: batch 512 only).
# The matrix runs batch 512 first: throughput.json is rewritten after every row, and no cell starts
# in the stage's last 60 s (--matrix-budget-s), so a slow matrix costs the batch-128 cells (recorded
# as skipped), not the trace, which runs last.
if [ -f /tmp/dali/dali-install.sh ]; then
  dali=1; BUDGET=${GPU_CHECK_BUDGET_S:-315}
  declare -A plan=([setup]=45 [env]=40 [data]=10 [pytest]=30 [throughput]=110 [aug_cost]=30 [pack]=10)
  matrix_batches=(512)
else
  dali=0; BUDGET=${GPU_CHECK_BUDGET_S:-405}
  declare -A plan=([setup]=20 [env]=40 [data]=10 [pytest]=40 [throughput]=170 [aug_cost]=35 [pack]=10)
  matrix_batches=(512 128)
fi
KILL_SLACK=15                         # timeout -k: a stage that ignores SIGTERM gets SIGKILL this much later
planned=0
for k in "${!plan[@]}"; do planned=$(( planned + plan[$k] )); done
plan[train]=$(( BUDGET - planned ))   # what the others leave
start=$(date +%s)
out=$(mkdir -p "$out" && cd "$out" && pwd)
log="$out/gpu_check.log"
runs=$(mktemp -d /tmp/fastfm-gpu-check.XXXXXX)
trap 'rm -rf "$runs"' EXIT
# Keep inductor's cache out of the checkout (and out of what comes back): /tmp is the machine's own.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/fastfm-inductor}
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
  timeout -k "$KILL_SLACK" "$limit" "$@" 2>&1 | tee -a "$log"
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
                   --warmup 1 --iters 1 --repeats 1 --trace-steps 1
                   --matrix --matrix-batches 8 --matrix-modes none default)
  aug_cost_args=(--device cpu --batch-size 16 --iters 1 --repeats 1)
  train_args=(--config configs/cpu.yaml --epochs 1 --data.train_limit 2048 --data.test_limit 500)
  # Two shared CPU cores are far slower than the GPU: every limit x 3 (the smoke checks that each
  # stage works and what comes back, not the GPU budget), the training run capped at 120 s.
  for k in "${!plan[@]}"; do plan[$k]=$(( plan[$k] * 3 )); done
  plan[train]=120
  BUDGET=0
  for k in "${!plan[@]}"; do BUDGET=$(( BUDGET + plan[$k] )); done
else
  device=cuda
  # 10 x 3 timed batches per row (not 20 x 5) keeps the rows near a minute on an H100; the matrix's
  # compiles take the rest of the stage.
  throughput_args=(--device cuda --iters 10 --repeats 3 --trace-steps 2
                   --matrix --matrix-batches "${matrix_batches[@]}")
  aug_cost_args=(--device cuda --repeats 3)
  train_args=(--config configs/fast.yaml)
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
  # The compile probe: a broken inductor (no compiler, a Triton mismatch) must not sink the
  # throughput and training stages; they run eager when this fails (see compile_off below).
  "$PY" - "$device" "$runs/compile_off" <<'EOF' || true
import sys, time, torch
device, flag = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
try:
    f = torch.compile(lambda x: torch.sin(x) * 2 + 1)
    x = torch.linspace(0, 1, 64, device=device)
    torch.testing.assert_close(f(x), torch.sin(x) * 2 + 1)
    print(f"torch.compile probe on {device}: ok ({time.perf_counter() - t0:.1f} s)")
except Exception as exc:
    open(flag, "w").write(f"{type(exc).__name__}: {exc}"[:2000])
    print(f"torch.compile probe on {device}: FAILED ({type(exc).__name__}: {str(exc)[:500]}); "
          "the throughput and train stages run eager")
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
# --foreground: the signal goes to the trainer alone, not to its process group, so inductor's
# compile workers are not killed under it and the trainer's SIGTERM handler can save last.pt.
train() {
  local limit=$1 code=0
  shift
  timeout --foreground -s TERM -k 10 "$limit" "$PY" scripts/train.py "$@" --out_dir "$runs" --name check \
    --overwrite --train.progress false || code=$?
  if [ -f "$runs/check/last.pt" ]; then echo "last.pt written"; else echo "no last.pt"; fi
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

# The caller's PYTHONPATH comes last (tests/test_gpu_check.py injects a fault through it).
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} FASTFM_REQUIRE_DATA=1
export -f setup environment data train
export PY device mode out runs

# compile_off ARGS...: ARGS, one a line, when the env stage's compile probe failed (the stage runs eager).
compile_off() { if [ -f "$runs/compile_off" ]; then printf '%s\n' "$@"; fi; }

say "fastfm GPU check ($mode) in $PWD -> $out, git $(git rev-parse --short HEAD 2>/dev/null || echo '?'), DALI staged: $dali"
say "budget (s): $(for k in setup env data pytest throughput aug_cost train pack; do printf '%s %s, ' "$k" "${plan[$k]}"; done)total $BUDGET + $KILL_SLACK kill slack = $(( BUDGET + KILL_SLACK )) s"
stage setup "${plan[setup]}" bash -c setup
stage env "${plan[env]}" bash -c environment
if [ -f "$runs/compile_off" ]; then
  say "torch.compile failed in the probe ($(head -c 300 "$runs/compile_off")): throughput and train run eager"
fi
stage data "${plan[data]}" bash -c data
stage pytest "${plan[pytest]}" "$PY" -m pytest -m gpu -q -p no:cacheprovider
mapfile -t eager_throughput < <(compile_off --compile-mode none --matrix-modes none)
# No matrix cell starts in the stage's last 60 s: a cell compiles WRN-40-4 and the augmenter (tens of
# seconds, a guess until a GPU has measured it), and the trace comes after the matrix; the cells not
# started are "skipped" rows in throughput.json, not lost to the cap.
stage throughput "${plan[throughput]}" "$PY" benchmarks/throughput.py "${throughput_args[@]}" \
  --matrix-budget-s "$(( plan[throughput] - 60 ))" \
  "${eager_throughput[@]}" --json "$out/throughput.json" --plot "$out/throughput.png" --trace "$runs/trace"
stage aug_cost "${plan[aug_cost]}" "$PY" benchmarks/aug_cost.py "${aug_cost_args[@]}" --json "$out/aug_cost.json"
# The training stage gets what is left of the budget after the pack stage's share (on the GPU that
# includes what earlier stages did not use, up to the planned train share plus 60 s); the trainer's
# own SIGTERM comes 20 s before the stage's limit, so it can save last.pt and exit.
left=$(( BUDGET - ($(date +%s) - start) - plan[pack] ))
(( left > plan[train] + 60 )) && left=$(( plan[train] + 60 ))
[ "$mode" = --dry-run ] && left=${plan[train]}
(( left < 40 )) && left=40
mapfile -t eager_train < <(compile_off --train.compile_mode none)
stage train "$left" bash -c 'train "$@"' train "$(( left - 20 ))" "${train_args[@]}" "${eager_train[@]}"
stage pack "${plan[pack]}" "$PY" -m fastfm.bench.outputs pack "$runs/trace" "$out/traces.tar.gz"

[ "$mode" = --dry-run ] && exit 0
say ""
say "== summary ($(( $(date +%s) - start )) s of ${BUDGET} s)"
for line in "${summary[@]}"; do say "$line"; done
# Last, once the log is whole: what comes back from the machine must keep to its limits.
if ! "$PY" -m fastfm.bench.outputs check "$out" 2>&1 | tee -a "$log"; then
  failed+=(outputs)
fi
if (( ${#failed[@]} )); then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "all stages passed"
