"""DMControl (+ optional Meta-World) task suite as gymnasium environments.

Importing this package registers ``mbdpo/<task>-v0`` gymnasium ids for every
task in :data:`ALL_TASKS` (idempotent), without importing dm_control: the
simulator is only loaded when an environment is built, so the spec table
(:func:`task_spec`, :data:`TASK_DIMS`) is cheap to use from configs.

Public API::

    make_env(task, seed=None, render_mode=None, **kw) -> gym.Env
    make_vec_env(task, num_envs, seed=None, vectorization_mode="sync", ...) -> gym.vector.VectorEnv
    MultiTaskEnv(tasks=MT30_TASKS, seed=None, render_mode=None, **kw)
    DMControlEnv(task, seed=None, render_mode=None, ...), MetaWorldEnv(...)
    task_spec(name) -> TaskSpec; list_tasks(task_set=None) -> list[str]
    register_task(name, make_env, episode_length=None) ; task="gym:ENV_ID" for any gymnasium id
    record_episode_video(frames, path, fps=30) -> str
    normalized_score(results) -> float
"""

import os
import sys

# Headless default: dm_control picks its GL backend at first import and falls back to GLFW,
# which needs a display. EGL works headless (CPU via mesa, or GPU). Respect any user choice.
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and "dm_control" not in sys.modules:
    os.environ.setdefault("MUJOCO_GL", "egl")

from .factory import GYM_NAMESPACE, make_env, make_vec_env, register_envs  # noqa: E402
from .scoring import normalized_score, task_score  # noqa: E402
from .tasks import (  # noqa: E402
    ALL_TASKS,
    CUSTOM_TASKS,
    DOMAIN_DIMS,
    EXTRA_DMC_TASKS,
    METAWORLD_TASKS,
    MT30_TASKS,
    MT80_TASKS,
    TASK_DIMS,
    TASK_SETS,
    TASK_SPECS,
    TaskSpec,
    list_tasks,
    task_spec,
)
from .user import GYM_PREFIX, register_task  # noqa: E402
from .video import record_episode_video  # noqa: E402

# Names whose modules import the simulators; resolved on first attribute access.
_LAZY = {
    "DMControlEnv": ".dmc",
    "flatten_observation": ".dmc",
    "MultiTaskEnv": ".multitask",
    "MetaWorldEnv": ".metaworld",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_envs()

__all__ = [
    "GYM_PREFIX",
    "register_task",
    "ALL_TASKS",
    "CUSTOM_TASKS",
    "DOMAIN_DIMS",
    "DMControlEnv",
    "EXTRA_DMC_TASKS",
    "GYM_NAMESPACE",
    "METAWORLD_TASKS",
    "MT30_TASKS",
    "MT80_TASKS",
    "MetaWorldEnv",
    "MultiTaskEnv",
    "TASK_DIMS",
    "TASK_SETS",
    "TASK_SPECS",
    "TaskSpec",
    "flatten_observation",
    "list_tasks",
    "make_env",
    "make_vec_env",
    "normalized_score",
    "record_episode_video",
    "register_envs",
    "task_score",
    "task_spec",
]
