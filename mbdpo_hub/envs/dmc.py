"""DMControl tasks (stock and custom) as gymnasium environments.

Conventions (TD-MPC2's): action repeat 2 with summed rewards, 500 agent steps
per episode ending in ``truncated=True`` (never ``terminated``), actions in
[-1, 1] rescaled affinely to the actuator range, observations flattened to a
float32 vector in dm_control's observation-dict order.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from dm_control import suite

from .base import SingleTaskAttributes, validate_action
from .custom import load_custom
from .tasks import DOMAIN_ALIASES, TaskSpec, task_spec

DEFAULT_RENDER_HEIGHT = 240
DEFAULT_RENDER_WIDTH = 320


def flatten_observation(obs: dict) -> np.ndarray:
    """dm_control observation dict -> (obs_dim,) float32, concatenated in dict order."""
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in obs.values()]).astype(np.float32)


def load_dmc(spec: TaskSpec, random=None):
    """Build the dm_control ``control.Environment`` of ``spec`` with no time limit."""
    if spec.source == "custom":
        return load_custom(spec.name, random=random)
    domain = DOMAIN_ALIASES.get(spec.domain, spec.domain)
    # Infinite dm_control time limit: episode length is enforced by the gymnasium wrapper,
    # which makes it configurable and keeps truncation in one place.
    return suite.load(domain, spec.task, task_kwargs={"random": random, "time_limit": float("inf")})


class DMControlEnv(SingleTaskAttributes, gym.Env):
    """One DMControl task as a gymnasium Env.

    Args:
        task: task name, e.g. ``"walker-run"`` (see ``list_tasks()``).
        seed: seeds the task's initial-state RNG (and the action space), so that
            ``reset()`` without a seed is already reproducible.
        render_mode: ``None`` or ``"rgb_array"``.
        episode_length: agent steps before ``truncated=True`` (default 500).
        action_repeat: simulator control steps per agent step (default 2).
        render_height, render_width, camera_id: ``render()`` settings
            (default 240x320, camera 2 for quadruped else 0).

    Spaces:
        observation: Box(-inf, inf, (obs_dim,), float32)
        action: Box(-1, 1, (action_dim,), float32)

    ``info`` has ``task`` (0, the index in ``env.tasks``), ``task_name`` and
    ``success`` (always 0.0 for DMControl; present so that all envs share keys).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        task: str,
        seed: int | None = None,
        render_mode: str | None = None,
        episode_length: int | None = None,
        action_repeat: int | None = None,
        render_height: int = DEFAULT_RENDER_HEIGHT,
        render_width: int = DEFAULT_RENDER_WIDTH,
        camera_id: int | None = None,
    ):
        self.spec_info = task_spec(task)
        if self.spec_info.is_metaworld:
            raise ValueError(f"{task!r} is a Meta-World task; build it with make_env().")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")
        self.render_mode = render_mode
        self.episode_length = int(episode_length or self.spec_info.episode_length)
        self.action_repeat = int(action_repeat or self.spec_info.action_repeat)
        self.render_height, self.render_width = int(render_height), int(render_width)
        self.camera_id = self.spec_info.camera_id if camera_id is None else int(camera_id)

        self._env = load_dmc(self.spec_info, random=seed)
        act_spec = self._env.action_spec()
        self._act_low = np.asarray(act_spec.minimum, dtype=np.float64)
        self._act_high = np.asarray(act_spec.maximum, dtype=np.float64)
        obs_dim, act_dim = self.spec_info.obs_dim, self.spec_info.action_dim
        if act_spec.shape != (act_dim,):
            raise RuntimeError(f"{task}: action spec {act_spec.shape} != table ({act_dim},)")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32, seed=seed)
        self.metadata = dict(self.metadata, render_fps=round(1.0 / (self._env.control_timestep() * self.action_repeat)))
        self._t = 0
        self._needs_reset = True

    @property
    def physics(self):
        """The dm_control ``Physics`` (for tests and custom diagnostics)."""
        return self._env.physics

    @property
    def dmc_task(self):
        """The dm_control ``Task`` (``get_reward(physics)``, ``get_observation(physics)``)."""
        return self._env.task

    def _info(self) -> dict[str, Any]:
        return {"task": 0, "task_name": self.spec_info.name, "success": 0.0}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode. Returns ``(obs (obs_dim,) float32, info)``.

        ``seed`` re-seeds the initial-state RNG: the same seed gives the same
        initial state and, with the same actions, the same trajectory.
        """
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
            self.action_space.seed(seed)
        ts = self._env.reset()
        self._t = 0
        self._needs_reset = False
        return flatten_observation(ts.observation), self._info()

    def step(self, action):
        """Apply ``action`` (action_dim,) in [-1, 1] for ``action_repeat`` control steps.

        Returns ``(obs, reward, terminated, truncated, info)``; reward is the sum
        over the repeated steps, ``terminated`` is always False and ``truncated``
        becomes True after ``episode_length`` agent steps.
        """
        if self._needs_reset:
            raise RuntimeError("Call reset() before the first step().")
        a = validate_action(action, self.spec_info.action_dim)
        ctrl = self._act_low + (a + 1.0) * 0.5 * (self._act_high - self._act_low)
        reward = 0.0
        for _ in range(self.action_repeat):
            ts = self._env.step(ctrl)
            reward += ts.reward or 0.0  # first-step rewards can be None in dm_control
            if ts.last():
                break
        self._t += 1
        # dm_control only ends an episode itself on a task termination (discount 0);
        # our time limit is a truncation (the value bootstrap must continue).
        terminated = bool(ts.last() and ts.discount == 0)
        truncated = bool(not terminated and (self._t >= self.episode_length or ts.last()))
        return flatten_observation(ts.observation), float(reward), terminated, truncated, self._info()

    def render(self):
        """(render_height, render_width, 3) uint8 frame of the current state."""
        return self._env.physics.render(self.render_height, self.render_width, camera_id=self.camera_id)
