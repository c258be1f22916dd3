"""Task lists and the per-task spec table.

Everything here is plain data: building a config (observation/action sizes,
episode lengths, task ids) must not require constructing a simulator.

Task ids are the positions in ``MT80_TASKS`` (``MT30_TASKS`` is its 30-task
prefix, so an id means the same task in both sets). The order follows
TD-MPC2's ``TASK_SET`` and must never change: pretrained checkpoints and the
mt30/mt80 datasets index task embeddings by it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

# 19 stock DMControl tasks, then the 11 custom ones (see ``custom.py``).
MT30_TASKS: list[str] = [
    "walker-stand", "walker-walk", "walker-run", "cheetah-run", "reacher-easy",
    "reacher-hard", "acrobot-swingup", "pendulum-swingup", "cartpole-balance", "cartpole-balance-sparse",
    "cartpole-swingup", "cartpole-swingup-sparse", "cup-catch", "finger-spin", "finger-turn-easy",
    "finger-turn-hard", "fish-swim", "hopper-stand", "hopper-hop",
    "walker-walk-backwards", "walker-run-backwards", "cheetah-run-backwards", "cheetah-run-front", "cheetah-run-back",
    "cheetah-jump", "hopper-hop-backwards", "reacher-three-easy", "reacher-three-hard", "cup-spin",
    "pendulum-spin",
]  # fmt: skip

# The 50 Meta-World tasks, in TD-MPC2's mt80 order (not Meta-World's own MT50 order).
METAWORLD_TASKS: list[str] = [
    "mw-assembly", "mw-basketball", "mw-button-press-topdown", "mw-button-press-topdown-wall", "mw-button-press",
    "mw-button-press-wall", "mw-coffee-button", "mw-coffee-pull", "mw-coffee-push", "mw-dial-turn",
    "mw-disassemble", "mw-door-open", "mw-door-close", "mw-drawer-close", "mw-drawer-open",
    "mw-faucet-open", "mw-faucet-close", "mw-hammer", "mw-handle-press-side", "mw-handle-press",
    "mw-handle-pull-side", "mw-handle-pull", "mw-lever-pull", "mw-peg-insert-side", "mw-peg-unplug-side",
    "mw-pick-out-of-hole", "mw-pick-place", "mw-pick-place-wall", "mw-plate-slide", "mw-plate-slide-side",
    "mw-plate-slide-back", "mw-plate-slide-back-side", "mw-push-back", "mw-push", "mw-push-wall",
    "mw-reach", "mw-reach-wall", "mw-shelf-place", "mw-soccer", "mw-stick-push",
    "mw-stick-pull", "mw-sweep-into", "mw-sweep", "mw-window-open", "mw-window-close",
    "mw-bin-picking", "mw-box-close", "mw-door-lock", "mw-door-unlock", "mw-hand-insert",
]  # fmt: skip

MT80_TASKS: list[str] = MT30_TASKS + METAWORLD_TASKS

CUSTOM_TASKS: list[str] = MT30_TASKS[19:]

# Stock DMControl tasks outside mt30 (large embodiments used for single-task runs).
EXTRA_DMC_TASKS: list[str] = [
    "dog-stand", "dog-walk", "dog-trot", "dog-run", "dog-fetch",
    "humanoid-stand", "humanoid-walk", "humanoid-run",
    "quadruped-walk", "quadruped-run", "quadruped-escape", "quadruped-fetch",
]  # fmt: skip

TASK_SETS: dict[str, list[str]] = {"mt30": MT30_TASKS, "mt80": MT80_TASKS}

# (obs_dim, action_dim) per embodiment family; TD-MPC2's published numbers.
# The test-suite checks every entry against a constructed environment.
DOMAIN_DIMS: dict[str, tuple[int, int]] = {
    "walker": (24, 6),
    "cheetah": (17, 6),
    "reacher": (6, 2),
    "reacher-three": (8, 3),
    "acrobot": (6, 1),
    "pendulum": (3, 1),
    "cartpole": (5, 1),
    "cup": (8, 2),
    "finger-spin": (9, 2),
    "finger-turn": (12, 2),
    "fish": (24, 5),
    "hopper": (15, 4),
    "dog": (223, 38),
    "humanoid": (67, 21),
    "quadruped": (78, 12),
    "metaworld": (39, 4),
}

# Tasks whose observation adds entries to the family's stock layout.
_DIM_OVERRIDES: dict[str, tuple[int, int]] = {
    "dog-fetch": (232, 38),  # + ball_state (9)
    "quadruped-escape": (101, 12),  # + origin (3) + rangefinder (20)
    "quadruped-fetch": (90, 12),  # + ball_state (9) + target_position (3)
}

DMC_EPISODE_LENGTH = 500  # 1000 control steps / action repeat 2
METAWORLD_EPISODE_LENGTH = 100
ACTION_REPEAT = 2

# dm_control's module names differ from TD-MPC2's short domain names.
DOMAIN_ALIASES: dict[str, str] = {"cup": "ball_in_cup", "pointmass": "point_mass"}


@dataclass(frozen=True)
class TaskSpec:
    """Static description of one task.

    Attributes:
        name: TD-MPC2 task name, e.g. ``"walker-run"`` or ``"mw-reach"``.
        obs_dim: length of the flat float32 observation vector.
        action_dim: length of the action vector (each entry in [-1, 1]).
        episode_length: agent steps per episode (after action repeat).
        domain: simulator family, e.g. ``"walker"``, ``"cup"`` or ``"metaworld"``.
        task: simulator-side task name (dm_control task name with ``_``, or
            the Meta-World env name without version suffix).
        source: ``"dmc"`` (stock dm_control), ``"custom"`` (ours) or ``"metaworld"``.
        action_repeat: simulator steps per agent step (rewards are summed).
        task_id: index in ``MT80_TASKS`` (== index in ``MT30_TASKS`` for DMC tasks), or None.
        camera_id: default render camera.
    """

    name: str
    obs_dim: int
    action_dim: int
    episode_length: int
    domain: str
    task: str
    source: str
    action_repeat: int = ACTION_REPEAT
    task_id: int | None = None
    camera_id: int = 0

    @property
    def gym_id(self) -> str:
        """The registered gymnasium id, e.g. ``mbdpo/walker-run-v0``."""
        return f"mbdpo/{self.name}-v0"

    @property
    def is_metaworld(self) -> bool:
        return self.source == "metaworld"


def _family(name: str) -> str:
    if name.startswith("mw-"):
        return "metaworld"
    if name.startswith("reacher-three"):
        return "reacher-three"
    if name.startswith("finger-"):
        return "finger-spin" if name == "finger-spin" else "finger-turn"
    return name.split("-", 1)[0]


def _build_spec(name: str) -> TaskSpec:
    task_id = MT80_TASKS.index(name) if name in MT80_TASKS else None
    if name.startswith("mw-"):
        obs_dim, act_dim = DOMAIN_DIMS["metaworld"]
        return TaskSpec(name, obs_dim, act_dim, METAWORLD_EPISODE_LENGTH, "metaworld", name[3:], "metaworld",
                        task_id=task_id)  # fmt: skip
    domain, task = name.split("-", 1)
    obs_dim, act_dim = _DIM_OVERRIDES.get(name, DOMAIN_DIMS[_family(name)])
    return TaskSpec(
        name=name,
        obs_dim=obs_dim,
        action_dim=act_dim,
        episode_length=DMC_EPISODE_LENGTH,
        domain=domain,
        task=task.replace("-", "_"),
        source="custom" if name in CUSTOM_TASKS else "dmc",
        task_id=task_id,
        # TD-MPC2 renders quadruped from its third camera (a tracking view).
        camera_id=2 if domain == "quadruped" else 0,
    )


ALL_TASKS: list[str] = MT80_TASKS + EXTRA_DMC_TASKS
TASK_SPECS: dict[str, TaskSpec] = {name: _build_spec(name) for name in ALL_TASKS}

# (obs_dim, action_dim) for every known task name.
TASK_DIMS: dict[str, tuple[int, int]] = {n: (s.obs_dim, s.action_dim) for n, s in TASK_SPECS.items()}


def list_tasks(task_set: str | None = None) -> list[str]:
    """All known task names, or those of ``task_set`` (``"mt30"``/``"mt80"``)."""
    if task_set is None:
        return list(ALL_TASKS)
    if task_set not in TASK_SETS:
        raise ValueError(f"Unknown task set {task_set!r}; choose from {sorted(TASK_SETS)}.")
    return list(TASK_SETS[task_set])


def check_task_name(name: str) -> str:
    """Return ``name`` if known (a built-in task, a registered user task or ``gym:ENV_ID``), else raise a
    ValueError that suggests close matches."""
    if not isinstance(name, str):
        raise ValueError(f"Task name must be a string, got {type(name).__name__}.")
    if name in TASK_SPECS:
        return name
    from .user import is_user_task, user_task_spec

    if is_user_task(name):
        user_task_spec(name)  # a gym id must be registered (clear error otherwise)
        return name
    close = difflib.get_close_matches(name, ALL_TASKS, n=5, cutoff=0.6)
    if close:
        raise ValueError(
            f"Unknown task {name!r}. Did you mean one of {close}? "
            "List all valid names with `mbdpo_hub.envs.list_tasks()`."
        )
    raise ValueError(f"Unknown task {name!r}. Valid tasks: {', '.join(ALL_TASKS)}.")


def task_spec(name: str) -> TaskSpec:
    """Static :class:`TaskSpec` of ``name`` (no simulator is built, except once for a user's env to read its
    spaces)."""
    name = check_task_name(name)
    if name in TASK_SPECS:
        return TASK_SPECS[name]
    from .user import user_task_spec

    return user_task_spec(name)


def resolve_tasks(tasks: str | list[str]) -> list[str]:
    """Expand a task-set name (``"mt30"``), a single task, or a list into validated task names."""
    if isinstance(tasks, str):
        return list(TASK_SETS[tasks]) if tasks in TASK_SETS else [check_task_name(tasks)]
    return [check_task_name(t) for t in tasks]
