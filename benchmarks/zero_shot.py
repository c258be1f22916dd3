"""Zero-shot returns of a checkpoint on tasks it was not trained on: the model a fine-tuning run starts from
(`mbdpo_hub.finetune.prepare_finetune_policy`: the new task's embedding row as the fine-tuning config's task_init
sets it before any data, planner settings from the config), evaluated as a fine-tuning run evaluates it at step 0
(`evaluate`, `--episodes` deterministic episodes, seed `seed + 777`).

    python benchmarks/zero_shot.py --checkpoint runs/ckpt15k --tasks reacher-hard walker-run finger-turn-easy

Extra `key=value` arguments go to the fine-tuning config (e.g. `task_init=nearest`). Writes one JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="folder / Hub id / official .pt (default: the embedded one)")
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1, help="the fine-tuning run's seed (evaluation seed: seed + 777)")
    ap.add_argument("--config", default=str(REPO / "recipes/configs/finetune.yaml"))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/zero_shot.json"))
    ap.add_argument("extra", nargs="*", help="key=value overrides of the fine-tuning config")
    args = ap.parse_args(argv)
    from _common import machine_info, write_json

    from mbdpo_hub.finetune import prepare_finetune_policy
    from mbdpo_hub.training.config import load_finetune_config
    from mbdpo_hub.training.evaluation import evaluate

    results = {}
    for task in args.tasks:
        cfg = load_finetune_config(args.config, [f"task={task}", f"seed={args.seed}", *args.extra,
                                                 *([f"checkpoint={args.checkpoint}"] if args.checkpoint else [])])
        policy, info = prepare_finetune_policy(cfg)
        res = evaluate(policy, task, args.episodes, seed=cfg.seed + 777, episode_length=cfg.episode_length)
        results[task] = dict(mean_return=res["mean_return"], std_return=res["std_return"], returns=res["returns"],
                             episodes=args.episodes, planner=res["planner"], seconds=round(res["seconds"], 1),
                             task_row_from=info.get("source_task") or "mean", task_init=info.get("init"))
        print(f"{task:<26} {res['mean_return']:7.1f} +/- {res['std_return']:6.1f}  (row from "
              f"{results[task]['task_row_from']}, {res['seconds']:.0f} s)", flush=True)
    write_json(args.out, dict(benchmark="zero_shot", checkpoint=args.checkpoint or "embedded default",
                              config=args.config, extra=args.extra, seed=args.seed, machine=machine_info(),
                              results=results))


if __name__ == "__main__":
    main()
