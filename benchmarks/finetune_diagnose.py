"""Why does fine-tuning lose a strong zero-shot return? (issue 12 section 2) One fine-tuning run of the demo's
schedule (recipes/configs/finetune.yaml: a seed phase, then a burst of updates) with probes inside the burst, and a
module-swap test after it.

    python benchmarks/finetune_diagnose.py --checkpoint runs/expert20k/size1 --seed-actions checkpoint \
        --out benchmarks/results/finetune_diagnose.json

The run stops right after the burst (`steps` = the seed phase). Probes at the given update counts (the first one,
0, comes after `task_init=fit` and before any update, so it is the adapted model the burst starts from):
* `eval`: the deterministic evaluation return over `--probe-episodes` episodes (the same seeds as the run's
  evaluations, `seed + 777`);
* `q_vs_return`: on the run's own seed-phase episodes, the model's Q(z_t, a_t) (mean of two heads, no dropout) and
  reward r(z_t, a_t) against the observed discounted return from t and the observed reward (steps in the first half
  of each episode, so the truncated tail weighs at most gamma^(T/2));
* `updates`: the learner's metrics averaged over the updates since the previous probe (losses, Q and TD-target
  means, the policy prior's entropy, the Q scale, the energy's accuracy).
After the burst, `swap`: the fine-tuned model with one parameter group put back to its values in the reference model
(`revert`), and the reference model with only that group fine-tuned (`only`), each evaluated like a probe: which
module's change breaks the behaviour, and which one restores it. The reference is the adapted checkpoint as it acted
zero-shot (`--swap-ref zero-shot`, before task_init=fit) or the model at probe 0 (`probe0`). Writes one JSON;
prints a table.
Extra `key=value` arguments go to the fine-tuning config (e.g. `energy_eta=0.1`, `freeze=[energy]`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbdpo_hub.finetune import make_finetune_trainer  # noqa: E402
from mbdpo_hub.learner import mean_metrics  # noqa: E402
from mbdpo_hub.modeling_mbdpo import two_hot_inv  # noqa: E402
from mbdpo_hub.training.config import load_finetune_config  # noqa: E402
from mbdpo_hub.training.evaluation import evaluate  # noqa: E402

#: parameter groups swapped after the burst (the target Q follows `qs`; buffers other than it stay)
SWAP_GROUPS = {
    "task_embedding": ("world_model.task_embedding.",),
    "encoder+dynamics": ("world_model.encoder.", "world_model.dynamics."),
    "reward": ("world_model.reward_head.",),
    "qs": ("world_model.Qs.",),
    "pi": ("world_model.pi_head.",),
    "energy": ("energy.", "energy_mean", "energy_std"),
}


def with_groups(base: dict, donor: dict, prefixes: tuple[str, ...]) -> dict:
    """`base` state dict with every entry whose name starts with one of `prefixes` taken from `donor`."""
    return {k: (donor[k] if k.startswith(prefixes) else v) for k, v in base.items()}


@torch.no_grad()
def q_vs_return(policy, episodes: list[dict], task_id: int) -> dict:
    """Model Q / reward on the seed-phase transitions against the observed discounted return / reward."""
    wm, cfg = policy.world_model, policy.config
    was_training = policy.training
    policy.eval()
    qs, gs, rs, rhat = [], [], [], []
    for ep in episodes:
        obs = torch.as_tensor(ep["obs"][:-1])  # s_t for t = 0..T-1
        act = torch.as_tensor(ep["action"][1:])  # a_t
        rew = torch.as_tensor(ep["reward"][1:])  # r_t
        T = len(rew)
        task = torch.full((T,), task_id, dtype=torch.long)
        z = wm.encode(obs, task)
        gamma = float(wm.discount(task[:1], z[:1])[0])
        g = torch.zeros(T)
        run = 0.0
        for t in range(T - 1, -1, -1):  # observed discounted return from t (truncated at the episode's end)
            run = float(rew[t]) + gamma * run
            g[t] = run
        half = T // 2
        qs.append(wm.Q(z, act, task, "avg").squeeze(-1)[:half])
        gs.append(g[:half])
        rs.append(rew)
        rhat.append(two_hot_inv(wm.reward(z, act, task), cfg).squeeze(-1))
    q, g, r, rh = torch.cat(qs), torch.cat(gs), torch.cat(rs), torch.cat(rhat)
    corr = float(torch.corrcoef(torch.stack([q, g]))[0, 1]) if q.std() > 0 and g.std() > 0 else float("nan")
    policy.train(was_training)
    return dict(q_mean=float(q.mean()), return_mean=float(g.mean()), q_return_corr=corr,
                q_minus_return=float((q - g).mean()), reward_mean=float(r.mean()), reward_pred_mean=float(rh.mean()),
                reward_abs_error=float((rh - r).abs().mean()),
                reward_pred_where_0=float(rh[r < 0.5].mean()) if (r < 0.5).any() else None,
                reward_pred_where_1=float(rh[r >= 0.5].mean()) if (r >= 0.5).any() else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--task", default="cartpole-balance-sparse")
    ap.add_argument("--config", default=str(REPO / "recipes/configs/finetune.yaml"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seed-actions", default="checkpoint", choices=["checkpoint", "random"])
    ap.add_argument("--probe-at", type=int, nargs="+", default=[0, 100, 250, 500, 1000, 2500])
    ap.add_argument("--probe-episodes", type=int, default=3)
    ap.add_argument("--zero-shot", action="store_true", help="also evaluate the adapted model before the seed "
                    "phase (its row before task_init=fit)")
    ap.add_argument("--no-swap", action="store_true")
    ap.add_argument("--swap-ref", default="zero-shot", choices=["zero-shot", "probe0"],
                    help="the model the swaps revert to: the adapted checkpoint as evaluated zero-shot (before "
                    "task_init=fit), or the model at probe 0 (after it)")
    ap.add_argument("--runs-dir", default="runs/diagnose")
    ap.add_argument("--name", default=None,
                    help="run folder name under --runs-dir (default: <seed-actions>-seed<seed>)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/finetune_diagnose.json"))
    ap.add_argument("extra", nargs="*", help="key=value overrides of the fine-tuning config")
    args = ap.parse_args()

    name = args.name or f"{args.seed_actions}-seed{args.seed}"
    cfg = load_finetune_config(args.config, [
        f"task={args.task}", f"checkpoint={args.checkpoint}", f"seed={args.seed}", f"seed_actions={args.seed_actions}",
        "eval_freq=0", f"eval_episodes={args.probe_episodes}", "checkpoint_freq=0",
        "save_video=false", "progress=false", "log_with=null", "overwrite=true", "resume=false",
        f"output_dir={Path(args.runs_dir) / name}", *args.extra])
    if not cfg.seed_steps:
        raise SystemExit("the run stops after its seed phase and burst: give seed_steps=N (N > 0) in the config or "
                         "as an override")
    cfg.steps = cfg.seed_steps
    cfg.validate()
    trainer = make_finetune_trainer(cfg)
    probes, episodes, acc, ref = [], [], {}, {}
    probe_at = sorted(set(args.probe_at))

    def run_eval(policy) -> dict:
        return evaluate(policy, cfg.task, args.probe_episodes, seed=cfg.seed + 777, episode_length=cfg.episode_length)

    def probe(k: int) -> None:
        t0 = time.perf_counter()
        res = run_eval(trainer.policy)
        row = dict(updates=k, eval_mean=res["mean_return"], eval_std=res["std_return"],
                   q_vs_return=q_vs_return(trainer.policy, episodes, trainer.task_id),
                   updates_metrics=mean_metrics(acc), seconds=round(time.perf_counter() - t0, 1))
        acc.clear()
        probes.append(row)
        qv = row["q_vs_return"]
        print(f"[probe] updates {k:5d}: eval {res['mean_return']:7.1f} +/- {res['std_return']:6.1f} | Q "
              f"{qv['q_mean']:.2f} vs return {qv['return_mean']:.2f} (corr {qv['q_return_corr']:.2f}) | r_hat "
              f"{qv['reward_pred_mean']:.3f} vs r {qv['reward_mean']:.3f} | "
              + " ".join(f"{m}={row['updates_metrics'][m]:.3f}" for m in
                         ("value_loss", "reward_loss", "pi_entropy", "energy_accuracy")
                         if m in row["updates_metrics"]), flush=True)

    orig_setup, orig_end = trainer.setup, trainer.end_episode

    def setup() -> None:
        orig_setup()
        learner = trainer.learner
        update = learner.update

        def probed_update(batch):
            k = learner.num_updates
            if k == 0:
                ref["state"] = copy.deepcopy(trainer.policy.state_dict())  # after task_init=fit, before updates
            if k in probe_at:
                probe(k)
            metrics = update(batch)
            for key, v in metrics.items():
                acc.setdefault(key, []).append(v)
            return metrics

        learner.update = probed_update
        ref["zero_shot_state"] = copy.deepcopy(trainer.policy.state_dict())
        if args.zero_shot:
            res = run_eval(trainer.policy)
            ref["zero_shot"] = dict(mean=res["mean_return"], std=res["std_return"])
            print(f"[zero-shot] {res['mean_return']:.1f} +/- {res['std_return']:.1f}", flush=True)

    def end_episode(episode: dict, env: int) -> None:
        episodes.append({k: v.copy() for k, v in episode.items()})
        orig_end(episode, env)
        print(f"[episode] {len(episodes)}: return {float(episode['reward'][1:].sum()):.1f}", flush=True)

    trainer.setup, trainer.end_episode = setup, end_episode
    t0 = time.perf_counter()
    final = trainer.run()  # the seed phase, task_init=fit, the burst (probed), the final evaluation
    final_eval = final[cfg.task]
    qv = q_vs_return(trainer.policy, episodes, trainer.task_id)
    probes.append(dict(updates=trainer.learner.num_updates, eval_mean=final_eval["mean_return"],
                       eval_std=final_eval["std_return"], q_vs_return=qv, updates_metrics=mean_metrics(acc)))
    print(f"[after burst] updates {trainer.learner.num_updates}: eval {final_eval['mean_return']:.1f} +/- "
          f"{final_eval['std_return']:.1f} | Q {qv['q_mean']:.2f} vs return {qv['return_mean']:.2f}", flush=True)

    swaps = {}
    if not args.no_swap:
        tuned = copy.deepcopy(trainer.policy.state_dict())
        policy, reference = trainer.policy, ref["zero_shot_state" if args.swap_ref == "zero-shot" else "state"]
        for group, prefixes in SWAP_GROUPS.items():
            out = {}
            for how, state in (("revert", with_groups(tuned, reference, prefixes)),
                               ("only", with_groups(reference, tuned, prefixes))):
                policy.load_state_dict(state)
                policy.reset()
                res = run_eval(policy)
                out[how] = dict(mean=res["mean_return"], std=res["std_return"])
            swaps[group] = out
            print(f"[swap] {group:18s} fine-tuned with it reverted: {out['revert']['mean']:7.1f} | "
                  f"{args.swap_ref} model with only it fine-tuned: {out['only']['mean']:7.1f}", flush=True)
        policy.load_state_dict(tuned)

    fit = trainer.out / "task_fit.json"
    result = dict(
        benchmark="finetune_diagnose", checkpoint=args.checkpoint, task=cfg.task, seed=cfg.seed,
        seed_actions=cfg.seed_actions, seed_steps=trainer.seed_steps, burst_updates=trainer.seed_updates,
        batch_size=cfg.batch_size,
        overrides=args.extra, probe_episodes=args.probe_episodes, zero_shot=ref.get("zero_shot"),
        task_fit=json.loads(fit.read_text()) if fit.exists() else None,
        seed_episode_returns=[float(e["reward"][1:].sum()) for e in episodes],
        probes=probes, swap_reference=args.swap_ref, swaps=swaps, seconds=round(time.perf_counter() - t0, 1),
        note="probe evaluations consume random numbers: the run is not identical to an unprobed one")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x)
                              else str(x)))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
