import pytest
import torch

from mbdpo_hub import MBDPODiffusionPolicy
from mbdpo_hub.planners import DiffusionPlanner, ModelBasedDiffusionScheduler, MPPIPlanner, make_planner


class QuadraticWorld:
    """A hand-built world model: the latent carries the env's goal sequence, the dynamics keep it, the reward of
    step t is -||a_t - goal_t||^2 and the terminal value is 0. The best plan is the goal itself."""

    def __init__(self, config, goals, env_masks, task_masks):
        # goals (B, H, A); env_masks (B, A) per env; task_masks (num_tasks, A)
        self.config, self.goals, self.masks, self.task_masks = config, goals, env_masks, task_masks

    def estimate_value(self, z, actions, task, generator=None, repeats=1):  # z (B, 1) holds the env index
        goal = self.goals[z[:, 0].long()].repeat_interleave(repeats, 0).transpose(0, 1)  # (H, B*repeats, A)
        return -((actions - goal) ** 2).sum(dim=(0, 2))

    def policy_rollout(self, z, task, horizon, generator=None):  # a poor prior: uniform actions
        return (torch.rand(horizon, z.shape[0], self.config.action_dim, generator=generator) * 2 - 1) * \
            self.masks[z[:, 0].long()]

    def action_mask(self, task, like):
        return self.task_masks[task]


def _setup(tiny, **kw):
    cfg = tiny(num_samples=256, num_elites=32, num_pi_trajs=8, diffusion_steps=20, mppi_iterations=6, **kw)
    B, H, A = 3, cfg.horizon, cfg.action_dim
    g = torch.Generator().manual_seed(0)
    goals = torch.rand(B, H, A, generator=g) * 1.2 - 0.6
    task = torch.tensor([0, 1, 0])
    task_masks = torch.stack([torch.ones(A), torch.tensor([1.0] + [0.0] * (A - 1))])
    goals = goals * task_masks[task].unsqueeze(1)
    z = torch.arange(B, dtype=torch.float32).unsqueeze(1)
    return cfg, QuadraticWorld(cfg, goals, task_masks[task], task_masks), z, task, goals


@pytest.mark.parametrize("planner_cls", [DiffusionPlanner, MPPIPlanner])
def test_planner_finds_the_best_sequence(tiny, planner_cls):
    cfg, world, z, task, goals = _setup(tiny)
    planner = planner_cls(cfg)
    g = torch.Generator().manual_seed(1)
    action, mean = planner.plan(world, z, task, eval_mode=True, generator=g)
    assert action.shape == (3, cfg.action_dim) and mean.shape == (3, cfg.horizon, cfg.action_dim)
    assert (action.abs() <= 1).all() and (action[1, 1:] == 0).all() and (mean[1, :, 1:] == 0).all()
    # the plan lands near the known optimum, far better than the zero sequence
    err = (mean - goals).abs().max().item()
    assert err < 0.15, err
    zero_value = world.estimate_value(z, torch.zeros_like(mean).transpose(0, 1), task)
    plan_value = world.estimate_value(z, mean.transpose(0, 1), task)
    assert (plan_value > 0.2 * zero_value).all()  # values are negative: within 20% of the zero plan's regret
    # MPPI acts with one elite drawn by weight (not the mean), so its first action is noisier
    tol = 0.15 if planner_cls is DiffusionPlanner else 0.3
    assert (action - goals[:, 0]).abs().max() < tol


def test_exploration_noise_and_masks(tiny):
    cfg, world, z, task, goals = _setup(tiny)
    planner = DiffusionPlanner(cfg)
    a1, _ = planner.plan(world, z, task, eval_mode=False, generator=torch.Generator().manual_seed(0))
    a2, _ = planner.plan(world, z, task, eval_mode=True, generator=torch.Generator().manual_seed(0))
    assert (a1[1, 1:] == 0).all() and not torch.equal(a1, a2)


def test_schedule():
    s = ModelBasedDiffusionScheduler(20, 1e-4, 1e-2)
    assert s.timesteps.tolist() == list(range(19, 0, -1))
    assert s.sample_std(19) == pytest.approx(0.327, abs=2e-3)
    assert s.sample_std(1) == pytest.approx(0.0245, abs=5e-3)
    # with the Monte-Carlo score, one reverse step maps x_t to sqrt(abar_{t-1}) * x0_hat
    x, x0 = torch.randn(4, 3, 2), torch.rand(4, 3, 2)
    out = s.step(s.mc_score(x, 10, x0), 10, x).prev_sample
    torch.testing.assert_close(out, s.alphas_cumprod[9].sqrt().float() * x0, rtol=1e-4, atol=1e-4)
    # per-sample steps (the score network's training target) agree with the int form
    steps = torch.tensor([10, 3, 10, 7])
    per = s.mc_score(x, steps, x0)
    for i, t in enumerate(steps.tolist()):
        torch.testing.assert_close(per[i], s.mc_score(x[i:i + 1], t, x0[i:i + 1])[0], rtol=1e-5, atol=1e-5)


def test_schedule_is_a_saveable_config(tmp_path):
    s = ModelBasedDiffusionScheduler(12, 2e-4, 2e-2)
    s.save_pretrained(tmp_path)
    r = ModelBasedDiffusionScheduler.from_pretrained(tmp_path)
    assert r.config == s.config and torch.equal(r.alphas_cumprod, s.alphas_cumprod)
    assert ModelBasedDiffusionScheduler.from_config(s.config).timesteps.tolist() == s.timesteps.tolist()


@pytest.mark.parametrize("planner", ["diffusion", "mppi", "score", "policy"])
def test_every_planner_drives_a_policy(tiny, planner):
    p = MBDPODiffusionPolicy(tiny(use_score_network=True, planner=planner))
    obs = torch.randn(2, 24)
    a = p.select_action(obs, task=[0, 1])
    assert a.shape == (2, 6) and (a.abs() <= 1).all() and (a[1, 1:] == 0).all()


def test_planners_run_on_a_bare_world_model(tiny):
    p = MBDPODiffusionPolicy(tiny())
    wm = p.world_model
    z = wm.encode(torch.randn(2, 24), torch.tensor([0, 1]))
    for name in ("diffusion", "mppi"):
        cfg = tiny(planner=name)
        a, _ = make_planner(cfg).plan(wm, z, torch.tensor([0, 1]), eval_mode=True)
        assert a.shape == (2, 6) and (a[1, 1:] == 0).all()


def test_warm_start_per_env_and_reset(tiny):
    p = MBDPODiffusionPolicy(tiny())
    p.select_action(torch.randn(3, 24), task=0)
    assert p._has_prev.all()
    first = p._prev_mean.clone()
    p.reset([1])
    assert p._has_prev.tolist() == [True, False, True]
    assert torch.equal(p._prev_mean, first)
    p.reset()
    assert not p._has_prev.any()
    # a warm-started call starts from the previous plan shifted by one step
    planner = p.planner
    init = planner.warm_start(torch.zeros(3, 16), first, torch.tensor([True, False, True]))
    torch.testing.assert_close(init[0, :-1], first[0, 1:])
    assert (init[1] == 0).all() and (init[:, -1] == 0).all()
