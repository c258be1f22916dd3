#!/usr/bin/env bash
# One GPU check in at most 8 minutes: plan and update times (eager and torch.compile'd) at presets 1M, 5M and 48M at
# the paper's setting (diffusion 19 reverse steps x 512 samples, 64 elites, 24 policy trajectories, horizon 3; update
# batch 256), the update throughput at batch 1024, and the steps/s of a 2-minute online run (recipes/train.py with
# recipes/configs/online_paper.yaml: 5M, walker-walk, the paper's planner, utd 1, batch 256). TF32 matmuls on.
# Writes benchmarks/results/gpu_check.json (or --out FILE).
#
#   bash benchmarks/gpu_check.sh                     # on a GPU machine, from anywhere (it cd's to the repo root)
#   OMP_NUM_THREADS=1 nice -n 5 bash benchmarks/gpu_check.sh --cpu-smoke --out /tmp/gpu_check_smoke.json
#
# Every section is its own process (benchmarks/bench_gpu.py) under `timeout`, so a compile that fails or hangs only
# costs that section: a compile error is caught and recorded; a section that hits its timeout keeps what it had
# measured (its JSON is rewritten after every phase) and is marked timed_out (exit code 124). Section timeouts are
# capped by a global deadline (GPU_CHECK_BUDGET_S, default 470 s incl. the final merge) so the script stays under
# 8 minutes; the online run, last, gets what is left up to ONLINE_S. The online run is stopped by its timeout on
# purpose (no time-limit field exists in RunConfig); its steps/s come from the run's train.csv (one row per finished
# episode, elapsed_s = training time): overall, and in the planning phase (after the seed steps and their update
# burst). To keep that short run informative it uses seed_steps=$ONLINE_SEED_STEPS, seed_updates=$ONLINE_SEED_UPDATES
# and episode_length=$ONLINE_EPISODE_LENGTH (defaults 1000 / 100 / 200), no evaluation, no checkpoints, no video.
#
# Knobs (environment): PYTHON (default: .venv/bin/python if present, else python), COMPILE_MODE (default "default";
# "max-autotune-no-cudagraphs" autotunes for minutes; "none" skips compiling), COMPILE_BACKEND (inductor; smoke:
# eager), PLAN_S_1/5/48, UPDATE_S_1/5/48, THROUGHPUT_S, ONLINE_S (section timeouts), GPU_CHECK_BUDGET_S.
# --cpu-smoke: tiny models and planner, short timeouts, recipes/configs/tiny.yaml for the online part, compile with
# the "eager" dynamo backend (tracing without inductor code generation): about 2 minutes on the busy 2-core dev CPU.
set -u
cd "$(dirname "$0")/.."

SMOKE=0
OUT=benchmarks/results/gpu_check.json
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
START=$(date +%s)
MERGE_S=${MERGE_S:-30}
COMPILE_MODE=${COMPILE_MODE:-default}
if [ "$SMOKE" = 1 ]; then
  BUDGET=${GPU_CHECK_BUDGET_S:-300}
  SMOKE_ARG=--smoke
  COMPILE_BACKEND=${COMPILE_BACKEND:-eager}
  D=60; ONLINE_S=${ONLINE_S:-25}
  ONLINE_CONFIG=recipes/configs/tiny.yaml
  ONLINE_SEED_STEPS=${ONLINE_SEED_STEPS:-200}; ONLINE_SEED_UPDATES=${ONLINE_SEED_UPDATES:-20}
  ONLINE_EPISODE_LENGTH=${ONLINE_EPISODE_LENGTH:-50}
else
  BUDGET=${GPU_CHECK_BUDGET_S:-470}
  SMOKE_ARG=
  COMPILE_BACKEND=${COMPILE_BACKEND:-inductor}
  D=
  ONLINE_S=${ONLINE_S:-130}
  ONLINE_CONFIG=recipes/configs/online_paper.yaml
  ONLINE_SEED_STEPS=${ONLINE_SEED_STEPS:-1000}; ONLINE_SEED_UPDATES=${ONLINE_SEED_UPDATES:-100}
  ONLINE_EPISODE_LENGTH=${ONLINE_EPISODE_LENGTH:-200}
fi
echo "gpu_check: work folder $WORK, budget ${BUDGET} s, compile mode $COMPILE_MODE / $COMPILE_BACKEND, smoke=$SMOKE"
[ "$SMOKE" = 0 ] && command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader > "$WORK/nvidia-smi.txt" 2>&1

# run_section NAME PLANNED_TIMEOUT_S COMMAND...: the timeout is capped so that the merge still fits in the budget
run_section() {
  local name=$1 planned=$2; shift 2
  local now left t rc t0
  now=$(date +%s)
  left=$(( START + BUDGET - MERGE_S - now ))
  t=$planned; [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -lt 10 ]; then
    echo "{\"section\": \"$name\", \"rc\": null, \"skipped\": \"no time left in the budget\"}" >> "$WORK/status.jsonl"
    echo "[$name] skipped: no time left"
    return
  fi
  echo "[$name] up to ${t} s: $*"
  t0=$(date +%s.%N)
  timeout --kill-after=3 "$t" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  local wall; wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  echo "{\"section\": \"$name\", \"rc\": $rc, \"timeout_s\": $t, \"wall_s\": $wall}" >> "$WORK/status.jsonl"
  echo "[$name] exit $rc after ${wall} s"
}

B="$PYTHON benchmarks/bench_gpu.py $SMOKE_ARG --compile-mode $COMPILE_MODE --compile-backend $COMPILE_BACKEND"
for size in 1 5 48; do
  v=PLAN_S_$size; default=${D:-$([ $size = 48 ] && echo 55 || echo 45)}
  run_section "plan_$size" "${!v:-$default}" $B --what plan --size $size --section-out "$WORK/plan_$size.json"
done
for size in 1 5 48; do
  v=UPDATE_S_$size; default=${D:-$([ $size = 48 ] && echo 50 || echo 40)}
  run_section "update_$size" "${!v:-$default}" $B --what update --size $size --section-out "$WORK/update_$size.json"
done
run_section throughput "${THROUGHPUT_S:-${D:-35}}" $B --what throughput --sizes 1 5 48 \
  --section-out "$WORK/throughput.json"
run_section online "$ONLINE_S" $PYTHON benchmarks/bench_gpu.py --what online --section-out "$WORK/online.json" -- \
  --config "$ONLINE_CONFIG" steps=100000000 eval_freq=0 checkpoint_freq=0 save_video=false log_with=null \
  progress=false resume=false overwrite=true "output_dir=$WORK/online" "seed_steps=$ONLINE_SEED_STEPS" \
  "seed_updates=$ONLINE_SEED_UPDATES" "episode_length=$ONLINE_EPISODE_LENGTH"

now=$(date +%s)
timeout --kill-after=3 "$MERGE_S" $PYTHON benchmarks/bench_gpu.py $SMOKE_ARG --what merge --work "$WORK" \
  --out "$OUT" --seed-steps "$ONLINE_SEED_STEPS" --total-wall-s $(( now - START )) --budget-s "$BUDGET"
rc=$?
echo "gpu_check: $(( $(date +%s) - START )) s in all; logs in $WORK"
exit $rc
