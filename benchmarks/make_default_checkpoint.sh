#!/usr/bin/env bash
# Build the embedded default checkpoint mbdpo_hub/pretrained/default/ on a CPU:
#   1. collect a small multi-task dataset with online MBDPO agents (recipes/collect.py),
#   2. pretrain the 1M preset offline on it (recipes/pretrain.py),
#   3. copy config.json + model.safetensors + README.md (+ eval results) into mbdpo_hub/pretrained/default/.
# Resumable: re-running skips collected tasks and resumes pretraining from its last checkpoint.
# Budget knobs (environment variables): STEPS_PER_TASK, UPDATES, BATCH, WORK.
#   nohup bash benchmarks/make_default_checkpoint.sh > /tmp/default_ckpt.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-runs/default_ckpt}
STEPS_PER_TASK=${STEPS_PER_TASK:-2000}
UPDATES=${UPDATES:-4000}
BATCH=${BATCH:-64}
TASKS="[cartpole-balance,cartpole-swingup,pendulum-swingup,reacher-easy,cup-catch,finger-spin]"
HELD_OUT="[cartpole-balance-sparse,cartpole-swingup-sparse,pendulum-spin,reacher-hard]"
DEST=mbdpo_hub/pretrained/default
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

echo "== collect $(date)"
# acting with the policy prior (planner=policy) after a random seed phase: the CPU budget does not allow planning
# with the diffusion planner at collection time (~0.5 s per action on the shared 2-core CPU)
$PY recipes/collect.py --config recipes/configs/collect.yaml tasks="$TASKS" steps_per_task="$STEPS_PER_TASK" \
  seed_steps=1000 seed_updates=60 utd=0.1 batch_size="$BATCH" eval_episodes=1 checkpoint_freq=1000 \
  planner=policy progress=false output_dir="$WORK/collect" dataset_dir="$WORK/dataset"

echo "== pretrain $(date)"
$PY recipes/pretrain.py --config recipes/configs/pretrain_1m.yaml dataset="$WORK/dataset" \
  output_dir="$WORK/pretrain" steps="$UPDATES" batch_size="$BATCH" checkpoint_freq=300 eval_freq=0 \
  eval_episodes=2 held_out_tasks="$HELD_OUT" progress=false \
  notes="Embedded default checkpoint built by benchmarks/make_default_checkpoint.sh on a shared 2-core CPU, with \
$STEPS_PER_TASK environment steps per task collected by online MBDPO agents (1000 random seed steps, then acting \
with the policy prior), $UPDATES offline updates at batch $BATCH. A small-budget starting point for fine-tuning, \
not a strong agent. Evaluated with the diffusion planner (4 diffusion steps x 64 samples)."

echo "== export $(date)"
$PY - "$WORK/pretrain" "$DEST" <<'PYEOF'
import json, shutil, sys
from pathlib import Path
src, dest = Path(sys.argv[1]), Path(sys.argv[2])
tmp = dest.with_name(dest.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
tmp.mkdir(parents=True)
for name in ("config.json", "model.safetensors", "README.md", "eval_results.json", "eval.csv", "pretrain_config.yaml"):
    if (src / name).exists():
        shutil.copy2(src / name, tmp / name)
if dest.exists():
    shutil.rmtree(dest)
tmp.rename(dest)
shutil.copy2(dest / "README.md", Path("model_cards/default.md"))
from mbdpo_hub import MBDPODiffusionPolicy
p = MBDPODiffusionPolicy.from_pretrained(str(dest))
print("exported", dest, "tasks", p.config.tasks, "held out", getattr(p.config, "held_out_tasks", None))
print(json.dumps(json.loads((dest / "eval_results.json").read_text()), indent=1)[:3000])
PYEOF
echo "== done $(date)"
