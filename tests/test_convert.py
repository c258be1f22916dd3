"""Importer for official TD-MPC2 / MBDPO checkpoints (`mbdpo_hub.convert`), on the official fixtures.

The fixtures hold random *initial* weights whose last reward / Q / F layers are zero, so output comparisons are made
on a copy whose every float tensor was redrawn (fixture README). The reference outputs come from an independent
plain-torch re-implementation of the official computation on the raw official state dict (`Official` below).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy
from mbdpo_hub.cli import convert_main
from mbdpo_hub.convert import (
    OfficialCheckpointError,
    convert_official_checkpoint,
    infer_config,
    load_official_state_dict,
)

_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"
FIXTURES = Path(os.environ.get("MBDPO_FIXTURES") or _DEFAULT)
NAMES = ("tdmpc2-mt30-1m", "tdmpc2-walker-walk-1m", "mbdpo-mt30-1m")
TASKS = {"tdmpc2-mt30-1m": None, "tdmpc2-walker-walk-1m": ["walker-walk"], "mbdpo-mt30-1m": None}
BATCH_TASKS = [0, 1, 4, 7, 12, 16, 26, 29, 29, 3]  # spans tasks with action dims 6, 2, 1, 2, 5, 3, 1


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# fixtures: decompress once per module; redraw once per module
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """name -> dict(xz=Path, pt=Path, meta=sidecar dict, raw=raw torch.load of the model dict)."""
    missing = [n for n in NAMES if not (FIXTURES / f"{n}.pt.xz").is_file() or not (FIXTURES / f"{n}.json").is_file()]
    if missing:
        pytest.skip(f"official fixtures {missing} not found under {FIXTURES} (set MBDPO_FIXTURES to the folder "
                    "holding *.pt.xz and their *.json sidecars)")
    out = {}
    tmp = tmp_path_factory.mktemp("official")
    for name in NAMES:
        xz = FIXTURES / f"{name}.pt.xz"
        pt = tmp / f"{name}.pt"
        with lzma.open(xz, "rb") as f_in, open(pt, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
        meta = json.loads((FIXTURES / f"{name}.json").read_text())
        raw = torch.load(pt, weights_only=True, map_location="cpu")["model"]
        out[name] = dict(xz=xz, pt=pt, meta=meta, raw=raw, xz_sha=sha256(xz), pt_sha=sha256(pt))
    return out


def redraw(raw: "OrderedDict[str, object]", seed: int) -> "OrderedDict[str, object]":
    """Every float tensor redrawn (same keys, shapes, order, non-tensor entries); `_action_masks` kept,
    `_detach_Qs_params` = `_Qs.params`, target Q different from online, some task-embedding rows with norm > 1."""
    g = torch.Generator().manual_seed(seed)
    out: OrderedDict = OrderedDict()
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or key == "_action_masks":
            out[key] = value
            continue
        if key.startswith("_detach_Qs_params."):
            continue  # filled from _Qs.params below, in the original position
        shape = value.shape
        if key == "_task_emb.weight":
            new = 0.1 * torch.randn(shape, generator=g)
            new[::3] *= 25.0  # rows 0, 3, 6, ... get norms ~ 25 * 0.1 * sqrt(96) >> 1
        elif key.endswith("ln.weight"):
            new = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif key.endswith("bias"):
            new = 0.2 * torch.randn(shape, generator=g)
        else:
            new = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        out[key] = new.to(value.dtype)
    final: OrderedDict = OrderedDict()
    for key in raw:
        if key.startswith("_detach_Qs_params."):
            sub = key[len("_detach_Qs_params."):]
            final[key] = out[f"_Qs.params.{sub}"].clone() if isinstance(raw[key], torch.Tensor) else raw[key]
        else:
            final[key] = out[key]
    return final


@pytest.fixture(scope="module")
def redrawn(official, tmp_path_factory):
    """name -> (path of the redrawn checkpoint in the official layout, its raw state dict)."""
    tmp = tmp_path_factory.mktemp("redrawn")
    out = {}
    for i, name in enumerate(NAMES):
        sd = redraw(official[name]["raw"], seed=100 + i)
        path = tmp / f"{name}-redrawn.pt"
        torch.save({"model": sd}, path)
        out[name] = (path, sd)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# An independent re-implementation of the official forward passes (plain functional torch on the raw state dict)
# ---------------------------------------------------------------------------------------------------------------------


class Official:
    """TD-MPC2 / MBDPO `WorldModel` computations from the raw official state dict.

    Linear -> LayerNorm -> Mish blocks (last block SimNorm(8) for latents, plain Linear for heads); inputs
    [z, task_emb, a]; `nn.Embedding(max_norm=1)` renormalisation of looked-up rows; two-hot decoding over
    101 bins in symlog [-10, 10]; log_std = log_std_min + 0.5 * log_std_dif * (tanh + 1); masked multitask policy.
    """

    def __init__(self, sd):
        self.sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}

    def n_layers(self, prefix):
        return 1 + max(int(k[len(prefix):].split(".")[0]) for k in self.sd if k.startswith(prefix))

    def emb(self, task):
        w = self.sd.get("_task_emb.weight")
        if w is None:
            return None
        rows = w[task]
        norm = rows.norm(dim=-1, keepdim=True)
        return torch.where(norm > 1.0, rows * (1.0 / (norm + 1e-7)), rows)

    def cat(self, x, task, *rest):
        e = self.emb(task)
        return torch.cat([x] + ([] if e is None else [e]) + list(rest), dim=-1)

    def mlp(self, prefix, x, last="linear", get=None):
        get = get or (lambda k: self.sd[k])
        n = self.n_layers(prefix)
        for i in range(n):
            x = x @ get(f"{prefix}{i}.weight").T + get(f"{prefix}{i}.bias")
            if i < n - 1 or last == "simnorm":
                x = F.layer_norm(x, x.shape[-1:], get(f"{prefix}{i}.ln.weight"), get(f"{prefix}{i}.ln.bias"))
                if i < n - 1:
                    x = x * torch.tanh(F.softplus(x))  # Mish
                else:
                    x = torch.softmax(x.view(*x.shape[:-1], -1, 8), dim=-1).view(x.shape)
        return x

    def encode(self, obs, task):
        return self.mlp("_encoder.state.", self.cat(obs, task), last="simnorm")

    def next(self, z, a, task):
        return self.mlp("_dynamics.", self.cat(z, task, a), last="simnorm")

    def reward(self, z, a, task):
        return self.mlp("_reward.", self.cat(z, task, a))

    def energy(self, z, a, task):
        return self.mlp("_F.", self.cat(z, task, a))

    def qs(self, z, a, task, prefix="_Qs.params."):
        x = self.cat(z, task, a)
        num_q = self.sd[f"{prefix}0.weight"].shape[0]
        return torch.stack([self.mlp(prefix, x, get=lambda k, q=q: self.sd[k][q]) for q in range(num_q)])

    def pi(self, z, task):
        out = self.mlp("_pi.", self.cat(z, task))
        mean, raw = out.chunk(2, dim=-1)
        lo = float(self.sd.get("log_std_min", torch.tensor(-10)))
        dif = float(self.sd.get("log_std_dif", torch.tensor(12)))
        log_std = lo + 0.5 * dif * (torch.tanh(raw) + 1)
        if "_action_masks" in self.sd:
            mask = self.sd["_action_masks"][task]
            mean, log_std = mean * mask, log_std * mask
        return torch.tanh(mean), log_std

    def score(self, z, x, t, task):
        half = 32
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - 1))
        args = t.float()[:, None] * freqs[None]
        temb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        return self.mlp("_score.", self.cat(z, task, x.flatten(1), temb)).view_as(x)


def decode(logits):
    bins = torch.linspace(-10, 10, 101)
    y = (torch.softmax(logits, dim=-1) * bins).sum(-1)
    return torch.sign(y) * (torch.exp(y.abs()) - 1)


def compare_outputs(model: MBDPODiffusionPolicy, ref: Official, multitask: bool, with_energy: bool,
                    with_score: bool = False, seed: int = 0, atol: float = 1e-5):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    wm = model.world_model
    B = len(BATCH_TASKS)
    task = torch.tensor(BATCH_TASKS) if multitask else None
    rtask = task if multitask else None
    obs = torch.randn(B, cfg.obs_dim, generator=g)
    a = torch.rand(B, cfg.action_dim, generator=g) * 2 - 1
    if multitask:
        obs = obs * (torch.arange(cfg.obs_dim)[None] < torch.tensor([cfg.obs_dims[t] for t in BATCH_TASKS])[:, None])
        a = a * wm.action_masks[task]
    with torch.no_grad():
        z_ref = ref.encode(obs, rtask)
        z = wm.encode(obs, task)
        torch.testing.assert_close(z, z_ref, atol=atol, rtol=0)
        assert z.std() > 1e-3  # not a degenerate comparison
        torch.testing.assert_close(wm.next(z, a, task), ref.next(z_ref, a, rtask), atol=atol, rtol=0)
        r, r_ref = wm.reward(z, a, task), ref.reward(z_ref, a, rtask)
        torch.testing.assert_close(r, r_ref, atol=atol, rtol=0)
        assert r_ref.std() > 0.1
        from mbdpo_hub.modeling_mbdpo import two_hot_inv

        torch.testing.assert_close(two_hot_inv(r, cfg).squeeze(-1), decode(r_ref), atol=1e-4, rtol=1e-5)
        q, q_ref = wm.Q(z, a, task, return_type="all"), ref.qs(z_ref, a, rtask)
        assert q.shape == (cfg.num_q, B, cfg.num_bins)
        torch.testing.assert_close(q, q_ref, atol=atol, rtol=0)
        assert q_ref.std() > 0.1
        qt, qt_ref = wm.Q(z, a, task, return_type="all", target=True), ref.qs(z_ref, a, rtask, "_target_Qs_params.")
        torch.testing.assert_close(qt, qt_ref, atol=atol, rtol=0)
        assert not torch.allclose(qt, q)  # the redrawn target differs from the online Q
        out = wm.pi(z, task)
        mean_ref, log_std_ref = ref.pi(z_ref, rtask)
        torch.testing.assert_close(out.mean, mean_ref, atol=atol, rtol=0)
        torch.testing.assert_close(out.log_std, log_std_ref, atol=1e-4, rtol=0)
        if with_energy:
            f, f_ref = model.energy_logits(z, a, task), ref.energy(z_ref, a, rtask)
            torch.testing.assert_close(f, f_ref, atol=atol, rtol=0)
            assert f_ref.std() > 0.1
        else:
            assert torch.all(model.energy_logits(z, a, task) == 0)
            assert torch.all(model.energy_bonus(z, a, task) == 0)
        if with_score:
            x = torch.randn(B, cfg.horizon, cfg.action_dim, generator=g)
            t = torch.randint(1, 20, (B,), generator=g)
            torch.testing.assert_close(model.score(z, x, t, task), ref.score(z_ref, x, t, rtask), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Conversion of the fixtures: counts and every tensor kept
# ---------------------------------------------------------------------------------------------------------------------


def ours_key(key: str) -> str | None:
    """Test-side mapping official -> ours (current layout), written independently of the converter."""
    fixed = {"_task_emb.weight": "world_model.task_embedding.weight", "_action_masks": "world_model.action_masks"}
    if key in fixed:
        return fixed[key]
    for pre, tgt in (("_Qs.params.", "world_model.Qs."), ("_target_Qs_params.", "world_model.Qs.target_")):
        if key.startswith(pre):
            layer, name = key[len(pre):].split(".", 1)
            return tgt + {"weight": "weight", "bias": "bias", "ln.weight": "ln_weight", "ln.bias": "ln_bias"}[name] \
                + f"_{layer}"
    for pre, tgt in (("_encoder.state.", "world_model.encoder."), ("_dynamics.", "world_model.dynamics."),
                     ("_reward.", "world_model.reward_head."), ("_pi.", "world_model.pi_head."),
                     ("_F.", "energy."), ("_score.", "score_net.")):
        if key.startswith(pre):
            return tgt + key[len(pre):]
    return None


def test_fixture_files_are_intact(official):
    for name in NAMES:
        storage = official[name]["meta"]["storage"]
        assert official[name]["pt_sha"] == storage["decompressed_sha256"]
        assert official[name]["xz_sha"] == storage["xz_sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_convert_fixture_counts_and_tensors(official, name):
    fx = official[name]
    meta, raw = fx["meta"], fx["raw"]
    keep = name.startswith("mbdpo")
    model = convert_official_checkpoint(fx["pt"], tasks=TASKS[name], keep_score_network=keep)
    cfg, mc = model.config, meta["config"]
    # config inferred from shapes only
    assert cfg.tasks == mc["tasks"] if mc["multitask"] else cfg.tasks == ["walker-walk"]
    assert cfg.obs_dims == mc["obs_shapes"] if mc["multitask"] else cfg.obs_dims == [24]
    assert cfg.action_dims == mc["action_dims"] if mc["multitask"] else cfg.action_dims == [6]
    for k in ("task_dim", "latent_dim", "mlp_dim", "enc_dim", "num_enc_layers", "num_q", "num_bins", "horizon",
              "episodic", "action_dim", "log_std_min", "log_std_max"):
        assert getattr(cfg, k) == mc[k], k
    assert cfg.obs_dim == mc["obs_shape"]["state"][0]
    assert cfg.model_size == 1
    assert cfg.task_set == ("mt30" if mc["multitask"] else None)
    assert cfg.use_score_network is keep
    assert cfg.discounts == pytest.approx(mc["discount"] if mc["multitask"] else [0.99])
    # parameter counts equal the sidecar's (learnable: no target / detach copies, masks or log-std)
    counts = meta["parameter_counts"]
    assert model.world_model.num_parameters() == sum(v for k, v in counts["learnable_by_module"].items()
                                                     if k not in ("_F", "_score"))
    if keep:
        assert model.num_parameters() == counts["learnable_total"]
        assert sum(p.numel() for p in model.energy.parameters()) == counts["learnable_by_module"]["_F"]
        assert sum(p.numel() for p in model.score_net.parameters()) == counts["learnable_by_module"]["_score"]
    else:
        assert model.num_parameters() == counts["learnable_total"] + sum(p.numel() for p in model.energy.parameters())
    # every source tensor kept, value for value (and its sidecar sum)
    ours = model.state_dict()
    entries = {e["key"]: e for e in meta["state_dict"] if "shape" in e}
    assert set(entries) == {k for k, v in raw.items() if isinstance(v, torch.Tensor)}
    for key, e in entries.items():
        value = raw[key]
        if key.startswith("_detach_Qs_params."):
            assert torch.equal(value, raw["_Qs.params." + key[len("_detach_Qs_params."):]])
            continue
        if key in ("log_std_min", "log_std_dif"):
            continue
        target = ours_key(key)
        assert target is not None, key
        assert list(ours[target].shape) == e["shape"], key
        assert torch.equal(ours[target], value), key
        assert float(ours[target].double().sum()) == pytest.approx(e["sum"], rel=1e-6, abs=1e-6), key
        assert model.conversion_report.mapped[target] == key
    # parts not in the file
    if name.startswith("tdmpc2"):
        assert torch.all(model.energy[-1].weight == 0) and torch.all(model.energy[-1].bias == 0)
        assert "energy.*" in cfg.converted_from["initialised"]
    assert float(model.energy_mean) == 0.0 and float(model.energy_std) == 1.0
    prov = cfg.converted_from
    assert prov["file"] == f"{name}.pt" and prov["sha256"] == meta["storage"]["decompressed_sha256"]
    assert prov["format"] == ("mbdpo" if keep else "tdmpc2") and prov["layout"] == "current"


def test_mbdpo_score_network_dropped_by_default(official):
    model = convert_official_checkpoint(official["mbdpo-mt30-1m"]["pt"])
    assert model.score_net is None and not model.config.use_score_network
    assert model.config.horizon == 3  # still read from the score-net shape
    assert "_score.*" in model.config.converted_from["dropped"]
    assert model.num_parameters() == official["mbdpo-mt30-1m"]["meta"]["parameter_counts"]["learnable_total"] \
        - official["mbdpo-mt30-1m"]["meta"]["parameter_counts"]["learnable_by_module"]["_score"]


def test_convert_from_xz_directly_and_source_untouched(official, tmp_path):
    fx = official["tdmpc2-walker-walk-1m"]
    model = convert_official_checkpoint(fx["xz"], tmp_path / "out", tasks="walker-walk")
    assert model.config.converted_from["sha256"] == fx["meta"]["storage"]["xz_sha256"]
    assert model.config.converted_from["decompressed_sha256"] == fx["meta"]["storage"]["decompressed_sha256"]
    assert sha256(fx["xz"]) == fx["xz_sha"]
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left behind


def test_load_official_state_dict_drops_metadata(official):
    sd = load_official_state_dict(official["tdmpc2-mt30-1m"]["pt"])
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert not any("__batch_size" in k or "__device" in k for k in sd)
    assert "_detach_Qs_params.0.weight" in sd  # names are kept as in the file


def test_single_task_without_task_name_warns(official):
    with pytest.warns(UserWarning, match="placeholder"):
        cfg = infer_config(load_official_state_dict(official["tdmpc2-walker-walk-1m"]["pt"]))
    assert cfg.tasks == ["unknown-task"] and cfg.obs_dims == [24] and cfg.action_dims == [6]
    with pytest.raises(ValueError, match="another task"):
        infer_config(load_official_state_dict(official["tdmpc2-walker-walk-1m"]["pt"]), tasks=["cartpole-balance"])
    with pytest.raises(ValueError, match="names 30 task"):
        infer_config(load_official_state_dict(official["tdmpc2-walker-walk-1m"]["pt"]), tasks="mt30")


def test_task_order_checked_against_action_masks(official):
    sd = load_official_state_dict(official["tdmpc2-mt30-1m"]["pt"])
    from mbdpo_hub.envs.tasks import list_tasks

    names = list_tasks("mt30")
    names[0], names[29] = names[29], names[0]  # walker-stand (6) <-> pendulum-spin (1)
    with pytest.raises(ValueError, match="_action_masks row 0"):
        infer_config(sd, tasks=names)


# ---------------------------------------------------------------------------------------------------------------------
# Output equivalence on redrawn weights
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_official_computation(redrawn, name):
    path, sd = redrawn[name]
    keep = name.startswith("mbdpo")
    model = convert_official_checkpoint(path, tasks=TASKS[name], keep_score_network=keep)
    ref = Official(sd)
    emb = sd.get("_task_emb.weight")
    if emb is not None:
        assert (emb.norm(dim=-1) > 1).sum() >= 5
    compare_outputs(model, ref, multitask=emb is not None, with_energy=keep, with_score=keep)
    if emb is not None:  # max_norm renormalised the looked-up rows in place, exactly as nn.Embedding does upstream
        norms = model.world_model.task_embedding.weight.norm(dim=-1)
        assert torch.all(norms[sorted(set(BATCH_TASKS))] <= 1 + 1e-5)


def to_old_layout(sd, with_target=True):
    """The Oct-2023 layout: flat `_Qs.params.N` / `_target_Qs.params.N`, no detach, masks, log-std or metadata."""
    fields = ("weight", "bias", "ln.weight", "ln.bias")
    out = OrderedDict()
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor) or key.startswith("_detach_Qs_params.") \
                or key in ("_action_masks", "log_std_min", "log_std_dif"):
            continue
        for pre, new in (("_Qs.params.", "_Qs.params."), ("_target_Qs_params.", "_target_Qs.params.")):
            if key.startswith(pre):
                layer, name = key[len(pre):].split(".", 1)
                if new.startswith("_target") and not with_target:
                    break
                out[f"{new}{4 * int(layer) + fields.index(name)}"] = value
                break
        else:
            out[key] = value
    return out


def test_old_flat_layout(redrawn, tmp_path):
    path, sd = redrawn["tdmpc2-mt30-1m"]
    old = to_old_layout(sd)
    assert "_Qs.params.8" in old and "_Qs.params.9" in old and "_target_Qs.params.5" in old
    assert not any(k.startswith("_Qs.params.2.") for k in old)
    p = tmp_path / "old.pt"
    torch.save({"model": old}, p)
    model = convert_official_checkpoint(p)
    assert model.config.converted_from["layout"] == "old" and model.config.task_set == "mt30"
    assert model.config.action_dims == [int(x) for x in sd["_action_masks"].sum(-1)]  # from the task specs
    assert "world_model.action_masks" in model.conversion_report.derived
    compare_outputs(model, Official(sd), multitask=True, with_energy=False)


def test_old_layout_without_target_copies_online_q(redrawn, tmp_path):
    _, sd = redrawn["tdmpc2-walker-walk-1m"]
    old = to_old_layout(sd, with_target=False)
    assert not any(k.startswith("_target") for k in old)
    p = tmp_path / "old-no-target.pt"
    torch.save({"model": old}, p)
    model = convert_official_checkpoint(p, tasks="walker-walk")
    qs = model.world_model.Qs
    for n in qs.param_names():
        assert torch.equal(getattr(qs, f"target_{n}"), getattr(qs, n))
    assert any("copy of the online" in n for n in model.conversion_report.notes)


def test_newer_tensordict_layout_with_meta_entries(redrawn, tmp_path):
    """tensordict >= 0.15 writes no __batch_size/__device but meta-device `*Qs.module.*` entries."""
    path, sd = redrawn["tdmpc2-walker-walk-1m"]
    new = OrderedDict((k, v) for k, v in sd.items() if isinstance(v, torch.Tensor))
    for head in ("_Qs", "_detach_Qs", "_target_Qs"):
        for i in range(3):
            new[f"{head}.module.{i}.weight"] = torch.empty(4, 4, device="meta")
    p = tmp_path / "td015.pt"
    torch.save({"model": new}, p)
    a = convert_official_checkpoint(p, tasks="walker-walk")
    b = convert_official_checkpoint(path, tasks="walker-walk")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------------------------------
# Saving, reloading, acting
# ---------------------------------------------------------------------------------------------------------------------


def test_round_trip_bit_exact_and_select_action(redrawn, tmp_path):
    path, _ = redrawn["mbdpo-mt30-1m"]
    model = convert_official_checkpoint(path, tmp_path / "policy", keep_score_network=True)
    again = MBDPODiffusionPolicy.from_pretrained(tmp_path / "policy")
    s0, s1 = model.state_dict(), again.state_dict()
    assert s0.keys() == s1.keys()
    for k in s0:
        assert s0[k].dtype == s1[k].dtype and torch.equal(s0[k], s1[k]), k
    assert again.config.converted_from == model.config.converted_from
    d0, d1 = model.config.to_dict(), again.config.to_dict()
    d0.pop("_name_or_path", None), d1.pop("_name_or_path", None)
    assert d0 == d1
    # conversion is deterministic
    twice = convert_official_checkpoint(path, keep_score_network=True)
    assert all(torch.equal(v, twice.state_dict()[k]) for k, v in s0.items())

    fast = MBDPODiffusionPolicy.from_pretrained(tmp_path / "policy", num_samples=32, num_elites=8, num_pi_trajs=4,
                                                diffusion_steps=3)
    assert fast.config.num_samples == 32 and fast.config.diffusion_steps == 3
    obs = torch.randn(3, 24)
    act = fast.select_action(obs, task=["walker-walk", "pendulum-spin", "cup-catch"], eval_mode=True,
                             generator=torch.Generator().manual_seed(0))
    assert act.shape == (3, 6) and torch.isfinite(act).all() and act.abs().max() <= 1
    assert torch.all(act[1, 1:] == 0) and torch.all(act[2, 2:] == 0)  # padded action dims stay 0
    a1 = fast.select_action(torch.randn(24), task="walker-walk")
    assert a1.shape == (6,)


def test_single_task_round_trip_and_act(official, tmp_path):
    model = convert_official_checkpoint(official["tdmpc2-walker-walk-1m"]["pt"], tmp_path / "ww", tasks="walker-walk")
    again = MBDPODiffusionPolicy.from_pretrained(tmp_path / "ww", num_samples=32, num_elites=8, num_pi_trajs=4,
                                                 diffusion_steps=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    act = again.select_action(torch.randn(24), eval_mode=True)
    assert act.shape == (6,) and torch.isfinite(act).all()


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def test_config_of_another_size_names_key_and_shapes(official):
    cfg = MBDPOConfig.from_preset(5, "mt30")
    with pytest.raises(ValueError, match=r"_task_emb\.weight.*\(30, 96\).*\(30, 64\)"):
        convert_official_checkpoint(official["tdmpc2-mt30-1m"]["pt"], config=cfg)
    cfg = MBDPOConfig.from_preset(1, "mt30", num_q=5)
    with pytest.raises(ValueError, match=r"_Qs\.params\.0\.weight.*\(2, 384, 230\).*\(5, 384, 230\)"):
        convert_official_checkpoint(official["tdmpc2-mt30-1m"]["pt"], config=cfg)
    # the right preset fits
    model = convert_official_checkpoint(official["tdmpc2-mt30-1m"]["pt"], config=MBDPOConfig.from_preset(1, "mt30"))
    assert model.config.model_size == 1


def test_truncated_and_non_checkpoint_files(official, tmp_path):
    data = official["tdmpc2-walker-walk-1m"]["pt"].read_bytes()
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(OfficialCheckpointError, match="truncated.pt"):
        load_official_state_dict(trunc)
    xz = official["tdmpc2-walker-walk-1m"]["xz"].read_bytes()
    trunc_xz = tmp_path / "truncated.pt.xz"
    trunc_xz.write_bytes(xz[: len(xz) // 3])
    with pytest.raises(OfficialCheckpointError, match="truncated.pt.xz"):
        convert_official_checkpoint(trunc_xz, tasks="walker-walk")
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(OfficialCheckpointError, match="notes.pt"):
        load_official_state_dict(text)
    other = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(3, 3)}}, other)
    with pytest.raises(OfficialCheckpointError, match="other.pt is not a TD-MPC2 / MBDPO checkpoint"):
        load_official_state_dict(other)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_official_state_dict(tmp_path / "missing.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {"_encoder.state.0.weight": torch.zeros(2, 2), "x": Evil()}}, evil)
    with pytest.raises(OfficialCheckpointError, match="weights_only"):
        load_official_state_dict(evil)


def test_dst_exists_requires_overwrite(official, tmp_path):
    src = official["tdmpc2-walker-walk-1m"]["pt"]
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_official_checkpoint(src, dst, tasks="walker-walk")
    assert (dst / "keep.txt").read_text() == "precious"
    convert_official_checkpoint(src, dst, tasks="walker-walk", overwrite=True)
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_official_checkpoint(src, empty, tasks="walker-walk")  # an empty folder is fine
    assert (empty / "config.json").is_file()
    # a failing conversion never leaves a dst behind
    with pytest.raises(ValueError):
        convert_official_checkpoint(src, tmp_path / "bad", config=MBDPOConfig.from_preset(5, "walker-walk"))
    assert not (tmp_path / "bad").exists()
    assert sha256(src) == official["tdmpc2-walker-walk-1m"]["pt_sha"]


def test_sources_never_modified(official):
    for name in NAMES:
        assert sha256(official[name]["pt"]) == official[name]["pt_sha"]
        assert sha256(official[name]["xz"]) == official[name]["xz_sha"]


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def test_cli(official, tmp_path, capsys):
    src = official["mbdpo-mt30-1m"]["pt"]
    assert convert_main([str(src), str(tmp_path / "cli"), "--tasks", "mt30", "--keep-score-network"]) == 0
    out = capsys.readouterr().out
    assert "saved to" in out and "mbdpo" in out
    cfg = MBDPOConfig.from_pretrained(tmp_path / "cli")
    assert cfg.use_score_network and cfg.task_set == "mt30" and cfg.converted_from["format"] == "mbdpo"
    assert convert_main([str(src), str(tmp_path / "cli")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert convert_main([str(src), str(tmp_path / "cli"), "--overwrite"]) == 0
    assert not MBDPOConfig.from_pretrained(tmp_path / "cli").use_score_network
    ww = official["tdmpc2-walker-walk-1m"]["pt"]
    assert convert_main([str(ww), str(tmp_path / "ww")]) == 0  # placeholder task name, with a warning
    assert "placeholder" in capsys.readouterr().err
    assert convert_main([str(ww), str(tmp_path / "ww2"), "--tasks", "walker-walk,walker-run"]) == 1
    assert convert_main([str(tmp_path / "nope.pt"), str(tmp_path / "x")]) == 1
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_main([])


def test_decompression_bomb_is_refused(tmp_path):
    import lzma

    bomb = tmp_path / "bomb.pt.xz"
    with lzma.open(bomb, "wb", preset=0) as f:
        for _ in range(10):
            f.write(bytes(16 << 20))  # 160 MiB of zeros in a few tens of KiB
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(OfficialCheckpointError, match="decompresses to more than 64 MiB"):
        load_official_state_dict(bomb)
    assert convert_main([str(bomb), str(tmp_path / "out")]) == 1


def test_import_refuses_nan_and_reports_odd_entries(tmp_path):
    import warnings as w

    src = FIXTURES / "tdmpc2-mt30-1m.pt.xz"
    if not src.exists():
        pytest.skip("official fixture not found")
    sd = load_official_state_dict(src)
    key = next(k for k in sd if k.startswith("_dynamics.") and sd[k].is_floating_point())
    bad = dict(sd, **{key: sd[key] * float("nan")})
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(OfficialCheckpointError, match="non-finite"):
        load_official_state_dict(tmp_path / "nan.pt")
    odd = dict(sd, note="hello", **{key: sd[key].double()})
    torch.save(odd, tmp_path / "odd.pt")
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        out = load_official_state_dict(tmp_path / "odd.pt")
    said = " ".join(str(c.message) for c in caught)
    assert "ignored non-tensor entries ['note']" in said and "cast to float32" in said
    assert out[key].dtype == torch.float32


def test_broken_multitask_files_get_one_line_errors(tmp_path, capsys):
    import warnings as w

    src = FIXTURES / "tdmpc2-mt30-1m.pt.xz"
    if not src.exists():
        pytest.skip("official fixture not found")
    with w.catch_warnings():
        w.simplefilter("ignore")
        sd = load_official_state_dict(src)
    cases = {
        "no_emb": ({k: v for k, v in sd.items() if not k.startswith("_task_emb")}, "no task embedding \\(_task_emb"),
        "term": (dict(sd, **{"_termination.0.weight": torch.zeros(512, 608), "_termination.0.bias": torch.zeros(512)}),
                 "episodic=True .* single-task only"),
        "one_q": ({k: (v[:1] if k.startswith(("_Qs.params", "_target_Qs_params", "_detach_Qs_params")) else v)
                   for k, v in sd.items()}, "num_q=1"),
    }
    from mbdpo_hub.cli import main

    for name, (state, match) in cases.items():
        torch.save(state, tmp_path / f"{name}.pt")
        with pytest.raises(OfficialCheckpointError, match=match):
            convert_official_checkpoint(tmp_path / f"{name}.pt", tasks="mt30")
        assert main(["convert", str(tmp_path / f"{name}.pt"), str(tmp_path / name), "--tasks", "mt30"]) == 1
        assert "Traceback" not in capsys.readouterr().err
