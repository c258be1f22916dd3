"""Does the implicit energy F tell data actions from others, and how large is the planner's energy bonus beside the
value differences between actions? (issue 12, section 2: the fine-tuning collapse)

    python benchmarks/probe_energy.py --model runs/ft/checkpoints/step_000001000/model \
        --replay runs/ft/checkpoints/step_000001000/replay_buffer.safetensors --task cartpole-balance-sparse
    python benchmarks/probe_energy.py --model runs/expert/collect/cartpole-balance --dataset datasets/dmc8-expert \
        --task cartpole-balance

States: every `--stride`-th stored state of a replay buffer file (a run's checkpoint) or of a dataset's last
`--last-episodes` episodes of the task (what the agent did late in its training). For each state: F-tilde (the
normalised, clipped energy) of the action taken there, of a uniform action, of the policy prior's action and of the
taken action plus N(0, 0.3) noise; and, on a grid of constant first actions, the mean Q (2-head average), the
energy bonus (eta x F-tilde) and the imagined return of the constant sequence. Writes `--out` (JSON).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def states_and_actions(args, cfg):
    if args.replay:
        from safetensors.torch import load_file

        buf = load_file(args.replay)
        obs, act = buf["obs"].float(), buf["action"].float()
        # buffer rows are (obs_t, a_{t-1}): the action taken at obs_t is the next row's
        obs, act = obs[:-1:args.stride], act[1::args.stride]
    else:
        import pyarrow.parquet as pq

        from mbdpo_hub.data.reading import read_tasks

        tid = {t["name"]: int(t["task_index"]) for t in read_tasks(args.dataset)["tasks"]}[args.task]
        table = pq.read_table(sorted(Path(args.dataset, "data").glob("*.parquet")),
                              filters=[("task_index", "=", tid)]).to_pandas()
        obs_l, act_l = [], []
        for e in sorted(table.episode_index.unique())[-args.last_episodes:]:
            rows = table[table.episode_index == e].sort_values("frame_index")
            o, a = np.stack(rows.observation.values), np.stack(rows.action.values)
            obs_l.append(o[:-1:args.stride].astype(np.float32))
            act_l.append(a[1::args.stride].astype(np.float32))
        obs, act = torch.tensor(np.concatenate(obs_l)), torch.tensor(np.concatenate(act_l))
    n = min(len(obs), len(act))
    O, A = cfg.obs_dim, cfg.action_dim
    obs = torch.nn.functional.pad(obs[:n], (0, max(0, O - obs.shape[1])))[:, :O]
    act = torch.nn.functional.pad(act[:n], (0, max(0, A - act.shape[1])))[:, :A]
    return obs, act


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--replay", default=None, help="a replay_buffer.safetensors of a run's checkpoint")
    ap.add_argument("--dataset", default=None, help="a dataset folder (the task's last episodes are used)")
    ap.add_argument("--last-episodes", type=int, default=4)
    ap.add_argument("--stride", type=int, default=25)
    ap.add_argument("--out", default="benchmarks/results/probe_energy.json")
    args = ap.parse_args(argv)
    if (args.replay is None) == (args.dataset is None):
        raise SystemExit("give one of --replay or --dataset")
    from _common import write_json

    from mbdpo_hub import MBDPODiffusionPolicy

    torch.manual_seed(0)
    policy = MBDPODiffusionPolicy.from_pretrained(args.model).eval()
    cfg, wm = policy.config, policy.world_model
    task = cfg.task_id(args.task) if cfg.task_dim > 0 else None
    obs, act = states_and_actions(args, cfg)
    z = wm.encode(obs, task)
    mask = wm.action_mask(task, z)
    f = lambda a: policy.normalized_energy(wm.za(z, a * mask, task)).squeeze(-1)  # noqa: E731
    f_tilde = dict(data=f(act), uniform=f(torch.rand_like(act) * 2 - 1), policy_prior=f(wm.pi(z, task).action),
                   data_plus_noise=f((act + 0.3 * torch.randn_like(act)).clamp(-1, 1)))
    grid = []
    for g in torch.linspace(-1, 1, 9).tolist():
        a = torch.full_like(act, g) * mask
        seq = a.unsqueeze(0).expand(cfg.horizon, -1, -1)
        grid.append(dict(action=g, q=float(wm.Q(z, a, task, "avg").mean()),
                         energy_bonus=float(policy.energy_bonus(z, a, task).mean()),
                         imagined_return=float(policy.estimate_value(z, seq, task).mean())))
    out = dict(benchmark="probe_energy", model=args.model, task=args.task, states=len(z), energy_eta=cfg.energy_eta,
               f_tilde_mean={k: float(v.mean()) for k, v in f_tilde.items()},
               q_data_actions=float(wm.Q(z, act, task, "avg").mean()), grid=grid,
               q_spread_over_grid=max(r["q"] for r in grid) - min(r["q"] for r in grid),
               bonus_spread_over_grid=max(r["energy_bonus"] for r in grid) - min(r["energy_bonus"] for r in grid))
    print(f"{len(z)} states; F-tilde: " + ", ".join(f"{k} {v:+.2f}" for k, v in out["f_tilde_mean"].items()))
    for r in grid:
        print(f"  a = {r['action']:+.2f}: Q {r['q']:8.3f}  energy bonus {r['energy_bonus']:+.4f}  "
              f"imagined return {r['imagined_return']:8.3f}")
    print(f"spread over the grid: Q {out['q_spread_over_grid']:.3f}, energy bonus {out['bonus_spread_over_grid']:.4f}")
    write_json(args.out, out)


if __name__ == "__main__":
    main()
