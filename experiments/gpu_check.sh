#!/usr/bin/env bash
# Issue 13's checks on a GPU machine, in one run of about 9.5 minutes:
#
#   bash experiments/gpu_check.sh                  # logs in $OUT if set, else out/gpu_check
#   STAGES="info gpu_tests bench" bash experiments/gpu_check.sh   # a subset, in this order
#   TOTAL_S=300 XDIST_N=4 bash experiments/gpu_check.sh   # less time, other suite workers (default 3/4 of the cores)
#   BENCH_ARGS="--quick --gpu_profile" bash experiments/gpu_check.sh   # + torch.profiler tables of decoding (~1-2 min)
#
# Stages, each under its own time limit, each writing <stage>.log; summary.txt gets one line each:
#   info       nvidia-smi, torch and CUDA versions, GPU count (seconds)
#   gpu_tests  tests/test_gpu.py: bf16 KV cache, CUDA-graph fast decode (step compiled or not), fused rotary,
#              --compile, torchrun (~2 min)
#   bench      experiments/bench.py --quick: sections 1-3 on the GPU, then section 4 (GPT-2-small
#              shape, PASS/MISS against issue 13's targets; fused rotary against unfused, fast decode with
#              its step compiled or not), against nanoGPT's model.py when it is at .nanogpt/model.py
#              (not in git: bring it along, e.g. the device tool's carry), and against an older
#              model.py of ours when it is at .nanogpt/model_before.py (git show COMMIT:model.py) (~5 min)
#   suite      python -m pytest -q tests, the whole suite, every failure listed (less test_gpu.py when gpu_tests ran), with
#              the time that is left
# The measurements run before the whole suite so that they land even if the suite needs longer
# than what is left; the suite's own result is in suite.log (a timeout there reads rc 124).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-out/gpu_check}
mkdir -p "$LOG"
STAGES=${STAGES:-info gpu_tests bench suite}
TOTAL=${TOTAL_S:-570}  # seconds for everything; the stages below share them
START=$(date +%s)
: > "$LOG/summary.txt"

left() { echo $(( TOTAL - ($(date +%s) - START) )); }

stage() {  # stage NAME LIMIT_S COMMAND...: run under min(LIMIT_S, time left), log, note the exit code
  local name=$1 limit=$2; shift 2
  local budget; budget=$(left)
  (( limit < budget )) && budget=$limit
  if (( budget < 10 )); then
    echo "$name: skipped, no time left" | tee -a "$LOG/summary.txt"
    return
  fi
  echo "=== $name (limit ${budget}s): $*"
  local t0; t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$budget" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  tail -n 60 "$LOG/$name.log"
  echo "$name: rc $rc in $(( $(date +%s) - t0 ))s$( ((rc == 124)) && echo ' (time limit)')" | tee -a "$LOG/summary.txt"
}

info() {
  nvidia-smi || echo "nvidia-smi: not found"
  python - <<'EOF'
import platform, torch
print(f"Python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}, {torch.cuda.device_count()} GPU(s)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
EOF
  python -c "import xdist" 2>/dev/null && echo "pytest-xdist: present" || echo "pytest-xdist: absent"
}

export -f info  # stage runs commands under timeout, which needs a program: bash -c info

NANO=()
[[ -f .nanogpt/model.py ]] && NANO=(--nanogpt .nanogpt/model.py)
[[ -f .nanogpt/model_before.py ]] && NANO+=(--before .nanogpt/model_before.py)  # an older model.py of ours
SKIP_GPU=()  # tests/test_gpu.py already ran as its own stage: the two stages together are the whole suite
[[ " $STAGES " == *" gpu_tests "* ]] && SKIP_GPU=(--ignore tests/test_gpu.py)
XDIST=()
# each torchrun test picks a free port (--standalone); one thread per worker (OMP_NUM_THREADS below), so workers ~ 3/4 of the cores
WORKERS=$(( $(nproc) * 3 / 4 )); (( WORKERS < 1 )) && WORKERS=1
python -c "import xdist" 2>/dev/null && XDIST=(-n "${XDIST_N:-$WORKERS}")
TIMEOUT=()  # one hung test must not take the whole stage: every failure is listed (no -x)
python -c "import pytest_timeout" 2>/dev/null && TIMEOUT=(--timeout 150)

for s in $STAGES; do
  case $s in
    info)      stage info 60 bash -c info ;;
    gpu_tests) stage gpu_tests 240 python -m pytest -q -rfs tests/test_gpu.py ;;  # no -x: every failure, in one run
    bench)     stage bench 420 python experiments/bench.py ${BENCH_ARGS:---quick} "${NANO[@]}" ;;
    suite)     stage suite 600 env OMP_NUM_THREADS=1 python -m pytest -q -rf "${XDIST[@]}" "${TIMEOUT[@]}" "${SKIP_GPU[@]}" tests ;;
    *)         echo "unknown stage $s (info gpu_tests bench suite)"; exit 2 ;;
  esac
done
echo "=== summary ($LOG/summary.txt), $(( $(date +%s) - START ))s in all"
cat "$LOG/summary.txt"
