"""Planner and update timings of two source trees of mbdpo_hub side by side (e.g. before/after a refactor), one
torch thread, alternating separate processes so both sides see the same machine load.

    git worktree add /tmp/old <commit>
    python benchmarks/compare_trees.py --old /tmp/old --new . --rounds 5 --out benchmarks/results/compare_trees.json

Measured per side: seconds per planning call (1M preset, walker-walk, the default CPU setting 4 reverse steps x 128
samples, and the paper's 19 x 512) and per update (batch 128), median over rounds. Only public APIs that both trees
have are used (MBDPOConfig.from_preset, MBDPODiffusionPolicy.select_action, MBDPOLearner.update).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SNIPPET = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy
from mbdpo_hub.learner import MBDPOLearner
torch.manual_seed(0)
out = {}
for name, kw in (("plan_cpu_setting", dict(diffusion_steps=5, num_samples=128, num_elites=32, num_pi_trajs=12)),
                 ("plan_paper_setting", dict(diffusion_steps=20, num_samples=512, num_elites=64, num_pi_trajs=24))):
    policy = MBDPODiffusionPolicy(MBDPOConfig.from_preset(1, "walker-walk", **kw)).eval()
    obs = torch.randn(1, policy.config.obs_dim)
    for _ in range(3):
        policy.select_action(obs, task=0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        policy.select_action(obs, task=0)
        n += 1
    out[name] = (time.perf_counter() - t0) / n
policy = MBDPODiffusionPolicy(MBDPOConfig.from_preset(1, "walker-walk"))
learner = MBDPOLearner(policy)
H, B, c = policy.config.horizon, 128, policy.config
batch = dict(obs=torch.randn(H + 1, B, c.obs_dim), action=torch.rand(H, B, c.action_dim) * 2 - 1,
             reward=torch.rand(H, B, 1), terminated=torch.zeros(H, B, 1), task=None)
for _ in range(3):
    learner.update(batch)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 3.0:
    learner.update(batch)
    n += 1
out["update_b128"] = (time.perf_counter() - t0) / n
print("RESULT " + json.dumps(out))
"""


def run_side(tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, cwd=str(tree))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{tree}: benchmark failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the reference source tree (a git worktree)")
    ap.add_argument("--new", default=".", help="the tree under test")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/compare_trees.json")
    args = ap.parse_args(argv)
    trees = {"old": Path(args.old).resolve(), "new": Path(args.new).resolve()}
    samples: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
            samples[side].append(run_side(trees[side]))
            print(f"round {r + 1} {side}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in samples[side][-1].items()),
                  flush=True)
    keys = list(samples["old"][0])
    summary = {k: dict(old_s=statistics.median(s[k] for s in samples["old"]),
                       new_s=statistics.median(s[k] for s in samples["new"])) for k in keys}
    for k, v in summary.items():
        v["new_over_old"] = v["new_s"] / v["old_s"]
        print(f"{k}: old {v['old_s'] * 1e3:.1f} ms, new {v['new_s'] * 1e3:.1f} ms, new/old {v['new_over_old']:.3f}")
    load = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(trees={k: str(v) for k, v in trees.items()}, rounds=args.rounds,
                                              summary=summary, samples=samples, loadavg=load), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
