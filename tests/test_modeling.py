import math

import pytest
import torch
from transformers import AutoConfig, AutoModel

from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy, MBDPOWorldModel
from mbdpo_hub.modeling_mbdpo import SimNorm, soft_ce, symexp, symlog, two_hot, two_hot_inv


def randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        for name, t in tensors.items():
            if t.dtype.is_floating_point and t.numel() > 1 and not name.endswith(("action_masks", "discounts")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return model


def test_simnorm_groups_sum_to_one():
    x = torch.randn(5, 7, 32)
    y = SimNorm(8)(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.view(5, 7, 4, 8).sum(-1), torch.ones(5, 7, 4))
    # the written-out CPU softmax equals torch's, values and gradients, also for large logits (no overflow)
    x = (torch.randn(6, 64) * 30).requires_grad_()
    want = torch.softmax(x.view(6, 8, 8), -1).view(6, 64)
    got = SimNorm(8)(x)
    torch.testing.assert_close(got, want)
    g = torch.randn(6, 64)
    (gw,) = torch.autograd.grad(want, x, g)
    (gg,) = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(gg, gw)
    with torch.no_grad():
        torch.testing.assert_close(SimNorm(8)(x), want)


def test_two_hot_round_trip(tiny):
    cfg = tiny()
    x = torch.tensor([-500.0, -3.3, -0.01, 0.0, 0.7, 12.0, 800.0]).unsqueeze(-1)
    enc = two_hot(x, cfg)
    assert enc.shape == (7, cfg.num_bins)
    torch.testing.assert_close(enc.sum(-1), torch.ones(7))
    # the expectation of the bins under the two-hot weights is exactly symlog(x)
    bins = torch.linspace(cfg.vmin, cfg.vmax, cfg.num_bins)
    torch.testing.assert_close((enc * bins).sum(-1, keepdim=True), symlog(x).clamp(cfg.vmin, cfg.vmax))
    logits = torch.log(enc + 1e-12)
    torch.testing.assert_close(two_hot_inv(logits, cfg), symexp(symlog(x).clamp(cfg.vmin, cfg.vmax)),
                               rtol=1e-3, atol=1e-3)
    top = two_hot(torch.tensor([[symexp(torch.tensor(10.0)).item() * 2]]), cfg)
    assert top[0, -1] == pytest.approx(1.0)
    # soft cross-entropy is minimised by the matching two-hot logits
    assert soft_ce(logits, x, cfg).mean() < soft_ce(torch.zeros_like(logits), x, cfg).mean()


def test_world_model_shapes_and_masks(tiny):
    cfg = tiny()
    wm = randomise(MBDPOWorldModel(cfg))
    T, B = 3, 4
    obs = torch.randn(T, B, cfg.obs_dim)
    task = torch.tensor([0, 1, 1, 0])
    z = wm.encode(obs, task)
    assert z.shape == (T, B, cfg.latent_dim)
    torch.testing.assert_close(z.view(T, B, -1, cfg.simnorm_dim).sum(-1), torch.ones(T, B, cfg.latent_dim // 8))
    a = torch.rand(T, B, cfg.action_dim) * 2 - 1
    assert wm.next(z, a, task).shape == (T, B, cfg.latent_dim)
    assert wm.reward(z, a, task).shape == (T, B, cfg.num_bins)
    assert wm.Q(z, a, task, "all").shape == (cfg.num_q, T, B, cfg.num_bins)
    assert wm.Q(z, a, task, "min").shape == (T, B, 1)
    out = wm.pi(z, task)
    assert out.action.shape == (T, B, cfg.action_dim) and out.scaled_entropy.shape == (T, B, 1)
    assert (out.action.abs() <= 1).all()
    # cartpole (task 1) has one action dim: the padded five are exactly zero
    assert (out.action[:, task == 1, 1:] == 0).all() and (out.mean[:, task == 1, 1:] == 0).all()
    assert (out.action[:, task == 0, 1:] != 0).any()


def test_q_ensemble_batched_equals_member_loop(tiny):
    cfg = tiny(num_q=3, dropout=0.0)
    wm = randomise(MBDPOWorldModel(cfg)).eval()
    x = torch.randn(10, wm.Qs.weight_0.shape[-1])
    out = wm.Qs(x)
    for q in range(cfg.num_q):
        h = x
        for i in range(3):
            h = h @ getattr(wm.Qs, f"weight_{i}")[q].T + getattr(wm.Qs, f"bias_{i}")[q]
            if i < 2:
                h = torch.nn.functional.layer_norm(h, h.shape[-1:], getattr(wm.Qs, f"ln_weight_{i}")[q],
                                                   getattr(wm.Qs, f"ln_bias_{i}")[q])
                h = torch.nn.functional.mish(h)
        torch.testing.assert_close(out[q], h, rtol=1e-5, atol=1e-5)
    heads = torch.tensor([2, 0])
    torch.testing.assert_close(wm.Qs(x, heads=heads), out[heads])


def test_init_and_polyak(tiny):
    wm = MBDPOWorldModel(tiny())
    assert (wm.reward_head[-1].weight == 0).all() and (wm.Qs.weight_2 == 0).all()
    for name in wm.Qs.param_names():
        assert torch.equal(getattr(wm.Qs, name), getattr(wm.Qs, f"target_{name}"))
    z, a = torch.rand(4, 16), torch.rand(4, 6)
    # uniform logits decode to 0 at init
    torch.testing.assert_close(wm.Q(z, a, 0, "avg"), torch.zeros(4, 1))
    before = wm.Qs.target_weight_1.clone()
    with torch.no_grad():
        wm.Qs.weight_1.add_(1.0)
    wm.Qs.update_target(0.25)
    torch.testing.assert_close(wm.Qs.target_weight_1, before + 0.25)
    assert wm.num_parameters() == sum(p.numel() for p in wm.parameters())  # targets are buffers


def test_policy_masks_and_entropy(tiny):
    wm = randomise(MBDPOWorldModel(tiny()))
    out = wm.pi(torch.rand(64, 16), torch.ones(64, dtype=torch.long))
    assert torch.isfinite(out.log_prob).all() and torch.isfinite(out.scaled_entropy).all()
    assert (out.log_std[:, 1:] == 0).all()
    lo, hi = wm.config.log_std_min, wm.config.log_std_max
    assert (out.log_std[:, 0] >= lo).all() and (out.log_std[:, 0] <= hi).all()


def test_bad_inputs(tiny):
    p = MBDPODiffusionPolicy(tiny())
    with pytest.raises(ValueError, match="observation has dim 7"):
        p.select_action(torch.randn(7), task="walker-walk")
    with pytest.raises(ValueError, match="NaN"):
        p.select_action(torch.full((24,), float("nan")), task="walker-walk")
    with pytest.raises(ValueError, match="Unknown task"):
        p.select_action(torch.randn(24), task="dog-run")
    with pytest.raises(ValueError, match="pass task"):
        p.select_action(torch.randn(24))
    with pytest.raises(ValueError, match="observation has dim 30"):
        p.world_model.encode(torch.randn(30), 0)
    with pytest.raises(ValueError, match="action has dim 4"):
        p.world_model.next(torch.rand(2, 16), torch.rand(2, 4), 0)
    with pytest.raises(ValueError, match="action has dim 7"):
        p.energy_logits(torch.rand(2, 16), torch.rand(2, 7), 0)
    with pytest.raises(ValueError, match="task ids"):
        p.select_action(torch.randn(2, 24), task=torch.tensor([0, 5]))


def test_select_action_pads_true_dims_and_batches(tiny):
    p = MBDPODiffusionPolicy(tiny())
    a = p.select_action(torch.randn(5), task="cartpole-balance", eval_mode=True)
    assert a.shape == (6,) and (a[1:] == 0).all()
    a = p.select_action(torch.randn(3, 24), task=["walker-walk", "cartpole-balance", "walker-walk"])
    assert a.shape == (3, 6) and (a[1, 1:] == 0).all() and (a.abs() <= 1).all()


def test_save_load_bit_exact_with_buffers(tiny, tmp_path):
    p = randomise(MBDPODiffusionPolicy(tiny(use_score_network=True)))
    with torch.no_grad():
        p.energy_mean.fill_(0.37)
        p.energy_std.fill_(2.5)
    p.save_pretrained(tmp_path)
    q = MBDPODiffusionPolicy.from_pretrained(tmp_path)
    s1, s2 = p.state_dict(), q.state_dict()
    assert set(s1) == set(s2)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert "world_model.Qs.target_weight_0" in s1 and "energy_std" in s1 and "world_model.action_masks" in s1
    z = torch.rand(4, 16)
    a = torch.rand(4, 6)
    torch.testing.assert_close(p.energy_bonus(z, a, 0), q.energy_bonus(z, a, 0), rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    obs = torch.randn(2, 24)
    torch.testing.assert_close(p.select_action(obs, task=0, generator=g1), q.select_action(obs, task=0, generator=g2))


def test_auto_classes_and_cross_loading(tiny, tmp_path):
    p = randomise(MBDPODiffusionPolicy(tiny()))
    p.save_pretrained(tmp_path / "policy")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "policy"), MBDPOConfig)
    wm = MBDPOWorldModel.from_pretrained(tmp_path / "policy")  # base model from a policy checkpoint
    assert isinstance(AutoModel.from_pretrained(tmp_path / "policy"), MBDPOWorldModel)
    for k, v in wm.state_dict().items():
        assert torch.equal(v, p.state_dict()["world_model." + k]), k
    wm.save_pretrained(tmp_path / "wm")
    assert type(AutoModel.from_pretrained(tmp_path / "wm")) is MBDPOWorldModel
    q = MBDPODiffusionPolicy.from_pretrained(tmp_path / "wm")  # energy missing: starts at F = 0 with stats 0/1
    assert (q.energy[-1].weight == 0).all() and q.energy_std.item() == 1.0 and q.energy_mean.item() == 0.0
    assert q.energy[0].weight.std() > 0.005 and torch.isfinite(q.energy[0].weight).all()


def test_corrupt_safetensors_is_a_clear_error(tiny, tmp_path):
    p = MBDPODiffusionPolicy(tiny())
    p.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="model.safetensors"):
        MBDPODiffusionPolicy.from_pretrained(tmp_path)
    f.write_bytes(b"not a safetensors file at all")
    with pytest.raises(Exception, match="model.safetensors"):
        MBDPODiffusionPolicy.from_pretrained(tmp_path)


def test_target_q_has_no_dropout_in_training_mode(tiny):
    # TD targets come from the Polyak copy without dropout, even while the model is in training mode
    wm = randomise(MBDPOWorldModel(tiny(num_q=2, dropout=0.5))).train()
    x = torch.randn(64, wm.Qs.weight_0.shape[-1])
    torch.testing.assert_close(wm.Qs(x, target=True), wm.Qs(x, target=True), rtol=0, atol=0)
    assert not torch.equal(wm.Qs(x), wm.Qs(x))  # the online heads do use dropout when training
    wm.eval()
    torch.testing.assert_close(wm.Qs(x), wm.Qs(x), rtol=0, atol=0)


@pytest.mark.parametrize("obs,task,match", [
    (torch.zeros(0, 24), "walker-walk", "empty batch"),
    ("abc", "walker-walk", "obs must be an array of numbers"),
    (torch.zeros(2, 24), True, "boolean"),
    (torch.zeros(2, 24), 0.7, "not an integer id"),
    (torch.zeros(2, 24), torch.tensor([0.0, 1.0]), "must be integers"),
    (torch.zeros(2, 24), object(), "task must be a name"),
])
def test_acting_refuses_bad_inputs_with_one_line(tiny, obs, task, match):
    p = MBDPODiffusionPolicy(tiny())
    with pytest.raises(ValueError, match=match):
        p.select_action(obs, task=task)


def test_acting_accepts_numpy_and_column_task_ids(tiny):
    import numpy as np

    p = MBDPODiffusionPolicy(tiny())
    obs = torch.randn(3, 24)
    for task in (np.array([0, 1, 0]), torch.tensor([[0], [1], [0]]), [0, "cartpole-balance", 0], np.int64(1)):
        assert p.select_action(obs, task=task, eval_mode=True).shape == (3, 6)
    with pytest.raises(ValueError, match="out of range for 3 environments"):
        p.reset([5])
    p.config.num_samples = 0  # changed at run time: checked when the planner is rebuilt
    with pytest.raises(ValueError, match="planner settings"):
        p.select_action(obs, task=0)


def test_eval_mode_is_deterministic_given_the_warm_start(tiny):
    p = randomise(MBDPODiffusionPolicy(tiny()))
    obs = torch.randn(2, 24)
    a = p.select_action(obs, task=0, eval_mode=True)
    p.reset()
    b = p.select_action(obs, task=0, eval_mode=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bf16_model_acts(tiny):
    p = MBDPODiffusionPolicy(tiny()).to(torch.bfloat16)
    a = p.select_action(torch.randn(2, 24), task=0, eval_mode=True)
    assert a.shape == (2, 6) and torch.isfinite(a.float()).all()


def test_loading_is_strict(tiny, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    p = randomise(MBDPODiffusionPolicy(tiny()))
    p.save_pretrained(tmp_path / "ok")
    weights = load_file(str(tmp_path / "ok" / "model.safetensors"))

    def variant(name, edit_weights=None, edit_config=None):
        folder = tmp_path / name
        p.save_pretrained(folder)
        if edit_weights is not None:
            save_file(edit_weights(dict(weights)), str(folder / "model.safetensors"), metadata={"format": "pt"})
        if edit_config is not None:
            cfg = json.loads((folder / "config.json").read_text())
            edit_config(cfg)
            (folder / "config.json").write_text(json.dumps(cfg))
        return folder

    no_q = variant("no_q", lambda w: {k: v for k, v in w.items() if ".Qs." not in k})
    with pytest.raises(OSError, match="does not match the model .*missing keys.*Qs"):
        MBDPODiffusionPolicy.from_pretrained(no_q)
    assert MBDPODiffusionPolicy.from_pretrained(no_q, strict=False) is not None
    nan = variant("nan", lambda w: {**w, "world_model.dynamics.0.weight": w["world_model.dynamics.0.weight"] * float("nan")})
    with pytest.raises(OSError, match="non-finite .*dynamics"):
        MBDPODiffusionPolicy.from_pretrained(nan)
    assert MBDPODiffusionPolicy.from_pretrained(nan, allow_nonfinite=True) is not None
    no_tasks = variant("no_tasks", edit_config=lambda c: c.pop("tasks"))
    with pytest.raises(OSError, match="names no tasks"):
        MBDPODiffusionPolicy.from_pretrained(no_tasks)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="not a model folder"):
        MBDPODiffusionPolicy.from_pretrained(tmp_path / "empty")
    with pytest.raises(OSError, match="no such local folder, and not a Hub repo id"):
        MBDPODiffusionPolicy.from_pretrained(str(tmp_path / "nope" / "deeper"))


def test_fast_mish_equals_torch_mish():
    from mbdpo_hub.layers import mish

    x = torch.linspace(-40, 40, 20001)
    with torch.no_grad():  # the closed form (planning)
        torch.testing.assert_close(mish(x), torch.nn.functional.mish(x), rtol=1e-6, atol=2e-6)
    xg = x.clone().requires_grad_(True)  # with autograd: the closed form and its closed-form derivative
    y = mish(xg)
    torch.testing.assert_close(y, torch.nn.functional.mish(x), rtol=1e-6, atol=2e-6)
    w = torch.randn_like(x)  # a non-uniform upstream gradient
    (g,) = torch.autograd.grad(y, xg, w)
    (g_ref,) = torch.autograd.grad(torch.nn.functional.mish(xg), xg, w)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    xd = (torch.randn(64, dtype=torch.float64) * 4).requires_grad_()
    assert torch.autograd.gradcheck(mish, (xd,))


def _reference_value(p, z, actions, task, generator):
    """Energy-shaped imagined return built from the public per-network methods (one full [z, task, a] input per
    network and step), the definition `estimate_value` must agree with."""
    wm, G = p.world_model, 0.0
    disc, alive = torch.ones(z.shape[0], 1), torch.ones(z.shape[0], 1)
    gamma = wm.discount(task, z).view(-1, 1)
    for t in range(actions.shape[0]):
        r = two_hot_inv(wm.reward(z, actions[t], task), p.config) + p.energy_bonus(z, actions[t], task)
        z = wm.next(z, actions[t], task)
        G = G + disc * alive * r
        disc = disc * gamma
        if wm.termination_head is not None:
            alive = alive * (wm.termination(z, task) <= 0.5).float()
    a = wm.pi(z, task, generator=generator).action
    return (G + disc * alive * wm.Q(z, a, task, return_type="avg", generator=generator)).squeeze(-1)


@pytest.mark.parametrize("episodic", [False, True])
def test_imagined_returns_share_first_layers_per_start_state(tiny, episodic):
    """estimate_value(z (B, L), actions (H, B*K, A), task (B,), repeats=K) computes the first layers' z and task
    parts once per start state: the returns equal the per-network definition on z and task repeated K times.
    Multi-task with per-env tasks, and single-task episodic (termination head, no task embedding)."""
    torch.manual_seed(0)
    single = dict(tasks=["walker-walk"], obs_dims=[24], action_dims=[6], episode_lengths=[500], task_dim=0)
    p = MBDPODiffusionPolicy(tiny(dropout=0.0, energy_eta=0.5, **(single if episodic else {}),
                                  episodic=episodic)).eval()
    for prm in p.parameters():  # a trained-looking model: no zero-initialised heads
        prm.data.normal_(0, 0.3)
    p.energy_std.fill_(0.7)
    B, K, H, A = 3, 5, p.config.horizon, p.config.action_dim
    z = torch.randn(B, p.config.latent_dim).softmax(-1)
    task = None if episodic else torch.tensor([0, 1, 0])
    rows = None if episodic else task.repeat_interleave(K, 0)
    actions = torch.rand(H, B * K, A) * 2 - 1
    got = p.estimate_value(z, actions, task, generator=torch.Generator().manual_seed(3), repeats=K)
    want = _reference_value(p, z.repeat_interleave(K, 0), actions, rows, torch.Generator().manual_seed(3))
    assert got.shape == (B * K,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want.std() > 0.1  # the candidates' returns differ: the comparison is not between constants
    # one row per sequence (repeats=1) is the same function
    again = p.estimate_value(z.repeat_interleave(K, 0), actions, rows, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, want, rtol=1e-5, atol=1e-5)


def test_joint_forward_equals_each_network_on_the_joint_input(tiny):
    torch.manual_seed(1)
    p = MBDPODiffusionPolicy(tiny(dropout=0.0)).eval()
    wm = p.world_model
    for prm in p.parameters():
        prm.data.normal_(0, 0.3)
    z, a, task = torch.randn(4, wm.config.latent_dim), torch.rand(8, wm.config.action_dim), torch.tensor([1, 0, 1, 1])
    nets = [wm.reward_head, wm.dynamics, p.energy]
    with torch.no_grad():
        outs = wm.joint_forward(nets, z, a, task, repeats=2)
        x = wm.za(z.repeat_interleave(2, 0), a, task.repeat_interleave(2, 0))
        for net, out in zip(nets, outs):
            torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="action has dim"):
        wm.joint_forward(nets, z, a[:, :2], task, repeats=2)
