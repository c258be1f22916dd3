"""Thread target (issue 13): a training step (one planned action + one update, the demo's work) must run at most
1.5x slower while one other busy single-threaded process shares the machine.

    python benchmarks/bench_threads.py [--steps 20] [--rounds 3] [--out benchmarks/results/bench_threads.json]

Each measurement is a child process that builds the 1M preset at the demo's planner setting (4 reverse steps x 128
samples, 32 elites, 12 policy trajectories) and times `--steps` steps of `select_action` + `MBDPOLearner.update`
(batch 256). Threads are set as the recipes set them (`mbdpo_hub.utils.configure_threads`: the cores this process
may use, minus one, per process; at least one) or, for comparison, torch's own default (one thread per core), which
is what oversubscribes. Both run alone and beside a busy process (a one-thread matmul loop), alternating, `--rounds`
times; the JSON has the medians and the slowdown ratios. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BUSY = ("import torch, time\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
        "while True:\n    a = torch.tanh(a @ a * 1e-3)\n")


def child(args) -> None:
    import torch

    from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy
    from mbdpo_hub.learner import MBDPOLearner
    from mbdpo_hub.utils import configure_threads

    threads = configure_threads() if args.threads == "recipe" else torch.get_num_threads()
    config = MBDPOConfig.from_preset(1, "cartpole-balance", planner="diffusion", diffusion_steps=5, num_samples=128,
                                     num_elites=32, num_pi_trajs=12)
    policy = MBDPODiffusionPolicy(config)
    learner = MBDPOLearner(policy)
    H, B = config.horizon, 256
    batch = dict(obs=torch.randn(H + 1, B, config.obs_dim), action=torch.rand(H, B, config.action_dim) * 2 - 1,
                 reward=torch.rand(H, B, 1), terminated=torch.zeros(H, B, 1), task=None)
    obs = torch.randn(1, config.obs_dim).numpy()

    def step():
        policy.select_action(obs)
        learner.update(batch)

    for _ in range(3):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    print("RESULT " + json.dumps(dict(threads=threads, s_per_step=times[len(times) // 2])), flush=True)


def measure(threads: str, busy: bool, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    hog = subprocess.Popen([sys.executable, "-c", BUSY], env=dict(env, OMP_NUM_THREADS="1")) if busy else None
    try:
        if hog is not None:
            time.sleep(1.0)
        out = subprocess.run([sys.executable, __file__, "--child", "--threads", threads, "--steps", str(steps)],
                             env=env, capture_output=True, text=True, check=True).stdout
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="recipe", choices=["recipe", "torch-default"])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/results/bench_threads.json")
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    from _common import machine_info, write_json

    raw = {f"{t}/{'busy' if b else 'alone'}": [] for t in ("recipe", "torch-default") for b in (False, True)}
    for r in range(args.rounds):
        for key in raw:
            t, b = key.split("/")
            res = measure(t, b == "busy", args.steps)
            raw[key].append(res)
            print(f"round {r + 1}: {key:<20} {res['threads']} thread(s)  {1000 * res['s_per_step']:.0f} ms/step",
                  flush=True)
    med = {k: sorted(x["s_per_step"] for x in v)[len(v) // 2] for k, v in raw.items()}
    ratios = {t: med[f"{t}/busy"] / med[f"{t}/alone"] for t in ("recipe", "torch-default")}
    for t in ("recipe", "torch-default"):
        print(f"{t:<14}: alone {1000 * med[f'{t}/alone']:.0f} ms/step, beside a busy process "
              f"{1000 * med[f'{t}/busy']:.0f} ms/step: {ratios[t]:.2f}x slower")
    target = 1.5
    print(f"target (recipe threads): at most {target}x -> {'met' if ratios['recipe'] <= target else 'MISSED'}")
    write_json(args.out, dict(benchmark="threads", machine=machine_info(), cores=len(os.sched_getaffinity(0)),
                              steps=args.steps, rounds=args.rounds, median_s_per_step=med, slowdown=ratios,
                              target=target, target_met=ratios["recipe"] <= target, raw=raw,
                              load_average_at_end=os.getloadavg()))


if __name__ == "__main__":
    main()
