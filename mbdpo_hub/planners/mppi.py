"""TD-MPC2's MPPI planner over the same planning-model interface."""

from __future__ import annotations

import torch

from .base import Planner, elite_weights, gather_sequences


class MPPIPlanner(Planner):
    """Iterated importance-weighted refit of a diagonal Gaussian over H-step sequences (TD-MPC2 `_plan`).

    The policy-prior candidates are drawn and scored once per call; std restarts at `max_std` each call; the
    returned action is one elite drawn by its weight (plus std-scaled noise when exploring). `mppi_iterations` gets
    +2 for action dims >= 20, as upstream (without mutating the config)."""

    name = "mppi"

    @torch.no_grad()
    def plan(self, model, z, task, prev_mean=None, has_prev=None, eval_mode=False, generator=None):
        cfg = self.config
        B, H, A = z.shape[0], cfg.horizon, cfg.action_dim
        mask = model.action_mask(task, z).view(B, 1, 1, A)
        pi_actions, pi_values = self.policy_candidates(model, z, task, generator)
        num_sampled = cfg.num_samples - pi_actions.shape[1]
        mean = self.warm_start(z, prev_mean, has_prev)
        std = torch.full_like(mean, cfg.max_std)
        iterations = cfg.mppi_iterations + (2 if max(cfg.action_dims) >= 20 else 0)
        for _ in range(iterations):
            eps = torch.randn(B, num_sampled, H, A, device=z.device, dtype=z.dtype, generator=generator)
            cand = ((mean.unsqueeze(1) + std.unsqueeze(1) * eps).clamp(-1, 1)) * mask
            values = torch.cat([pi_values, self.evaluate(model, z, task, cand, generator)], dim=1)
            actions = torch.cat([pi_actions, cand], dim=1)
            idx, w = elite_weights(values, cfg.num_elites, cfg.temperature, standardise=False)
            elites = gather_sequences(actions, idx)
            wv = w.view(B, -1, 1, 1).to(elites.dtype)  # float32 weights, plan in the model dtype
            mean = (wv * elites).sum(1)
            std = ((wv * (elites - mean.unsqueeze(1)).pow(2)).sum(1)).sqrt().clamp(cfg.min_std, cfg.max_std)
            mean, std = mean * mask[:, 0], std * mask[:, 0]
        choice = torch.multinomial(w, 1, generator=generator).view(B)
        action = elites[torch.arange(B, device=z.device), choice, 0]
        if not eval_mode:
            action = self.add_exploration_noise(action, std[:, 0], mask[:, 0, 0], generator)
        return action.clamp(-1, 1), mean


class PolicyPlanner(Planner):
    """Acts with the policy prior alone (its mean in eval mode): the cheapest baseline, no search."""

    name = "policy"

    @torch.no_grad()
    def plan(self, model, z, task, prev_mean=None, has_prev=None, eval_mode=False, generator=None):
        out = model.pi(z, task, generator=generator)
        return (out.mean if eval_mode else out.action), None
