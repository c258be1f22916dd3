#!/usr/bin/env bash
# Build the embedded default checkpoint (mbdpo_hub/pretrained/default/) the way TD-MPC2 built mt30: the whole replay
# buffers of single-task online agents that learned (mixed quality, random to expert), then offline multi-task
# pretraining on them.
#
#   nohup bash benchmarks/make_default_checkpoint.sh collect > runs/expert/collect.log 2>&1 &   # hours; resumable
#   bash benchmarks/make_default_checkpoint.sh pretrain     # 1M (and 5M) offline pretraining, resumable
#   bash benchmarks/make_default_checkpoint.sh export       # copy the 1M checkpoint into mbdpo_hub/pretrained/default
#
# Stage `collect` runs WORKERS collect processes in parallel (one per core, one torch thread each, niced so that the
# test suite stays usable beside them), each on its own part of TASKS, all appending to one dataset under a lock.
# Killed, the same command resumes: finished tasks are skipped, a task killed half-way resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-runs/expert}
STEPS_PER_TASK=${STEPS_PER_TASK:-20000}
WORKERS=${WORKERS:-2}
NICE=${NICE:-10}
# 8 mt30 tasks over 5 domains; each held-out task below has a related pretraining task in its domain
TASKS=${TASKS:-"cartpole-balance finger-spin reacher-easy cartpole-swingup walker-stand walker-walk cup-catch cheetah-run"}
HELD_OUT=${HELD_OUT:-"cartpole-balance-sparse reacher-hard walker-run finger-turn-easy"}
DEST=mbdpo_hub/pretrained/default
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
stage=${1:-all}
mkdir -p "$WORK"

collect() {
  # the learning benchmark's CPU setting (recipes/configs/online.yaml: 1M, 4 reverse diffusion steps x 128 samples,
  # utd 0.5, batch 128), one final 10-episode evaluation per agent
  local tasks=($TASKS) pids=() w
  for ((w = 0; w < WORKERS; w++)); do
    local mine=()
    for ((i = w; i < ${#tasks[@]}; i += WORKERS)); do mine+=("${tasks[i]}"); done
    local list; list=$(IFS=,; echo "${mine[*]}")
    echo "== collect worker $w: [$list] $(date)"
    nice -n "$NICE" $PY recipes/collect.py --config recipes/configs/collect.yaml tasks="[$list]" \
      steps_per_task="$STEPS_PER_TASK" \
      progress=false output_dir="$WORK/collect" dataset_dir="$WORK/dataset" \
      dataset_name=mbdpo-hub-dmc8-expert > "$WORK/collect_worker$w.log" 2>&1 &
    pids+=($!)
  done
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  echo "== collect done rc=$rc $(date)"
  cat "$WORK/collect/collect_summary.json" || true
  return $rc
}

case "$stage" in
  collect) collect ;;
  *) echo "stage $stage: not implemented yet (collect)"; exit 2 ;;
esac
