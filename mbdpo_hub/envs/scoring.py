"""TD-MPC2's multi-task normalised score."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def task_score(task: str, value: float) -> float:
    """Per-task score in [0, 100]: Meta-World ``success * 100``, DMControl ``return / 10``.

    ``value`` is the mean success rate (in [0, 1]) for ``mw-*`` tasks and the mean
    episode return (max 1000 for 500-step DMC episodes) otherwise.
    """
    return float(value) * 100.0 if task.startswith("mw-") else float(value) / 10.0


def normalized_score(results: Mapping[str, float]) -> float:
    """Mean of :func:`task_score` over the tasks in ``results`` (task -> mean return or success)."""
    if not results:
        raise ValueError("normalized_score needs at least one task result.")
    return float(np.mean([task_score(t, v) for t, v in results.items()]))
