"""Configuration of the MBDPO world model and diffusion policy.

One `MBDPOConfig` describes everything a checkpoint needs to be rebuilt and to act: the task list (names, true
observation/action dims, episode lengths), the padded dims, the TD-MPC2 architecture, the loss coefficients and the
planner settings. Defaults are the paper's (MBDPO `cfgs/config.yaml`, TD-MPC2 `config.yaml`; architecture = preset 5).

`MBDPOConfig.from_preset(size, tasks=...)` reproduces TD-MPC2's `MODEL_SIZE` presets and its parser rules exactly,
including the mt30/mt80 quirks (task_dim 96 for mt80 and for sizes 1/317, else 64; latent 512 for mt30 at size 19),
so that official checkpoints fit.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# TD-MPC2 `common/__init__.py::MODEL_SIZE` (identical in MBDPO).
MODEL_SIZES: dict[int, dict[str, int]] = {
    1: dict(enc_dim=256, mlp_dim=384, latent_dim=128, num_enc_layers=2, num_q=2),
    5: dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5),
    19: dict(enc_dim=1024, mlp_dim=1024, latent_dim=768, num_enc_layers=3, num_q=5),
    48: dict(enc_dim=1792, mlp_dim=1792, latent_dim=768, num_enc_layers=4, num_q=5),
    317: dict(enc_dim=4096, mlp_dim=4096, latent_dim=1376, num_enc_layers=5, num_q=8),
}

PLANNERS = ("diffusion", "mppi", "score", "policy")


@strict
class MBDPOConfig(PreTrainedConfig):
    r"""Configuration for [`MBDPOWorldModel`] and [`MBDPODiffusionPolicy`].

    Task fields (one entry per task, in task-id order):
        tasks (`list[str]`): task names, e.g. `["walker-walk"]` or the 30 mt30 names.
        obs_dims / action_dims (`list[int]`): each task's true observation / action dims.
        episode_lengths (`list[int]`): agent steps per episode (after action repeat), used for the discount.
        obs_dim / action_dim (`int`, optional): padded dims; default the max over tasks. Padding goes at the end.
        task_set (`str`, optional): name of a standard set (`"mt30"`, `"mt80"`) the list came from.
        episodic (`bool`): adds TD-MPC2's termination head (single-task only, as upstream).

    Architecture (TD-MPC2): `num_enc_layers, enc_dim, mlp_dim, latent_dim, task_dim, num_q, dropout, simnorm_dim,
    num_bins, vmin, vmax, log_std_min, log_std_max`; MBDPO adds the implicit energy network F (always) and the
    optional learned score network (`use_score_network`, `time_embed_dim`).

    Losses: `consistency_coef, reward_coef, value_coef, termination_coef, energy_coef, score_coef, rho,
    entropy_coef, lr, enc_lr_scale, pi_lr, grad_clip_norm, tau, discount_denom/min/max`, energy contrastive settings
    (`energy_momentum, energy_clip, energy_neg_noise`), `score_num_samples` (Monte-Carlo score target) and
    `energy_pi_coef` (weight of the normalised energy of the policy prior's actions in its loss; 0, the paper's
    choice, anchors only through planning).

    Planner: `planner` is one of `"diffusion"` (MBDPO), `"mppi"` (TD-MPC2), `"score"` (learned score network only,
    no rollouts) or `"policy"` (the policy prior alone). `horizon, num_samples, num_elites, num_pi_trajs,
    temperature`; diffusion: `diffusion_steps, diffusion_beta0, diffusion_betaT, action_noise, energy_eta`;
    MPPI: `mppi_iterations, min_std, max_std`.
    """

    model_type = "mbdpo"

    # --- tasks -------------------------------------------------------------------------------------------------
    tasks: list[str] | None = None
    obs_dims: list[int] | None = None
    action_dims: list[int] | None = None
    episode_lengths: list[int] | None = None
    obs_dim: int | None = None
    action_dim: int | None = None
    task_set: str | None = None
    episodic: bool = False

    # --- architecture (defaults: TD-MPC2 preset 5) ---------------------------------------------------------------
    model_size: int | None = None
    num_enc_layers: int = 2
    enc_dim: int = 256
    mlp_dim: int = 512
    latent_dim: int = 512
    task_dim: int | None = None
    num_q: int = 5
    dropout: float = 0.01
    simnorm_dim: int = 8
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    use_score_network: bool = False
    time_embed_dim: int = 64

    # --- losses and optimisation ---------------------------------------------------------------------------------
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    termination_coef: float = 1.0
    energy_coef: float = 1.0
    score_coef: float = 1.0
    rho: float = 0.5
    entropy_coef: float = 1e-4
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    pi_lr: float = 3e-4
    grad_clip_norm: float = 20.0
    tau: float = 0.01
    discount_denom: float = 5.0
    discount_min: float = 0.95
    discount_max: float = 0.995
    energy_momentum: float = 0.99
    energy_clip: float = 5.0
    energy_neg_noise: float = 0.5
    score_num_samples: int = 64
    energy_pi_coef: float = 0.0

    # --- planner -------------------------------------------------------------------------------------------------
    planner: str = "diffusion"
    horizon: int = 3
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    temperature: float = 0.5
    diffusion_steps: int = 20
    diffusion_beta0: float = 1e-4
    diffusion_betaT: float = 1e-2
    action_noise: float = 0.05
    energy_eta: float = 0.01
    mppi_iterations: int = 6
    min_std: float = 0.05
    max_std: float = 2.0

    def __post_init__(self, **kwargs):
        if self.tasks is None:
            self.tasks = ["walker-walk"]
        self.tasks = list(self.tasks)
        n = len(self.tasks)
        if self.obs_dims is None:
            self.obs_dims = [24] * n
        if self.action_dims is None:
            self.action_dims = [6] * n
        if self.episode_lengths is None:
            self.episode_lengths = [500] * n
        self.obs_dims, self.action_dims = list(self.obs_dims), list(self.action_dims)
        self.episode_lengths = list(self.episode_lengths)
        if self.obs_dim is None and self.obs_dims:
            self.obs_dim = max(self.obs_dims)
        if self.action_dim is None and self.action_dims:
            self.action_dim = max(self.action_dims)
        if self.task_dim is None:
            self.task_dim = 0 if n == 1 else 96
        super().__post_init__(**kwargs)

    # --- validation (run by @strict at construction) -------------------------------------------------------------
    def validate_tasks(self):
        n = len(self.tasks)
        if n == 0:
            raise ValueError("MBDPOConfig.tasks is empty: give at least one task name.")
        for name, values in (("obs_dims", self.obs_dims), ("action_dims", self.action_dims),
                             ("episode_lengths", self.episode_lengths)):
            if len(values) != n:
                raise ValueError(f"MBDPOConfig.{name} has {len(values)} entries but there are {n} tasks.")
            if any(int(v) <= 0 for v in values):
                raise ValueError(f"MBDPOConfig.{name} must be positive, got {values}.")
        if len(set(self.tasks)) != n:
            dup = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
            raise ValueError(f"MBDPOConfig.tasks has duplicate names: {dup}.")
        if self.obs_dim < max(self.obs_dims):
            raise ValueError(f"obs_dim={self.obs_dim} is smaller than the largest task obs dim {max(self.obs_dims)}.")
        if self.action_dim < max(self.action_dims):
            raise ValueError(
                f"action_dim={self.action_dim} is smaller than the largest task action dim {max(self.action_dims)}.")
        if n > 1 and self.task_dim <= 0:
            raise ValueError(f"{n} tasks need task embeddings: task_dim must be > 0 (got {self.task_dim}).")
        if self.episodic and n > 1:
            raise ValueError("episodic=True (termination head) is single-task only, as in TD-MPC2.")

    def validate_architecture(self):
        for name in ("num_enc_layers", "enc_dim", "mlp_dim", "latent_dim", "num_q", "simnorm_dim", "num_bins",
                     "task_dim", "horizon", "num_samples", "num_elites", "num_pi_trajs", "diffusion_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"MBDPOConfig.{name} must be an int, got {value!r}.")
        for name in ("num_enc_layers", "enc_dim", "mlp_dim", "latent_dim", "num_q", "simnorm_dim", "time_embed_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MBDPOConfig.{name} must be positive, got {getattr(self, name)}.")
        if self.latent_dim % self.simnorm_dim != 0:
            raise ValueError(
                f"latent_dim={self.latent_dim} is not divisible by simnorm_dim={self.simnorm_dim} "
                "(SimNorm splits the latent into groups of simnorm_dim).")
        if self.num_q < 2:
            raise ValueError(f"num_q={self.num_q}: the TD target and planner use 2 Q heads, so num_q must be >= 2.")
        if self.num_bins < 2:
            raise ValueError(f"num_bins={self.num_bins}: two-hot regression needs at least 2 bins.")
        if not self.vmin < self.vmax:
            raise ValueError(f"vmin={self.vmin} must be smaller than vmax={self.vmax}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1).")
        if self.task_dim < 0:
            raise ValueError(f"task_dim={self.task_dim} must be >= 0.")

    def validate_planner(self):
        if self.planner not in PLANNERS:
            raise ValueError(f"planner={self.planner!r} is not one of {PLANNERS}.")
        if self.horizon < 1:
            raise ValueError(f"horizon={self.horizon} must be >= 1.")
        if self.horizon >= min(self.episode_lengths):
            raise ValueError(
                f"horizon={self.horizon} is not shorter than the shortest episode ({min(self.episode_lengths)} steps).")
        if self.num_samples < 1 or not 0 <= self.num_pi_trajs <= self.num_samples:
            raise ValueError(f"need 0 <= num_pi_trajs ({self.num_pi_trajs}) <= num_samples ({self.num_samples}).")
        if not 1 <= self.num_elites <= self.num_samples:
            raise ValueError(f"need 1 <= num_elites ({self.num_elites}) <= num_samples ({self.num_samples}).")
        if self.diffusion_steps < 2:
            raise ValueError(f"diffusion_steps={self.diffusion_steps} must be >= 2.")
        if not 0.0 < self.diffusion_beta0 <= self.diffusion_betaT < 1.0:
            raise ValueError(
                f"need 0 < diffusion_beta0 ({self.diffusion_beta0}) <= diffusion_betaT ({self.diffusion_betaT}) < 1.")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0.")
        if self.mppi_iterations < 1 or not 0 < self.min_std <= self.max_std:
            raise ValueError("need mppi_iterations >= 1 and 0 < min_std <= max_std.")
        if self.planner == "score" and not self.use_score_network:
            raise ValueError("planner='score' needs use_score_network=True (there is no score network to use).")

    # --- derived quantities --------------------------------------------------------------------------------------
    #: fields that fix tensor shapes or module structure: a loaded checkpoint's values cannot be overridden (the
    #: task lists and padded dims change only through the model's `add_task` / `resize_inputs`)
    ARCHITECTURE_FIELDS = frozenset({
        "tasks", "obs_dims", "action_dims", "episode_lengths", "obs_dim", "action_dim", "task_set", "episodic",
        "model_size", "num_enc_layers", "enc_dim", "mlp_dim", "latent_dim", "task_dim", "num_q", "dropout",
        "simnorm_dim", "num_bins", "vmin", "vmax", "log_std_min", "log_std_max", "use_score_network",
        "time_embed_dim"})

    def replace(self, **changes: Any) -> "MBDPOConfig":
        """A new, validated config with `changes` applied (this one is not modified)."""
        d = self.to_dict()
        for k in ("transformers_version", "architectures", "_name_or_path", "_commit_hash"):
            d.pop(k, None)
        d.update(changes)
        try:
            return type(self).from_dict(d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"invalid config ({', '.join(sorted(changes)) or 'copy'}): {e}") from e
        except Exception as e:  # noqa: BLE001 - huggingface_hub's strict-dataclass validation errors
            if type(e).__name__.startswith("StrictDataclass"):
                raise ValueError(f"invalid config ({', '.join(sorted(changes)) or 'copy'}): {e}") from e
            raise

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def multitask(self) -> bool:
        return self.task_dim > 0

    @property
    def bin_size(self) -> float:
        return (self.vmax - self.vmin) / (self.num_bins - 1)

    @property
    def discounts(self) -> list[float]:
        """Per-task discount, TD-MPC2's heuristic: clip((L/denom - 1) / (L/denom), min, max) (500 steps -> 0.99)."""
        out = []
        for length in self.episode_lengths:
            frac = length / self.discount_denom
            out.append(float(min(max((frac - 1) / frac, self.discount_min), self.discount_max)))
        return out

    def task_id(self, task: int | str) -> int:
        """Task index from a name or an index; a clear error for an unknown one."""
        if isinstance(task, str):
            if task not in self.tasks:
                raise ValueError(f"Unknown task {task!r}; this model knows {self.tasks}.")
            return self.tasks.index(task)
        task = int(task)
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"Task id {task} out of range: this model has {self.num_tasks} tasks {self.tasks}.")
        return task

    # --- constructors --------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, size: int, tasks: str | list[str] = "walker-walk", **overrides: Any) -> "MBDPOConfig":
        """TD-MPC2 preset `size` (1, 5, 19, 48, 317) for a task, a task list, or a set name ("mt30", "mt80").

        Follows TD-MPC2's parser: task_dim is 0 for one task, else 96 for mt80 or sizes 1/317 and 64 otherwise; the
        size-19 latent is 512 for mt30. Padded dims: mt30 pads to obs 24 / action 6, mt80 to obs 39 / action 6.
        """
        if size not in MODEL_SIZES:
            raise ValueError(f"Unknown model size {size}; presets are {sorted(MODEL_SIZES)}.")
        task_fields = task_fields_for(tasks)
        arch = dict(MODEL_SIZES[size])
        set_name = task_fields.get("task_set")
        if len(task_fields["tasks"]) == 1:
            arch["task_dim"] = 0
        else:
            arch["task_dim"] = 96 if (set_name == "mt80" or size in (1, 317)) else 64
        if size == 19 and set_name == "mt30":
            arch["latent_dim"] = 512
        return cls(model_size=size, **{**task_fields, **arch, **overrides})

    @classmethod
    def from_env(cls, env: Any, **overrides: Any) -> "MBDPOConfig":
        """Config whose task fields come from an mbdpo_hub environment (single- or multi-task, or a vector env)."""
        fields = {a: list(_env_attr(env, a)) for a in ("tasks", "obs_dims", "action_dims", "episode_lengths")}
        return cls(**{**fields, **overrides})


def _env_attr(env: Any, name: str):
    for obj in (env, getattr(env, "unwrapped", None)):
        if obj is not None and hasattr(obj, name):
            return getattr(obj, name)
    if hasattr(env, "get_wrapper_attr"):
        return env.get_wrapper_attr(name)
    if hasattr(env, "get_attr"):  # vector env: every sub-env has the same task list
        return env.get_attr(name)[0]
    raise AttributeError(f"{type(env).__name__} does not expose {name!r}; build the config from task names instead.")


def task_fields_for(tasks: str | list[str]) -> dict[str, Any]:
    """Task list, per-task dims and episode lengths (and padded dims for the standard sets) from names."""
    from .envs.tasks import list_tasks, task_spec

    set_name = None
    if isinstance(tasks, str):
        if tasks in ("mt30", "mt80"):
            set_name, names = tasks, list_tasks(tasks)
        else:
            names = [tasks]
    else:
        names = list(tasks)
    specs = [task_spec(n) for n in names]
    fields: dict[str, Any] = dict(
        tasks=names,
        obs_dims=[s.obs_dim for s in specs],
        action_dims=[s.action_dim for s in specs],
        episode_lengths=[s.episode_length for s in specs],
        task_set=set_name,
    )
    if set_name == "mt80":  # TD-MPC2 pads mt80 to the Meta-World obs dim
        fields["obs_dim"], fields["action_dim"] = 39, 6
    return fields


__all__ = ["MBDPOConfig", "MODEL_SIZES", "PLANNERS"]
