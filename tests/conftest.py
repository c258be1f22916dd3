import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

pytest_plugins = ["mbdpo_hub_testing.pytest_plugin"]

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MBDPO_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


def tiny_config(**overrides):
    """A small two-task config (walker-walk 24/6, cartpole-balance 5/1) with a cheap planner, for unit tests."""
    from mbdpo_hub import MBDPOConfig

    base = dict(tasks=["walker-walk", "cartpole-balance"], obs_dims=[24, 5], action_dims=[6, 1],
                episode_lengths=[500, 500], task_dim=8, enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2,
                num_samples=32, num_elites=8, num_pi_trajs=4, diffusion_steps=4, mppi_iterations=3)
    base.update(overrides)
    return MBDPOConfig(**base)


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.skip(f"official fixtures not found at {FIXTURES} (set MBDPO_FIXTURES)")
    return FIXTURES
