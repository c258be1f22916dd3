#!/usr/bin/env bash
# Build the embedded default checkpoint (mbdpo_hub/pretrained/default/) the way TD-MPC2 built mt30: the whole replay
# buffers of single-task online agents that learned (mixed quality, random to expert), then offline multi-task
# pretraining on them.
#
#   nohup bash benchmarks/make_default_checkpoint.sh collect > runs/expert/collect.log 2>&1 &   # hours; resumable
#   bash benchmarks/make_default_checkpoint.sh pretrain     # 1M and 5M offline pretraining + 10-episode evals, resumable
#   bash benchmarks/make_default_checkpoint.sh export       # copy the 1M checkpoint into mbdpo_hub/pretrained/default
# Knobs (environment): STEPS_PER_TASK, WORKERS, NICE, TASKS, HELD_OUT, UPDATES, BATCH, SIZES, PROCS (processes per
# pretraining run, accelerate), WORK, PY, DATASET.
#
# Stage `collect` runs WORKERS collect processes in parallel (one per core, one torch thread each, niced so that the
# test suite stays usable beside them), each on its own part of TASKS, all appending to one dataset under a lock.
# Killed, the same command resumes: finished tasks are skipped, a task killed half-way resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-runs/expert}
# the dataset is tracked in git (runs/ is not, and a new session starts from a fresh checkout): collection appends
# finished tasks to it, so a later session continues with the tasks still missing
DATASET=${DATASET:-datasets/dmc8-expert}
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
      progress=false output_dir="$WORK/collect" dataset_dir="$DATASET" summary_path="${DATASET}_agents.json" \
      dataset_name=mbdpo-hub-dmc8-expert > "$WORK/collect_worker$w.log" 2>&1 &
    pids+=($!)
  done
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  echo "== collect done rc=$rc $(date)"
  cat "${DATASET}_agents.json" || true
  return $rc
}

pretrain() {
  # the 1M and 5M presets on the same data, the same updates, batch and seed, every task evaluated with 10 episodes
  # and the CPU planner setting (benchmarks/offline_scaling.py: the size effect, the paper's claim (b)); the 1M run
  # becomes the embedded default
  local held; held=$(echo $HELD_OUT | tr ' ' ','); local sizes=${SIZES:-"1 5"}
  $PY benchmarks/offline_scaling.py --dataset "$DATASET" --sizes $sizes --steps "${UPDATES:-20000}" \
    --batch-size "${BATCH:-256}" --num-processes "${PROCS:-1}" --eval-episodes 10 --planner diffusion --diffusion-steps 5 --num-samples 128 \
    --num-elites 32 --num-pi-trajs 12 --checkpoint-freq 1000 --log-freq 100 --runs-dir "$WORK/pretrain" \
    --out benchmarks/results/offline_scaling_dmc8.json "held_out_tasks=[$held]" \
    "notes=Pretrained offline by benchmarks/make_default_checkpoint.sh on the replay buffers of 8 single-task online agents (mt30 tasks, ${STEPS_PER_TASK} steps each); the data agents' scores are in datasets/dmc8-expert_agents.json."
}

export_default() {
  # copy the 1M pretraining run into the package (atomically) and its card to model_cards/default.md
  $PY - "$WORK/pretrain/size1" "$DEST" "$DATASET" <<'PYEOF'
import shutil, sys
from pathlib import Path
from mbdpo_hub.utils import swap_folder
src, dest = Path(sys.argv[1]), Path(sys.argv[2])
tmp = dest.with_name(dest.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
tmp.mkdir(parents=True)
for name in ("config.json", "model.safetensors", "README.md", "eval_results.json", "eval.csv", "pretrain_config.yaml"):
    if (src / name).exists():
        shutil.copy2(src / name, tmp / name)
# the card reports the checkpoint's 10-episode returns beside the data agents' own final returns
import json
from mbdpo_hub.envs import task_score
agents_path = Path(sys.argv[3] + "_agents.json")
res = json.loads((tmp / "eval_results.json").read_text())
if agents_path.exists():
    agents = json.loads(agents_path.read_text())
    rows = ["", "## This checkpoint beside the agents that collected its data", "",
            f"Returns are means +/- std over evaluation episodes (the data agents' final evaluations: "
            f"`{agents_path}`; this checkpoint: `eval_results.json`). Normalised score: return / 10 on DMControl.", "",
            "| task | data agent | this checkpoint (offline, multi-task) |", "|---|---|---|"]
    for task, r in res["results"].items():
        a = agents.get(task)
        ag = (f"{a['final_eval_return']:.1f} +/- {a['final_eval_std']:.1f} ({a['final_eval_episodes']} ep.)"
              if a else "n/a")
        rows.append(f"| {task} | {ag} | {r['mean_return']:.1f} +/- {r['std_return']:.1f} ({r['episodes']} ep.) |")
    scores = [task_score(t, agents[t]["final_eval_return"]) for t in res["results"] if t in agents]
    rows.append(f"| **mean normalised score** | {sum(scores) / max(1, len(scores)):.1f} | "
                f"{res['normalized_score']:.1f} |")
    with open(tmp / "README.md", "a") as f:
        f.write("\n".join(rows) + "\n")
swap_folder(tmp, dest)
shutil.copy2(dest / "README.md", Path("model_cards/default.md"))
from mbdpo_hub import MBDPODiffusionPolicy
p = MBDPODiffusionPolicy.from_pretrained(str(dest))
print("exported", dest, "tasks", p.config.tasks, "held out", getattr(p.config, "held_out_tasks", None))
PYEOF
}

case "$stage" in
  collect) collect ;;
  pretrain) pretrain ;;
  export) export_default ;;
  all) collect && pretrain && export_default ;;
  *) echo "unknown stage $stage: collect | pretrain | export | all"; exit 2 ;;
esac
