"""Which anchor keeps fine-tuning from collapsing (issue 12 sections 2 and 6): the demo's fine-tuning run
(recipes/configs/finetune.yaml: the embedded default onto a held-out task, 3,000 steps, 10 evaluation episodes at
step 0 and at the end) repeated with one change each.

    python benchmarks/finetune_anchors.py --variants paper eta rehearsal eta+pi+rehearsal --jobs 1
    python benchmarks/finetune_anchors.py --summarize-only

Variants (`PARTS`, on top of `BASE`; every other setting is the demo config's, overrides appended to it):
* paper: the paper's planner anchor (energy_eta 0.01), online only (the demo of round 2 session 2);
* eta: the energy bonus in planning 10x stronger (energy_eta 0.1); eta1: 100x (energy_eta 1.0);
* pi: the normalised energy of the policy prior's actions in its loss (energy_pi_coef 1);
* rehearsal: offline-to-online, the checkpoint's pretraining data (its own tasks under their own ids) mixed into
  every batch at offline_ratio 0.5;
* nearest: task_init=nearest (the related task's row, the paper's O2O) instead of the config's task_init;
* ratio025: offline_ratio 0.25 (with rehearsal); sched2500: a 2,500-step seed phase and a 2,500-update burst;
* random: the seed phase acted at random (seed_actions=random) instead of by the adapted checkpoint; ckpt: acted by
  the adapted checkpoint (seed_actions=checkpoint);
* fit0: task_init=fit chooses the row without fitting it alone (fit_steps=0);
* frozenF: the energy F not trained during fine-tuning (freeze=[energy]); noburst: no burst after the seed phase;
* frozenED: the encoder and the dynamics not trained (freeze=[encoder,dynamics]);
* l2x<N>: the trust region l2_to_pretrained=N (weights pulled towards the adapted checkpoint's after each update);
* fa<N>: the function-space trust region anchor_to_pretrained=N (reward and Q along random actions kept near the
  adapted checkpoint's by a KL penalty);
* seed1000: a 1,000-step seed phase; noise03: exploration noise 0.3 in training episodes (action_noise);
* combinations joined with "+".
`--final-only` skips the step-0 evaluation (eval_freq=0: the final evaluation only; the zero-shot return of the
adapted checkpoint does not depend on the variant's training settings, only on its planner anchors and task row).
Each run is a normal fine-tuning run folder `<runs-dir>/<variant>-seed<seed>` (killed, the same command resumes; a
finished run is skipped). Writes benchmarks/results/finetune_anchors.json: per variant the zero-shot and final
returns (mean +/- std over the evaluation episodes), their ratio, and the training episodes' returns.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: every run starts from the paper's anchors (whatever the config file says), then the variant's parts
BASE = ["energy_eta=0.01", "energy_pi_coef=0.0", "mode=online", "offline_dataset=null"]
PARTS = {
    "paper": [],
    "eta": ["energy_eta=0.1"],
    "eta1": ["energy_eta=1.0"],
    "pi": ["energy_pi_coef=1.0"],
    "rehearsal": ["mode=offline-to-online", "offline_dataset=datasets/dmc8-expert", "offline_ratio=0.5"],
    # the new task's embedding row copied from the related task (the paper's O2O) instead of task_init=fit
    "nearest": ["task_init=nearest"],
    # a quarter of every batch from the pretraining data instead of half (with rehearsal)
    "ratio025": ["offline_ratio=0.25"],
    # scratch's schedule: a 2,500-step seed phase (acted by the checkpoint) and a 2,500-update burst
    "sched2500": ["seed_steps=2500", "seed_updates=2500"],
    # the seed phase acted at random (as from scratch) instead of by the checkpoint
    "random": ["seed_actions=random"],
    # the seed phase acted by the adapted checkpoint (the library's choice before round 2, session 6)
    "ckpt": ["seed_actions=checkpoint"],
    # the energy F kept as pretrained (not trained on the new task's data): the planner's and the prior's anchor
    # stays the pretraining data's behaviour model instead of drifting to chance accuracy on the new data
    "frozenF": ["freeze=[energy]"],
    # no burst: after the seed phase, utd updates per step only
    "noburst": ["seed_updates=0"],
    # the encoder and the latent dynamics not trained (the heads see the latent space they were pretrained on)
    "frozenED": ["freeze=[encoder,dynamics]"],
    # task_init=fit chooses the row but takes no gradient steps on it alone (the 200 steps at lr 3e-3 moved the
    # row where the policy prior and the energy, outside the fit's loss, no longer act: 172 -> 25 before any update)
    "fit0": ["fit_steps=0"],
    # the trust region (L2-SP): every trained weight pulled towards the adapted checkpoint's after each update
    "l2x30": ["l2_to_pretrained=30"],
    "l2x100": ["l2_to_pretrained=100"],
    "l2x300": ["l2_to_pretrained=300"],
    "l2x1000": ["l2_to_pretrained=1000"],
    # the trust region in function space: reward and Q along random actions kept near the adapted checkpoint's
    "fa1": ["anchor_to_pretrained=1"],
    "fa10": ["anchor_to_pretrained=10"],
    # 6x the planner's exploration noise in training episodes (action_noise 0.3; evaluations have none): data
    # with failures in it, where the checkpoint alone acts perfectly
    "noise03": ["action_noise=0.3"],
    # a 1,000-step seed phase (2 episodes)
    "seed1000": ["seed_steps=1000"],
}


#: train.csv columns reported for the last training episode
DIAGNOSTICS = ("q_mean", "td_target_mean", "reward_mean", "reward_loss", "value_loss", "consistency_loss",
               "pi_entropy", "pi_scale", "energy_accuracy", "anchor_kl")


def overrides(variant: str) -> list[str]:
    out = list(BASE)
    for part in variant.split("+"):
        if part not in PARTS:
            raise SystemExit(f"unknown variant part {part!r}: use {sorted(PARTS)} joined with '+'")
        out += PARTS[part]
    return out


def run_one(variant: str, seed: int, args) -> Path:
    out = Path(args.runs_dir) / f"{variant}-seed{seed}"
    if (out / "eval_results.json").exists():
        print(f"{out}: finished, skipped")
        return out
    cmd = [sys.executable, str(REPO / "recipes/finetune.py"), "--config", args.config, f"output_dir={out}",
           f"seed={seed}", "progress=false", f"task={args.task}", *overrides(variant), *args.extra,
           *(["eval_freq=0", "save_video=false"] if args.final_only else [])]
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print("$", " ".join(cmd), flush=True)
    with open(str(out) + ".log", "a") as log:
        rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        print(f"{variant} seed {seed}: FAILED (rc {rc}), see {out}.log", file=sys.stderr)
    return out


def summarize_run(out: Path) -> dict | None:
    if not (out / "eval.csv").exists():
        return None
    with open(out / "eval.csv") as f:
        evals = [dict(step=int(r["step"]), mean_return=float(r["mean_return"]), std_return=float(r["std_return"]),
                      episodes=int(r["episodes"])) for r in csv.DictReader(f)]
    train, last = [], {}
    if (out / "train.csv").exists():
        with open(out / "train.csv") as f:
            rows = list(csv.DictReader(f))
        train = [float(r["episode_return"]) for r in rows]
        updated = [r for r in rows if r.get("q_mean") not in ("", None)]
        if updated:  # the learner's diagnostics over the last training episode (means over its updates)
            last = {k: float(updated[-1][k]) for k in DIAGNOSTICS if updated[-1].get(k) not in ("", None)}
    fit = json.loads((out / "task_fit.json").read_text()) if (out / "task_fit.json").exists() else {}
    # load_best_model_at_end: the model the run handed back, when it is not the last one (None: the last one)
    results_file = out / "eval_results.json"
    selected = json.loads(results_file.read_text()).get("selected_model") if results_file.exists() else None
    zero = evals[0] if evals[0]["step"] == 0 and len(evals) > 1 else None  # None: run with --final-only
    final = evals[-1]
    # finished: the outputs are written, or the last evaluation is at the run's last step (a run that failed while
    # writing its card, as one did before local_repo_id)
    config = out / "train_config.yaml"
    steps = yaml.safe_load(config.read_text()).get("steps") if config.exists() else None
    done = (out / "eval_results.json").exists() or (steps is not None and final["step"] >= int(steps))
    from _common import keeps_zero_shot

    lowest, keeps = keeps_zero_shot([e["step"] for e in evals], [e["mean_return"] for e in evals],
                                    zero["mean_return"] if zero else None)
    return dict(run_dir=str(out), finished=done, zero_shot=zero, final=final if done else None, evals=evals,
                min_eval_after_1000=lowest, keeps_80pct_of_zero_shot=keeps,
                final_over_zero_shot=(final["mean_return"] / zero["mean_return"])
                if done and zero and zero["mean_return"] else None,
                train_episode_returns=train, task_row_from=fit.get("chosen"), last_episode_diagnostics=last,
                selected_model=selected)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["paper", "eta", "rehearsal", "eta+pi+rehearsal"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--task", default="cartpole-balance-sparse")
    ap.add_argument("--config", default="recipes/configs/finetune.yaml")
    ap.add_argument("--runs-dir", default="runs/anchors")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (one per core at most)")
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("--final-only", action="store_true", help="no step-0 evaluation (eval_freq=0), no video")
    ap.add_argument("--out", default="benchmarks/results/finetune_anchors.json")
    ap.add_argument("extra", nargs="*", help="more key=value overrides for every run")
    args = ap.parse_args(argv)
    from _common import machine_info, write_json

    jobs = [(v, s) for v in args.variants for s in args.seeds]
    for v, _ in jobs:
        overrides(v)  # unknown variants fail before anything runs
    if not args.summarize_only:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(lambda vs: run_one(vs[0], vs[1], args), jobs))
    rows = {}
    for v, s in jobs:
        r = summarize_run(Path(args.runs_dir) / f"{v}-seed{s}")
        if r is None:
            continue
        rows.setdefault(v, {})[s] = r
        z, f = r["zero_shot"], r["final"]
        fin = f"{f['mean_return']:7.1f} +/- {f['std_return']:6.1f}" if f else "   (not finished)"
        zs = f"{z['mean_return']:7.1f} +/- {z['std_return']:6.1f}" if z else "(not evaluated)"
        curve = " ".join(f"{e['step']}:{e['mean_return']:.0f}" for e in r["evals"])
        print(f"{v:<20} seed {s}: zero-shot {zs} -> final {fin}  evals [{curve}] 80% kept: "
              f"{r['keeps_80pct_of_zero_shot']}  "
              + (f"returned: step {r['selected_model']['step']} ({r['selected_model']['reevaluated_return']:.1f} "
                 "on fresh episodes)  " if r["selected_model"] else "")
              + f"train episodes {[round(x) for x in r['train_episode_returns']]}  last episode: "
              + " ".join(f"{k}={v:.3g}" for k, v in r["last_episode_diagnostics"].items()))
    write_json(args.out, dict(benchmark="finetune_anchors", task=args.task, config=args.config,
                              overrides={v: overrides(v) for v in args.variants}, extra=args.extra,
                              machine=machine_info(), results=rows))


if __name__ == "__main__":
    main()
