"""The online training loop shared by the train / finetune / collect recipes, with atomic checkpoints and resume.

    cfg = load_run_config("recipes/configs/online.yaml", ["task=cartpole-balance", "steps=600"])
    OnlineTrainer(cfg).run()

A run folder holds: `checkpoints/step_XXXXXXXX/` (the last `keep_checkpoints` of them) and `checkpoints/latest`
(a one-line pointer, replaced atomically), and at the end the final model (`config.json` + `model.safetensors`),
`train_config.yaml`, `train.csv`, `eval.csv`, `learning_curve.png`, `eval_video.mp4`, `eval_results.json` and a
model card `README.md`. Killed at any moment, the same command resumes from the last checkpoint.

Checkpoints are written by us rather than by `accelerator.save_state`: accelerate re-loads custom objects with
`torch.load(weights_only=False)` (arbitrary unpickling); here the model and replay buffer are safetensors, the
optimiser states load with `weights_only=True`, and counters/RNG states are JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from .configuration_mbdpo import MBDPOConfig
from .learner import PARAM_GROUPS, MBDPOLearner
from .modeling_mbdpo import MBDPODiffusionPolicy


@dataclass
class RunConfig:
    """Everything about a run that is not the model: the loop, evaluation, checkpointing and outputs.

    Model fields (any `MBDPOConfig` field, e.g. `planner=mppi num_samples=256`) go to `model`.
    """

    task: str = "cartpole-balance"
    steps: int = 20_000  # environment steps (summed over num_envs)
    seed: int = 1
    num_envs: int = 1
    episode_length: int | None = None  # override the task's episode length (smoke tests); default: the task's
    model_size: int = 1
    seed_steps: int | None = None  # random-action steps before planning; default max(1000, 5 x episode length)
    seed_updates: int | None = None  # burst of updates at the end of the seed phase; default seed_steps
    utd: float = 1.0  # updates per environment step
    batch_size: int = 256
    buffer_size: int = 1_000_000
    eval_freq: int = 5_000
    eval_episodes: int = 10
    checkpoint_freq: int = 5_000
    keep_checkpoints: int = 2
    output_dir: str = "runs/online"
    save_video: bool = True
    video_size: int = 240
    mixed_precision: str = "no"  # "no" | "bf16"
    log_with: str | None = "tensorboard"
    resume: bool = True
    progress: bool = True
    push_to_hub: bool = False
    hub_repo_id: str | None = None
    # fine-tuning (used by recipes/finetune.py; harmless defaults for training from scratch)
    mode: str = "scratch"  # "scratch" | "online" | "offline-to-online"
    checkpoint: str | None = None
    revision: str | None = None
    source_task: str | None = None  # the checkpoint task whose embedding row starts the new task (task_init=source)
    task_init: str = "auto"  # auto | own | source | nearest | mean (mbdpo_hub.finetune.TASK_INITS)
    freeze: list[str] = field(default_factory=list)
    lr_scales: dict[str, float] = field(default_factory=dict)
    offline_dataset: str | None = None
    offline_ratio: float = 0.5
    eval_old_tasks: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        from .envs.tasks import check_task_name, task_spec

        check_task_name(self.task)
        for name in ("steps", "num_envs", "batch_size", "buffer_size", "eval_episodes", "keep_checkpoints"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_freq", "checkpoint_freq"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.utd < 0:
            raise ValueError(f"utd must be >= 0, got {self.utd}")
        if self.mode not in ("scratch", "online", "offline-to-online"):
            raise ValueError(f"mode must be scratch, online or offline-to-online, got {self.mode!r}")
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if not 0.0 <= self.offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must be in [0, 1], got {self.offline_ratio}")
        unknown = set(self.freeze) - set(PARAM_GROUPS)
        if unknown:
            raise ValueError(f"freeze: unknown parameter groups {sorted(unknown)}; known: {list(PARAM_GROUPS)}")
        horizon = int(self.model.get("horizon", MBDPOConfig().horizon))
        ep_len = self.episode_length or task_spec(self.task).episode_length
        if self.episode_length is not None and self.episode_length <= 0:
            raise ValueError(f"episode_length must be positive, got {self.episode_length}")
        if horizon >= ep_len:
            raise ValueError(f"horizon={horizon} is not shorter than {self.task}'s episodes ({ep_len} steps)")
        bad_model = set(self.model) - {f.name for f in dataclasses.fields(MBDPOConfig)}
        if bad_model:
            raise ValueError(f"unknown model fields {sorted(bad_model)}")


# columns of train.csv (a fixed set, so rows before the first update line up with later ones)
TRAIN_METRICS = ("total_loss", "consistency_loss", "reward_loss", "value_loss", "termination_loss", "energy_loss",
                 "energy_accuracy", "score_loss", "pi_loss", "pi_entropy", "pi_scale", "grad_norm")
RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
MODEL_FIELDS = {f.name for f in dataclasses.fields(MBDPOConfig)}


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`key=value` strings -> dict, values parsed as YAML (numbers, bools, lists: `freeze=[encoder,dynamics]`)."""
    out = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        out[key] = yaml.safe_load(value) if value != "" else None
    return out


def read_config_layers(path: str | os.PathLike | None, overrides: list[str] | dict | None
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """YAML file + `key=value` overrides -> (merged top-level keys, merged `model:` section). Shared by the train,
    collect and pretrain config loaders, which then route each key to their own dataclass."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a YAML mapping")
    over = dict(overrides) if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    model = dict(data.pop("model", None) or {})
    model.update(over.pop("model", None) or {})
    return {**data, **over}, model


def load_dataclass_config(cls, path: str | os.PathLike | None, overrides: list[str] | dict | None, kind: str):
    """A run-like dataclass (`cls` has a `model` dict field and `validate()`) from a YAML file plus `key=value`
    overrides. Keys that are `cls` fields go to it, MBDPOConfig fields (at top level or under `model:`) go to
    `model`, and unknown keys are an error naming them."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"model"}
    merged, model = read_config_layers(path, overrides)
    kwargs = {}
    for key, value in merged.items():
        if key in fields:
            kwargs[key] = value
        elif key in MODEL_FIELDS:
            model[key] = value
        else:
            raise ValueError(f"unknown config key {key!r}: not a {kind} field ({sorted(fields)}) nor an "
                             f"MBDPOConfig field")
    cfg = cls(**kwargs, model=model)
    cfg.validate()
    return cfg


def load_run_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """A RunConfig from a YAML file plus `key=value` overrides (see `load_dataclass_config`)."""
    return load_dataclass_config(RunConfig, path, overrides, "run")


def dump_run_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


# ---------------------------------------------------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return dict(python=random.getstate()[1], python_pos=random.getstate()[2],
                numpy=[np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
                torch=torch.get_rng_state().tolist())


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def pad_to(x: np.ndarray, dim: int) -> np.ndarray:
    """Zero-pad the last axis to `dim` (multi-task models read padded observations / emit padded actions)."""
    if x.shape[-1] == dim:
        return x
    if x.shape[-1] > dim:
        raise ValueError(f"cannot pad an array of dim {x.shape[-1]} to the smaller {dim}")
    return np.concatenate([x, np.zeros((*x.shape[:-1], dim - x.shape[-1]), dtype=x.dtype)], axis=-1)


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint folders (shared by the online trainer and offline pretraining)
# ---------------------------------------------------------------------------------------------------------------------


def latest_checkpoint(root: Path) -> Path | None:
    """The folder named by `root/latest`, if it is complete (has `state.json`)."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def write_checkpoint(root: Path, name: str, policy, learner, state: dict, keep: int,
                     extra: Callable[[Path], None] | None = None) -> Path:
    """Write `root/name` atomically: model (safetensors), learner state (`torch.save`, read back with
    `weights_only=True`), `state.json` (+ `extra(tmp)`) go to a temp folder renamed into place; then `latest` is
    replaced atomically and all but the newest `keep` step folders are removed. A crash at any point leaves the
    previous `latest` intact."""
    root = Path(root)
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp / "model")
    torch.save(learner.state_dict(), tmp / "learner.pt")
    if extra is not None:
        extra(tmp)
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path, policy, learner) -> dict:
    """Load a `write_checkpoint` folder into policy and learner (strictly: every tensor must match); returns the
    saved state dict."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "model" / "model.safetensors"))
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    learner.load_state_dict(torch.load(path / "learner.pt", weights_only=True, map_location="cpu"))
    return json.loads((path / "state.json").read_text())


# ---------------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(policy: MBDPODiffusionPolicy, task: str, episodes: int = 10, seed: int = 0,
             planner: str | None = None, video_path: str | os.PathLike | None = None, video_size: int = 240,
             episode_length: int | None = None) -> dict[str, Any]:
    """Deterministic evaluation (eval_mode=True): `episodes` episodes run side by side in a vector env, planning
    batched over them. Returns mean/std return (and success where the env reports it). With `video_path`, one more
    episode is rendered and written there. The caller's warm-start plans are neither read nor overwritten."""
    from .envs import make_vec_env

    cfg = policy.config
    task_id = cfg.task_id(task)
    old_planner = cfg.planner
    if planner is not None:
        cfg.planner = planner
    env_kw = {} if episode_length is None else dict(episode_length=episode_length)
    envs = make_vec_env(task, episodes, seed=seed, **env_kw)
    try:
        with policy.separate_plan_state():
            obs, _ = envs.reset(seed=seed)
            returns = np.zeros(episodes)
            success = np.zeros(episodes)
            done = np.zeros(episodes, dtype=bool)
            A_env = envs.single_action_space.shape[0]
            while not done.all():
                action = policy.select_action(pad_to(obs.astype(np.float32), cfg.obs_dim), task=task_id,
                                              eval_mode=True)
                obs, reward, term, trunc, info = envs.step(action[:, :A_env].cpu().numpy())
                returns += reward * ~done
                if "success" in info:
                    success = np.where(done, success, np.asarray(info["success"], dtype=float))
                done |= term | trunc
        result = dict(task=task, episodes=episodes, mean_return=float(returns.mean()),
                      std_return=float(returns.std()), returns=returns.tolist(), planner=cfg.planner,
                      mean_success=float(success.mean()))
        if video_path is not None:
            result["video"] = str(record_video(policy, task, video_path, seed=seed + 10_000, size=video_size,
                                               episode_length=episode_length))
        return result
    finally:
        envs.close()
        cfg.planner = old_planner


@torch.no_grad()
def record_video(policy: MBDPODiffusionPolicy, task: str, path, seed: int = 0, size: int = 240,
                 episode_length: int | None = None) -> Path:
    """Render one deterministic episode to `path` (mp4); the caller's warm-start plans are left untouched."""
    from .envs import make_env, record_episode_video

    cfg = policy.config
    env_kw = {} if episode_length is None else dict(episode_length=episode_length)
    env = make_env(task, seed=seed, render_mode="rgb_array", render_width=size, render_height=size, **env_kw)
    try:
        with policy.separate_plan_state():
            obs, _ = env.reset(seed=seed)
            frames = [env.render()]
            done = False
            while not done:
                a = policy.select_action(pad_to(obs.astype(np.float32), cfg.obs_dim), task=cfg.task_id(task),
                                         eval_mode=True)
                obs, _, term, trunc, _ = env.step(a[: env.action_space.shape[0]].cpu().numpy())
                frames.append(env.render())
                done = term or trunc
    finally:
        env.close()
    return Path(record_episode_video(frames, path, fps=30))


# ---------------------------------------------------------------------------------------------------------------------
# the online trainer
# ---------------------------------------------------------------------------------------------------------------------


class OnlineTrainer:
    """Online MBDPO on one task with `num_envs` vectorised environments.

    `policy_factory(run_cfg) -> MBDPODiffusionPolicy` builds the initial model (default: a fresh `model_size`
    preset for the task); `offline_buffer` (a ReplayBuffer) is mixed into every batch at `offline_ratio` in
    offline-to-online mode. Modes: "scratch" (random seed phase then a burst of updates), "online" and
    "offline-to-online" (no seed phase: plan from the first step, update from the first stored episode).
    """

    def __init__(self, cfg: RunConfig, policy_factory: Callable[[RunConfig], MBDPODiffusionPolicy] | None = None,
                 offline_buffer=None, card_extra: dict | None = None, command: str | None = None):
        self.cfg = cfg
        self.policy_factory = policy_factory or self.fresh_policy
        self.offline_buffer = offline_buffer
        self.card_extra = card_extra or {}
        self.command = command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"

    # --- building ------------------------------------------------------------------------------------------------
    @staticmethod
    def fresh_policy(cfg: RunConfig) -> MBDPODiffusionPolicy:
        config = MBDPOConfig.from_preset(cfg.model_size, cfg.task, **cfg.model)
        return MBDPODiffusionPolicy(config)

    def setup(self) -> None:
        from accelerate import Accelerator

        from .buffer import ReplayBuffer
        from .envs import make_vec_env, task_spec

        cfg = self.cfg
        log_with = cfg.log_with if cfg.log_with not in (None, "none", "") else None
        if log_with == "tensorboard":
            try:
                import tensorboard  # noqa: F401  (accelerate's tracker needs it)
            except ImportError:
                log_with = None
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=log_with,
                                       project_dir=str(self.out),
                                       mixed_precision=cfg.mixed_precision if cfg.mixed_precision != "no" else "no")
        acc = self.accelerator
        set_seed(cfg.seed + acc.process_index)
        self.policy = self.policy_factory(cfg).to(acc.device)
        pcfg = self.policy.config
        self.task_id = pcfg.task_id(cfg.task)
        reduce_fn = (lambda x: acc.reduce(x, "mean")) if acc.num_processes > 1 else None
        self.learner = MBDPOLearner(self.policy, freeze=cfg.freeze, lr_scales=cfg.lr_scales, reduce_fn=reduce_fn,
                                    mixed_precision=cfg.mixed_precision)
        spec = task_spec(cfg.task)
        self.episode_length = cfg.episode_length or spec.episode_length
        # a whole run fits: every episode stores one entry more than its steps (the reset observation)
        capacity = cfg.steps + (cfg.steps // self.episode_length + 2) * cfg.num_envs + 1
        self.buffer = ReplayBuffer(min(cfg.buffer_size, capacity), pcfg.obs_dim, pcfg.action_dim, pcfg.horizon,
                                   cfg.batch_size, seed=cfg.seed + acc.process_index)
        self.env_kw = {} if cfg.episode_length is None else dict(episode_length=cfg.episode_length)
        self.seed_steps = 0 if cfg.mode != "scratch" else (
            cfg.seed_steps if cfg.seed_steps is not None else max(1000, 5 * self.episode_length))
        self.seed_updates = cfg.seed_updates if cfg.seed_updates is not None else self.seed_steps
        self.envs = make_vec_env(cfg.task, cfg.num_envs, seed=cfg.seed + 1000 * acc.process_index, **self.env_kw)
        self.A_env = self.envs.single_action_space.shape[0]
        self.step = 0
        self.episode = 0
        self.update_debt = 0.0
        self.burst_done = False
        self.next_eval = 0
        self.next_ckpt = cfg.checkpoint_freq if cfg.checkpoint_freq > 0 else math.inf
        self.elapsed = 0.0
        self.last_return = float("nan")
        self.metrics_acc: dict[str, list[float]] = {}
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "train_config.yaml", dump_run_config(cfg))
        if log_with is not None:
            acc.init_trackers("mbdpo", config={k: v for k, v in dataclasses.asdict(cfg).items()
                                               if isinstance(v, (int, float, str, bool))})

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.ckpt_root)

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        name = f"step_{self.step:09d}"
        if acc.is_main_process:
            state = dict(step=self.step, episode=self.episode, update_debt=self.update_debt,
                         burst_done=self.burst_done, next_eval=self.next_eval, next_ckpt=self.next_ckpt,
                         elapsed=self.elapsed, last_return=self.last_return, rng=rng_state())
            write_checkpoint(self.ckpt_root, name, self.policy, self.learner, state, self.cfg.keep_checkpoints,
                             extra=lambda tmp: self.buffer.save(tmp / "replay_buffer.safetensors"))
        acc.wait_for_everyone()
        return self.ckpt_root / name

    def load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint(path, self.policy, self.learner)
        self.buffer.load(path / "replay_buffer.safetensors")
        for key in ("step", "episode", "update_debt", "burst_done", "next_eval", "next_ckpt", "elapsed",
                    "last_return"):
            setattr(self, key, state[key])
        if state.get("next_ckpt") is None:
            self.next_ckpt = math.inf
        set_rng_state(state["rng"])
        self.policy.reset()

    # --- logging -------------------------------------------------------------------------------------------------
    def append_csv(self, name: str, row: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        path = self.out / name
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def truncate_csvs(self) -> None:
        """After a resume, drop rows logged after the checkpoint (they will be produced again)."""
        for name in ("train.csv", "eval.csv"):
            path = self.out / name
            if not path.exists():
                continue
            with path.open() as f:
                rows = list(csv.DictReader(f))
            if not rows:
                continue
            keep = [r for r in rows if int(float(r["step"])) <= self.step]
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(keep)

    # --- the loop --------------------------------------------------------------------------------------------------
    def act(self, obs: np.ndarray) -> np.ndarray:
        pcfg = self.policy.config
        if self.step < self.seed_steps:
            a = np.random.uniform(-1, 1, size=(obs.shape[0], self.A_env)).astype(np.float32)
            return a
        with self.autocast():
            a = self.policy.select_action(pad_to(obs.astype(np.float32), pcfg.obs_dim), task=self.task_id,
                                          eval_mode=False)
        return a[:, : self.A_env].float().cpu().numpy()

    def autocast(self):
        if self.cfg.mixed_precision == "bf16":
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16)
        from contextlib import nullcontext

        return nullcontext()

    def sample_batch(self) -> dict:
        if self.offline_buffer is not None and self.cfg.mode == "offline-to-online":
            from .buffer import sample_mixed

            if self.buffer.num_windows == 0:  # before the first online episode ends: offline data only
                return self.offline_buffer.sample(self.cfg.batch_size)

            return sample_mixed([self.offline_buffer, self.buffer],
                                [self.cfg.offline_ratio, 1 - self.cfg.offline_ratio], self.cfg.batch_size)
        return self.buffer.sample()

    def can_update(self) -> bool:
        if self.buffer.num_windows > 0:
            return True
        return self.offline_buffer is not None and self.cfg.mode == "offline-to-online"

    def do_updates(self, n: int) -> None:
        dev = self.accelerator.device
        for _ in range(n):
            batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in self.sample_batch().items()}
            if self.policy.config.num_tasks == 1:
                batch["task"] = None
            metrics = self.learner.update(batch)  # bf16 autocast around its forward passes only
            for k, v in metrics.items():
                self.metrics_acc.setdefault(k, []).append(v)

    def run_eval(self) -> dict:
        cfg = self.cfg
        res = evaluate(self.policy, cfg.task, cfg.eval_episodes, seed=cfg.seed + 777,
                       episode_length=cfg.episode_length)
        row = dict(step=self.step, episode=self.episode, task=cfg.task, mean_return=res["mean_return"],
                   std_return=res["std_return"], episodes=cfg.eval_episodes, elapsed_s=round(self.elapsed, 1))
        self.append_csv("eval.csv", row)
        for old in cfg.eval_old_tasks:
            r = evaluate(self.policy, old, cfg.eval_episodes, seed=cfg.seed + 777, episode_length=cfg.episode_length)
            self.append_csv("eval_old_tasks.csv", dict(step=self.step, task=old, mean_return=r["mean_return"],
                                                       std_return=r["std_return"]))
        self.log({"eval/mean_return": res["mean_return"]})
        return res

    def log(self, values: dict) -> None:
        if self.accelerator.trackers:
            self.accelerator.log(values, step=self.step)

    def run(self) -> dict:
        self.setup()
        cfg, acc = self.cfg, self.accelerator
        ckpt = self.latest_checkpoint() if cfg.resume else None
        if ckpt is not None:
            self.load_checkpoint(ckpt)
            self.truncate_csvs()
            acc.print(f"resumed from {ckpt} (step {self.step})")
        N = cfg.num_envs
        obs, _ = self.envs.reset(seed=cfg.seed + 7919 * (self.episode + 1) + 1000 * acc.process_index)
        pcfg = self.policy.config
        ep_obs = [[pad_to(obs[i].astype(np.float32), pcfg.obs_dim)] for i in range(N)]
        ep_act, ep_rew, ep_term = [[] for _ in range(N)], [[] for _ in range(N)], [[] for _ in range(N)]
        bar = None
        if cfg.progress and acc.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", desc=f"{cfg.task}", dynamic_ncols=True)
        t_last = time.perf_counter()
        final_eval = None
        while self.step < cfg.steps:
            action = self.act(obs)
            next_obs, reward, term, trunc, info = self.envs.step(action)
            done = term | trunc
            for i in range(N):
                real_next = info["final_obs"][i] if done[i] else next_obs[i]
                ep_obs[i].append(pad_to(np.asarray(real_next, dtype=np.float32), pcfg.obs_dim))
                ep_act[i].append(pad_to(action[i].astype(np.float32), pcfg.action_dim))
                ep_rew[i].append(float(reward[i]))
                ep_term[i].append(bool(term[i]))
            obs = next_obs
            self.step += N
            if done.any():
                now = time.perf_counter()  # elapsed_s counts training time only (evaluations are excluded below)
                self.elapsed += now - t_last
                t_last = now
                for i in np.flatnonzero(done):
                    T = len(ep_act[i])
                    A = pcfg.action_dim
                    self.buffer.add_episode(np.stack(ep_obs[i]),
                                            np.concatenate([np.zeros((1, A), np.float32), np.stack(ep_act[i])]),
                                            np.array([0.0] + ep_rew[i], np.float32),
                                            np.array([False] + ep_term[i]), task=self.task_id)
                    ep_return = float(np.sum(ep_rew[i]))
                    self.last_return = ep_return
                    self.episode += 1
                    row = dict(step=self.step, episode=self.episode, episode_return=ep_return, length=T,
                               elapsed_s=round(self.elapsed, 1))
                    row.update({k: (float(np.mean(self.metrics_acc[k])) if k in self.metrics_acc else "")
                                for k in TRAIN_METRICS})
                    self.append_csv("train.csv", row)
                    self.log({"train/episode_return": ep_return,
                              **{f"train/{k}": float(np.mean(v)) for k, v in self.metrics_acc.items()}})
                    self.metrics_acc = {}
                    ep_obs[i] = [pad_to(np.asarray(next_obs[i], dtype=np.float32), pcfg.obs_dim)]
                    ep_act[i], ep_rew[i], ep_term[i] = [], [], []
                    self.policy.reset([int(i)])
            if self.step >= self.seed_steps and self.can_update():
                if not self.burst_done:
                    # TD-MPC2's burst of updates at the end of the seed phase (first moment data can be sampled)
                    self.burst_done = True
                    self.do_updates(self.seed_updates if self.seed_steps > 0 else 0)
                else:
                    self.update_debt += cfg.utd * N
                    n = int(self.update_debt)
                    self.update_debt -= n
                    self.do_updates(n)
            if done.any():
                if done.all():  # episode boundary for every env: the place for evals and checkpoints
                    last = self.step >= cfg.steps
                    if cfg.eval_freq > 0 and self.step >= self.next_eval:
                        if not last:  # at the last step the final evaluation after the loop is this point's
                            self.run_eval()
                        self.next_eval = (self.step // cfg.eval_freq + 1) * cfg.eval_freq
                    # a checkpoint at the last step too: the same command with a larger `steps` extends a finished run
                    if cfg.checkpoint_freq > 0 and (self.step >= self.next_ckpt or last):
                        self.next_ckpt = (self.step // cfg.checkpoint_freq + 1) * cfg.checkpoint_freq
                        self.save_checkpoint()
                    t_last = time.perf_counter()
            if bar is not None:
                now = time.perf_counter()
                bar.update(self.step - bar.n)
                bar.set_postfix(ret=f"{self.last_return:.1f}", buf=self.buffer.num_steps, refresh=False)
        now = time.perf_counter()
        self.elapsed += now - t_last
        if bar is not None:
            bar.close()
        self.envs.close()
        final_eval = self.run_eval()
        results = self.write_outputs(final_eval)
        acc.end_training()
        return results

    # --- outputs -------------------------------------------------------------------------------------------------
    def write_outputs(self, final_eval: dict) -> dict:
        acc = self.accelerator
        cfg = self.cfg
        results = {cfg.task: dict(mean_return=final_eval["mean_return"], std_return=final_eval["std_return"],
                                  episodes=final_eval["episodes"], planner=final_eval["planner"],
                                  steps=self.step)}
        if not acc.is_main_process:
            return results
        from .envs import normalized_score

        self.policy.save_pretrained(self.out)
        video = None
        if cfg.save_video:
            try:
                video = record_video(self.policy, cfg.task, self.out / "eval_video.mp4", seed=cfg.seed + 4242,
                                     size=cfg.video_size, episode_length=cfg.episode_length)
            except Exception as e:  # rendering needs a GL backend; a run's results must not depend on it
                acc.print(f"video skipped: {type(e).__name__}: {e}")
        curve = plot_learning_curve(self.out / "eval.csv", self.out / "learning_curve.png", title=cfg.task)
        score = normalized_score({cfg.task: final_eval["mean_return"]})
        payload = dict(results=results, normalized_score=score, env_steps=self.step, elapsed_s=self.elapsed,
                       updates=self.learner.num_updates)
        atomic_write_text(self.out / "eval_results.json", json.dumps(payload, indent=2))
        card = write_run_card(self, results, score, curve, video)
        if cfg.push_to_hub:
            if not cfg.hub_repo_id:
                raise ValueError("push_to_hub=true needs hub_repo_id=org/name")
            from .hub.publish import push_pretrained

            extra = {p.name: str(p) for p in (self.out / "train_config.yaml", self.out / "eval_results.json",
                                              self.out / "eval.csv", self.out / "train.csv", curve, video)
                     if p is not None and Path(p).exists()}
            push_pretrained(self.policy, cfg.hub_repo_id, card=card, extra_files=extra,
                            commit_message=f"{cfg.mode} {cfg.task} {self.step} steps")
        print(f"done: {cfg.task} mean return {final_eval['mean_return']:.1f} +/- {final_eval['std_return']:.1f} "
              f"after {self.step} env steps ({self.elapsed / 60:.1f} min)\n"
              f"  model: {self.out}/model.safetensors (MBDPODiffusionPolicy.from_pretrained('{self.out}'))\n"
              f"  curve: {curve}\n  video: {video}\n  card:  {self.out}/README.md\n"
              f"  logs:  {self.out}/train.csv, {self.out}/eval.csv")
        return results


def plot_learning_curve(csv_path: Path, png_path: Path, title: str = "") -> Path | None:
    if not Path(csv_path).exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    steps = [float(r["step"]) for r in rows]
    mean = np.array([float(r["mean_return"]) for r in rows])
    std = np.array([float(r["std_return"]) for r in rows])
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(steps, mean, marker="o", label="eval return")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


def write_run_card(trainer: OnlineTrainer, results: dict, score: float, curve, video):
    """Model card README.md for a run folder, from the model_cards/ template."""
    from .hub.cards import build_model_card

    cfg = trainer.cfg
    card = build_model_card(
        repo_id=cfg.hub_repo_id or f"local/{Path(cfg.output_dir).name}",
        config_dict=trainer.policy.config.to_dict(),
        eval_results={t: dict(r) for t, r in results.items()},
        normalized_score=score,
        base_model=trainer.card_extra.get("base_model"),
        base_revision=trainer.card_extra.get("base_revision"),
        command=trainer.command,
        train_config_yaml=dump_run_config(cfg),
        curve_path=curve.name if curve else None,
        video_path=Path(video).name if video else None,
        notes=trainer.card_extra.get("notes"),
    )
    atomic_write_text(trainer.out / "README.md", str(card))
    return card


__all__ = ["RunConfig", "OnlineTrainer", "load_run_config", "parse_overrides", "evaluate", "record_video",
           "plot_learning_curve", "pad_to"]
