"""Tests for mbdpo_hub.envs (CPU, headless; the whole file runs in well under a minute)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mbdpo_hub import envs as E  # noqa: E402
from mbdpo_hub.envs import (  # noqa: E402
    MT30_TASKS,
    MT80_TASKS,
    TASK_DIMS,
    make_env,
    make_vec_env,
    normalized_score,
    record_episode_video,
    task_spec,
)

# ----------------------------------------------------------------------------------------------
# Spec table
# ----------------------------------------------------------------------------------------------

EXPECTED_FAMILY_DIMS = {
    "walker": (24, 6), "cheetah": (17, 6), "reacher": (6, 2), "reacher-three": (8, 3), "acrobot": (6, 1),
    "pendulum": (3, 1), "cartpole": (5, 1), "cup": (8, 2), "finger-spin": (9, 2), "finger-turn": (12, 2),
    "fish": (24, 5), "hopper": (15, 4), "dog": (223, 38), "humanoid": (67, 21), "quadruped": (78, 12),
}  # fmt: skip


def _family(name):
    if name.startswith("reacher-three"):
        return "reacher-three"
    if name.startswith("finger-"):
        return "finger-spin" if name == "finger-spin" else "finger-turn"
    return name.split("-")[0]


def test_task_lists_and_ids():
    assert len(MT30_TASKS) == 30 and len(set(MT30_TASKS)) == 30
    assert len(MT80_TASKS) == 80 and len(set(MT80_TASKS)) == 80
    assert MT80_TASKS[:30] == MT30_TASKS
    assert MT30_TASKS[0] == "walker-stand" and MT30_TASKS[19] == "walker-walk-backwards"
    assert MT30_TASKS[-1] == "pendulum-spin" and MT80_TASKS[30] == "mw-assembly" and MT80_TASKS[-1] == "mw-hand-insert"
    for i, name in enumerate(MT80_TASKS):
        assert task_spec(name).task_id == i
    assert task_spec("dog-run").task_id is None


def test_task_dims_table():
    for family, dims in EXPECTED_FAMILY_DIMS.items():
        assert E.DOMAIN_DIMS[family] == dims
    for name in MT30_TASKS + ["dog-run", "humanoid-walk", "quadruped-run"]:
        assert TASK_DIMS[name] == EXPECTED_FAMILY_DIMS[_family(name)], name
    spec = task_spec("walker-run")
    assert (spec.obs_dim, spec.action_dim, spec.episode_length, spec.domain) == (24, 6, 500, "walker")
    assert spec.gym_id == "mbdpo/walker-run-v0"
    mw = task_spec("mw-reach")
    assert (mw.obs_dim, mw.action_dim, mw.episode_length, mw.source) == (39, 4, 100, "metaworld")
    assert task_spec("quadruped-run").camera_id == 2 and task_spec("walker-run").camera_id == 0


def test_normalized_score():
    assert normalized_score({"walker-run": 800.0}) == pytest.approx(80.0)
    assert normalized_score({"walker-run": 800.0, "mw-reach": 0.5}) == pytest.approx(65.0)
    with pytest.raises(ValueError):
        normalized_score({})


# ----------------------------------------------------------------------------------------------
# Building, stepping, seeding
# ----------------------------------------------------------------------------------------------


def test_every_mt30_task_builds_and_steps():
    for name in MT30_TASKS:
        env = make_env(name, seed=0)
        obs_dim, act_dim = TASK_DIMS[name]
        assert env.observation_space.shape == (obs_dim,)
        assert env.action_space.shape == (act_dim,)
        assert env.action_space.low.min() == -1 and env.action_space.high.max() == 1
        obs, info = env.reset()
        assert obs.shape == (obs_dim,) and obs.dtype == np.float32, name
        assert info["task_name"] == name
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.shape == (obs_dim,) and obs.dtype == np.float32 and np.all(np.isfinite(obs))
        assert isinstance(reward, float) and 0.0 <= reward <= 2.0 + 1e-6  # <= action_repeat
        assert terminated is False and truncated is False
        # single-task env exposes the multi-task attributes as length-1 lists
        assert env.tasks == [name] and env.obs_dims == [obs_dim] and env.action_dims == [act_dim]
        assert env.episode_lengths == [500] and env.max_obs_dim == obs_dim and env.max_action_dim == act_dim


@pytest.mark.slow
def test_extra_dmc_tasks_dims():
    for name in E.EXTRA_DMC_TASKS:
        env = make_env(name, seed=0)
        obs, _ = env.reset()
        assert obs.shape == (TASK_DIMS[name][0],), name
        obs, *_ = env.step(np.zeros(TASK_DIMS[name][1]))
        assert obs.shape == (TASK_DIMS[name][0],), name


def test_observation_is_flat_dict_order():
    env = make_env("walker-walk", seed=3)
    obs, _ = env.reset()
    ts_obs = env.dmc_task.get_observation(env.physics)
    assert list(ts_obs) == ["orientations", "height", "velocity"]
    np.testing.assert_allclose(obs, E.flatten_observation(ts_obs))
    np.testing.assert_allclose(obs[14], env.physics.torso_height(), rtol=1e-6)


def test_truncation_after_500_steps_and_action_repeat():
    env = make_env("cartpole-balance", seed=0)
    env.reset()
    n, t0 = 0, env.physics.data.time
    while True:
        _, _, terminated, truncated, _ = env.step(np.zeros(1))
        n += 1
        assert not terminated
        if truncated:
            break
    assert n == 500
    # 2 control steps of 0.01 s per agent step -> 10 s of simulated time
    assert env.physics.data.time - t0 == pytest.approx(10.0, abs=1e-6)


def _rollout(env, seed, n=15):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    traj, rews = [obs], []
    for _ in range(n):
        obs, r, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        traj.append(obs)
        rews.append(r)
    return np.stack(traj), np.array(rews)


@pytest.mark.parametrize("name", ["walker-walk", "cheetah-run-backwards", "cup-spin", "reacher-three-easy"])
def test_seeding_is_deterministic(name):
    a_obs, a_rew = _rollout(make_env(name), seed=7)
    b_obs, b_rew = _rollout(make_env(name), seed=7)
    np.testing.assert_array_equal(a_obs, b_obs)
    np.testing.assert_array_equal(a_rew, b_rew)
    # reset(seed=...) on a used env replays the same trajectory
    env = make_env(name)
    _rollout(env, seed=1)
    c_obs, _ = _rollout(env, seed=7)
    np.testing.assert_array_equal(a_obs, c_obs)
    d_obs, _ = _rollout(make_env(name), seed=8)
    assert not np.array_equal(a_obs[0], d_obs[0])
    # a constructor seed makes the first reset() reproducible too
    e1, _ = make_env(name, seed=5).reset()
    e2, _ = make_env(name, seed=5).reset()
    np.testing.assert_array_equal(e1, e2)


def test_gymnasium_registry():
    ids = E.register_envs()  # idempotent: ids are already registered on import
    assert "mbdpo/walker-run-v0" in ids and "mbdpo/cup-spin-v0" in gym.registry
    assert "mbdpo/mw-reach-v0" in gym.registry
    env = gym.make("mbdpo/pendulum-spin-v0")
    obs, info = env.reset(seed=0)
    assert obs.shape == (3,)
    env.step(env.action_space.sample())
    assert env.unwrapped.tasks == ["pendulum-spin"]


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_unknown_task_error():
    with pytest.raises(ValueError, match="walker-run"):
        make_env("walker-rnu")
    with pytest.raises(ValueError, match="list_tasks|Valid tasks"):
        make_env("no-such-task")
    with pytest.raises(ValueError):
        gym.make("mbdpo/walker-run-v0", task="nope")


def test_bad_action_errors():
    env = make_env("walker-walk", seed=0)
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((1, 6)))
    bad = np.zeros(6)
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.step(bad)
    bad[2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(bad)
    env.step(np.full(6, 3.0))  # finite out-of-range actions are clipped, not rejected


def test_metaworld_missing_gives_clear_import_error():
    try:
        import metaworld  # noqa: F401

        pytest.skip("metaworld is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="metaworld"):
        make_env("mw-reach")


# ----------------------------------------------------------------------------------------------
# Custom rewards on constructed physics states
# ----------------------------------------------------------------------------------------------


def _set_state(env, qpos=None, qvel=None):
    """Set named joint positions/velocities from a clean state and recompute derived quantities."""
    physics = env.physics
    with physics.reset_context():  # mj_resetData on entry, mj_forward (sensors, xpos) on exit
        for k, v in (qpos or {}).items():
            physics.named.data.qpos[k] = v
        for k, v in (qvel or {}).items():
            physics.named.data.qvel[k] = v
    return env.dmc_task.get_reward(physics)


def test_walker_backwards_rewards():
    run = make_env("walker-run-backwards", seed=0)
    run.reset()
    assert _set_state(run, qvel={"rootx": -8.0}) == pytest.approx(1.0)
    # model default pose: torso upright at 1.3 m, so the stand term is 1
    assert run.physics.torso_height() >= 1.2 and run.physics.torso_upright() == pytest.approx(1.0)
    assert _set_state(run, qvel={"rootx": -12.0}) == pytest.approx(1.0)
    assert _set_state(run, qvel={"rootx": 8.0}) == pytest.approx(1 / 6)  # move term 0
    assert _set_state(run, qvel={"rootx": -4.0}) == pytest.approx((5 * 0.5 + 1) / 6)  # at the margin
    walk = make_env("walker-walk-backwards", seed=0)
    walk.reset()
    assert _set_state(walk, qvel={"rootx": -1.0}) == pytest.approx(1.0)
    assert _set_state(walk, qvel={"rootx": 1.0}) == pytest.approx(1 / 6)


def test_cheetah_custom_rewards():
    env = make_env("cheetah-run-backwards", seed=0)
    env.reset()
    assert _set_state(env, qvel={"rootx": -8.0}) == pytest.approx(1.0)
    assert _set_state(env, qvel={"rootx": -4.0}) == pytest.approx(0.5)
    assert _set_state(env, qvel={"rootx": 8.0}) == pytest.approx(0.0)

    # lifted 2 m: torso and both feet above 1.2 m -> the "up" term is 1
    for name in ["cheetah-run-front", "cheetah-run-back"]:
        env = make_env(name, seed=0)
        env.reset()
        assert _set_state(env, qpos={"rootz": 2.0}, qvel={"rootx": 6.0}) == pytest.approx(1.0)
        assert _set_state(env, qpos={"rootz": 2.0}, qvel={"rootx": 3.0}) == pytest.approx((5 * 0.5 + 1) / 6)
        assert _set_state(env, qpos={"rootz": 2.0}) == pytest.approx(1 / 6)
        assert _set_state(env, qpos={"rootz": 2.0}, qvel={"rootx": -6.0}) == pytest.approx(1 / 6)

    # pitched so that one foot is high and the other low: front (raised back foot) != back
    front, back = make_env("cheetah-run-front", seed=0), make_env("cheetah-run-back", seed=0)
    front.reset(), back.reset()
    state = dict(qpos={"rootz": 0.6, "rooty": 0.6}, qvel={"rootx": 6.0})
    r_front, r_back = _set_state(front, **state), _set_state(back, **state)
    bz, fz = front.physics.named.data.xpos["bfoot", "z"], front.physics.named.data.xpos["ffoot", "z"]
    assert bz > fz + 0.3
    assert r_front > r_back

    jump = make_env("cheetah-jump", seed=0)
    jump.reset()
    assert _set_state(jump, qpos={"rootz": 2.0}) == pytest.approx(1.0)
    assert _set_state(jump, qpos={"rootz": 2.0}, qvel={"rootx": 1.0}) == pytest.approx(5 / 6)
    assert _set_state(jump) < 0.5  # on the ground


def test_hopper_hop_backwards_reward():
    env = make_env("hopper-hop-backwards", seed=0)
    env.reset()
    _set_state(env)
    assert 0.6 <= env.physics.height() <= 2  # default pose stands
    assert _set_state(env, qvel={"rootx": -1.0}) == pytest.approx(1.0)
    assert _set_state(env, qvel={"rootx": -0.75}) == pytest.approx(0.75)
    assert _set_state(env, qvel={"rootx": 1.0}) == pytest.approx(0.0)
    assert _set_state(env, qpos={"rootz": -0.9}, qvel={"rootx": -1.0}) == pytest.approx(1.0)  # height is relative


def test_reacher_three_model_and_reward():
    env = make_env("reacher-three-easy", seed=0)
    env.reset()
    physics = env.physics
    assert physics.model.nq == 3 and physics.model.nu == 3
    names = [physics.model.id2name(i, "joint") for i in range(3)]
    assert names == ["shoulder0", "shoulder1", "wrist"]
    np.testing.assert_allclose(np.rad2deg(physics.named.model.jnt_range["shoulder1"]), [-80, 80])
    np.testing.assert_allclose(np.rad2deg(physics.named.model.jnt_range["wrist"]), [-80, 80])
    assert not physics.named.model.jnt_limited["shoulder0"]
    _set_state(env)  # all joints 0: the arm is stretched along +x
    np.testing.assert_allclose(physics.named.data.geom_xpos["finger", :2], [0.27, 0.0], atol=1e-9)
    assert physics.named.model.geom_size["target", 0] == pytest.approx(0.05)
    # target on the finger -> 1, far away -> 0
    physics.named.model.geom_pos["target", :2] = [0.27, 0.0]
    physics.forward()
    assert env.dmc_task.get_reward(physics) == pytest.approx(1.0)
    physics.named.model.geom_pos["target", :2] = [-0.2, 0.0]
    physics.forward()
    assert env.dmc_task.get_reward(physics) == pytest.approx(0.0)
    hard = make_env("reacher-three-hard", seed=0)
    hard.reset()
    assert hard.physics.named.model.geom_size["target", 0] == pytest.approx(0.015)


def test_cup_spin_reward_and_init():
    env = make_env("cup-spin", seed=0)
    env.reset()
    # ball body rests at z=.2; the target site is at z=.55 above the origin
    assert _set_state(env, qpos={"ball_z": 0.35}) == pytest.approx(0.0)  # in the cup -> 0
    assert env.physics.in_target() == 1.0
    assert _set_state(env, qpos={"ball_x": 0.6, "ball_z": 0.35}, qvel={"ball_x": 6.0}) == pytest.approx(1.0)
    # dist 0.25 (value 0.5) and speed 3 (value 0.5): (0.5 + 2 * 0.5) / 3
    assert _set_state(env, qpos={"ball_x": 0.25, "ball_z": 0.35}, qvel={"ball_z": -3.0}) == pytest.approx(0.5)
    # ~90% of initial states have the ball in the cup
    in_cup = []
    for seed in range(40):
        env.reset(seed=seed)
        in_cup.append(env.physics.in_target())
    assert 0.7 <= np.mean(in_cup) < 1.0


def test_pendulum_spin_reward():
    env = make_env("pendulum-spin", seed=0)
    env.reset()
    assert _set_state(env, qvel={"hinge": 9.0}) == pytest.approx(1.0)
    assert _set_state(env, qvel={"hinge": -12.0}) == pytest.approx(1.0)
    assert _set_state(env, qvel={"hinge": 4.5}) == pytest.approx(0.5)
    assert _set_state(env, qvel={"hinge": 0.0}) == pytest.approx(0.0)


# ----------------------------------------------------------------------------------------------
# Multi-task and vector envs
# ----------------------------------------------------------------------------------------------


def test_multitask_env_padding_masks_and_info():
    env = E.MultiTaskEnv(MT30_TASKS, seed=0)
    assert env.max_obs_dim == 24 and env.max_action_dim == 6
    assert env.observation_space.shape == (24,) and env.action_space.shape == (6,)
    assert env.obs_dims[MT30_TASKS.index("pendulum-spin")] == 3
    assert env.episode_lengths == [500] * 30
    masks = env.action_masks
    assert masks.shape == (30, 6)
    for i, a in enumerate(env.action_dims):
        assert masks[i, :a].sum() == a and masks[i, a:].sum() == 0

    obs, info = env.reset(options={"task": "pendulum-spin"})
    assert obs.shape == (24,) and obs.dtype == np.float32
    assert np.all(obs[3:] == 0) and np.any(obs[:3] != 0)
    assert info["task"] == 29 and info["task_name"] == "pendulum-spin"
    obs, r, term, trunc, info = env.step(np.zeros(6))
    assert np.all(obs[3:] == 0) and info["task"] == 29
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(1))

    obs, info = env.reset(options={"task": 3})
    assert info["task_name"] == "cheetah-run" and np.all(obs[17:] == 0)

    # sampled tasks are reproducible from the seed and cover several tasks
    sampled = [env.reset(seed=s)[1]["task"] for s in range(12)]
    assert sampled == [env.reset(seed=s)[1]["task"] for s in range(12)]
    assert len(set(sampled)) > 3


def test_multitask_padded_action_dims_are_ignored():
    def run(pad_value):
        env = E.MultiTaskEnv(["cartpole-swingup", "walker-walk"], seed=0)
        env.reset(seed=4, options={"task": "cartpole-swingup"})
        out = []
        for k in range(5):
            a = np.full(6, pad_value, dtype=np.float32)
            a[0] = 0.3 * (-1) ** k
            out.append(env.step(a)[0])
        return np.stack(out)

    np.testing.assert_array_equal(run(0.0), run(0.9))


def test_make_env_task_set_gives_multitask():
    env = make_env("mt30", seed=1)
    assert isinstance(env, E.MultiTaskEnv) and env.tasks == MT30_TASKS
    env = make_env(["walker-walk", "cup-spin"], seed=1)
    assert env.tasks == ["walker-walk", "cup-spin"] and env.max_action_dim == 6


def test_sync_vector_env_of_4():
    envs = make_vec_env("walker-walk", num_envs=4, seed=0, vectorization_mode="sync")
    obs, info = envs.reset()
    assert obs.shape == (4, 24) and obs.dtype == np.float32
    assert not np.array_equal(obs[0], obs[1])  # per-env seeds differ
    for _ in range(5):
        obs, rew, term, trunc, info = envs.step(envs.action_space.sample())
    assert obs.shape == (4, 24) and rew.shape == (4,) and not term.any() and not trunc.any()
    envs.close()


def test_vector_env_same_step_autoreset():
    envs = make_vec_env("pendulum-spin", num_envs=2, seed=0, episode_length=3)
    envs.reset()
    for _ in range(3):
        obs, rew, term, trunc, info = envs.step(np.zeros((2, 1), dtype=np.float32))
    assert trunc.all()
    assert info["_final_obs"].all() and info["final_obs"][0].shape == (3,)
    envs.close()


@pytest.mark.slow
def test_async_vector_env_of_4():
    envs = make_vec_env("cheetah-run", num_envs=4, seed=0, vectorization_mode="async")
    obs, _ = envs.reset()
    assert obs.shape == (4, 17)
    obs, rew, *_ = envs.step(envs.action_space.sample())
    assert obs.shape == (4, 17) and rew.shape == (4,)
    envs.close()


# ----------------------------------------------------------------------------------------------
# Rendering and video
# ----------------------------------------------------------------------------------------------


def test_render_and_video(tmp_path):
    import imageio.v2 as imageio

    env = make_env("cheetah-run", seed=0, render_mode="rgb_array", render_height=48, render_width=64)
    env.reset()
    frames = [env.render()]
    for _ in range(4):
        env.step(env.action_space.sample())
        frames.append(env.render())
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert frames[0].std() > 0  # not a blank frame

    mp4 = record_episode_video(frames, tmp_path / "ep.mp4", fps=10)
    back = imageio.mimread(mp4, format="FFMPEG")
    assert len(back) == 5 and back[0].shape == (48, 64, 3)
    gif = record_episode_video(frames, tmp_path / "sub" / "ep.gif", fps=10)
    assert len(imageio.mimread(gif)) == 5
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-video-")]
    with pytest.raises(ValueError):
        record_episode_video(frames, tmp_path / "ep.avi")


def test_default_render_size_and_quadruped_camera():
    env = make_env("walker-walk", seed=0, render_mode="rgb_array")
    env.reset()
    assert env.render().shape == (240, 320, 3)
    assert make_env("quadruped-walk", seed=0).camera_id == 2


def test_metaworld_task_when_installed():
    pytest.importorskip("metaworld")  # only in a venv with the `metaworld` extra
    env = make_env("mw-reach", seed=0)
    obs, info = env.reset(seed=0)
    assert obs.shape == (39,) and obs.dtype == np.float32 and "success" in info
    n = 0
    while True:
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        n += 1
        if term or trunc:
            break
    assert n == 100 and info["success"] in (0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# users' own environments: gym:ENV_ID and register_task
# ---------------------------------------------------------------------------------------------------------------------


def test_gym_id_is_a_task_with_rescaled_actions_and_its_time_limit():
    import gymnasium as gym

    spec = E.task_spec("gym:Pendulum-v1")
    assert (spec.obs_dim, spec.action_dim, spec.episode_length, spec.source) == (3, 1, 200, "user")
    env = E.make_env("gym:Pendulum-v1", seed=3)
    obs, info = env.reset()
    ref = gym.make("Pendulum-v1")
    ref_obs, _ = ref.reset(seed=3)
    np.testing.assert_allclose(obs, ref_obs, rtol=1e-6)
    _, r, *_ = env.step(np.array([1.0]))    # +1 -> the env's upper bound (2.0)
    _, r_ref, *_ = ref.step(np.array([2.0], dtype=np.float32))
    assert r == pytest.approx(r_ref, rel=1e-6)
    n, done = 1, False
    while not done:
        _, _, term, trunc, info = env.step(np.array([0.0]))
        n, done = n + 1, term or trunc
    assert n == 200 and trunc and info["task_name"] == "gym:Pendulum-v1"
    env.close()
    with pytest.raises(ValueError, match="not a registered gymnasium id"):
        E.task_spec("gym:NoSuchEnv-v9")


def test_register_task_and_refused_spaces():
    import gymnasium as gym

    class Line(gym.Env):
        observation_space = gym.spaces.Box(-10, 10, (2, 2), np.float64)
        action_space = gym.spaces.Box(0.0, 4.0, (1,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros((2, 2)), {}

        def step(self, action):
            return np.full((2, 2), float(action[0])), -abs(float(action[0]) - 1.0), False, False, {"success": 1.0}

    spec = E.register_task("line-test", lambda **kw: Line(), episode_length=7, overwrite=True)
    assert (spec.obs_dim, spec.action_dim, spec.episode_length) == (4, 1, 7)
    env = E.make_env("line-test")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,) and obs.dtype == np.float32
    obs, r, term, trunc, info = env.step(np.array([-0.5]))  # [-1, 1] -> [0, 4]: -0.5 -> 1.0
    assert obs[0] == pytest.approx(1.0) and r == pytest.approx(0.0) and info["success"] == 1.0

    class DictObs(Line):
        observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (2,))})

    with pytest.raises(ValueError, match="observation space Dict is not supported"):
        E.register_task("dict-test", lambda **kw: DictObs(), overwrite=True)
    with pytest.raises(ValueError, match="built-in task"):
        E.register_task("walker-walk", lambda **kw: Line())
    from mbdpo_hub.training import load_run_config

    with pytest.raises(ValueError, match="env_module='no_such_pkg_xyz' cannot be imported"):
        load_run_config(None, ["task=gym:Pendulum-v1", "env_module=no_such_pkg_xyz"])
