"""Planners: small objects with no networks, sharing one interface over the planning-model API (see `base`)."""

from .base import Planner, elite_weights, gather_sequences
from .diffusion import DiffusionPlanner, ModelBasedDiffusionScheduler, ScorePlanner
from .mppi import MPPIPlanner, PolicyPlanner

PLANNER_CLASSES = {p.name: p for p in (DiffusionPlanner, MPPIPlanner, ScorePlanner, PolicyPlanner)}


def make_planner(config) -> Planner:
    """The planner named by `config.planner`."""
    try:
        return PLANNER_CLASSES[config.planner](config)
    except KeyError:
        raise ValueError(f"Unknown planner {config.planner!r}; choose one of {sorted(PLANNER_CLASSES)}") from None


__all__ = ["Planner", "DiffusionPlanner", "MPPIPlanner", "ScorePlanner", "PolicyPlanner",
           "ModelBasedDiffusionScheduler", "make_planner", "PLANNER_CLASSES", "elite_weights", "gather_sequences"]
