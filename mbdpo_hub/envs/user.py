"""Users' own environments as tasks: any registered gymnasium id as ``gym:ENV_ID``, or any env factory registered
under a name with :func:`register_task`.

    task=gym:Pendulum-v1                         # in train / finetune / evaluate / collect (env_module=pkg imports
                                                 # a package that registers its ids first)
    register_task("my-arm", lambda **kw: MyArmEnv(**kw), episode_length=300)

Conventions, the same as the built-in tasks': observations are flat float32 vectors (a Box observation space of
any shape is flattened; Dict, image or discrete observations are refused for now), actions are in [-1, 1] and
rescaled affinely to the env's Box bounds (unbounded dims are passed through), an episode ends with
``truncated=True`` after ``episode_length`` agent steps (the env's TimeLimit, else the ``episode_length`` given)
and with ``terminated=True`` when the env terminates; the discount follows the episode length, as for DMControl.
No action repeat.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from .base import SingleTaskAttributes, validate_action
from .tasks import TaskSpec

GYM_PREFIX = "gym:"
DEFAULT_EPISODE_LENGTH = 1000

#: name -> (spec, factory(**kwargs) -> gym.Env)
_REGISTRY: dict[str, tuple[TaskSpec, Callable[..., gym.Env]]] = {}


def is_user_task(name: Any) -> bool:
    return isinstance(name, str) and (name.startswith(GYM_PREFIX) or name in _REGISTRY)


def import_env_module(module: str | None) -> None:
    """Import a user package that registers gymnasium ids (the `env_module=` setting); a clear error if missing."""
    if not module:
        return
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"env_module={module!r} cannot be imported ({e}): install it or fix the name") from None


def _check_spaces(name: str, env: gym.Env) -> tuple[int, int]:
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, gym.spaces.Box):
        raise ValueError(f"task {name!r}: observation space {type(obs).__name__} is not supported yet (only a Box of "
                         "numbers, e.g. a state vector; Dict and image observations are not)")
    if len(obs.shape) > 1 and obs.dtype == np.uint8:
        raise ValueError(f"task {name!r}: image observations {obs.shape} are not supported yet (state vectors only)")
    if not isinstance(act, gym.spaces.Box):
        raise ValueError(f"task {name!r}: action space {type(act).__name__} is not supported (continuous Box only)")
    return int(np.prod(obs.shape)), int(np.prod(act.shape))


def _spec_from_env(name: str, env: gym.Env, episode_length: int | None) -> TaskSpec:
    obs_dim, action_dim = _check_spaces(name, env)
    limit = getattr(env.spec, "max_episode_steps", None) if env.spec is not None else None
    length = int(episode_length or limit or DEFAULT_EPISODE_LENGTH)
    return TaskSpec(name=name, obs_dim=obs_dim, action_dim=action_dim, episode_length=length, domain=name,
                    task=name, source="user", action_repeat=1)


def register_task(name: str, make_env: Callable[..., gym.Env], *, episode_length: int | None = None,
                  obs_dim: int | None = None, action_dim: int | None = None, overwrite: bool = False) -> TaskSpec:
    """Register `make_env(**kwargs) -> gym.Env` as task `name` (no gymnasium id needed). The dims are read from one
    env built now unless both are given; `episode_length` defaults to the env's TimeLimit (else 1000)."""
    from .tasks import TASK_SPECS

    if not isinstance(name, str) or not name or name.startswith(GYM_PREFIX):
        raise ValueError(f"task name must be a non-empty string not starting with {GYM_PREFIX!r}, got {name!r}")
    if name in TASK_SPECS:
        raise ValueError(f"task {name!r} is a built-in task: choose another name")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
    if obs_dim is not None and action_dim is not None:
        spec = TaskSpec(name=name, obs_dim=int(obs_dim), action_dim=int(action_dim),
                        episode_length=int(episode_length or DEFAULT_EPISODE_LENGTH), domain=name, task=name,
                        source="user", action_repeat=1)
    else:
        env = make_env()
        try:
            spec = _spec_from_env(name, env, episode_length)
        finally:
            env.close()
    _REGISTRY[name] = (spec, make_env)
    return spec


def user_task_spec(name: str) -> TaskSpec:
    """The spec of a registered task or a `gym:ENV_ID` (read from the gymnasium registry and one env, cached)."""
    if name in _REGISTRY:
        return _REGISTRY[name][0]
    env_id = name[len(GYM_PREFIX):]
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise ValueError(f"Unknown task {name!r}: {env_id!r} is not a registered gymnasium id ({e}); register it "
                         "(or import its package with env_module=...)") from None
    env = gym.make(env_id)
    try:
        spec = _spec_from_env(name, env, None)
    finally:
        env.close()
    _REGISTRY[name] = (spec, lambda **kw: gym.make(env_id, **kw))
    return spec


class GymTaskEnv(SingleTaskAttributes, gym.Env):
    """A user's gymnasium env under this package's conventions (see the module docstring).

    Spaces: observation Box(-inf, inf, (obs_dim,), float32), action Box(-1, 1, (action_dim,), float32).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, task: str, seed: int | None = None, render_mode: str | None = None,
                 episode_length: int | None = None, **_: Any):
        self.spec_info = user_task_spec(task)
        factory = _REGISTRY[task][1]
        self._env = factory(render_mode=render_mode) if render_mode is not None else factory()
        obs_dim, act_dim = _check_spaces(task, self._env)
        if (obs_dim, act_dim) != (self.spec_info.obs_dim, self.spec_info.action_dim):
            raise ValueError(f"task {task!r}: the env has (obs, action) dims ({obs_dim}, {act_dim}), registered as "
                             f"({self.spec_info.obs_dim}, {self.spec_info.action_dim})")
        self.render_mode = render_mode
        self.episode_length = int(episode_length or self.spec_info.episode_length)
        box = self._env.action_space
        low, high = np.broadcast_to(box.low, box.shape).ravel(), np.broadcast_to(box.high, box.shape).ravel()
        self._bounded = np.isfinite(low) & np.isfinite(high)
        self._low, self._high, self._act_shape = low.astype(np.float64), high.astype(np.float64), box.shape
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32, seed=seed)
        self._seed, self._t = seed, 0

    def _info(self, info: dict | None = None) -> dict[str, Any]:
        success = float((info or {}).get("success", (info or {}).get("is_success", 0.0)) or 0.0)
        return {"task": 0, "task_name": self.spec_info.name, "success": success}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None  # the constructor's seed applies to the first episode
        obs, info = self._env.reset(seed=seed, options=options)
        if seed is not None:
            self.action_space.seed(seed)
        self._t = 0
        return np.asarray(obs, dtype=np.float32).ravel(), self._info(info)

    def step(self, action):
        a = validate_action(action, self.spec_info.action_dim)
        ctrl = np.where(self._bounded, self._low + (a + 1.0) * 0.5 * (self._high - self._low), a)
        obs, reward, terminated, truncated, info = self._env.step(ctrl.reshape(self._act_shape).astype(
            self._env.action_space.dtype))
        self._t += 1
        truncated = bool(not terminated and (truncated or self._t >= self.episode_length))
        return np.asarray(obs, dtype=np.float32).ravel(), float(reward), bool(terminated), truncated, self._info(info)

    def render(self):
        return self._env.render()

    def close(self):
        self._env.close()


__all__ = ["GYM_PREFIX", "register_task", "user_task_spec", "is_user_task", "import_env_module", "GymTaskEnv"]
