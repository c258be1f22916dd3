"""MBDPO's model-based diffusion planner and its noise schedule.

The schedule is a small diffusers-style object (`set_timesteps`, `step`) with no networks. The planner runs the
reverse process over H-step action sequences: at each step tau it samples candidates around the current estimate of
the clean sequence, scores them by imagined (energy-shaped) returns in the world model, takes the softmax-weighted
mean of the elites as a Monte-Carlo estimate of E[x0 | x_tau], turns it into a score and takes a reverse step.
"""

from __future__ import annotations

import torch

from .base import Planner, elite_weights, gather_sequences


class ModelBasedDiffusionScheduler:
    """Linear-beta DDPM schedule over action sequences.

    betas = linspace(beta0, betaT, T), alphas = 1 - betas, alphas_cumprod = cumprod(alphas). `timesteps` runs
    T-1 ... 1 (the reverse process).
    """

    def __init__(self, num_train_timesteps: int = 20, beta_start: float = 1e-4, beta_end: float = 1e-2):
        self.num_train_timesteps = max(int(num_train_timesteps), 2)
        self.betas = torch.linspace(beta_start, beta_end, self.num_train_timesteps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.set_timesteps(self.num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """Reverse steps T-1 ... 1, or `num_inference_steps` of them evenly spaced over that range."""
        T = self.num_train_timesteps
        n = T - 1 if num_inference_steps is None else min(int(num_inference_steps), T - 1)
        self.timesteps = torch.linspace(T - 1, 1, n).round().long().unique_consecutive()

    def sample_std(self, t: int) -> float:
        """sigma_t = sqrt((1 - abar_t) / abar_t): spread of x0-candidates around x_t / sqrt(abar_t)."""
        ab = float(self.alphas_cumprod[t])
        return ((1 - ab) / ab) ** 0.5

    def x0_mean(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x / float(self.alphas_cumprod[t]) ** 0.5

    def mc_score(self, x: torch.Tensor, t: int, x0_hat: torch.Tensor) -> torch.Tensor:
        """Score of p(x_t) from an estimate of E[x0 | x_t]: (-x_t + sqrt(abar_t) x0_hat) / (1 - abar_t)."""
        ab = float(self.alphas_cumprod[t])
        return (-x + ab ** 0.5 * x0_hat) / (1 - ab + 1e-8)

    def step(self, score: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        """Reverse step x_t -> x_{t-1} = (x_t + (1 - abar_t) score) / sqrt(alpha_t)."""
        ab, a = float(self.alphas_cumprod[t]), float(self.alphas[t])
        return (x + (1 - ab) * score) / a ** 0.5

    def init_sample(self, mean: torch.Tensor) -> torch.Tensor:
        """Start of the reverse process from a warm-start mean (no initial noise, as upstream)."""
        return float(self.alphas_cumprod[-1]) ** 0.5 * mean


class DiffusionPlanner(Planner):
    """MBDPO planner. Per env: N candidates, of which `num_pi_trajs` are policy-prior rollouts (drawn and scored once
    per call: they do not depend on the iterate), the rest sampled around the current iterate."""

    name = "diffusion"

    def __init__(self, config):
        super().__init__(config)
        self.scheduler = ModelBasedDiffusionScheduler(config.diffusion_steps, config.diffusion_beta0,
                                                      config.diffusion_betaT)

    @torch.no_grad()
    def plan(self, model, z, task, prev_mean=None, has_prev=None, eval_mode=False, generator=None):
        cfg, sch = self.config, self.scheduler
        B, H, A = z.shape[0], cfg.horizon, cfg.action_dim
        mask = model.action_mask(task, z).view(B, 1, 1, A)
        pi_actions, pi_values = self.policy_candidates(model, z, task, generator)
        num_sampled = cfg.num_samples - pi_actions.shape[1]
        x = sch.init_sample(self.warm_start(z, prev_mean, has_prev)) * mask[:, 0]
        for t in sch.timesteps.tolist():
            mu, sigma = sch.x0_mean(x, t), sch.sample_std(t)
            eps = torch.randn(B, num_sampled, H, A, device=z.device, dtype=z.dtype, generator=generator)
            cand = ((mu.unsqueeze(1) + sigma * eps) * mask).clamp(-1, 1)
            values = self.evaluate(model, z, task, cand, generator)
            actions = torch.cat([pi_actions, cand], dim=1)
            values = torch.cat([pi_values, values], dim=1)
            idx, w = elite_weights(values, cfg.num_elites, cfg.temperature, standardise=True)
            x0_hat = (w.view(B, -1, 1, 1) * gather_sequences(actions, idx)).sum(1)
            x = sch.step(sch.mc_score(x, t, x0_hat), t, x) * mask[:, 0]
        x0 = (x * mask[:, 0]).clamp(-1, 1)
        action = x0[:, 0]
        if not eval_mode:
            action = self.add_exploration_noise(action, cfg.action_noise, mask[:, 0, 0], generator)
        return action, x0


class ScorePlanner(Planner):
    """Amortised planning with the learned score network only: no world-model rollouts, values or policy."""

    name = "score"

    def __init__(self, config):
        super().__init__(config)
        self.scheduler = ModelBasedDiffusionScheduler(config.diffusion_steps, config.diffusion_beta0,
                                                      config.diffusion_betaT)

    @torch.no_grad()
    def plan(self, model, z, task, prev_mean=None, has_prev=None, eval_mode=False, generator=None):
        cfg, sch = self.config, self.scheduler
        B = z.shape[0]
        mask = model.action_mask(task, z).view(B, 1, -1)
        x = sch.init_sample(self.warm_start(z, prev_mean, has_prev)) * mask
        for t in sch.timesteps.tolist():
            tt = torch.full((B,), t, device=z.device, dtype=torch.long)
            x = sch.step(model.score(z, x, tt, task), t, x) * mask
        x0 = (x * mask).clamp(-1, 1)
        action = x0[:, 0]
        if not eval_mode:
            action = self.add_exploration_noise(action, cfg.action_noise, mask[:, 0], generator)
        return action, x0
