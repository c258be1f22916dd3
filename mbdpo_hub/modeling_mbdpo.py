"""MBDPO: a TD-MPC2 latent world model plus an implicit energy and a diffusion planner, as transformers models.

Shapes use: B batch, T time, L `latent_dim`, A padded `action_dim`, O padded `obs_dim`, td `task_dim`,
nb `num_bins`, Q `num_q`, H `horizon`.

`MBDPOWorldModel` is TD-MPC2's world model (encoder, latent dynamics, two-hot reward, optional termination, Gaussian
policy prior, Q-ensemble with a Polyak target copy, task embeddings and action masks). `MBDPODiffusionPolicy` wraps it
(`base_model_prefix="world_model"`) and adds the implicit energy network F, the optional score network and the
planner, behind `select_action`. Every network input is the concatenation [state, task embedding, action].
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_mbdpo import MBDPOConfig

#: config fields a planner object is built from (a change at run time rebuilds it)
PLANNER_FIELDS = ("planner", "horizon", "num_samples", "num_elites", "num_pi_trajs", "temperature", "diffusion_steps",
                  "diffusion_beta0", "diffusion_betaT", "action_noise", "energy_eta", "mppi_iterations", "min_std",
                  "max_std")
from .layers import (PolicyOutput, QEnsemble, SimNorm, _insert_at, _spread, _widen_linear, action_masks_from_config,
                     init_layer, mlp, soft_ce,
                     symexp, symlog, timestep_embedding, two_hot, two_hot_inv)

# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class MBDPOPreTrainedModel(PreTrainedModel):
    config_class = MBDPOConfig
    config: MBDPOConfig
    base_model_prefix = "world_model"
    main_input_name = "obs"
    input_modalities = ("state",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["QEnsemble"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, strict: one-line errors for a bad path or config, corrupt weights, missing
        / unexpected tensors (`strict=False` allows them) and NaN/inf values (`allow_nonfinite=True`): `loading`."""
        from .loading import load_checked

        return load_checked(super().from_pretrained, cls.__name__, pretrained_model_name_or_path, *args, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Push weights + config with OUR model card (library_name mbdpo-hub, per-task model-index) in one commit:
        `mbdpo_hub.hub.publish.push_policy` (its keyword arguments: card, eval_results, revision, tag, ...)."""
        from .hub.publish import push_policy

        return push_policy(self, repo_id, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """TD-MPC2 (e9f5932) init: trunc-normal(0.02) weights, zero biases, zero last layer of reward, Q and energy
        heads (so they start uniform / at 0), uniform(+-0.02) task embeddings; the Q target starts as a copy."""
        if init_layer(module):  # Linear, LayerNorm, Embedding, QEnsemble
            return
        if isinstance(module, MBDPOWorldModel):
            init.copy_(module.action_masks, action_masks_from_config(module.config))
            init.copy_(module.discounts, torch.tensor(module.config.discounts))
        elif isinstance(module, MBDPODiffusionPolicy):
            init.zeros_(module.energy_mean)
            init.ones_(module.energy_std)


class MBDPOWorldModel(MBDPOPreTrainedModel):
    """TD-MPC2's latent world model. All methods take a `task` that is `None` (single task), an int, or a long
    tensor broadcastable against the leading dims of the input (right-aligned: (B,) against (T, B, ·))."""

    # a policy checkpoint also holds the energy/score networks: loading its world model alone ignores them
    _keys_to_ignore_on_load_unexpected = [r"^energy", r"^score_net"]

    def __init__(self, config: MBDPOConfig):
        super().__init__(config)
        L, A, td, M, nb = config.latent_dim, config.action_dim, config.task_dim, config.mlp_dim, config.num_bins
        enc_hidden = max(config.num_enc_layers - 1, 1) * [config.enc_dim]
        self.task_embedding = nn.Embedding(config.num_tasks, td, max_norm=1) if td > 0 else None
        self.encoder = mlp(config.obs_dim + td, enc_hidden, L, act=SimNorm(config.simnorm_dim))
        self.dynamics = mlp(L + A + td, 2 * [M], L, act=SimNorm(config.simnorm_dim))
        self.reward_head = mlp(L + A + td, 2 * [M], nb, zero_init_last=True)
        self.termination_head = mlp(L + td, 2 * [M], 1) if config.episodic else None
        self.pi_head = mlp(L + td, 2 * [M], 2 * A)
        self.Qs = QEnsemble(L + A + td, M, nb, config.num_q, config.dropout)
        self.register_buffer("action_masks", action_masks_from_config(config), persistent=True)
        self.register_buffer("discounts", torch.tensor(config.discounts), persistent=True)
        self.post_init()

    # --- parameter layout (owned here: fine-tuning and the learner go through these) ---------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The world model's parameters by group (the names `freeze` and `lr_scales` use)."""
        modules = {"encoder": self.encoder, "dynamics": self.dynamics, "reward": self.reward_head,
                   "termination": self.termination_head, "qs": self.Qs, "task_embedding": self.task_embedding,
                   "pi": self.pi_head}
        return {k: (list(m.parameters()) if m is not None else []) for k, m in modules.items()}

    @torch.no_grad()
    def resize_inputs(self, obs_dim: int, action_dim: int) -> None:
        """Widen the padded observation / action dims in place (never narrower). Each first layer gets zero columns
        for the new entries (the encoder's at the end of its observation part, before the task embedding; the
        [z, task, a] layers' at the end), the policy head zero rows at the end of its mean and log-std halves, and
        the action masks zero columns; on the old tasks every output is unchanged."""
        cfg = self.config
        O, A, L, td = cfg.obs_dim, cfg.action_dim, cfg.latent_dim, cfg.task_dim
        if obs_dim < O or action_dim < A:
            raise ValueError(f"resize_inputs cannot shrink (obs {O} -> {obs_dim}, action {A} -> {action_dim})")
        if obs_dim > O:  # encoder input [obs | emb]
            _widen_linear(self.encoder[0], inputs=(obs_dim + td, _insert_at(O + td, obs_dim + td, O)))
        if action_dim > A:  # [z | emb | a] inputs; policy output [mean | log_std]
            za = (L + td + action_dim, torch.arange(L + td + A))
            for layer in (self.dynamics[0], self.reward_head[0]):
                _widen_linear(layer, inputs=za)
            self.Qs.widen_input(*za)
            halves = torch.arange(2 * A)
            halves = torch.where(halves >= A, halves + action_dim - A, halves)  # new rows end each half
            _widen_linear(self.pi_head[-1], outputs=(2 * action_dim, halves))
            self.action_masks = _spread(self.action_masks, 1, action_dim, torch.arange(A))
        self.config = cfg.replace(obs_dim=obs_dim, action_dim=action_dim)

    @torch.no_grad()
    def add_task(self, name: str, obs_dim: int, action_dim: int, episode_length: int,
                 embedding: torch.Tensor | None = None) -> int:
        """Append task `name` in place: a task-embedding row (`embedding`, default the mean of the rows), its action
        mask row and discount; the padded dims are widened first when the task needs it. Returns its task id."""
        cfg = self.config
        if name in cfg.tasks:
            raise ValueError(f"task {name!r} is already in the model (id {cfg.tasks.index(name)})")
        if self.task_embedding is None:
            raise ValueError("a single-task model has no task embedding to add a task to")
        self.resize_inputs(max(cfg.obs_dim, obs_dim), max(cfg.action_dim, action_dim))
        cfg, n = self.config, self.config.num_tasks
        old = self.task_embedding.weight
        row = old.mean(0) if embedding is None else embedding.to(old)
        emb = nn.Embedding(n + 1, cfg.task_dim, max_norm=1).to(old.device)
        emb.weight.copy_(torch.cat([old, row.reshape(1, -1)]))
        self.task_embedding = emb
        self.config = cfg.replace(tasks=cfg.tasks + [name], obs_dims=cfg.obs_dims + [int(obs_dim)],
                                  action_dims=cfg.action_dims + [int(action_dim)],
                                  episode_lengths=cfg.episode_lengths + [int(episode_length)], task_set=None)
        mask = (torch.arange(self.config.action_dim, device=old.device) < action_dim).to(self.action_masks)
        self.action_masks = torch.cat([self.action_masks, mask.unsqueeze(0)])
        self.discounts = torch.cat([self.discounts, self.discounts.new_tensor([self.config.discounts[n]])])
        return n

    @torch.no_grad()
    def set_task_embedding(self, task, row: torch.Tensor) -> None:
        """Overwrite one task's embedding row."""
        if self.task_embedding is None:
            raise ValueError("a single-task model has no task embedding")
        self.task_embedding.weight[self.config.task_id(task)] = row.to(self.task_embedding.weight)

    # --- task handling ---------------------------------------------------------------------------------------------
    def task_tensor(self, task, like: torch.Tensor) -> torch.Tensor | None:
        """Normalise `task` (None / int / str / tensor / list) to a long tensor on `like`'s device, or None."""
        if task is None:
            if self.config.num_tasks > 1:
                raise ValueError(f"This is a {self.config.num_tasks}-task model: pass task= (a name or id).")
            return torch.zeros((), dtype=torch.long, device=like.device)
        if isinstance(task, torch.Tensor):  # checked once at the boundary (`inputs.task_ids`): no host sync here
            return task.to(device=like.device, dtype=torch.long)
        if isinstance(task, (list, tuple)):
            return torch.tensor([self.config.task_id(x) for x in task], dtype=torch.long, device=like.device)
        return torch.tensor(self.config.task_id(task), dtype=torch.long, device=like.device)

    def with_task(self, x: torch.Tensor, task) -> torch.Tensor:
        """Append the task embedding to x (..., d) -> (..., d + td); identity for single-task models."""
        if self.task_embedding is None:
            return x
        t = self.task_tensor(task, x)
        emb = self.task_embedding(t)
        return torch.cat([x, emb.expand(*x.shape[:-1], emb.shape[-1])], dim=-1)

    def action_mask(self, task, like: torch.Tensor) -> torch.Tensor:
        """Action mask rows for `task`: (..., A), broadcastable like the task tensor."""
        t = self.task_tensor(task, like) if self.config.num_tasks > 1 or task is not None else None
        return self.action_masks[0] if t is None else self.action_masks[t]

    def discount(self, task, like: torch.Tensor) -> torch.Tensor:
        """Per-task discount, shaped like the task tensor."""
        return self.discounts[self.task_tensor(task, like)]

    def za(self, z: torch.Tensor, a: torch.Tensor, task) -> torch.Tensor:
        """[z, task embedding, a]: the input of dynamics, reward, Q and energy networks (checks a's dim)."""
        self._check_action_dim(a)
        return torch.cat([self.with_task(z, task), a], dim=-1)

    def _check_action_dim(self, a: torch.Tensor) -> None:
        if a.shape[-1] != self.config.action_dim:
            raise ValueError(f"action has dim {a.shape[-1]}, this model expects {self.config.action_dim} "
                             "(pad task actions with zeros at the end).")

    # --- networks ----------------------------------------------------------------------------------------------------
    def encode(self, obs: torch.Tensor, task=None) -> torch.Tensor:
        """obs (..., O) -> latent z (..., L) (SimNorm groups each sum to 1)."""
        if obs.shape[-1] != self.config.obs_dim:
            raise ValueError(f"observation has dim {obs.shape[-1]}, this model expects {self.config.obs_dim} "
                             "(pad task observations with zeros at the end).")
        return self.encoder(self.with_task(obs, task))

    def next(self, z: torch.Tensor, a: torch.Tensor, task=None) -> torch.Tensor:
        """Latent dynamics: z (..., L), a (..., A) -> next z (..., L)."""
        return self.dynamics(self.za(z, a, task))

    def reward(self, z: torch.Tensor, a: torch.Tensor, task=None) -> torch.Tensor:
        """Reward logits (..., nb); decode with `two_hot_inv`."""
        return self.reward_head(self.za(z, a, task))

    def termination(self, z: torch.Tensor, task=None, unnormalized: bool = False) -> torch.Tensor:
        """Termination probability (or logit) (..., 1); episodic models only."""
        if self.termination_head is None:
            raise ValueError("This model has no termination head (config.episodic is False).")
        logit = self.termination_head(self.with_task(z, task))
        return logit if unnormalized else torch.sigmoid(logit)

    def pi(self, z: torch.Tensor, task=None, generator: torch.Generator | None = None) -> PolicyOutput:
        """Squashed-Gaussian policy prior: z (..., L) -> PolicyOutput with actions (..., A) in [-1, 1], padded
        action dims of the task set to 0."""
        cfg = self.config
        mean, raw = self.pi_head(self.with_task(z, task)).chunk(2, dim=-1)
        log_std = cfg.log_std_min + 0.5 * (cfg.log_std_max - cfg.log_std_min) * (torch.tanh(raw) + 1)
        eps = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
        mask = self.action_mask(task, z)
        mean, log_std, eps = mean * mask, log_std * mask, eps * mask
        size = mask.sum(-1, keepdim=True).expand(*mean.shape[:-1], 1)
        log_prob_g = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1, keepdim=True)
        action = torch.tanh(mean + eps * log_std.exp())
        log_prob = log_prob_g - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)
        entropy_scale = (log_prob_g * size) / (log_prob + 1e-8)
        return PolicyOutput(action=action, mean=torch.tanh(mean), log_std=log_std, log_prob=log_prob,
                            entropy=-log_prob, scaled_entropy=-log_prob * entropy_scale)

    def Q(self, z: torch.Tensor, a: torch.Tensor, task=None, return_type: str = "min", target: bool = False,
          detach: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Q-values. `all`: logits (num_q, ..., nb). `min` / `avg`: the min / mean of two randomly chosen heads,
        decoded to scalars (..., 1) (TD-MPC2's rule)."""
        if return_type not in ("all", "min", "avg"):
            raise ValueError(f"return_type must be 'all', 'min' or 'avg', got {return_type!r}")
        x = self.za(z, a, task)
        if return_type == "all":
            return self.Qs(x, target=target, detach=detach)
        heads = torch.randperm(self.config.num_q, generator=generator, device="cpu")[:2].to(z.device)
        q = two_hot_inv(self.Qs(x, heads=heads, target=target, detach=detach), self.config)
        return q.min(0).values if return_type == "min" else q.mean(0)

    def joint_forward(self, nets, z: torch.Tensor, a: torch.Tensor, task, repeats: int = 1) -> list[torch.Tensor]:
        """Run networks over the joint input [z, task embedding, a] (dynamics, reward, energy) without building it.

        Their first layers (NormedLinear over L + T + A columns) run as one GEMM of the stacked weights, split by
        column block: the z and task-embedding parts are computed once per start state and shared by its
        `repeats` rows, only the action part once per row. Equal to `net(self.za(z, a, task))` for each net, up
        to float rounding.

        z (B, L) shared by `repeats` consecutive rows of a (B * repeats, A) (a planner's candidates of one env), or
        z (N, L) with a (N, A); task: scalar or (B,), one per start state. Returns one output (N, out) per net.
        """
        self._check_action_dim(a)
        L, A = self.config.latent_dim, self.config.action_dim
        first = [net[0] for net in nets]
        w = torch.cat([f.weight for f in first]) if len(first) > 1 else first[0].weight
        shared = torch.cat([f.bias for f in first]) if len(first) > 1 else first[0].bias  # (M,) or (B, M)
        if self.task_embedding is not None:
            shared = shared + self.task_embedding(self.task_tensor(task, z)) @ w[:, L:-A].T
            w = torch.cat([w[:, :L], w[:, -A:]], dim=1)  # the [z | a] columns
        if repeats > 1 and z.shape[0] * repeats == a.shape[0]:  # z once per start state, a per row
            h = torch.addmm(shared, z, w[:, :L].T) if shared.dim() == 1 else shared + z @ w[:, :L].T
            h = torch.addmm(h.repeat_interleave(repeats, 0), a, w[:, L:].T)
        else:  # one row per z: a single GEMM over [z | a]
            if shared.dim() == 2 and repeats > 1:
                shared = shared.repeat_interleave(repeats, 0)
            x = torch.cat([z, a], dim=-1)
            h = torch.addmm(shared, x, w.T) if shared.dim() == 1 else shared + x @ w.T
        outs = []
        for net, part in zip(nets, h.split([f.out_features for f in first], dim=-1)):
            x = net[0].post(part)
            for layer in net[1:]:
                x = layer(x)
            outs.append(x)
        return outs

    # --- imagined returns --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def policy_rollout(self, z: torch.Tensor, task, horizon: int, generator=None) -> torch.Tensor:
        """Roll the policy prior (samples) through the dynamics: z (N, L) -> actions (H, N, A)."""
        actions = []
        for t in range(horizon):
            a = self.pi(z, task, generator=generator).action
            actions.append(a)
            if t < horizon - 1:
                z = self.next(z, a, task)
        return torch.stack(actions)

    @torch.no_grad()
    def estimate_value(self, z: torch.Tensor, actions: torch.Tensor, task, shaping=None, generator=None,
                       repeats: int = 1) -> torch.Tensor:
        """Imagined return of action sequences: z (B, L), actions (H, B * repeats, A), task (B,) or scalar ->
        (B * repeats,). Each z row starts `repeats` consecutive sequences (a planner's candidates of one env), so
        the parts of the first layers that depend on z_0 and the task only are computed once per row.

        G = sum_t gamma^t (1 - term_t) (r_t + bonus(F(x_t))) + gamma^H (1 - term_H) Q_avg(z_H, pi(z_H)).
        `shaping` (MBDPO's energy bonus) is a pair (F, bonus): F a network over the joint input
        x_t = [z_t, task embedding, a_t] of the pre-transition latent, bonus mapping its output (N, ·) to (N, 1).
        """
        N = actions.shape[1]
        rows = self.task_tensor(task, z)
        if rows.dim() == 1 and repeats > 1:
            rows = rows.repeat_interleave(repeats, 0)  # one task per sequence, for the networks over z alone
        gamma = self.discounts[rows]
        gamma = gamma.view(-1, 1) if gamma.dim() == 1 else gamma
        G = torch.zeros(N, 1, device=z.device, dtype=z.dtype)
        disc = torch.ones_like(G)
        alive = torch.ones_like(G)
        nets = [self.reward_head, self.dynamics] + ([shaping[0]] if shaping is not None else [])
        for t in range(actions.shape[0]):
            outs = self.joint_forward(nets, z, actions[t], task, repeats)  # z shared per start state at t = 0 only
            r = two_hot_inv(outs[0], self.config)
            if shaping is not None:
                r = r + shaping[1](outs[2])
            z = outs[1]
            G = G + disc * alive * r
            disc = disc * gamma
            if self.termination_head is not None:
                alive = alive * (self.termination(z, rows) <= 0.5).to(z.dtype)
        a = self.pi(z, rows, generator=generator).action
        G = G + disc * alive * self.Q(z, a, rows, return_type="avg", generator=generator)
        return G.squeeze(-1)

    def forward(self, obs: torch.Tensor, task=None) -> torch.Tensor:
        """Encode observations (the model's default entry point): obs (..., O) -> z (..., L)."""
        return self.encode(obs, task)


class MBDPODiffusionPolicy(MBDPOPreTrainedModel):
    """The MBDPO agent: a world model, the implicit energy F(z, a) and an optional learned score network, acted on
    by a planner (`config.planner`: diffusion / mppi / score / policy).

    The energy's running normalisation statistics (`energy_mean`, `energy_std`) are persistent buffers saved with
    the weights, so a reloaded policy shapes returns exactly as at training time.
    """

    #: modules a world-model-only checkpoint lacks entirely (loading it starts them fresh: F = 0, no score net)
    _optional_modules = ("energy", "score_net")

    def __init__(self, config: MBDPOConfig):
        super().__init__(config)
        L, A, td, M, H = config.latent_dim, config.action_dim, config.task_dim, config.mlp_dim, config.horizon
        self.world_model = MBDPOWorldModel(config)
        self.energy = mlp(L + A + td, 2 * [M], 1, zero_init_last=True)
        self.score_net = (mlp(L + td + H * A + config.time_embed_dim, 2 * [M], H * A)
                          if config.use_score_network else None)
        self.register_buffer("energy_mean", torch.zeros(()), persistent=True)
        self.register_buffer("energy_std", torch.ones(()), persistent=True)
        self._planner = None
        self._prev_mean: torch.Tensor | None = None  # (num_envs, H, A) warm start
        self._has_prev: torch.Tensor | None = None  # (num_envs,) bool
        self.post_init()

    # --- parameter layout ----------------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group: the world model's groups plus `energy` and `score` (`pi` has its own optimiser)."""
        groups = self.world_model.parameter_groups()
        groups["energy"] = list(self.energy.parameters())
        groups["score"] = list(self.score_net.parameters()) if self.score_net is not None else []
        return groups

    @torch.no_grad()
    def resize_inputs(self, obs_dim: int, action_dim: int) -> None:
        """Widen the padded dims in place (see `MBDPOWorldModel.resize_inputs`); the energy's [z, task, a] input
        and the score network's action-sequence slots (input and output) get zeros too."""
        cfg = self.config
        A, H, Ltd = cfg.action_dim, cfg.horizon, cfg.latent_dim + cfg.task_dim
        self.world_model.resize_inputs(obs_dim, action_dim)
        if action_dim > A:
            _widen_linear(self.energy[0], inputs=(Ltd + action_dim, torch.arange(Ltd + A)))
            if self.score_net is not None:  # input [z | emb | x (H, A) | t-embedding], output x (H, A)
                seq = torch.arange(H * A)
                seq = (seq // A) * action_dim + seq % A
                size_in = Ltd + H * action_dim + cfg.time_embed_dim
                temb = Ltd + H * action_dim + torch.arange(cfg.time_embed_dim)
                pos_in = torch.cat([torch.arange(Ltd), Ltd + seq, temb])
                _widen_linear(self.score_net[0], inputs=(size_in, pos_in))
                _widen_linear(self.score_net[-1], outputs=(H * action_dim, seq))
        self.config = self.world_model.config
        self._prev_mean = self._has_prev = self._planner = None

    @torch.no_grad()
    def add_task(self, name: str, obs_dim: int, action_dim: int, episode_length: int,
                 embedding: torch.Tensor | None = None) -> int:
        """Append a task in place (see `MBDPOWorldModel.add_task`); returns its task id."""
        self.resize_inputs(max(self.config.obs_dim, obs_dim), max(self.config.action_dim, action_dim))
        task_id = self.world_model.add_task(name, obs_dim, action_dim, episode_length, embedding)
        self.config = self.world_model.config
        return task_id

    # --- energy and score ----------------------------------------------------------------------------------------
    def energy_logits(self, z: torch.Tensor, a: torch.Tensor, task=None) -> torch.Tensor:
        """Implicit energy F: z (..., L), a (..., A) -> logit (..., 1); high = behaviour-like (z, a)."""
        return self.energy(self.world_model.za(z, a, task))

    def energy_bonus(self, z: torch.Tensor, a: torch.Tensor, task=None) -> torch.Tensor:
        """eta * clip((F - mean) / std, -clip, clip): the reward shaping used in planning. (..., 1)."""
        return self.energy_bonus_of_input(self.world_model.za(z, a, task))

    def energy_bonus_of_input(self, x: torch.Tensor) -> torch.Tensor:
        """`energy_bonus` from the joint input x = [z, task embedding, a] (..., L+T+A) -> (..., 1)."""
        return self.energy_bonus_of_energy(self.energy(x))

    def energy_bonus_of_energy(self, f: torch.Tensor) -> torch.Tensor:
        """`energy_bonus` from the energy logit F (..., 1) itself."""
        return self.config.energy_eta * self.normalize_energy(f)

    def normalized_energy(self, x: torch.Tensor) -> torch.Tensor:
        """F-tilde = clip((F - running mean) / running std, -clip, clip) of the joint input x (..., L+T+A)."""
        return self.normalize_energy(self.energy(x))

    def normalize_energy(self, f: torch.Tensor) -> torch.Tensor:
        """clip((F - running mean) / running std, -clip, clip) of energy logits F (..., 1)."""
        f = (f - self.energy_mean) / self.energy_std.clamp(min=1e-6)
        return f.clamp(-self.config.energy_clip, self.config.energy_clip)

    def score(self, z: torch.Tensor, x: torch.Tensor, t: torch.Tensor, task=None) -> torch.Tensor:
        """Learned score of the action-sequence distribution: z (N, L), x (N, H, A), t (N,) -> (N, H, A)."""
        if self.score_net is None:
            raise ValueError("This policy has no score network (config.use_score_network is False).")
        inp = torch.cat([self.world_model.with_task(z, task), x.flatten(-2),
                         timestep_embedding(t, self.config.time_embed_dim).to(z.dtype)], dim=-1)
        return self.score_net(inp).view_as(x)

    # --- the planning-model interface used by planners ---------------------------------------------------------------
    @torch.no_grad()
    def estimate_value(self, z, actions, task, generator=None, repeats=1):
        """Energy-shaped imagined returns (see `MBDPOWorldModel.estimate_value`): z (B, L), actions
        (H, B * repeats, A), task (B,) or scalar -> (B * repeats,)."""
        fn = self.__dict__.get("_compiled_value") or self._estimate_value
        return fn(z, actions, task, generator=generator, repeats=repeats)

    def _estimate_value(self, z, actions, task, generator=None, repeats=1):
        shaping = (self.energy, self.energy_bonus_of_energy) if self.config.energy_eta != 0 else None
        return self.world_model.estimate_value(z, actions, task, shaping=shaping, generator=generator,
                                               repeats=repeats)

    def compile_planning(self, enabled: bool = True) -> "MBDPODiffusionPolicy":
        """torch.compile the imagined-return evaluation, the planners' hot path (every candidate at every reverse
        step), with static shapes (one graph per batch shape: acting and evaluation compile once each)."""
        self.__dict__["_compiled_value"] = torch.compile(self._estimate_value, dynamic=False) if enabled else None
        return self

    def policy_rollout(self, z, task, horizon, generator=None):
        return self.world_model.policy_rollout(z, task, horizon, generator=generator)

    def action_mask(self, task, like):
        return self.world_model.action_mask(task, like)

    def pi(self, z, task=None, generator=None):
        return self.world_model.pi(z, task, generator=generator)

    # --- acting ------------------------------------------------------------------------------------------------------
    @property
    def planner(self):
        from .planners import make_planner

        cfg = self.config
        key = tuple(getattr(cfg, k) for k in PLANNER_FIELDS)
        if self._planner is None or self._planner_key != key:  # settings changed at run time: check, rebuild
            try:
                cfg.validate_planner()
            except ValueError as e:
                raise ValueError(f"planner settings: {e}") from None
            self._planner, self._planner_key = make_planner(cfg), key
        return self._planner

    def reset(self, env_ids=None) -> None:
        """Forget the warm-start plan of the given environments (all when None), e.g. at episode start."""
        if self._has_prev is None:
            return
        if env_ids is None:
            self._has_prev.zero_()
            return
        ids = torch.as_tensor(env_ids, dtype=torch.long).reshape(-1)
        n = self._has_prev.shape[0]
        if ids.numel() and (int(ids.min()) < -n or int(ids.max()) >= n):
            raise ValueError(f"reset: env ids {ids.tolist()} out of range for {n} environments")
        self._has_prev[ids.to(self._has_prev.device)] = False

    @torch.no_grad()
    def select_action(self, obs, task=None, eval_mode: bool = False, generator: torch.Generator | None = None):
        """Plan and return actions in [-1, 1] with the task's padded dims at 0.

        obs: (O,) or (num_envs, O) (a task's true dim is padded). task: name / id (shared) or one per env.
        Returns (A,) or (num_envs, A) as a tensor on the model device. Warm starts are kept per env index.
        `eval_mode=True` adds no exploration noise and, without a `generator`, samples with a fixed seed: the same
        observation and warm-start plan give the same action (`reset()` clears the warm start).
        """
        from .inputs import obs_batch, task_ids

        wm = self.world_model
        t = task_ids(task, self.config, self.device)
        obs, single = obs_batch(obs, t, self.config, self.device, next(self.parameters()).dtype)
        if eval_mode and generator is None:
            generator = torch.Generator(device=self.device).manual_seed(0)
        B = obs.shape[0]
        task_b = t.expand(B) if t.dim() == 0 else t
        if task_b.shape[0] != B:
            raise ValueError(f"got {task_b.shape[0]} task ids for {B} observations")
        self._ensure_warm_start(B)
        was_training = self.training
        self.eval()
        try:
            z = wm.encode(obs, task_b)
            action, mean = self.planner.plan(self, z, task_b, prev_mean=self._prev_mean, has_prev=self._has_prev,
                                             eval_mode=eval_mode, generator=generator)
        finally:
            self.train(was_training)
        if mean is not None:
            self._prev_mean.copy_(mean)
            self._has_prev.fill_(True)
        return action[0] if single else action

    @contextmanager
    def separate_plan_state(self):
        """Plan with a fresh warm-start state inside the block and restore the caller's afterwards (evaluation must
        neither see nor overwrite the training envs' warm starts, whatever the two batch sizes are)."""
        saved = (self._prev_mean, self._has_prev)
        self._prev_mean = self._has_prev = None
        try:
            yield self
        finally:
            self._prev_mean, self._has_prev = saved

    def refresh_discounts(self) -> None:
        """Rewrite the persistent per-task discount buffer from the config (after a discount_* change)."""
        d = self.world_model.discounts
        d.copy_(torch.tensor(self.config.discounts, dtype=d.dtype, device=d.device))

    def _ensure_warm_start(self, num_envs: int) -> None:
        H, A = self.config.horizon, self.config.action_dim
        dtype = next(self.parameters()).dtype  # a bf16 model plans in bf16
        if (self._prev_mean is None or self._prev_mean.shape[0] != num_envs or self._prev_mean.device != self.device
                or self._prev_mean.dtype != dtype):
            self._prev_mean = torch.zeros(num_envs, H, A, device=self.device, dtype=dtype)
            self._has_prev = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def forward(self, obs: torch.Tensor, task=None) -> torch.Tensor:
        """Deterministic action of the configured planner for a batch of observations (B, O) -> (B, A)."""
        return self.select_action(obs, task=task, eval_mode=True)


__all__ = [
    "MBDPOPreTrainedModel",
    "MBDPOWorldModel",
    "MBDPODiffusionPolicy",
    "QEnsemble",
    "SimNorm",
    "NormedLinear",
    "PolicyOutput",
    "mlp",
    "two_hot",
    "two_hot_inv",
    "soft_ce",
    "symlog",
    "symexp",
    "timestep_embedding",
    "action_masks_from_config",
]
