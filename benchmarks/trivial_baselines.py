"""Returns of trivial policies (uniform random actions, always 0) on tasks: the floor a learned or fine-tuned agent
must be read against.

    python benchmarks/trivial_baselines.py --tasks cartpole-balance-sparse reacher-hard walker-run finger-turn-easy

10 episodes per task and policy (episode i is reset with seed 777 + i, the evaluation seeds of the recipes), the
environment alone (no model). Writes benchmarks/results/trivial_baselines.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(task: str, policy: str, episodes: int, seed: int) -> list[float]:
    from mbdpo_hub.envs import make_vec_env

    env = make_vec_env(task, 1, seed=seed)
    rng = np.random.default_rng(seed)
    A = env.single_action_space.shape[0]
    returns = []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            a = rng.uniform(-1, 1, size=(1, A)) if policy == "random" else np.zeros((1, A))
            _, r, term, trunc, _ = env.step(a.astype(np.float32))
            total += float(r[0])
            done = bool(term[0] or trunc[0])
        returns.append(total)
    env.close()
    return returns


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["cartpole-balance-sparse"])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--out", default="benchmarks/results/trivial_baselines.json")
    args = ap.parse_args(argv)
    from _common import machine_info, write_json

    rows = {}
    for task in args.tasks:
        rows[task] = {}
        for policy in ("random", "zero"):
            r = run(task, policy, args.episodes, args.seed)
            rows[task][policy] = dict(mean_return=float(np.mean(r)), std_return=float(np.std(r)), returns=r)
            print(f"{task:<26} {policy:<7} {np.mean(r):7.1f} +/- {np.std(r):.1f} ({args.episodes} episodes)")
    write_json(args.out, dict(benchmark="trivial_baselines", episodes=args.episodes, seed=args.seed,
                              machine=machine_info(), results=rows))


if __name__ == "__main__":
    main()
