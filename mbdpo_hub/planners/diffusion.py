"""MBDPO's model-based diffusion planner and its noise schedule.

The schedule is a small diffusers-style object (`set_timesteps`, `step`) with no networks. The planner runs the
reverse process over H-step action sequences: at each step tau it samples candidates around the current estimate of
the clean sequence, scores them by imagined (energy-shaped) returns in the world model, takes the softmax-weighted
mean of the elites as a Monte-Carlo estimate of E[x0 | x_tau], turns it into a score and takes a reverse step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import Planner, elite_weights, gather_sequences


@dataclass
class SchedulerOutput:
    """Output of `ModelBasedDiffusionScheduler.step`: prev_sample = x_{t-1}, shaped like x_t."""

    prev_sample: torch.Tensor


class ModelBasedDiffusionScheduler:
    """Linear-beta DDPM schedule over action sequences, a small saveable object with no networks.

    betas = linspace(beta_start, beta_end, T), alphas = 1 - betas, alphas_cumprod = cumprod(alphas); `timesteps`
    runs T-1 ... 1 (the reverse process). `t` may be an int or a long tensor with one step per sample (leading dim).
    Saved as `scheduler_config.json` (`save_pretrained` / `from_pretrained` / `from_config`), as diffusers' are.
    """

    config_name = "scheduler_config.json"

    def __init__(self, num_train_timesteps: int = 20, beta_start: float = 1e-4, beta_end: float = 1e-2):
        self.config = dict(num_train_timesteps=max(int(num_train_timesteps), 2), beta_start=float(beta_start),
                           beta_end=float(beta_end))
        self.num_train_timesteps = self.config["num_train_timesteps"]
        self.betas = torch.linspace(beta_start, beta_end, self.num_train_timesteps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.set_timesteps(self.num_train_timesteps)

    @classmethod
    def from_config(cls, config: dict) -> "ModelBasedDiffusionScheduler":
        return cls(**config)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        from ..utils import atomic_write_text

        path = Path(folder) / self.config_name
        atomic_write_text(path, json.dumps(dict(self.config, _class_name=type(self).__name__), indent=2))
        return path

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "ModelBasedDiffusionScheduler":
        config = json.loads((Path(folder) / cls.config_name).read_text())
        config.pop("_class_name", None)
        return cls.from_config(config)

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """Reverse steps T-1 ... 1, or `num_inference_steps` of them evenly spaced over that range."""
        T = self.num_train_timesteps
        n = T - 1 if num_inference_steps is None else min(int(num_inference_steps), T - 1)
        self.timesteps = torch.linspace(T - 1, 1, n).round().long().unique_consecutive()

    def _at(self, values: torch.Tensor, t, like: torch.Tensor):
        """values[t] as a float (int t) or as a tensor broadcastable against `like` (one step per leading entry)."""
        if isinstance(t, int):
            return float(values[t])
        v = values.to(like.device, like.dtype)[t]
        return v.view(-1, *([1] * (like.dim() - 1)))

    def sample_std(self, t, like: torch.Tensor | None = None):
        """sigma_t = sqrt((1 - abar_t) / abar_t): spread of x0-candidates around x_t / sqrt(abar_t)."""
        ab = self._at(self.alphas_cumprod, t, like)
        return ((1 - ab) / ab) ** 0.5

    def x0_mean(self, x: torch.Tensor, t) -> torch.Tensor:
        return x / self._at(self.alphas_cumprod, t, x) ** 0.5

    def mc_score(self, x: torch.Tensor, t, x0_hat: torch.Tensor) -> torch.Tensor:
        """Score of p(x_t) from an estimate of E[x0 | x_t]: (-x_t + sqrt(abar_t) x0_hat) / (1 - abar_t). The
        planner's reverse step and the score network's training target both use this one formula."""
        ab = self._at(self.alphas_cumprod, t, x)
        return (-x + ab ** 0.5 * x0_hat) / (1 - ab + 1e-8)

    def step(self, score: torch.Tensor, t, x: torch.Tensor) -> SchedulerOutput:
        """Reverse step x_t -> x_{t-1} = (x_t + (1 - abar_t) score) / sqrt(alpha_t)."""
        ab, a = self._at(self.alphas_cumprod, t, x), self._at(self.alphas, t, x)
        return SchedulerOutput(prev_sample=(x + (1 - ab) * score) / a ** 0.5)

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
            # weights come from float32 values; the plan stays in the model's dtype
            x0_hat = (w.view(B, -1, 1, 1).to(actions.dtype) * gather_sequences(actions, idx)).sum(1)
            x = sch.step(sch.mc_score(x, t, x0_hat), t, x).prev_sample * mask[:, 0]
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
            x = sch.step(model.score(z, x, tt, task), t, x).prev_sample * mask
        x0 = (x * mask).clamp(-1, 1)
        action = x0[:, 0]
        if not eval_mode:
            action = self.add_exploration_noise(action, cfg.action_noise, mask[:, 0], generator)
        return action, x0
