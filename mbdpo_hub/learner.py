"""One MBDPO learning update: TD-MPC2's world-model losses, the contrastive energy loss, the optional score-matching
loss and the policy-prior loss, with TD-MPC2's optimisers and the Polyak target update.

A batch holds (H+1)-step sub-trajectories, time-major:
    obs (H+1, B, O), action (H, B, A), reward (H, B, 1), terminated (H, B, 1), task (B,) long (or None).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .modeling_mbdpo import MBDPODiffusionPolicy, soft_ce, two_hot_inv

# Parameter groups (TD-MPC2/MBDPO names). `pi` has its own optimiser.
PARAM_GROUPS = ("encoder", "dynamics", "reward", "termination", "qs", "task_embedding", "energy", "score", "pi")


def parameter_groups(policy: MBDPODiffusionPolicy) -> dict[str, list[nn.Parameter]]:
    """The policy's parameters by group (the model owns the layout: `MBDPODiffusionPolicy.parameter_groups`)."""
    return policy.parameter_groups()


class RunningScale(nn.Module):
    """Running 5-95 percentile range of Q-values (TD-MPC2): value <- lerp(value, max(p95 - p5, 1), tau)."""

    def __init__(self, tau: float):
        super().__init__()
        self.tau = tau
        self.register_buffer("value", torch.ones(()))

    @torch.no_grad()
    def update(self, x: torch.Tensor, reduce_fn: Callable | None = None) -> None:
        q = torch.quantile(x.detach().float().flatten(), torch.tensor([0.05, 0.95], device=x.device))
        if reduce_fn is not None:
            q = reduce_fn(q)
        self.value.lerp_((q[1] - q[0]).clamp(min=1.0).to(self.value.dtype), self.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.value


class MBDPOLearner:
    """Optimisers and the update step for an `MBDPODiffusionPolicy`.

    lr_scales: per-group multipliers of `config.lr` (default: encoder 0.3 = TD-MPC2's enc_lr_scale).
    freeze: group names whose parameters are not trained (e.g. ["encoder", "dynamics"] for fine-tuning).
    mixed_precision: "bf16" runs the loss computations under bf16 autocast; backward and the steps stay outside it.
    reduce_fn: mean over processes (e.g. `accelerator.reduce(x, "mean")`), applied to gradients and to running
    statistics so that every process keeps identical weights in multi-process training.
    l2_to_pretrained: a trust region for fine-tuning (L2-SP, Li et al. 2018, applied decoupled as in AdamW): after
    every optimiser step each trained weight moves towards its value when the learner was built (the adapted
    pretrained checkpoint), theta <- theta - lr * l2_to_pretrained * (theta - theta_0), at its group's lr. Adam
    moves a weight by at most about lr per step, so a weight settles within about 1 / l2_to_pretrained of where it
    started. The task-embedding table is anchored too: a new task's row is an input of every network, and fresh Adam
    moves it by about lr per dimension per update (on cartpole-balance-sparse, with the rest held near its start, a
    free row took a 1000-return start's training episodes down to 159 within 500 updates). 0 = off.
    anchor_to_pretrained: a trust region in function space for fine-tuning (a distillation term, as a KL penalty to
    the reference model in RLHF): a frozen copy of the model as the learner was built (the adapted checkpoint)
    rolls H steps of uniformly random actions out of every batch's first observations, and the trained model's
    reward and Q distributions along the same actions are pulled towards the copy's by
    anchor_to_pretrained * KL(copy || model) (two-hot bins, averaged over steps, heads and samples). The batch's own
    actions carry the new data's losses; the random ones reach the states and actions the data does not (a
    planner's candidates near the task's failures), where the pretrained shaping is the only information there is
    and nothing else protects it. Unlike l2_to_pretrained it leaves the weights free where the functions stay the
    same. Costs about two more rollouts per update. 0 = off.
    """

    def __init__(self, policy: MBDPODiffusionPolicy, *, lr_scales: dict[str, float] | None = None,
                 freeze: list[str] | tuple[str, ...] = (), reduce_fn: Callable | None = None,
                 mixed_precision: str = "no", compile: bool = False, l2_to_pretrained: float = 0.0,
                 anchor_to_pretrained: float = 0.0):
        cfg = policy.config
        if not l2_to_pretrained >= 0:
            raise ValueError(f"l2_to_pretrained must be >= 0, got {l2_to_pretrained}")
        if not anchor_to_pretrained >= 0:
            raise ValueError(f"anchor_to_pretrained must be >= 0, got {anchor_to_pretrained}")
        if mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")
        self.mixed_precision = mixed_precision
        unknown = set(freeze) | set(lr_scales or {})
        unknown -= set(PARAM_GROUPS)
        if unknown:
            raise ValueError(f"unknown parameter groups {sorted(unknown)}; known: {PARAM_GROUPS}")
        self.policy, self.config, self.reduce_fn = policy, cfg, reduce_fn
        scales = {"encoder": cfg.enc_lr_scale, **(lr_scales or {})}
        groups = parameter_groups(policy)
        for name in freeze:
            for p in groups[name]:
                p.requires_grad_(False)
        self.freeze = tuple(freeze)
        wm_groups = [dict(params=[p for p in ps if p.requires_grad], lr=cfg.lr * scales.get(name, 1.0), name=name)
                     for name, ps in groups.items() if name != "pi"]
        wm_groups = [g for g in wm_groups if g["params"]]
        pi_params = [p for p in groups["pi"] if p.requires_grad]
        # fused: one kernel over all tensors instead of a Python loop of ~10 ops per tensor (CPU and CUDA)
        fused = dict(fused=True) if policy.device.type in ("cpu", "cuda") else {}
        self.optim = torch.optim.Adam(wm_groups, lr=cfg.lr, **fused) if wm_groups else None
        self.pi_optim = (torch.optim.Adam(pi_params, lr=cfg.pi_lr * scales.get("pi", 1.0), eps=1e-5, **fused)
                         if pi_params else None)
        self.scale = RunningScale(cfg.tau).to(policy.device)
        self.l2_to_pretrained = float(l2_to_pretrained)
        # (lr, params, their starting values) per anchored optimiser group
        self.anchors = [] if not self.l2_to_pretrained else [
            (g["lr"], g["params"], [p.detach().clone() for p in g["params"]])
            for opt in (self.optim, self.pi_optim) if opt is not None for g in opt.param_groups]
        self.anchor_to_pretrained = float(anchor_to_pretrained)
        self.reference = None
        self.set_reference()
        self.num_updates = 0
        self.compile_forward(compile)

    @torch.no_grad()
    def set_reference(self) -> None:
        """Centre both trust regions (l2_to_pretrained's starting weights, anchor_to_pretrained's frozen copy,
        without dropout) on the model as it is now: at construction, and again after a fine-tuning run's row fit
        (`fit_task_row`), so that they hold the model the updates start from."""
        for _, params, start in self.anchors:
            torch._foreach_copy_(start, params)
        if self.anchor_to_pretrained:
            self.reference = copy.deepcopy(self.policy.world_model).eval().requires_grad_(False)

    def compile_forward(self, enabled: bool = True) -> "MBDPOLearner":
        """torch.compile the forward passes of the update (all losses but the policy prior's) as one graph;
        loss.backward() then runs that graph's AOT-compiled backward, the optimiser steps stay eager. Shapes are
        static within a run. `enabled=False` goes back to eager code."""
        self.compiled = bool(enabled)
        self._forward = torch.compile(self.forward_losses, dynamic=False) if enabled else self.forward_losses
        return self

    # --- losses ------------------------------------------------------------------------------------------------------
    def world_model_losses(self, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """TD-MPC2's consistency, reward, value and termination losses. Returns (total, metrics, latents (H+1,B,L))."""
        cfg, wm = self.config, self.policy.world_model
        obs, action, reward, task = batch["obs"], batch["action"], batch["reward"], batch.get("task")
        terminated = batch.get("terminated")
        if terminated is None:
            terminated = torch.zeros_like(reward)
        H = action.shape[0]
        rho = cfg.rho ** torch.arange(H, device=obs.device, dtype=obs.dtype)

        with torch.no_grad():
            next_z = wm.encode(obs[1:], task)
            gamma = wm.discount(task, next_z).to(obs.dtype)
            gamma = gamma.unsqueeze(-1) if gamma.dim() == 1 else gamma
            next_a = wm.pi(next_z, task).action
            td_target = reward + gamma * (1 - terminated) * wm.Q(next_z, next_a, task, "min", target=True)

        z = wm.encode(obs[0], task)
        zs, consistency = [z], 0.0
        for t in range(H):
            z = wm.next(z, action[t], task)
            consistency = consistency + rho[t] * F.mse_loss(z, next_z[t])
            zs.append(z)
        zs = torch.stack(zs)
        consistency = consistency / H

        qs = wm.Q(zs[:-1], action, task, "all")  # (num_q, H, B, nb)
        reward_logits = wm.reward(zs[:-1], action, task)  # (H, B, nb)
        reward_loss = (soft_ce(reward_logits, reward, cfg).mean(dim=(1, 2)) * rho).sum() / H
        value_loss = (soft_ce(qs, td_target.unsqueeze(0).expand(qs.shape[0], -1, -1, -1), cfg)
                      .mean(dim=(2, 3)) * rho).sum() / (H * cfg.num_q)
        if wm.termination_head is not None:
            termination_loss = F.binary_cross_entropy_with_logits(
                wm.termination(zs[1:], task, unnormalized=True), terminated)
        else:
            termination_loss = torch.zeros((), device=obs.device)
        total = (cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss
                 + cfg.value_coef * value_loss + cfg.termination_coef * termination_loss)
        with torch.no_grad():  # diagnostics: the value the model believes in vs its bootstrapped target
            q_mean = two_hot_inv(qs[:, 0].detach(), cfg).mean()
        metrics = dict(consistency_loss=consistency, reward_loss=reward_loss, value_loss=value_loss,
                       termination_loss=termination_loss, q_mean=q_mean, td_target_mean=td_target[0].mean(),
                       reward_mean=reward[0].mean())
        return total, metrics, zs

    def anchor_loss(self, obs: torch.Tensor, task) -> torch.Tensor:
        """anchor_to_pretrained's KL(reference || model) of the reward and Q distributions along H uniformly random
        actions from obs (B, O) (the batch's first observations); a scalar."""
        wm, ref, H = self.policy.world_model, self.reference, self.config.horizon
        with torch.no_grad():
            z = ref.encode(obs, task)
            mask = wm.action_mask(task, z)  # padded action dims of the task stay 0
            action = (torch.rand(H, *z.shape[:-1], self.config.action_dim, device=z.device, dtype=z.dtype) * 2 - 1
                      ) * mask
            zs = []
            for t in range(H):
                zs.append(z)
                z = ref.next(z, action[t], task)
            zs = torch.stack(zs)  # (H, B, L)
            ref_reward = F.log_softmax(ref.reward(zs, action, task).float(), -1)
            ref_q = F.log_softmax(ref.Q(zs, action, task, "all").float(), -1)  # (num_q, H, B, nb)
        z, zs = wm.encode(obs, task), []
        for t in range(H):
            zs.append(z)
            z = wm.next(z, action[t], task)
        zs = torch.stack(zs)

        def kl(logits: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(logits.float(), -1), ref_logp, log_target=True, reduction="none").sum(-1).mean()

        return kl(wm.reward(zs, action, task), ref_reward) + kl(wm.Q(zs, action, task, "all"), ref_q)

    def energy_loss(self, z: torch.Tensor, action: torch.Tensor, task) -> tuple[torch.Tensor, dict]:
        """Contrastive loss of the implicit energy F on aligned (z_t, a_t) pairs of the batch.

        z (H, B, L) (detached latents of the rollout) and action (H, B, A) share the same (t, b) layout (upstream
        paired time-major latents with batch-major actions). Negatives, per pair, are the highest-F of a policy
        sample, a noised policy sample and a uniform action. Only F is trained: the state/task input is detached.
        """
        cfg, policy, wm = self.config, self.policy, self.policy.world_model
        x = wm.with_task(z.detach(), task).detach()
        mask = wm.action_mask(task, z)
        if mask.dim() == 2:  # (B, A) -> broadcast over time
            mask = mask.unsqueeze(0)
        with torch.no_grad():
            a_pi = wm.pi(z, task).action
            a_noisy = ((a_pi + cfg.energy_neg_noise * torch.randn_like(a_pi)).clamp(-1, 1)) * mask
            a_unif = (torch.rand_like(a_pi) * 2 - 1) * mask
            cands = torch.stack([a_pi, a_noisy, a_unif])  # (3, H, B, A)
            logits = policy.energy(torch.cat([x.unsqueeze(0).expand(3, *x.shape), cands], dim=-1))
            best = logits.argmax(0, keepdim=True)  # (1, H, B, 1)
            a_neg = cands.gather(0, best.expand(1, *a_pi.shape)).squeeze(0)
        pos = policy.energy(torch.cat([x, action], dim=-1))
        neg = policy.energy(torch.cat([x, a_neg], dim=-1))
        loss = 0.5 * (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                      + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
        with torch.no_grad():  # running normalisation statistics, saved with the model
            both = torch.cat([pos, neg]).float()
            stats = torch.stack([both.mean(), both.pow(2).mean()])
            if self.reduce_fn is not None:
                stats = self.reduce_fn(stats)
            mean, std = stats[0], (stats[1] - stats[0] ** 2).clamp(min=0).sqrt().clamp(min=1e-6)
            m = cfg.energy_momentum
            policy.energy_mean.mul_(m).add_((1 - m) * mean)
            policy.energy_std.mul_(m).add_((1 - m) * std)
            accuracy = 0.5 * ((pos > 0).float().mean() + (neg < 0).float().mean())
        return loss, dict(energy_loss=loss, energy_accuracy=accuracy)

    def score_loss(self, z: torch.Tensor, task, num_states: int = 8) -> tuple[torch.Tensor, dict]:
        """Score matching against the Monte-Carlo score target on a few detached states z (B, L).

        Upstream trains on one (non-detached) state per update; we use `num_states` detached ones so the score net
        sees more states and does not shape the encoder."""
        cfg, policy = self.config, self.policy
        sched = getattr(policy.planner, "scheduler", None)
        if sched is None:  # another planner is active: the diffusion schedule of the config
            from .planners import ModelBasedDiffusionScheduler

            sched = ModelBasedDiffusionScheduler(cfg.diffusion_steps, cfg.diffusion_beta0, cfg.diffusion_betaT)
        S = min(num_states, z.shape[0])
        z = z[:S].detach()
        t_task = policy.world_model.task_tensor(task, z)
        t_task = t_task[:S] if t_task.dim() == 1 else t_task.expand(S)
        H, A, K = cfg.horizon, cfg.action_dim, cfg.score_num_samples
        mask = policy.world_model.action_mask(t_task, z).view(S, 1, A)
        steps = torch.randint(1, sched.num_train_timesteps, (S,), device=z.device)
        x = torch.randn(S, H, A, device=z.device, dtype=z.dtype) * mask
        with torch.no_grad():
            sigma = sched.sample_std(steps, x).unsqueeze(1)
            noise = torch.randn(S, K, H, A, device=z.device, dtype=z.dtype)
            cand = (sched.x0_mean(x, steps).unsqueeze(1) + sigma * noise).clamp(-1, 1) * mask.unsqueeze(1)
            v = policy.estimate_value(z, cand.reshape(S * K, H, A).transpose(0, 1), t_task, repeats=K).view(S, K)
            v = (v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True).clamp(min=1e-4)
            w = torch.softmax(v / cfg.temperature, dim=1)
            x0_hat = (w.view(S, K, 1, 1) * cand).sum(1)
            target = sched.mc_score(x, steps, x0_hat)
        abar = sched.alphas_cumprod.to(z.device, z.dtype)[steps].view(S, 1, 1)
        pred = policy.score(z, x, steps, t_task)
        # weight (1 - abar)^2 (DDPM's sigma^2 weighting, i.e. noise-prediction scale): the raw target grows like
        # 1 / (1 - abar) (~5e3 at the last step) and would swamp the world-model gradient under the shared clip.
        loss = ((1 - abar) ** 2 * (pred - target).pow(2) * mask).sum() / (mask.sum() * H).clamp(min=1)
        return loss, dict(score_loss=loss)

    def policy_loss(self, zs: torch.Tensor, task) -> tuple[torch.Tensor, dict]:
        """TD-MPC2's policy-prior loss on detached latents (H+1, B, L): maximise scaled Q + entropy bonus, plus
        `energy_pi_coef` x the normalised energy F-tilde of the prior's actions (the TD target bootstraps with the
        prior: the energy term keeps its actions where the data are; F's weights are not trained by this loss)."""
        cfg, wm = self.config, self.policy.world_model
        zs = zs.detach()
        out = wm.pi(zs, task)
        q = wm.Q(zs, out.action, task, "avg", detach=True)
        self.scale.update(q[0], self.reduce_fn)
        q = self.scale(q)
        objective = cfg.entropy_coef * out.scaled_entropy + q
        metrics = {}
        if cfg.energy_pi_coef > 0:
            f = self.policy.normalized_energy(wm.za(zs, out.action, task))
            objective = objective + cfg.energy_pi_coef * f
            metrics["pi_energy"] = f.detach().mean()
        rho = cfg.rho ** torch.arange(zs.shape[0], device=zs.device, dtype=zs.dtype)
        loss = ((-objective).mean(dim=(1, 2)) * rho).mean()
        return loss, dict(metrics, pi_loss=loss, pi_entropy=out.entropy.mean(), pi_scale=self.scale.value.clone())

    def autocast(self):
        """bf16 autocast for the forward passes of an update (a no-op at full precision)."""
        if self.mixed_precision == "bf16":
            return torch.autocast(self.policy.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward_losses(self, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """World-model + energy (+ score) losses of one batch: (total, metrics, latents (H+1, B, L))."""
        cfg, policy = self.config, self.policy
        total, metrics, zs = self.world_model_losses(batch)
        e_loss, e_metrics = self.energy_loss(zs[:-1], batch["action"], batch.get("task"))
        total = total + cfg.energy_coef * e_loss
        metrics.update(e_metrics)
        if self.reference is not None:
            a_loss = self.anchor_loss(batch["obs"][0], batch.get("task"))
            total = total + self.anchor_to_pretrained * a_loss
            metrics["anchor_kl"] = a_loss
        if policy.score_net is not None and cfg.score_coef > 0:
            s_loss, s_metrics = self.score_loss(zs[0], batch.get("task"))
            total = total + cfg.score_coef * s_loss
            metrics.update(s_metrics)
        return total, metrics, zs

    # --- the update --------------------------------------------------------------------------------------------------
    def _step(self, optim, loss, params) -> torch.Tensor:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if self.reduce_fn is not None:  # one all-reduce of all gradients in one flat buffer, not one per tensor
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                flat = self.reduce_fn(torch.cat([g.reshape(-1) for g in grads]))
                for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                    g.copy_(part.view_as(g))
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip_norm)
        optim.step()
        return norm

    def update(self, batch: dict) -> dict[str, torch.Tensor]:
        """One gradient step of world model + energy (+ score), one of the policy prior, then Polyak.

        Returns the metrics as detached 0-dim tensors on the model's device: turning them into Python floats here
        would make the host wait for the device at every update (`mean_metrics` does it once per logging interval).
        """
        cfg, policy = self.config, self.policy
        policy.train()
        with self.autocast():  # forward passes only: backward and the optimiser steps run outside autocast
            total, metrics, zs = self._forward(batch)
        if self.optim is not None:
            wm_params = [p for g in self.optim.param_groups for p in g["params"]]
            metrics["grad_norm"] = self._step(self.optim, total, wm_params)
        if self.pi_optim is not None:
            with self.autocast():
                pi_loss, pi_metrics = self.policy_loss(zs, batch.get("task"))
            self._step(self.pi_optim, pi_loss, self.pi_optim.param_groups[0]["params"])
            metrics.update(pi_metrics)
            # keep the policy loss's gradient out of shared modules' next step
            for p in policy.parameters():
                p.grad = None
        if self.anchors:
            self.pull_to_start()
        policy.world_model.Qs.update_target(cfg.tau)
        policy.eval()
        self.num_updates += 1
        metrics["total_loss"] = total
        return {k: (v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))) for k, v in metrics.items()}

    @torch.no_grad()
    def pull_to_start(self) -> None:
        """The `l2_to_pretrained` step, theta <- theta - lr * l2_to_pretrained * (theta - theta_0): one fused lerp per
        optimiser group."""
        for lr, params, start in self.anchors:
            torch._foreach_lerp_(params, start, min(1.0, lr * self.l2_to_pretrained))

    # --- checkpointing -----------------------------------------------------------------------------------------------
    def _reference_rows(self) -> list[torch.Tensor]:
        """The task-embedding tables the trust regions hold (a row fit changes them after construction, so a
        resumed run, whose learner is built from the unfitted checkpoint, needs them back)."""
        table = self.policy.world_model.task_embedding
        if table is None:
            return []
        rows = [s for _, params, start in self.anchors for p, s in zip(params, start) if p is table.weight]
        return rows + ([self.reference.task_embedding.weight] if self.reference is not None else [])

    def state_dict(self) -> dict:
        return dict(optim=self.optim.state_dict() if self.optim else None,
                    pi_optim=self.pi_optim.state_dict() if self.pi_optim else None,
                    scale=self.scale.state_dict(), num_updates=self.num_updates,
                    reference_rows=[r.detach().clone() for r in self._reference_rows()])

    def load_state_dict(self, state: dict) -> None:
        if self.optim is not None and state.get("optim") is not None:
            self.optim.load_state_dict(state["optim"])
        if self.pi_optim is not None and state.get("pi_optim") is not None:
            self.pi_optim.load_state_dict(state["pi_optim"])
        self.scale.load_state_dict(state["scale"])
        self.num_updates = int(state.get("num_updates", 0))
        saved, rows = state.get("reference_rows") or [], self._reference_rows()
        if len(saved) == len(rows):  # the same trust regions as when saved (else: centred on this checkpoint)
            with torch.no_grad():
                for row, value in zip(rows, saved):
                    row.copy_(value)


def mean_metrics(acc: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """{name: [0-dim tensors of several updates]} -> {name: float mean}: one host synchronisation for all of them."""
    if not acc:
        return {}
    names = list(acc)
    means = torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in acc[k]]).mean()
                         for k in names]).tolist()
    return dict(zip(names, means))


__all__ = ["MBDPOLearner", "RunningScale", "mean_metrics", "parameter_groups", "PARAM_GROUPS"]
