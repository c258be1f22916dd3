"""Meta-World tasks (``mw-<name>``) as gymnasium environments -- optional.

Meta-World pins ``mujoco==3.3.0`` while dm_control>=1.0.30 needs a newer
mujoco, so the two cannot share a virtual environment. Install the extra in a
separate venv (``pip install 'mbdpo_hub[metaworld]'``, which also pins
``dm_control==1.0.28``). ``metaworld`` is imported lazily, only when a
``mw-*`` environment is built.

Conventions (TD-MPC2's): goal-observable v3 (or v2) env with randomised goals,
39-D float32 observation, 4-D action in [-1, 1], action repeat 2 with summed
rewards, 100 agent steps per episode (truncation), ``info["success"]`` is
Meta-World's 0/1 success flag of the last sub-step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from .base import SingleTaskAttributes, validate_action
from .tasks import task_spec

METAWORLD_INSTALL_HINT = (
    "Meta-World tasks need the optional `metaworld` package, which pins mujoco==3.3.0 and therefore cannot be "
    "installed next to dm_control>=1.0.30. Create a separate virtual environment and run "
    "`pip install 'mbdpo_hub[metaworld]'` (metaworld==3.1.1, mujoco==3.3.0, dm_control==1.0.28)."
)


def _import_metaworld():
    try:
        import metaworld  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        if e.name == "metaworld":
            raise ImportError(METAWORLD_INSTALL_HINT) from e
        # metaworld is installed but one of its own imports failed: say which one.
        raise ImportError(f"`import metaworld` failed: {e}. {METAWORLD_INSTALL_HINT}") from e
    return metaworld


def _goal_observable_class(name: str):
    """Find the goal-observable env class of Meta-World task ``name`` (v3 first, then v2)."""
    metaworld = _import_metaworld()
    for version in ("v3", "v2"):
        registry = getattr(metaworld, f"ALL_{version.upper()}_ENVIRONMENTS_GOAL_OBSERVABLE", None)
        if registry is None:
            try:
                import metaworld.envs as mw_envs

                registry = getattr(mw_envs, f"ALL_{version.upper()}_ENVIRONMENTS_GOAL_OBSERVABLE", None)
            except ImportError:
                registry = None
        if registry is not None and f"{name}-{version}-goal-observable" in registry:
            return registry[f"{name}-{version}-goal-observable"]
    raise ValueError(f"Meta-World has no goal-observable environment for {name!r}.")


class MetaWorldEnv(SingleTaskAttributes, gym.Env):
    """One Meta-World task as a gymnasium Env.

    Args:
        task: ``"mw-<name>"``, e.g. ``"mw-reach"``.
        seed: seed of the Meta-World env (goal and object randomisation).
        render_mode: ``None`` or ``"rgb_array"``.
        episode_length: agent steps before ``truncated=True`` (default 100).
        render_height, render_width: frame size of ``render()``.

    Spaces: observation Box((39,), float32); action Box(-1, 1, (4,), float32).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        task: str,
        seed: int | None = None,
        render_mode: str | None = None,
        episode_length: int | None = None,
        action_repeat: int | None = None,
        render_height: int = 240,
        render_width: int = 320,
        camera_name: str = "corner2",
    ):
        self.spec_info = task_spec(task)
        if not self.spec_info.is_metaworld:
            raise ValueError(f"{task!r} is not a Meta-World task.")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")
        cls = _goal_observable_class(self.spec_info.task)
        self.render_mode = render_mode
        self.episode_length = int(episode_length or self.spec_info.episode_length)
        self.action_repeat = int(action_repeat or self.spec_info.action_repeat)
        try:  # Meta-World 3.x (gymnasium API) takes render_mode; 2.x does not
            self._env = cls(seed=seed, render_mode=render_mode)
        except TypeError:
            self._env = cls(seed=seed)
        self._configure_renderer(camera_name, render_height, render_width)
        # TD-MPC2 randomises goals/object positions on every reset.
        self._env._freeze_rand_vec = False
        # Draw them from the env's own seeded RNG instead of the global np.random, so that
        # reset(seed=...) is reproducible (Meta-World >= 3; harmless attribute on older versions).
        self._env.seeded_rand_vec = True
        if seed is not None and hasattr(self._env, "seed"):
            self._env.seed(seed)
        obs_dim, act_dim = self.spec_info.obs_dim, self.spec_info.action_dim
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32, seed=seed)
        self._t = 0
        self._started = False

    def _configure_renderer(self, camera_name: str, height: int, width: int) -> None:
        """Point Meta-World 3.x's gymnasium MujocoRenderer at ``camera_name`` with our frame size."""
        renderer = getattr(self._env, "mujoco_renderer", None)
        if renderer is None:
            return
        import mujoco

        cam_id = mujoco.mj_name2id(self._env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera_name)
        if cam_id >= 0:
            renderer.camera_id = cam_id
        # The offscreen buffer is created lazily on the first render() with these sizes.
        renderer.width, renderer.height = int(width), int(height)

    def _info(self, success: float = 0.0) -> dict[str, Any]:
        return {"task": 0, "task_name": self.spec_info.name, "success": float(success)}

    @staticmethod
    def _unpack_step(out):
        if len(out) == 5:  # gymnasium API
            obs, reward, _, _, info = out
        else:  # old gym API (Meta-World < 3)
            obs, reward, _, info = out
        return obs, reward, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Returns ``(obs (39,) float32, info)``."""
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
        if seed is not None:
            # Meta-World's reset() ignores its seed argument; seed() reseeds its goal/object RNG.
            self._env.seed(seed)
        out = self._env.reset()
        obs = out[0] if isinstance(out, tuple) else out
        # Like TD-MPC2: one zero-action step settles the scene, but the pre-step obs is returned.
        self._env.step(np.zeros(self.spec_info.action_dim, dtype=np.float32))
        self._t = 0
        self._started = True
        return np.asarray(obs, dtype=np.float32), self._info()

    def step(self, action):
        if not self._started:
            raise RuntimeError("Call reset() before the first step().")
        a = validate_action(action, self.spec_info.action_dim).astype(np.float32)
        reward, info = 0.0, {}
        for _ in range(self.action_repeat):
            obs, r, info = self._unpack_step(self._env.step(a))
            reward += float(r)
        self._t += 1
        truncated = self._t >= self.episode_length
        return np.asarray(obs, dtype=np.float32), reward, False, truncated, self._info(info.get("success", 0.0))

    def render(self):
        """(H, W, 3) uint8 frame (``render_mode="rgb_array"`` required)."""
        if self.render_mode != "rgb_array":
            raise RuntimeError("Build the env with render_mode='rgb_array' to render Meta-World tasks.")
        frame = self._env.render()
        return np.asarray(frame, dtype=np.uint8)

    def close(self):
        if hasattr(self._env, "close"):
            self._env.close()
        super().close()
