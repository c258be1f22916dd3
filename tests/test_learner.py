import pytest
import torch

from mbdpo_hub import MBDPODiffusionPolicy
from mbdpo_hub.learner import MBDPOLearner, RunningScale, mean_metrics


def make_batch(cfg, B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = cfg.horizon
    task = torch.randint(0, cfg.num_tasks, (B,), generator=g)
    mask = torch.tensor(cfg.action_dims)[task].unsqueeze(-1) > torch.arange(cfg.action_dim)
    obs = torch.randn(H + 1, B, cfg.obs_dim, generator=g)
    action = (torch.rand(H, B, cfg.action_dim, generator=g) * 2 - 1) * mask
    reward = obs[:-1, :, :1].tanh() + 1  # learnable: a function of the observation
    return dict(obs=obs, action=action, reward=reward, terminated=torch.zeros(H, B, 1), task=task)


def test_update_runs_and_learns_reward(tiny):
    torch.manual_seed(0)
    p = MBDPODiffusionPolicy(tiny(lr=3e-3))
    learner = MBDPOLearner(p)
    batch = make_batch(p.config)
    first = learner.update(batch)
    for _ in range(60):
        last = learner.update(batch)
    for k in ("consistency_loss", "reward_loss", "value_loss", "energy_loss", "pi_loss", "grad_norm"):
        assert k in last and torch.isfinite(torch.as_tensor(last[k]))
    assert last["reward_loss"] < 0.5 * first["reward_loss"]
    assert learner.num_updates == 61
    # no host synchronisation per update: 0-dim tensors, averaged into floats once per logging interval
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in last.values())
    means = mean_metrics({k: [first[k], last[k]] for k in first})
    assert means["reward_loss"] == pytest.approx((float(first["reward_loss"]) + float(last["reward_loss"])) / 2)
    assert mean_metrics({}) == {}


def test_energy_pairs_latent_and_action_of_the_same_step(tiny):
    """The positive of row (t, b) must be (z[t, b], action[t, b]) (upstream mixed time- and batch-major)."""
    p = MBDPODiffusionPolicy(tiny())
    learner = MBDPOLearner(p)
    cfg = p.config
    H, B = 3, 5
    z = torch.rand(H, B, cfg.latent_dim)
    action = torch.rand(H, B, cfg.action_dim)
    task = torch.tensor([0, 1, 0, 1, 0])
    seen = []
    handle = p.energy.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    learner.energy_loss(z, action, task)
    handle.remove()
    pos = seen[1]  # seen[0]: the three negative candidates (no grad); seen[1]: positives; seen[2]: negatives
    assert pos.shape == (H, B, cfg.latent_dim + cfg.task_dim + cfg.action_dim)
    torch.testing.assert_close(pos[..., : cfg.latent_dim], z)
    torch.testing.assert_close(pos[..., -cfg.action_dim:], action)
    emb = p.world_model.task_embedding(task)
    torch.testing.assert_close(pos[..., cfg.latent_dim: cfg.latent_dim + cfg.task_dim], emb.expand(H, B, -1))


def test_energy_learns_to_recognise_behaviour(tiny):
    """Actions in the data are a fixed function of the state; after training, F ranks them above random ones."""
    torch.manual_seed(0)
    p = MBDPODiffusionPolicy(tiny(tasks=["walker-walk"], obs_dims=[24], action_dims=[6], episode_lengths=[500],
                                  task_dim=0))
    learner = MBDPOLearner(p)
    W = torch.randn(24, 6)
    for i in range(80):
        obs = torch.randn(4, 64, 24)
        batch = dict(obs=obs, action=torch.tanh(obs[:-1] @ W), reward=torch.zeros(3, 64, 1), task=None)
        m = learner.update(batch)
    assert m["energy_accuracy"] > 0.8
    obs = torch.randn(256, 24)
    z = p.world_model.encode(obs)
    good = p.energy_logits(z, torch.tanh(obs @ W))
    bad = p.energy_logits(z, torch.rand(256, 6) * 2 - 1)
    assert (good > bad).float().mean() > 0.8
    assert p.energy_std.item() != 1.0  # running statistics were updated


def test_score_loss_and_freeze(tiny):
    p = MBDPODiffusionPolicy(tiny(use_score_network=True))
    learner = MBDPOLearner(p, freeze=["encoder", "dynamics"], lr_scales={"qs": 0.5})
    enc = [t.clone() for t in p.world_model.encoder.parameters()]
    score0 = [t.clone() for t in p.score_net.parameters()]
    m = learner.update(make_batch(p.config))
    assert "score_loss" in m and m["score_loss"] > 0
    assert all(torch.equal(a, b) for a, b in zip(enc, p.world_model.encoder.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(score0, p.score_net.parameters()))
    lrs = {g["name"]: g["lr"] for g in learner.optim.param_groups}
    assert "encoder" not in lrs and lrs["qs"] == pytest.approx(0.5 * p.config.lr)
    with pytest.raises(ValueError, match="unknown parameter groups"):
        MBDPOLearner(p, freeze=["decoder"])


def test_polyak_and_state_dict_round_trip(tiny):
    p = MBDPODiffusionPolicy(tiny())
    learner = MBDPOLearner(p)
    before = p.world_model.Qs.target_weight_0.clone()
    learner.update(make_batch(p.config))
    online, target = p.world_model.Qs.weight_0, p.world_model.Qs.target_weight_0
    torch.testing.assert_close(target, before + p.config.tau * (online - before), rtol=1e-5, atol=1e-6)
    state = learner.state_dict()
    other = MBDPOLearner(p)
    other.load_state_dict(state)
    assert other.num_updates == 1 and torch.equal(other.scale.value, learner.scale.value)
    assert other.optim.state_dict()["state"].keys() == learner.optim.state_dict()["state"].keys()


def test_running_scale():
    s = RunningScale(tau=1.0)
    s.update(torch.linspace(0, 100, 1001))
    assert s.value.item() == pytest.approx(90.0, rel=1e-3)
    s.update(torch.zeros(10))
    assert s.value.item() == 1.0  # clamped to at least 1


def test_reduce_fn_is_applied(tiny):
    calls = []

    def reduce_fn(x):
        calls.append(x.shape)
        return x

    p = MBDPODiffusionPolicy(tiny())
    learner = MBDPOLearner(p, reduce_fn=reduce_fn)
    learner.update(make_batch(p.config))
    # gradients: one flat all-reduce per optimiser (world model, policy prior), not one per tensor; then the
    # running statistics (energy normalisation, Q scale)
    wm = sum(p.numel() for g in learner.optim.param_groups for p in g["params"])
    pi = sum(p.numel() for p in learner.pi_optim.param_groups[0]["params"])
    flat = [s for s in calls if len(s) == 1 and s[0] > 2]
    assert sorted(s[0] for s in flat) == sorted([wm, pi]) and len(calls) <= 6

    # an identity reduce must leave the update exactly as without one: every gradient comes back into its own tensor
    torch.manual_seed(0)
    a = MBDPODiffusionPolicy(tiny(dropout=0.0))
    b = MBDPODiffusionPolicy(tiny(dropout=0.0))
    b.load_state_dict(a.state_dict())
    la, lb = MBDPOLearner(a), MBDPOLearner(b, reduce_fn=lambda x: x.clone())
    batch = make_batch(a.config)
    for i in range(2):
        torch.manual_seed(i)
        la.update(batch)
        torch.manual_seed(i)
        lb.update(batch)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_bf16_update_runs_backward_outside_autocast(tiny, monkeypatch):
    torch.manual_seed(0)
    p = MBDPODiffusionPolicy(tiny())
    learner = MBDPOLearner(p, mixed_precision="bf16")
    seen = []
    real_step = learner._step

    def step(optim, loss, params):
        seen.append((torch.is_autocast_enabled("cpu"), loss.dtype))
        return real_step(optim, loss, params)

    monkeypatch.setattr(learner, "_step", step)
    metrics = learner.update(make_batch(p.config))
    assert seen and all(not enabled for enabled, _ in seen)  # backward + step never inside autocast
    assert all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values())
    assert all(t.dtype == torch.float32 for t in p.parameters())
    with pytest.raises(ValueError, match="mixed_precision"):
        MBDPOLearner(p, mixed_precision="fp16")


def test_two_hot_decoding_is_float32_under_bf16(tiny):
    from mbdpo_hub.modeling_mbdpo import symlog, two_hot, two_hot_inv

    cfg = tiny()
    x = torch.linspace(-20, 20, 41).unsqueeze(-1)
    logits = torch.log(two_hot(x, cfg) + 1e-12)
    exact = two_hot_inv(logits, cfg)
    low = two_hot_inv(logits.bfloat16(), cfg)  # bf16 logits (as under autocast); the bin grid stays float32
    assert low.dtype == torch.float32
    assert (symlog(low) - symlog(exact)).abs().max() < 0.02


def test_energy_term_in_the_policy_prior_loss(tiny):
    """energy_pi_coef adds coef x F-tilde(z, pi(z)) to the prior's objective; F's weights get no update from it."""
    torch.manual_seed(0)
    p = MBDPODiffusionPolicy(tiny())
    torch.nn.init.normal_(p.energy[-1].weight, std=0.5)  # the output layer starts at zero: give F some slope
    learner = MBDPOLearner(p)
    learner.scale.tau = 0.0  # the running Q scale stays put between the two calls
    zs = torch.randn(p.config.horizon + 1, 8, p.config.latent_dim).softmax(-1)
    task = torch.zeros(8, dtype=torch.long)
    torch.manual_seed(1)
    base, m0 = learner.policy_loss(zs, task)
    assert "pi_energy" not in m0
    p.config.energy_pi_coef = 2.0
    torch.manual_seed(1)  # the same policy samples
    anchored, m1 = learner.policy_loss(zs, task)
    torch.manual_seed(1)
    a = p.world_model.pi(zs, task).action
    f = p.normalized_energy(p.world_model.za(zs, a, task))
    rho = p.config.rho ** torch.arange(zs.shape[0], dtype=zs.dtype)
    expected = base - 2.0 * (f.mean(dim=(1, 2)) * rho).mean()
    assert torch.allclose(anchored, expected, atol=1e-5) and torch.isclose(m1["pi_energy"], f.mean())
    p.config.energy_coef = 0.0  # only the prior's loss could move F now (a fresh Adam: no momentum either)
    learner = MBDPOLearner(p)
    before = [w.clone() for w in p.energy.parameters()]
    learner.update(make_batch(p.config))
    assert all(torch.equal(b, w) for b, w in zip(before, p.energy.parameters()))


@pytest.mark.slow
def test_compiled_update_matches_eager(tiny):
    """compile=True (torch.compile of the update's forward passes) gives the eager update's losses and weights."""
    import copy

    torch.manual_seed(0)
    p = MBDPODiffusionPolicy(tiny(dropout=0.0))
    q = copy.deepcopy(p)
    eager, compiled = MBDPOLearner(p), MBDPOLearner(q, compile=True)
    assert compiled.compiled and not eager.compiled
    batch = make_batch(p.config)
    for i in range(2):
        torch.manual_seed(i)
        m_eager = eager.update(batch)
        torch.manual_seed(i)
        m_compiled = compiled.update(batch)
    for k in ("consistency_loss", "reward_loss", "value_loss"):  # no random numbers in these
        assert torch.allclose(m_eager[k], m_compiled[k], rtol=1e-4, atol=1e-5), k
    # the energy's negatives are random draws, which compiled code takes from its own stream: close, not equal
    assert abs(float(m_eager["total_loss"]) - float(m_compiled["total_loss"])) < 1e-2
    assert max((a - b).abs().max().item() for a, b in zip(p.parameters(), q.parameters())) < 1e-2


@pytest.mark.slow
def test_compiled_planning_matches_eager(tiny):
    """compile_planning() (torch.compile of the imagined returns) plans the same actions as eager code."""
    torch.manual_seed(0)
    p = MBDPODiffusionPolicy(tiny(dropout=0.0)).eval()
    z = torch.randn(6, p.config.latent_dim).softmax(-1)
    actions = torch.rand(p.config.horizon, 6, p.config.action_dim) * 2 - 1
    task = torch.tensor([0, 1, 0, 1, 0, 1])
    g = torch.Generator().manual_seed(3)
    eager = p.estimate_value(z, actions, task, generator=g)
    p.compile_planning()
    g = torch.Generator().manual_seed(3)
    compiled = p.estimate_value(z, actions, task, generator=g)
    assert torch.allclose(eager, compiled, rtol=1e-4, atol=1e-4)
    p.compile_planning(False)
    assert p.__dict__["_compiled_value"] is None


def test_l2_to_pretrained_pulls_trained_weights_to_their_start(tiny):
    """The fine-tuning trust region: after each update every anchored weight is lerped towards its starting value
    by lr * coef (capped at 1), the task-embedding table too."""
    torch.manual_seed(0)
    free = MBDPODiffusionPolicy(tiny())
    batch = make_batch(free.config, seed=1)
    start = {k: v.detach().clone() for k, v in free.named_parameters()}
    lr = free.config.lr
    runs = {}
    for name, coef in (("free", 0.0), ("pulled", 0.25 / lr), ("held", 10.0 / lr)):
        p = MBDPODiffusionPolicy(tiny())
        p.load_state_dict(free.state_dict())
        learner = MBDPOLearner(p, l2_to_pretrained=coef)
        assert bool(learner.anchors) == (coef > 0)
        torch.manual_seed(0)
        for _ in range(3):
            learner.update(batch)
        runs[name] = {k: v.detach().clone() for k, v in p.named_parameters()}
    key = "world_model.reward_head.0.weight"
    moved = {n: (r[key] - start[key]).abs().max().item() for n, r in runs.items()}
    assert 0 < moved["pulled"] < moved["free"]
    # lr * coef >= 1 for every group: each weight is back at its start after every update
    for k, v in runs["held"].items():
        torch.testing.assert_close(v, start[k], msg=k)
    with pytest.raises(ValueError, match="l2_to_pretrained must be >= 0"):
        MBDPOLearner(free, l2_to_pretrained=-1.0)


def test_anchor_to_pretrained_keeps_reward_and_q_near_the_reference_along_random_actions(tiny):
    """The function-space trust region: a frozen copy (no dropout) of the model at construction; the KL of the
    reward and Q distributions along random actions is 0 at the start and stays smaller the larger the coefficient,
    while the reference does not move."""
    torch.manual_seed(0)
    start = MBDPODiffusionPolicy(tiny(lr=3e-3))
    batch = make_batch(start.config, seed=2)
    # a batch whose rewards disagree with the model everywhere: without the anchor the heads move far
    batch["reward"] = torch.full_like(batch["reward"], 3.0)
    kls = {}
    for coef in (0.0, 30.0):
        p = MBDPODiffusionPolicy(tiny(lr=3e-3))
        p.load_state_dict(start.state_dict())
        learner = MBDPOLearner(p, anchor_to_pretrained=coef)
        assert (learner.reference is None) == (coef == 0)
        probe = MBDPOLearner(p, anchor_to_pretrained=1.0)  # measures the KL to the start for both runs
        p.eval()
        torch.manual_seed(5)
        assert float(probe.anchor_loss(batch["obs"][0], batch["task"]).detach()) == pytest.approx(0.0, abs=1e-6)
        torch.manual_seed(0)
        for _ in range(40):
            metrics = learner.update(batch)
        assert ("anchor_kl" in metrics) == (coef > 0)
        p.eval()
        torch.manual_seed(5)
        kls[coef] = float(probe.anchor_loss(batch["obs"][0], batch["task"]).detach())
        if coef:
            ref = dict(learner.reference.named_parameters())
            for k, v in start.world_model.named_parameters():
                assert torch.equal(ref[k], v) and not ref[k].requires_grad, k
    assert 0 < kls[30.0] < 0.5 * kls[0.0]
    with pytest.raises(ValueError, match="anchor_to_pretrained must be >= 0"):
        MBDPOLearner(start, anchor_to_pretrained=-1.0)


def test_set_reference_recentres_both_trust_regions(tiny):
    torch.manual_seed(0)
    p = MBDPODiffusionPolicy(tiny())
    learner = MBDPOLearner(p, l2_to_pretrained=10.0, anchor_to_pretrained=1.0)
    with torch.no_grad():
        p.world_model.task_embedding.weight.add_(1.0)  # a row fit, say
    learner.set_reference()
    torch.testing.assert_close(learner.reference.task_embedding.weight, p.world_model.task_embedding.weight)
    starts = [s for _, params, start in learner.anchors for prm, s in zip(params, start)
              if prm is p.world_model.task_embedding.weight]
    assert len(starts) == 1 and torch.equal(starts[0], p.world_model.task_embedding.weight)

    # a resumed run builds its learner from the unfitted checkpoint: the fitted reference rows come back with the state
    fresh = MBDPODiffusionPolicy(tiny())
    fresh.load_state_dict(p.state_dict())
    with torch.no_grad():
        fresh.world_model.task_embedding.weight.sub_(1.0)  # the checkpoint as adapted, before the fit
    resumed = MBDPOLearner(fresh, l2_to_pretrained=10.0, anchor_to_pretrained=1.0)
    resumed.load_state_dict(learner.state_dict())
    torch.testing.assert_close(resumed.reference.task_embedding.weight, p.world_model.task_embedding.weight)
    assert all(torch.equal(a, b) for a, b in zip(resumed._reference_rows(), learner._reference_rows()))
