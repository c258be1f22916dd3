"""One gymnasium Env that switches between several tasks (mt30 / mt80 style).

Observations are zero-padded at the end to the largest observation size and
the action space is the largest action size; only the first ``action_dims[i]``
action entries reach task ``i`` (padded dims are ignored). Sub-environments
are built lazily on first use, so a 30-task env is cheap to create.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from .tasks import MT30_TASKS, resolve_tasks, task_spec


def _derive_seed(seed: int | None, index: int) -> int | None:
    """Independent, reproducible per-task seed from a master seed."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


class MultiTaskEnv(gym.Env):
    """Multi-task environment over ``tasks``.

    Args:
        tasks: ``"mt30"``/``"mt80"``, a single task name, or a list of task names.
            Task ``i`` of this env is ``tasks[i]`` (for mt30/mt80 that is the TD-MPC2 id).
        seed: master seed; drives task sampling and every sub-env's initial states.
        render_mode: ``None`` or ``"rgb_array"`` (forwarded to sub-envs).
        **env_kwargs: forwarded to every sub-env (e.g. ``render_height``).

    Spaces:
        observation: Box(-inf, inf, (max_obs_dim,), float32), zero-padded at the end.
        action: Box(-1, 1, (max_action_dim,), float32).

    ``reset(options={"task": name_or_id})`` selects the task; otherwise one is
    sampled uniformly with the env's RNG. ``info`` carries ``task`` (int id in
    ``self.tasks``), ``task_name`` and ``success``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, tasks=MT30_TASKS, seed: int | None = None, render_mode: str | None = None, **env_kwargs):
        self.tasks: list[str] = resolve_tasks(tasks)
        if not self.tasks:
            raise ValueError("MultiTaskEnv needs at least one task.")
        specs = [task_spec(t) for t in self.tasks]
        self.specs = specs
        self.obs_dims: list[int] = [s.obs_dim for s in specs]
        self.action_dims: list[int] = [s.action_dim for s in specs]
        self.episode_lengths: list[int] = [int(env_kwargs.get("episode_length") or s.episode_length) for s in specs]
        self.task_ids: list[int | None] = [s.task_id for s in specs]
        self.max_obs_dim = max(self.obs_dims)
        self.max_action_dim = max(self.action_dims)
        self.num_tasks = len(self.tasks)
        # (num_tasks, max_action_dim) float32: 1 where the task uses the action dim.
        self.action_masks = np.zeros((self.num_tasks, self.max_action_dim), dtype=np.float32)
        for i, a in enumerate(self.action_dims):
            self.action_masks[i, :a] = 1.0

        self.render_mode = render_mode
        self._seed = seed
        self._env_kwargs = env_kwargs
        self._envs: list[gym.Env | None] = [None] * self.num_tasks
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.max_obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.max_action_dim,), np.float32, seed=seed)
        self._np_random, _ = gym.utils.seeding.np_random(seed)
        self.task: int = 0
        self._started = False

    # --------------------------------------------------------------------------------------
    @property
    def task_name(self) -> str:
        return self.tasks[self.task]

    @property
    def episode_length(self) -> int:
        """Episode length of the current task."""
        return self.episode_lengths[self.task]

    def task_index(self, task: int | str) -> int:
        """Index in ``self.tasks`` of a task name or id."""
        if isinstance(task, (int, np.integer)):
            if not 0 <= int(task) < self.num_tasks:
                raise ValueError(f"Task id {task} out of range [0, {self.num_tasks}).")
            return int(task)
        if task not in self.tasks:
            raise ValueError(f"Task {task!r} is not in this env's tasks: {self.tasks}.")
        return self.tasks.index(task)

    def get_env(self, task: int | str):
        """The (lazily built) single-task env of ``task``."""
        from .factory import make_env  # local import: factory imports this module

        i = self.task_index(task)
        if self._envs[i] is None:
            self._envs[i] = make_env(
                self.tasks[i], seed=_derive_seed(self._seed, i), render_mode=self.render_mode, **self._env_kwargs
            )
        return self._envs[i]

    def _pad(self, obs: np.ndarray) -> np.ndarray:
        out = np.zeros(self.max_obs_dim, dtype=np.float32)
        out[: obs.shape[0]] = obs
        return out

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        return dict(info, task=self.task, task_name=self.task_name)

    # --------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode of the chosen (or a sampled) task.

        Returns ``(obs (max_obs_dim,) float32 zero-padded, info)``.
        """
        super().reset(seed=seed)
        options = options or {}
        if options.get("task") is not None:
            self.task = self.task_index(options["task"])
        else:
            self.task = int(self.np_random.integers(self.num_tasks))
        env = self.get_env(self.task)
        sub_seed = _derive_seed(seed, self.task) if seed is not None else None
        obs, info = env.reset(seed=sub_seed)
        self._started = True
        return self._pad(obs), self._info(info)

    def step(self, action):
        """``action`` (max_action_dim,); only ``action[:action_dims[task]]`` is used."""
        if not self._started:
            raise RuntimeError("Call reset() before the first step().")
        a = np.asarray(action)
        if a.shape != (self.max_action_dim,):
            raise ValueError(f"Expected an action of shape ({self.max_action_dim},), got shape {a.shape}.")
        obs, reward, terminated, truncated, info = self._envs[self.task].step(a[: self.action_dims[self.task]])
        return self._pad(obs), reward, terminated, truncated, self._info(info)

    def render(self):
        """(H, W, 3) uint8 frame of the current task."""
        return self.get_env(self.task).render()

    def close(self):
        for env in self._envs:
            if env is not None:
                env.close()
        super().close()
