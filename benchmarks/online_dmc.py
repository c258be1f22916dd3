"""Online learning benchmark: short MBDPO trainings on DMControl, diffusion planner vs MPPI on the same world model,
against the paper's curves (../shared/reference-results, evaluated every 100k steps).

    python benchmarks/online_dmc.py --tasks cartpole-balance --seeds 1 2 3 --steps 20000 --planners diffusion mppi
    python benchmarks/online_dmc.py --summarize-only          # re-read finished/partial runs, rewrite JSON + plot

Each (task, planner, seed) is a normal run folder under --runs-dir (killed, it resumes). Runs go in parallel with
--jobs. The default CPU setting is recipes/configs/online.yaml (1M preset, 4 reverse diffusion steps x 128 samples);
the JSON records the setting and the measured seconds per environment step. After training, each final model is
evaluated again with every planner of --final-planners (diffusion, MPPI, policy prior: the same world model, eval
seed and episodes), so the planners are compared on identical networks; a planner given to --planners instead trains
its own model.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("MBDPO_REFERENCE_RESULTS", REPO.parent / "shared" / "reference-results"))


def run_one(task, planner, seed, args) -> Path:
    out = Path(args.runs_dir) / f"{task}_{planner}_s{seed}"
    cmd = [sys.executable, str(REPO / "recipes" / "train.py"), "--config", args.config, f"task={task}",
           f"planner={planner}", f"seed={seed}", f"steps={args.steps}", f"eval_freq={args.eval_freq}",
           f"output_dir={out}", "progress=false", f"save_video={str(args.video).lower()}", *args.overrides]
    done = out / "eval_results.json"
    if done.exists() and json.loads(done.read_text())["env_steps"] >= args.steps:
        return out  # finished; a larger --steps extends it from its last checkpoint
    out.mkdir(parents=True, exist_ok=True)
    (out / "final_planners.json").unlink(missing_ok=True)  # evaluations of a model this run will replace
    with open(out / "benchmark.log", "a") as log:
        t0 = time.time()
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        log.write(f"\nexit {rc} after {time.time() - t0:.0f}s\n")
    return out


def final_planner_eval(run: Path, task: str, args) -> dict | None:
    """Evaluate a finished run's final world model with each of --final-planners (the same eval seed and episodes for
    all): the diffusion planner vs MPPI (and the policy prior) on the same world model. Cached in
    final_planners.json."""
    path = run / "final_planners.json"
    if not (run / "eval_results.json").exists():
        return None
    cached = json.loads(path.read_text()) if path.exists() else {}
    todo = [p for p in args.final_planners if p not in cached]
    if todo:
        import torch

        from mbdpo_hub import MBDPODiffusionPolicy
        from mbdpo_hub.training import evaluate

        torch.set_num_threads(args.threads)
        policy = MBDPODiffusionPolicy.from_pretrained(run)
        for planner in todo:
            t0 = time.time()
            res = evaluate(policy, task, episodes=args.final_episodes, seed=args.final_seed, planner=planner)
            cached[planner] = dict(mean_return=res["mean_return"], std_return=res["std_return"],
                                   returns=res["returns"], episodes=args.final_episodes, seed=args.final_seed,
                                   seconds=time.time() - t0)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cached, indent=2))
            os.replace(tmp, path)
            print(f"{run.name}: final eval with {planner}: {res['mean_return']:.1f} +/- {res['std_return']:.1f} "
                  f"({args.final_episodes} episodes, {time.time() - t0:.0f}s)", flush=True)
    return cached


def read_curve(run: Path):
    path = run / "eval.csv"
    if not path.exists():
        return [], []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [int(float(r["step"])) for r in rows], [float(r["mean_return"]) for r in rows]


def train_windows(run: Path, eval_steps: list[int], window: int) -> list[float | None]:
    """Mean return of the training episodes (with exploration noise) that ended in (s - window, s] for each eval step
    s: about 10 episodes per point against the evaluation's 3, a steadier view of tasks scored hit-or-miss."""
    path = run / "train.csv"
    if not path.exists():
        return [None] * len(eval_steps)
    with open(path) as f:
        rows = [(int(float(r["step"])), float(r["episode_return"])) for r in csv.DictReader(f)]
    out = []
    for s in eval_steps:
        vals = [ret for step, ret in rows if s - window < step <= s]
        out.append(float(np.mean(vals)) if vals else None)
    return out


def reference(method: str, task: str):
    path = REFERENCE / method / f"{task}.csv"
    if not path.exists():
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    by_step: dict[int, list[float]] = {}
    for r in rows:
        by_step.setdefault(int(float(r["step"])), []).append(float(r["reward"]))
    return {s: (float(np.mean(v)), float(np.std(v)), len(v)) for s, v in sorted(by_step.items())}


def summarize(args) -> dict:
    runs = []
    for task in args.tasks:
        for planner in args.planners:
            for seed in args.seeds:
                run = Path(args.runs_dir) / f"{task}_{planner}_s{seed}"
                steps, returns = read_curve(run)
                info = {}
                if (run / "eval_results.json").exists():
                    info = json.loads((run / "eval_results.json").read_text())
                final = json.loads((run / "final_planners.json").read_text()) \
                    if (run / "final_planners.json").exists() else {}
                runs.append(dict(task=task, planner=planner, seed=seed, steps=steps, returns=returns,
                                 train_window_returns=train_windows(run, steps, args.eval_freq),
                                 final_planners=final,
                                 finished=bool(info), env_steps=info.get("env_steps"),
                                 elapsed_s=info.get("elapsed_s"),
                                 s_per_env_step=(info["elapsed_s"] / info["env_steps"]) if info else None))
    summary = {}
    for task in args.tasks:
        for planner in args.planners:
            rs = [r for r in runs if r["task"] == task and r["planner"] == planner and r["returns"]]
            if not rs:
                continue
            last = [r["returns"][-1] for r in rs]
            best_common = min(r["steps"][-1] for r in rs)
            n = min(len(r["returns"]) for r in rs)
            steps = rs[0]["steps"][:n]
            returns = np.array([r["returns"][:n] for r in rs])
            mean_curve = returns.mean(0)
            above = [s for s, m in zip(steps, mean_curve) if m >= args.threshold]
            summary[f"{task}/{planner}"] = dict(
                seeds=[r["seed"] for r in rs], last_step=[r["steps"][-1] for r in rs], last_return=last,
                mean_last_return=float(np.mean(last)), std_last_return=float(np.std(last)),
                common_step=best_common, finished=[r["finished"] for r in rs],
                mean_curve=dict(steps=steps, mean=mean_curve.tolist(),
                                std=returns.std(0).tolist()),
                train_window_mean=[float(np.mean(col)) if None not in col else None
                                   for col in zip(*(r["train_window_returns"][:n] for r in rs))],
                final_planners={p: [r["final_planners"].get(p, {}).get("mean_return") for r in rs]
                                for p in args.final_planners},
                threshold=args.threshold, first_step_mean_above=above[0] if above else None,
                first_step_above_per_seed=[next((s for s, v in zip(r["steps"], r["returns"]) if v >= args.threshold),
                                                None) for r in rs])
    refs = {t: {m: reference(m, t) for m in ("mbdpo", "tdmpc2")} for t in args.tasks}
    payload = dict(benchmark="online_dmc", config=args.config, overrides=args.overrides, steps=args.steps,
                   runs=runs, summary=summary, reference_first_points={
                       t: {m: (v and {str(k): x for k, x in list(v.items())[:2]}) for m, v in d.items()}
                       for t, d in refs.items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out)
    plot(runs, summary, refs, args, out.with_suffix(".png"))
    for k, v in summary.items():
        finals = ", ".join(f"{p} {np.mean([x for x in xs if x is not None]):.1f}" for p, xs in v["final_planners"].items()
                           if any(x is not None for x in xs))
        if finals:
            print(f"{k:40s} final model, {args.final_episodes} episodes, mean over seeds: {finals}")
        print(f"{k:40s} last eval {v['mean_last_return']:7.1f} +/- {v['std_last_return']:5.1f} "
              f"(seeds {v['seeds']}, steps {v['last_step']}); mean over seeds first >= {v['threshold']:g} at step "
              f"{v['first_step_mean_above']}, per seed {v['first_step_above_per_seed']}")
        print(f"{k:40s} mean curve (eval | training episodes in the window before each point): " + ", ".join(
            f"{s}: {m:.1f} | {'-' if t is None else f'{t:.1f}'}"
            for s, m, t in zip(v["mean_curve"]["steps"], v["mean_curve"]["mean"], v["train_window_mean"])))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return payload


def plot(runs, summary, refs, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.tasks), figsize=(4.5 * len(args.tasks), 3.4), dpi=110, squeeze=False)
    for ax, task in zip(axes[0], args.tasks):
        for planner in args.planners:
            rs = [r for r in runs if r["task"] == task and r["planner"] == planner and r["returns"]]
            color = "C0" if planner == "diffusion" else "C1"
            for r in rs:
                ax.plot(r["steps"], r["returns"], alpha=0.35, color=color)
            if rs:
                s = summary[f"{task}/{planner}"]
                steps = s["mean_curve"]["steps"]
                ax.plot(steps, s["mean_curve"]["mean"], lw=2, color=color, label=f"ours {planner} ({len(rs)} seeds)")
                ax.plot(steps, [np.nan if t is None else t for t in s["train_window_mean"]], lw=1, ls="-.",
                        color=color, label=f"{planner}: training episodes")
        for m, style in (("mbdpo", "--"), ("tdmpc2", ":")):
            ref = refs[task].get(m)
            if ref and 100_000 in ref:
                ax.axhline(ref[100_000][0], ls=style, color="gray", label=f"paper {m} @100k")
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("eval return")
        ax.set_ylim(0, 1000)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["cartpole-balance", "reacher-easy", "walker-stand"])
    ap.add_argument("--planners", nargs="+", default=["diffusion", "mppi"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--eval-freq", type=int, default=2_500)
    ap.add_argument("--config", default=str(REPO / "recipes" / "configs" / "online.yaml"))
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / "online_dmc"))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--video", action="store_true")
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("--final-planners", nargs="*", default=["diffusion", "mppi", "policy"],
                    help="after training, evaluate each final model with these planners (same world model)")
    ap.add_argument("--final-episodes", type=int, default=10)
    ap.add_argument("--final-seed", type=int, default=10_000)
    ap.add_argument("--threshold", type=float, default=900.0, help="report the first eval step at/above this return")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "online_dmc.json"))
    ap.add_argument("overrides", nargs="*", help="extra key=value for every run")
    args = ap.parse_args(argv)
    if not args.summarize_only:
        jobs = [(t, p, s) for t in args.tasks for s in args.seeds for p in args.planners]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda j: run_one(*j, args), jobs))
        for task, planner, seed in jobs:
            final_planner_eval(Path(args.runs_dir) / f"{task}_{planner}_s{seed}", task, args)
    summarize(args)


if __name__ == "__main__":
    main()
