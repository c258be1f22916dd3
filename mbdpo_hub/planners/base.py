"""The planner interface shared by every planner, and the helpers they share.

A planner holds no networks. It acts on a *planning model*: anything with
  - `config` (an `MBDPOConfig`),
  - `estimate_value(z (B, L), actions (H, B*K, A), task (B,), repeats=K) -> (B*K,)` imagined returns of K
    sequences per start state (consecutive rows),
  - `policy_rollout(z (N, L), task (N,), horizon) -> (H, N, A)` policy-prior action sequences,
  - `action_mask(task (B,), like) -> (B, A)`,
  - `pi(z, task)` (the policy prior) and, for the score planner, `score(z, x, t, task)`.
`MBDPOWorldModel` (returns only) and `MBDPODiffusionPolicy` (returns shaped by the implicit energy) both are one, so
any planner drives any checkpoint.

`plan(model, z (B, L), task (B,), prev_mean (B, H, A), has_prev (B,), eval_mode, generator)` returns the actions
(B, A) in [-1, 1] with each task's padded dims at 0, and the new warm-start mean (B, H, A) (or None).
"""

from __future__ import annotations

import torch


class Planner:
    name = "base"

    def __init__(self, config):
        self.config = config

    def plan(self, model, z, task, prev_mean=None, has_prev=None, eval_mode=False, generator=None):
        raise NotImplementedError

    # --- shared pieces --------------------------------------------------------------------------------------------
    def warm_start(self, z, prev_mean, has_prev):
        """Initial mean (B, H, A): last call's plan shifted by one step where there is one, else zeros."""
        B, H, A = z.shape[0], self.config.horizon, self.config.action_dim
        mean = torch.zeros(B, H, A, device=z.device, dtype=z.dtype)
        if prev_mean is not None and has_prev is not None and bool(has_prev.any()):
            shifted = torch.zeros_like(mean)
            shifted[:, :-1] = prev_mean[:, 1:].to(z.dtype)
            mean = torch.where(has_prev.view(B, 1, 1), shifted, mean)
        return mean

    def evaluate(self, model, z, task, actions, generator=None):
        """Returns of per-env candidate sets: z (B, L), task (B,), actions (B, K, H, A) -> (B, K), NaN-free."""
        B, K, H, A = actions.shape
        seq = actions.reshape(B * K, H, A).transpose(0, 1)
        # z and task once per env: the model computes their share of its first layers once for the K candidates
        return model.estimate_value(z, seq, task, generator=generator, repeats=K).view(B, K).nan_to_num(0.0)

    def policy_candidates(self, model, z, task, generator=None):
        """Policy-prior sequences and their returns, drawn once per call: (B, P, H, A), (B, P) (P may be 0)."""
        B, P, H = z.shape[0], self.config.num_pi_trajs, self.config.horizon
        if P == 0:
            return z.new_zeros(B, 0, H, self.config.action_dim), z.new_zeros(B, 0)
        zp = z.repeat_interleave(P, dim=0)
        tp = task.repeat_interleave(P, dim=0)
        seq = model.policy_rollout(zp, tp, H, generator=generator)  # (H, B*P, A)
        actions = seq.transpose(0, 1).reshape(B, P, H, -1)
        return actions, self.evaluate(model, z, task, actions, generator=generator)

    def add_exploration_noise(self, action, std, mask, generator=None):
        noise = torch.randn(action.shape, device=action.device, dtype=action.dtype, generator=generator)
        return ((action + std * noise) * mask).clamp(-1, 1)


def elite_weights(values, num_elites, temperature, standardise):
    """Top-k elites per env and their softmax weights. values (B, K) -> idx (B, k), weights (B, k).

    standardise=True is MBDPO's rule (z-scored returns / temperature); False is TD-MPC2's MPPI rule
    (exp(temperature * (V - max V)))."""
    k = min(num_elites, values.shape[1])
    top, idx = values.topk(k, dim=1)
    if standardise:
        mu = values.mean(1, keepdim=True)
        sd = values.std(1, keepdim=True) if values.shape[1] > 1 else torch.ones_like(mu)
        sd = torch.where(sd < 1e-4, torch.ones_like(sd), sd)
        logits = ((top - mu) / sd) / temperature
    else:
        logits = temperature * (top - top.max(1, keepdim=True).values)
    return idx, torch.softmax(logits, dim=1)


def gather_sequences(actions, idx):
    """actions (B, K, H, A), idx (B, k) -> (B, k, H, A)."""
    B, K, H, A = actions.shape
    return actions.gather(1, idx.view(B, -1, 1, 1).expand(-1, -1, H, A))
