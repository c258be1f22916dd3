"""Evaluation: deterministic episodes batched over a vector env, an episode video, and the learning-curve plot."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling_mbdpo import MBDPODiffusionPolicy
from ..utils import atomic_path, pad_to


def evaluate(policy: MBDPODiffusionPolicy, task: str, episodes: int = 10, seed: int = 0,
             planner: str | None = None, video_path: str | os.PathLike | None = None, video_size: int = 240,
             episode_length: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Deterministic evaluation (eval_mode=True): `episodes` episodes run side by side in a vector env, planning
    batched over them. Returns mean/std return (and success where the env reports it). With `video_path`, one more
    episode is rendered and written there. The caller's warm-start plans are neither read nor overwritten.
    `progress` shows a bar over the episode's steps (an evaluation with the full planner takes minutes on a CPU)."""
    from ..envs import make_vec_env, task_spec

    if episodes < 1:
        raise ValueError(f"evaluation episodes must be at least 1, got {episodes}")

    cfg = policy.config
    task_id = cfg.task_id(task)
    old_planner = cfg.planner
    if planner is not None:
        cfg.planner = planner
    env_kw = {} if episode_length is None else dict(episode_length=episode_length)
    envs = make_vec_env(task, episodes, seed=seed, **env_kw)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episode_length or task_spec(task).episode_length, unit="step", leave=False,
                   desc=f"eval {task} ({episodes} episodes)", dynamic_ncols=True)
    t0 = time.perf_counter()
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
                if bar is not None:
                    bar.update(1)
        result = dict(task=task, episodes=episodes, mean_return=float(returns.mean()),
                      std_return=float(returns.std()), returns=returns.tolist(), planner=cfg.planner,
                      mean_success=float(success.mean()), seconds=time.perf_counter() - t0)
        if video_path is not None:
            result["video"] = str(record_video(policy, task, video_path, seed=seed + 10_000, size=video_size,
                                               episode_length=episode_length))
        return result
    finally:
        if bar is not None:
            bar.close()
        envs.close()
        cfg.planner = old_planner


@torch.no_grad()
def record_video(policy: MBDPODiffusionPolicy, task: str, path, seed: int = 0, size: int = 240,
                 episode_length: int | None = None) -> Path:
    """Render one deterministic episode to `path` (mp4); the caller's warm-start plans are left untouched."""
    from ..envs import make_env, record_episode_video

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


def plot_learning_curve(csv_path: Path, png_path: Path, title: str = "", xlabel: str = "environment steps",
                        ylabel: str = "episode return") -> Path | None:
    """Plot `csv_path`'s mean_return (+/- std_return) against step into `png_path` (atomically)."""
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
    ax.plot(steps, mean, marker="o", label=ylabel)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(png_path)


__all__ = ["evaluate", "record_video", "plot_learning_curve"]
