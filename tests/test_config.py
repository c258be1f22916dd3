import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError

from mbdpo_hub import MBDPOConfig, MBDPOWorldModel

MT30 = [1_426_427, 5_241_066, 16_031_210, 48_242_410, 317_316_889]
MT80 = [1_435_067, 5_389_930, 18_970_218, 48_791_146, 317_383_129]


@pytest.mark.parametrize("task_set,counts", [("mt30", MT30), ("mt80", MT80)])
@pytest.mark.parametrize("i,size", list(enumerate([1, 5, 19, 48, 317])))
def test_preset_parameter_counts_match_tdmpc2(task_set, counts, i, size):
    config = MBDPOConfig.from_preset(size, task_set)
    with torch.device("meta"):  # shapes only: the 317M model is not materialised
        model = MBDPOWorldModel(config)
    assert model.num_parameters() == counts[i]


def test_preset_quirks():
    assert MBDPOConfig.from_preset(19, "mt30").latent_dim == 512
    assert MBDPOConfig.from_preset(19, "mt80").latent_dim == 768
    assert MBDPOConfig.from_preset(5, "mt30").task_dim == 64
    assert MBDPOConfig.from_preset(5, "mt80").task_dim == 96
    assert MBDPOConfig.from_preset(1, "mt30").task_dim == 96
    assert MBDPOConfig.from_preset(5, "walker-walk").task_dim == 0
    c = MBDPOConfig.from_preset(1, "mt80")
    assert (c.obs_dim, c.action_dim, c.num_tasks) == (39, 6, 80)
    assert MBDPOConfig.from_preset(1, "mt30").num_q == 2


def test_single_task_walker_count():
    with torch.device("meta"):
        m = MBDPOWorldModel(MBDPOConfig.from_preset(5, "walker-walk"))
    assert m.num_parameters() == 4_960_618


def test_paper_defaults():
    c = MBDPOConfig()
    assert (c.planner, c.horizon, c.diffusion_steps, c.num_samples, c.num_elites, c.num_pi_trajs) == (
        "diffusion", 3, 20, 512, 64, 24)
    assert (c.diffusion_beta0, c.diffusion_betaT, c.temperature, c.action_noise, c.energy_eta) == (
        1e-4, 1e-2, 0.5, 0.05, 0.01)


def test_discount_heuristic():
    c = MBDPOConfig(tasks=["a", "b", "c"], obs_dims=[3] * 3, action_dims=[1] * 3, episode_lengths=[100, 500, 1000])
    assert c.discounts == pytest.approx([0.95, 0.99, 0.995])


@pytest.mark.parametrize("kwargs,match", [
    (dict(latent_dim=100, simnorm_dim=8), "not divisible"),
    (dict(planner="cem"), "planner"),
    (dict(horizon=600), "horizon"),
    (dict(num_elites=1000), "num_elites"),
    (dict(obs_dims=[24, 5]), "obs_dims"),
    (dict(num_q=1), "num_q"),
    (dict(diffusion_beta0=0.1, diffusion_betaT=0.01), "beta"),
    (dict(planner="score"), "score network"),
    (dict(tasks=["a", "a"], obs_dims=[1, 1], action_dims=[1, 1], episode_lengths=[9, 9]), "duplicate"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(StrictDataclassClassValidationError, match=match):
        MBDPOConfig(**kwargs)


def test_type_validation():
    with pytest.raises((StrictDataclassFieldValidationError, StrictDataclassClassValidationError), match="latent_dim"):
        MBDPOConfig(latent_dim="big")


def test_unknown_task_and_size():
    with pytest.raises(ValueError, match="Unknown task"):
        MBDPOConfig.from_preset(1, "walker-fly")
    with pytest.raises(ValueError, match="model size"):
        MBDPOConfig.from_preset(7, "walker-walk")
    c = MBDPOConfig.from_preset(1, "mt30")
    assert c.task_id("pendulum-spin") == 29
    with pytest.raises(ValueError, match="Unknown task"):
        c.task_id("dog-run")
    with pytest.raises(ValueError, match="out of range"):
        c.task_id(30)


def test_config_json_round_trip(tmp_path):
    c = MBDPOConfig.from_preset(1, "mt30", planner="mppi")
    c.save_pretrained(tmp_path)
    d = MBDPOConfig.from_pretrained(tmp_path)
    assert d.to_dict() == c.to_dict()


def test_from_env_single_multi_and_vector():
    from mbdpo_hub.envs import MultiTaskEnv, make_env, make_vec_env

    c = MBDPOConfig.from_env(make_env("reacher-easy"), horizon=3)
    assert (c.tasks, c.obs_dim, c.action_dim, c.task_dim) == (["reacher-easy"], 6, 2, 0)
    env = MultiTaskEnv(["cartpole-balance", "walker-walk"])
    c = MBDPOConfig.from_env(env, task_dim=16)
    assert c.obs_dims == [5, 24] and c.action_dims == [1, 6] and (c.obs_dim, c.action_dim) == (24, 6)
    venv = make_vec_env("cup-catch", 2)
    assert MBDPOConfig.from_env(venv).tasks == ["cup-catch"]
    venv.close()
