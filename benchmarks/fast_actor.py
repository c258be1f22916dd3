"""Real-time acting (issue 13): the return each planner keeps on the same trained models, and its latency.

    python benchmarks/fast_actor.py --models mbdpo_hub/pretrained/default \
        --tasks cartpole-balance walker-stand cup-catch --planners diffusion policy score

For each model folder (a trained run: its config names its task(s); `--tasks` picks tasks of a multi-task model) and
each planner: a 10-episode deterministic evaluation with the same seeds (seed 777, the recipes' evaluation seed)
and the median latency of one action (one environment, `--latency-repeats` calls, one torch thread). The diffusion
planner uses the model's own setting (or `--diffusion-steps` / `--num-samples`). `score` needs a model trained with
`use_score_network=true` and is skipped otherwise (say so in the JSON). Targets: a fast planner keeps at least 95%
of the diffusion planner's return at no more than 10 ms per action. Writes benchmarks/results/fast_actor.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def latency(policy, task_id, repeats: int) -> float:
    obs = np.zeros((1, policy.config.obs_dim), np.float32)
    with policy.separate_plan_state():
        for _ in range(3):
            policy.select_action(obs, task=task_id, eval_mode=True)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            policy.select_action(obs, task=task_id, eval_mode=True)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--tasks", nargs="+", default=None,
                    help="tasks of a multi-task model, each evaluated (default: its first); every model must know them")
    ap.add_argument("--planners", nargs="+", default=["diffusion", "policy", "score"])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--latency-repeats", type=int, default=30)
    ap.add_argument("--diffusion-steps", type=int, default=None)
    ap.add_argument("--num-samples", type=int, default=None)
    ap.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                    help="bf16: the planner runs under bf16 autocast (rows named planner+bf16), scored against fp32")
    ap.add_argument("--out", default="benchmarks/results/fast_actor.json")
    args = ap.parse_args(argv)
    from _common import machine_info, write_json

    from mbdpo_hub import MBDPODiffusionPolicy

    torch.set_num_threads(1)
    rows = []
    for folder in args.models:
        policy = MBDPODiffusionPolicy.from_pretrained(folder).eval()
        cfg = policy.config
        for key in ("diffusion_steps", "num_samples"):
            if getattr(args, key) is not None:
                setattr(cfg, key, getattr(args, key))
        for task in args.tasks or [cfg.tasks[0]]:
            rows.append(evaluate_planners(policy, folder, task, args))
    write_json(args.out, dict(benchmark="fast_actor", threads=1, episodes=args.episodes, eval_seed=777,
                              machine=machine_info(), rows=rows,
                              target=dict(fraction_of_diffusion_return=0.95, max_latency_s=0.010)))


def evaluate_planners(policy, folder: str, task: str, args) -> dict:
    """One model on one task: every planner's 10-episode return (the same seeds) and its latency."""
    from mbdpo_hub.training import evaluate

    cfg = policy.config
    try:
        task_id = cfg.task_id(task)
    except ValueError as e:
        raise SystemExit(f"--tasks: {e} ({folder})") from None
    row = dict(model=folder, task=task, params=policy.num_parameters(), planners={})
    for planner, dtype in ((p, d) for p in args.planners for d in args.dtypes):
        name = planner if dtype == "fp32" else f"{planner}+{dtype}"
        if planner == "score" and policy.score_net is None:
            row["planners"][name] = dict(skipped="the model has no score network (use_score_network=false)")
            print(f"{task:<20} {name:<14} skipped: no score network")
            continue
        cfg.planner = planner
        # bf16 autocast as the online recipe acts under mixed_precision=bf16; the same seeds as fp32
        with torch.autocast(policy.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            res = evaluate(policy, task, args.episodes, seed=777)
            lat = latency(policy, task_id, args.latency_repeats)
        row["planners"][name] = dict(mean_return=res["mean_return"], std_return=res["std_return"],
                                     returns=res["returns"], episodes=args.episodes, dtype=dtype, latency_s=lat)
        print(f"{task:<20} {name:<14} return {res['mean_return']:7.1f} +/- {res['std_return']:.1f}  "
              f"{1000 * lat:7.2f} ms/action", flush=True)
    ref = row["planners"].get("diffusion", {}).get("mean_return")
    for name, r in row["planners"].items():
        if ref and "mean_return" in r:
            r["fraction_of_diffusion_return"] = r["mean_return"] / ref if ref else None
            r["meets_target"] = bool(r["mean_return"] >= 0.95 * ref and r["latency_s"] <= 0.010)
    return row


if __name__ == "__main__":
    main()
