"""Environment factories and gymnasium registration.

>>> env = make_env("walker-run", seed=0)                 # single task
>>> env = make_env("mt30", seed=0)                       # MultiTaskEnv over mt30
>>> envs = make_vec_env("cheetah-run", num_envs=4, seed=0)
>>> env = gymnasium.make("mbdpo/walker-run-v0")          # after `import mbdpo_hub.envs`
"""

from __future__ import annotations

import functools

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from .tasks import ALL_TASKS, TASK_SETS, check_task_name, task_spec

GYM_NAMESPACE = "mbdpo"


def make_env(task: str | list[str], seed: int | None = None, render_mode: str | None = None, **kw) -> gym.Env:
    """Build a gymnasium Env for ``task``.

    Args:
        task: a task name (``"walker-run"``, ``"mw-reach"``), a task set
            (``"mt30"``/``"mt80"``) or a list of names; sets and lists give a
            :class:`MultiTaskEnv`.
        seed: seeds initial states and the action space.
        render_mode: ``None`` or ``"rgb_array"``.
        **kw: forwarded to the env class (``episode_length``, ``action_repeat``,
            ``render_height``, ``render_width``, ``camera_id``).

    Raises:
        ValueError: unknown task name (the message lists close matches).
        ImportError: a ``mw-*`` task without the optional ``metaworld`` package.
    """
    if isinstance(task, (list, tuple)) or task in TASK_SETS:
        from .multitask import MultiTaskEnv

        return MultiTaskEnv(task, seed=seed, render_mode=render_mode, **kw)
    spec = task_spec(task)  # raises ValueError for unknown names
    if spec.source == "user":
        from .user import GymTaskEnv

        return GymTaskEnv(task, seed=seed, render_mode=render_mode, **kw)
    if spec.is_metaworld:
        from .metaworld import MetaWorldEnv

        return MetaWorldEnv(task, seed=seed, render_mode=render_mode, **kw)
    from .dmc import DMControlEnv

    return DMControlEnv(task, seed=seed, render_mode=render_mode, **kw)


def make_vec_env(
    task: str,
    num_envs: int,
    seed: int | None = None,
    vectorization_mode: str = "sync",
    autoreset_mode: str | AutoresetMode = AutoresetMode.SAME_STEP,
    **kw,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``make_env(task, seed=seed + i, **kw)`` in a gymnasium vector env.

    Args:
        vectorization_mode: ``"sync"`` (one process; best on few cores) or ``"async"`` (subprocesses).
        autoreset_mode: gymnasium autoreset mode. The default ``SAME_STEP`` returns the
            reset observation on the last step and puts the true final observation in
            ``info["final_obs"]`` (masked by ``info["_final_obs"]``), which is what a replay
            buffer needs. Use ``"next_step"`` for gymnasium's default behaviour.

    Observations are (num_envs, obs_dim) float32, actions (num_envs, action_dim).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
    if not isinstance(task, (list, tuple)) and task not in TASK_SETS:
        check_task_name(task)
    if isinstance(autoreset_mode, str):
        autoreset_mode = AutoresetMode(autoreset_mode.lower())
    fns = [
        functools.partial(make_env, task, seed=None if seed is None else seed + i, **kw) for i in range(num_envs)
    ]
    if vectorization_mode == "sync":
        return SyncVectorEnv(fns, autoreset_mode=autoreset_mode)
    if vectorization_mode == "async":
        return AsyncVectorEnv(fns, autoreset_mode=autoreset_mode)
    raise ValueError(f"vectorization_mode must be 'sync' or 'async', got {vectorization_mode!r}.")


def _entry_point(task: str, **kw) -> gym.Env:
    return make_env(task, **kw)


def register_envs() -> list[str]:
    """Register ``mbdpo/<task>-v0`` for every known task (idempotent). Returns the ids."""
    ids = []
    for name in ALL_TASKS:
        env_id = task_spec(name).gym_id
        ids.append(env_id)
        if env_id in gym.registry:
            continue
        # No max_episode_steps here: the env truncates itself (and honours episode_length=...).
        gym.register(id=env_id, entry_point=_entry_point, kwargs={"task": name}, disable_env_checker=True)
    return ids
