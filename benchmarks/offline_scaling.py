"""Offline scaling study (issue 5): pretrain several TD-MPC2 model-size presets on the SAME dataset for the SAME number
of updates at the same batch size and seed, evaluate every task with the same planner setting, and plot the normalised
score (and per-task returns) against the parameter count.

    python benchmarks/offline_scaling.py --dataset runs/default_ckpt/dataset --steps 2000 --batch-size 64
    python benchmarks/offline_scaling.py --sizes 1 5 19 --steps 20000 --batch-size 256     # on a GPU
    python benchmarks/offline_scaling.py --summarize-only      # re-read the finished runs, rewrite JSON + plot

Each size is a normal pretraining output folder `<runs-dir>/size<N>` written by recipes/pretrain.py (killed, the
same command resumes from its last checkpoint; a finished run is skipped). The base config is
recipes/configs/pretrain_1m.yaml with `model_size=<N>`; the planner setting (default: diffusion, 4 steps x 64
samples) is passed to every size, so only the model size differs. Writes benchmarks/results/offline_scaling.json
(settings, parameters, seconds per update, per-task returns, normalised score) and offline_scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_overrides(size: int, args) -> list[str]:
    out = Path(args.runs_dir) / f"size{size}"
    over = [f"dataset={args.dataset}", f"model_size={size}", f"steps={args.steps}", f"batch_size={args.batch_size}",
            f"seed={args.seed}", "eval_freq=0", f"eval_episodes={args.eval_episodes}",
            f"eval_planner={args.planner}", f"checkpoint_freq={args.checkpoint_freq}", f"log_freq={args.log_freq}",
            f"output_dir={out}", "progress=false",
            # the same planner setting for every size (also the model's own, so the saved config says so)
            f"planner={args.planner}", f"diffusion_steps={args.diffusion_steps}", f"num_samples={args.num_samples}",
            f"num_elites={args.num_elites}", f"num_pi_trajs={args.num_pi_trajs}"]
    if args.mixed_precision == "bf16":  # (mixed_precision=no on a command line parses as YAML false: leave the default)
        over.append("mixed_precision=bf16")
    if args.episode_length:
        over.append(f"episode_length={args.episode_length}")
    return over + list(args.overrides)


def finished(out: Path, steps: int) -> bool:
    path = out / "eval_results.json"
    if not path.exists():
        return False
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return int(res.get("updates", -1)) >= steps and res.get("eval_step") == res.get("updates") and res.get("results")


def run_one(size: int, args) -> Path:
    out = Path(args.runs_dir) / f"size{size}"
    if finished(out, args.steps):
        print(f"size {size}: finished run in {out}, skipped")
        return out
    out.mkdir(parents=True, exist_ok=True)
    script = [str(REPO / "recipes" / "pretrain.py"), "--config", args.config, *run_overrides(size, args)]
    # several processes split the batch (accelerate; on CPU --multi_gpu starts them, --cpu would start one) and the
    # evaluation tasks
    launch = ([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(args.num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
              if args.num_processes > 1 else [sys.executable])
    cmd = launch + script
    print(f"size {size}: {' '.join(cmd[1:])}", flush=True)
    with open(out / "benchmark.log", "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        t0 = time.time()
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        wall = time.time() - t0
        log.write(f"\nexit {rc} after {wall:.0f}s\n")
    # wall time of this invocation (training + evaluation + setup); a resumed run only covers its last part
    walls = json.loads((out / "benchmark_wall.json").read_text()) if (out / "benchmark_wall.json").exists() else []
    walls.append(dict(rc=rc, wall_s=round(wall, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S")))
    (out / "benchmark_wall.json").write_text(json.dumps(walls, indent=1))
    print(f"size {size}: exit {rc} after {wall:.0f}s", flush=True)
    if rc != 0:
        print(f"size {size}: FAILED, see {out / 'benchmark.log'}", file=sys.stderr)
    return out


def summarize_run(out: Path) -> dict | None:
    import torch

    from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy

    res_path = out / "eval_results.json"
    if not res_path.exists() or not (out / "config.json").exists():
        return None
    res = json.loads(res_path.read_text())
    pcfg = yaml.safe_load((out / "pretrain_config.yaml").read_text())
    config = MBDPOConfig.from_pretrained(str(out))
    with torch.device("meta"):  # only the parameter count is needed
        n_params = sum(p.numel() for p in MBDPODiffusionPolicy(config).parameters())
    walls = json.loads((out / "benchmark_wall.json").read_text()) if (out / "benchmark_wall.json").exists() else []
    updates = int(res["updates"])
    final_losses = {}
    if (out / "train.csv").exists():  # the last logged training losses (mean over the last log_freq updates)
        import csv

        with open(out / "train.csv") as f:
            train_rows = list(csv.DictReader(f))
        if train_rows:
            final_losses = {k: float(v) for k, v in train_rows[-1].items() if k != "elapsed_s" and v not in ("", None)}
    results = res.get("results") or {}
    planners = sorted({r.get("planner") for r in results.values()})
    return dict(
        size=int(config.model_size), run_dir=str(out), params=int(n_params),
        arch=dict(enc_dim=config.enc_dim, mlp_dim=config.mlp_dim, latent_dim=config.latent_dim,
                  num_enc_layers=config.num_enc_layers, num_q=config.num_q, task_dim=config.task_dim),
        updates=updates, batch_size=int(res["batch_size"]), seed=int(pcfg["seed"]), dataset=res["dataset"],
        dataset_episodes=res.get("dataset_episodes"), dataset_transitions=res.get("dataset_transitions"),
        train_elapsed_s=res.get("elapsed_s"),
        s_per_update=(float(res["elapsed_s"]) / updates) if updates else None,
        invocations_wall_s=[w["wall_s"] for w in walls],
        eval_step=res.get("eval_step"), eval_episodes=int(pcfg["eval_episodes"]), eval_planner=planners,
        eval_seed=int(pcfg["seed"]) + 777,
        planner_setting={k: getattr(config, k) for k in ("planner", "diffusion_steps", "num_samples", "num_elites",
                                                         "num_pi_trajs", "horizon")},
        episode_length=pcfg.get("episode_length"),
        normalized_score=res.get("normalized_score"),
        final_train_metrics=final_losses,
        per_task={t: dict(mean_return=r["mean_return"], std_return=r["std_return"],
                          normalized_score=r["normalized_score"]) for t, r in results.items()},
    )


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["params"])
    x = [r["params"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    ax.plot(x, [r["normalized_score"] for r in rows], "o-", color="k")
    for r in rows:
        ax.annotate(f"{r['size']}M preset\n{r['normalized_score']:.1f}", (r["params"], r["normalized_score"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("normalised score (mean over tasks, 0-100)")
    ax.set_ylim(0, max(10.0, 1.25 * max(r["normalized_score"] for r in rows)))  # from 0: no zoomed-in slopes
    ax.set_title("normalised score")
    ax.grid(alpha=0.3, which="both")
    ax = axes[1]
    tasks = list(rows[0]["per_task"])
    for t in tasks:
        ys = [r["per_task"].get(t, {}).get("mean_return", float("nan")) for r in rows]
        es = [r["per_task"].get(t, {}).get("std_return", 0.0) for r in rows]
        ax.errorbar(x, ys, yerr=es, marker="o", capsize=3, label=t)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("episode return (mean ± std over eval episodes)")
    ax.set_title("per-task returns")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def summarize(args) -> dict:
    from _common import machine_info, write_json

    root = Path(args.runs_dir)
    dirs = sorted(p for p in root.glob("size*") if p.is_dir()) if args.summarize_only else \
        [root / f"size{s}" for s in args.sizes]
    # a size whose run folder is gone (runs/ is not kept between sessions) keeps its row from the JSON at --out
    previous = {}
    if Path(args.out).exists():
        previous = {r["run_dir"]: r for r in json.loads(Path(args.out).read_text()).get("rows", [])}
    dirs = sorted(set(dirs) | {Path(d) for d in previous if Path(d).parent == root})
    rows, missing = [], []
    for d in dirs:
        r = summarize_run(d)
        if r is None and str(d) in previous:
            r = dict(previous[str(d)], from_previous_json=True)
        (rows.append(r) if r is not None else missing.append(str(d)))
    rows.sort(key=lambda r: r["params"])
    keys = ("dataset", "updates", "batch_size", "seed", "eval_episodes", "eval_planner", "planner_setting",
            "episode_length")
    mismatched = sorted({k for k in keys for r in rows if r[k] != rows[0][k]
                         and not (k == "planner_setting" and {a: b for a, b in r[k].items() if a != "horizon"}
                                  == {a: b for a, b in rows[0][k].items() if a != "horizon"})})
    settings = {k: rows[0][k] for k in keys} if rows else {}
    if rows:
        settings.update(dataset_episodes=rows[0]["dataset_episodes"],
                        dataset_transitions=rows[0]["dataset_transitions"], eval_seed=rows[0]["eval_seed"],
                        tasks=list(rows[0]["per_task"]), threads=args.threads)
    payload = dict(benchmark="offline_scaling", settings=settings, comparable=not mismatched,
                   mismatched_settings=mismatched, missing_runs=missing, machine=machine_info(), rows=rows)
    out = Path(args.out)
    write_json(out, payload)
    for r in rows:
        print(f"size {r['size']:>3}: {r['params']:>11,} params  {r['updates']} updates @ {r['batch_size']}  "
              f"{1000 * (r['s_per_update'] or 0):.0f} ms/update  normalised score {r['normalized_score']:.2f}  "
              + " ".join(f"{t}={v['mean_return']:.1f}" for t, v in r["per_task"].items()))
    if mismatched:
        print(f"WARNING: the runs differ in {mismatched}: not a like-for-like comparison", file=sys.stderr)
    if rows:
        s = settings
        plot(rows, out.with_suffix(".png"),
             f"offline pretraining on {s['dataset']} ({s['dataset_transitions']} transitions): {s['updates']} "
             f"updates @ batch {s['batch_size']}, seed {s['seed']}; eval {s['eval_episodes']} episodes/task, "
             f"{s['planner_setting']['planner']} {s['planner_setting']['diffusion_steps']} steps x "
             f"{s['planner_setting']['num_samples']} samples")
    return payload


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="runs/default_ckpt/dataset")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--steps", type=int, default=2000, help="gradient updates per size")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-episodes", type=int, default=2, help="per task")
    ap.add_argument("--episode-length", type=int, default=None, help="evaluation episode length (smoke tests)")
    ap.add_argument("--planner", default="diffusion")
    ap.add_argument("--diffusion-steps", type=int, default=4)
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--num-elites", type=int, default=16)
    ap.add_argument("--num-pi-trajs", type=int, default=8)
    ap.add_argument("--checkpoint-freq", type=int, default=500)
    ap.add_argument("--log-freq", type=int, default=50)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    ap.add_argument("--config", default="recipes/configs/pretrain_1m.yaml")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)), help="per process")
    ap.add_argument("--num-processes", type=int, default=1, help="processes per run (accelerate launch)")
    ap.add_argument("--runs-dir", default="runs/offline_scaling")
    ap.add_argument("--out", default="benchmarks/results/offline_scaling.json")
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides passed to every run")
    args = ap.parse_args(argv)
    if not args.summarize_only:
        from mbdpo_hub.utils import is_hub_repo_id as is_hub_dataset

        local_root = Path(args.dataset.split("/")[0])
        if not Path(args.dataset).exists() and (local_root.is_dir() or not is_hub_dataset(args.dataset)):
            sys.exit(f"dataset {args.dataset!r} not found: build it first (benchmarks/make_default_checkpoint.sh "
                     f"writes runs/default_ckpt/dataset)")
        failed = []
        for size in args.sizes:
            out = run_one(size, args)
            if not finished(out, args.steps):
                failed.append(size)
        if failed:
            print(f"sizes {failed} did not finish; summarising what there is", file=sys.stderr)
    summarize(args)


if __name__ == "__main__":
    main()
