"""Environment throughput: agent steps/second per task, single env and a sync vector env.

One agent step = ``action_repeat`` (2) simulator control steps. Actions are
uniform random in [-1, 1]. Each number is the median over ``--repeats`` timed
runs of ``--steps`` agent steps (after one untimed warm-up reset + step); the
vector-env number counts the agent steps of all sub-envs together.

    python benchmarks/bench_envs.py                               # all mt30 tasks
    python benchmarks/bench_envs.py --tasks walker-run,dog-run --steps 500
    python benchmarks/bench_envs.py --out benchmarks/results/bench_envs.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

# No rendering here; set before dm_control is imported (respects an explicit choice).
os.environ.setdefault("MUJOCO_GL", "disable")

import numpy as np  # noqa: E402

from mbdpo_hub.envs import MT30_TASKS, TASK_SETS, make_env, make_vec_env  # noqa: E402


def bench_single(task: str, steps: int, repeats: int, seed: int = 0) -> float:
    env = make_env(task, seed=seed)
    rng = np.random.default_rng(seed)
    dim = env.action_space.shape[0]
    env.reset()
    env.step(np.zeros(dim))  # warm-up
    rates = []
    for _ in range(repeats):
        actions = rng.uniform(-1, 1, (steps, dim)).astype(np.float32)
        env.reset()
        t0 = time.perf_counter()
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        rates.append(steps / (time.perf_counter() - t0))
    env.close()
    return statistics.median(rates)


def bench_vector(task: str, steps: int, repeats: int, num_envs: int, mode: str, seed: int = 0) -> float:
    envs = make_vec_env(task, num_envs=num_envs, seed=seed, vectorization_mode=mode)
    rng = np.random.default_rng(seed)
    dim = envs.single_action_space.shape[0]
    envs.reset()
    envs.step(np.zeros((num_envs, dim), dtype=np.float32))  # warm-up
    rates = []
    for _ in range(repeats):
        actions = rng.uniform(-1, 1, (steps, num_envs, dim)).astype(np.float32)
        envs.reset()
        t0 = time.perf_counter()
        for a in actions:
            envs.step(a)  # same-step autoreset handles episode ends
        rates.append(steps * num_envs / (time.perf_counter() - t0))
    envs.close()
    return statistics.median(rates)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="mt30", help="'mt30', 'mt80' or a comma-separated list of task names")
    p.add_argument("--steps", type=int, default=500, help="agent steps per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--vector-mode", default="sync", choices=["sync", "async"])
    p.add_argument("--no-vector", action="store_true", help="skip the vector-env measurement")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args(argv)

    tasks = list(TASK_SETS[args.tasks]) if args.tasks in TASK_SETS else [t.strip() for t in args.tasks.split(",")]
    results = {}
    vec_key = f"vector_{args.vector_mode}_x{args.num_envs}_steps_per_s"
    print(f"{'task':28s} {'single':>10s} {vec_key if not args.no_vector else '':>28s}")
    for task in tasks:
        row = {"single_steps_per_s": round(bench_single(task, args.steps, args.repeats), 1)}
        if not args.no_vector:
            rate = bench_vector(task, args.steps, args.repeats, args.num_envs, args.vector_mode)
            row[vec_key] = round(rate, 1)
        results[task] = row
        print(f"{task:28s} {row['single_steps_per_s']:10.1f} {row.get(vec_key, float('nan')):28.1f}", flush=True)

    report = {
        "benchmark": "mbdpo_hub.envs agent steps/s (action repeat 2, random actions)",
        "settings": {
            "steps": args.steps,
            "repeats": args.repeats,
            "num_envs": args.num_envs,
            "vector_mode": args.vector_mode,
            "statistic": "median over repeats",
        },
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
