"""Pieces shared by the single-task and multi-task environments."""

from __future__ import annotations

import numpy as np

from .tasks import TaskSpec


def validate_action(action, action_dim: int) -> np.ndarray:
    """Return ``action`` as a float64 array of shape ``(action_dim,)``, clipped to [-1, 1].

    Raises:
        ValueError: wrong shape, or any NaN/inf entry (these would silently
            poison the simulator state, so we fail loudly instead).
    """
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (action_dim,):
        raise ValueError(f"Expected an action of shape ({action_dim},), got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"Action contains NaN or inf: {a}.")
    # Out-of-range but finite values are legal input for gymnasium Box spaces in practice
    # (e.g. Gaussian policies); clip like TD-MPC2's policies do instead of raising.
    return np.clip(a, -1.0, 1.0)


class SingleTaskAttributes:
    """Gives a single-task env the attributes of :class:`MultiTaskEnv` (lists of length 1).

    Recipes can then read ``env.tasks``, ``env.obs_dims`` ... without caring how
    many tasks the environment has.
    """

    spec_info: TaskSpec

    @property
    def tasks(self) -> list[str]:
        return [self.spec_info.name]

    @property
    def task_ids(self) -> list[int | None]:
        return [self.spec_info.task_id]

    @property
    def obs_dims(self) -> list[int]:
        return [self.spec_info.obs_dim]

    @property
    def action_dims(self) -> list[int]:
        return [self.spec_info.action_dim]

    @property
    def episode_lengths(self) -> list[int]:
        return [self.episode_length]

    @property
    def max_obs_dim(self) -> int:
        return self.spec_info.obs_dim

    @property
    def max_action_dim(self) -> int:
        return self.spec_info.action_dim

    @property
    def num_tasks(self) -> int:
        return 1

    @property
    def action_masks(self) -> np.ndarray:
        """(1, action_dim) float32 ones."""
        return np.ones((1, self.spec_info.action_dim), dtype=np.float32)

    @property
    def task_name(self) -> str:
        return self.spec_info.name
