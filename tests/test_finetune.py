"""Fine-tuning (issue 6): loading sources, task/dim adaptation of a pretrained model, and fine-tuning runs."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy
from mbdpo_hub import finetune as ft
from mbdpo_hub.finetune import adapt_policy_to_task, load_source_policy, make_finetune_trainer, nearest_task
from mbdpo_hub.training import load_finetune_config

REPO = Path(__file__).resolve().parents[1]
FT_YAML = REPO / "recipes" / "configs" / "finetune.yaml"
OFFICIAL = Path(os.environ.get("MBDPO_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))

# a tiny run: 3 episodes of 50 steps, tiny planner, no video / trackers / progress bar; online (the demo config's
# offline-to-online needs the checkpoint's pretraining dataset, which the tiny checkpoints do not name)
RUN = ["mode=online", "episode_length=50", "steps=100", "seed_steps=50", "seed_updates=5", "utd=0.5", "eval_episodes=1",
       "eval_freq=0", "save_video=false", "log_with=none",
       "progress=false", "batch_size=16", "checkpoint_freq=0", "diffusion_steps=2", "num_samples=16",
       "num_elites=4", "num_pi_trajs=2"]


def tiny_two_task(**overrides):
    """cartpole-balance (5/1) + pendulum-swingup (3/1), tiny, with random (non-degenerate) weights."""
    base = dict(tasks=["cartpole-balance", "pendulum-swingup"], obs_dims=[5, 3], action_dims=[1, 1],
                episode_lengths=[500, 500], task_dim=8, enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2,
                dropout=0.0, num_samples=16, num_elites=4, num_pi_trajs=2, diffusion_steps=2, horizon=3)
    base.update(overrides)
    torch.manual_seed(0)
    policy = MBDPODiffusionPolicy(MBDPOConfig(**base)).eval()
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0, 0.3)
        for name in policy.world_model.Qs.param_names():
            getattr(policy.world_model.Qs, f"target_{name}").normal_(0, 0.3)
        policy.world_model.task_embedding.weight.mul_(0.1)  # rows with norm < 1 (max_norm leaves them alone)
    return policy


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "tiny-mt2"
    tiny_two_task().save_pretrained(path)
    return path


def tree_hash(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(path).rglob("*")) if p.is_file()}


def snapshot(policy):
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def assert_same_state(policy, snap):
    sd = policy.state_dict()
    assert sd.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(sd[k], v), k


def outputs(policy, task, obs, act, pad_obs=0, pad_act=0):
    """encode / next / reward / Q (online + target) / pi mean / energy on (obs, act), truncated to the old dims."""
    wm = policy.world_model
    A = act.shape[-1]
    o, a = F.pad(obs, (0, pad_obs)), F.pad(act, (0, pad_act))
    with torch.no_grad():
        z = wm.encode(o, task)
        return dict(z=z, next=wm.next(z, a, task), reward=wm.reward(z, a, task), q=wm.Q(z, a, task, "all"),
                    q_target=wm.Q(z, a, task, "all", target=True), pi=wm.pi(z, task).mean[..., :A],
                    energy=policy.energy_logits(z, a, task))


def assert_old_tasks_unchanged(src, new, pad_obs=0, pad_act=0, exact=True):
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(9, src.config.obs_dim, generator=g)
    act = torch.rand(9, src.config.action_dim, generator=g) * 2 - 1
    for task in src.config.tasks:
        a, b = outputs(src, task, obs, act), outputs(new, task, obs, act, pad_obs, pad_act)
        for k in a:
            if exact:
                assert torch.equal(a[k], b[k]), (task, k)
            else:
                torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=f"{task} {k}")


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------------------------
# adaptation
# ---------------------------------------------------------------------------------------------------------------------


def test_adapt_new_task_from_source_row():
    src = tiny_two_task()
    before, cfg_before = snapshot(src), src.config.to_dict()
    new, info = adapt_policy_to_task(src, "cartpole-swingup", source_task="pendulum-swingup")
    assert info["added"] and info["task_id"] == 2 and info["init"] == "source"
    assert info["extended_obs"] is None and info["extended_action"] is None
    c = new.config
    assert c.tasks == ["cartpole-balance", "pendulum-swingup", "cartpole-swingup"]
    assert (c.obs_dims, c.action_dims, c.episode_lengths) == ([5, 3, 5], [1, 1, 1], [500, 500, 500])
    assert (c.obs_dim, c.action_dim, c.task_set) == (5, 1, None)
    emb_src, emb_new = src.world_model.task_embedding.weight, new.world_model.task_embedding.weight
    assert emb_new.shape == (3, 8) and torch.equal(emb_new[:2], emb_src)
    assert torch.equal(emb_new[2], emb_src[1])  # a copy of pendulum-swingup's row
    assert torch.equal(new.world_model.action_masks, torch.ones(3, 1))
    assert new.world_model.discounts[2].item() == pytest.approx(src.config.discounts[0])
    assert_same_state(src, before)  # the source object is untouched
    assert src.config.to_dict() == cfg_before
    assert_old_tasks_unchanged(src, new, exact=True)
    # the new task acts (and is a new object, sharing no storage with the source)
    assert new.select_action(torch.zeros(5), task="cartpole-swingup", eval_mode=True).shape == (1,)
    ptrs = {v.data_ptr() for v in src.state_dict().values()}
    assert not ptrs & {v.data_ptr() for v in new.state_dict().values()}


@pytest.mark.parametrize("init,task,expected", [
    ("nearest", "cartpole-swingup", "cartpole-balance"),   # same domain prefix
    ("nearest", "pendulum-spin", "pendulum-swingup"),      # same domain prefix (and dims)
    ("nearest", "reacher-easy", None),                     # no domain / dims match -> the mean of all rows
    ("mean", "cartpole-swingup", None),
])
def test_adapt_nearest_and_mean_init(init, task, expected):
    src = tiny_two_task()
    new, info = adapt_policy_to_task(src, task, init=init)
    emb_src, row = src.world_model.task_embedding.weight, new.world_model.task_embedding.weight[-1]
    assert info["source_task"] == expected
    if expected is None:
        assert info["init"] == "mean" and torch.allclose(row, emb_src.mean(0))
    else:
        assert info["init"] == "nearest" and torch.equal(row, emb_src[src.config.tasks.index(expected)])
    assert_old_tasks_unchanged(src, new, pad_obs=new.config.obs_dim - 5, pad_act=new.config.action_dim - 1,
                               exact=False)


def test_nearest_task_rule():
    tasks = ["walker-stand", "walker-walk", "cheetah-run-backwards", "cartpole-balance", "reacher-easy"]
    o, a = [24, 24, 17, 5, 6], [6, 6, 6, 1, 2]
    assert nearest_task("walker-run", tasks, o, a, 24, 6) == "walker-walk"  # the paper's pair wins
    assert nearest_task("cheetah-run", tasks, o, a, 17, 6) == "cheetah-run-backwards"
    assert nearest_task("walker-walk-backwards", tasks, o, a, 24, 6) == "walker-stand"  # same domain, first
    assert nearest_task("cartpole-swingup", tasks, o, a, 5, 1) == "cartpole-balance"
    assert nearest_task("reacher-three-easy", tasks, o, a, 10, 3) == "reacher-easy"  # same domain, other dims
    assert nearest_task("finger-spin", tasks, o, a, 6, 2) == "reacher-easy"  # same dims
    assert nearest_task("fish-swim", tasks, o, a, 21, 5) is None


def test_adapt_extends_obs_and_action_dims():
    """reacher-easy (6/2) into a checkpoint padded to obs 5 / action 1: every input/output is widened with zeros."""
    src = tiny_two_task(use_score_network=True)
    before = snapshot(src)
    new, info = adapt_policy_to_task(src, "reacher-easy", source_task="cartpole-balance")
    assert info["extended_obs"] == (5, 6) and info["extended_action"] == (1, 2)
    c, td, L = new.config, 8, 16
    assert (c.obs_dim, c.action_dim, c.tasks[-1], c.obs_dims[-1], c.action_dims[-1]) == (6, 2, "reacher-easy", 6, 2)
    wm, swm = new.world_model, src.world_model
    enc, senc = wm.encoder[0].weight, swm.encoder[0].weight
    assert enc.shape == (32, 6 + td)
    assert torch.equal(enc[:, :5], senc[:, :5]) and torch.equal(enc[:, 6:], senc[:, 5:])  # emb columns moved
    assert torch.all(enc[:, 5] == 0)  # the new obs column sits before the embedding columns
    for name, w, sw in (("dynamics", wm.dynamics[0].weight, swm.dynamics[0].weight),
                        ("reward", wm.reward_head[0].weight, swm.reward_head[0].weight),
                        ("energy", new.energy[0].weight, src.energy[0].weight),
                        ("q", wm.Qs.weight_0, swm.Qs.weight_0), ("q_target", wm.Qs.target_weight_0,
                                                                 swm.Qs.target_weight_0)):
        assert w.shape[-1] == L + td + 2, name
        assert torch.equal(w[..., : L + td + 1], sw) and torch.all(w[..., -1] == 0), name
    pi, spi = wm.pi_head[-1], swm.pi_head[-1]
    assert pi.weight.shape == (4, 32)
    assert torch.equal(pi.weight[[0, 2]], spi.weight) and torch.equal(pi.bias[[0, 2]], spi.bias)
    assert torch.all(pi.weight[[1, 3]] == 0) and torch.all(pi.bias[[1, 3]] == 0)
    assert torch.equal(wm.action_masks, torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]))
    assert_same_state(src, before)
    assert_old_tasks_unchanged(src, new, pad_obs=1, pad_act=1, exact=False)
    # the score network: same output on the old action slots
    g = torch.Generator().manual_seed(2)
    z = torch.softmax(torch.randn(4, L, generator=g), -1)
    x, t = torch.randn(4, 3, 1, generator=g), torch.randint(0, 10, (4,), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(new.score(z, F.pad(x, (0, 1)), t, 0)[..., :1], src.score(z, x, t, 0),
                                   rtol=0, atol=1e-6)
    a = new.select_action(torch.zeros(6), task="reacher-easy", eval_mode=True)
    assert a.shape == (2,) and torch.isfinite(a).all()


def test_adapt_reuses_known_task():
    src = tiny_two_task()
    new, info = adapt_policy_to_task(src, "pendulum-swingup")
    assert not info["added"] and info["task_id"] == 1 and new is not src
    assert new.config.tasks == src.config.tasks
    assert_old_tasks_unchanged(src, new, exact=True)


def test_single_task_checkpoint_replaces_task_or_refuses():
    cfg = MBDPOConfig(tasks=["walker-walk"], obs_dims=[24], action_dims=[6], episode_lengths=[500], enc_dim=32,
                      mlp_dim=32, latent_dim=16, num_q=2, num_samples=16, num_elites=4, num_pi_trajs=2)
    src = MBDPODiffusionPolicy(cfg).eval()
    new, info = adapt_policy_to_task(src, "cartpole-swingup")
    assert info["replaced"] == "walker-walk" and not info["added"] and new.world_model.task_embedding is None
    c = new.config
    assert (c.tasks, c.obs_dims, c.action_dims, c.obs_dim, c.action_dim) == (["cartpole-swingup"], [5], [1], 24, 6)
    assert torch.equal(new.world_model.action_masks, torch.tensor([[1.0, 0, 0, 0, 0, 0]]))
    obs, act = torch.randn(3, 24), torch.rand(3, 6)
    with torch.no_grad():
        assert torch.equal(new.world_model.encode(obs), src.world_model.encode(obs))
        z = src.world_model.encode(obs)
        assert torch.equal(new.world_model.next(z, act), src.world_model.next(z, act))
    with pytest.raises(ValueError, match=r"single-task checkpoint .*dog-run.*do not fit"):
        adapt_policy_to_task(src, "dog-run")


def test_adapt_bad_input():
    src = tiny_two_task()
    with pytest.raises(ValueError, match=r"source_task 'walker-walk' is not in the checkpoint.*cartpole-balance"):
        adapt_policy_to_task(src, "cartpole-swingup", source_task="walker-walk")
    with pytest.raises(ValueError, match="init must be one of"):
        adapt_policy_to_task(src, "cartpole-swingup", init="random")
    with pytest.raises(ValueError, match="needs source_task"):
        adapt_policy_to_task(src, "cartpole-swingup", init="source")
    with pytest.raises(ValueError, match="Unknown task"):
        adapt_policy_to_task(src, "walker-fly")
    with pytest.raises(ValueError, match=r"in the checkpoint with \(obs, action\) dims \(5, 1\)"):
        adapt_policy_to_task(src, "cartpole-balance", obs_dim=7)


def test_model_overrides_cannot_change_architecture():
    src = tiny_two_task()
    ft.apply_model_overrides(src, {"planner": "mppi", "num_samples": 8, "num_elites": 2, "num_pi_trajs": 1})
    assert (src.config.planner, src.config.num_samples) == ("mppi", 8)
    with pytest.raises(ValueError, match="latent_dim=64 conflicts with the checkpoint"):
        ft.apply_model_overrides(src, {"latent_dim": 64})
    with pytest.raises(ValueError, match="num_elites"):
        ft.apply_model_overrides(src, {"num_elites": 99})


# ---------------------------------------------------------------------------------------------------------------------
# loading and run set-up errors
# ---------------------------------------------------------------------------------------------------------------------


def test_load_source_policy_local_and_missing(source_dir, tmp_path, monkeypatch):
    p = load_source_policy(str(source_dir))
    assert p.config.tasks == ["cartpole-balance", "pendulum-swingup"] and p.finetune_source["kind"] == "folder"
    monkeypatch.setattr(ft, "DEFAULT_CHECKPOINT_DIR", tmp_path / "nope" / "default")
    with pytest.raises(FileNotFoundError, match="embedded default checkpoint .*does not exist"):
        load_source_policy(None)
    monkeypatch.setattr(ft, "DEFAULT_CHECKPOINT_DIR", source_dir)
    assert load_source_policy(None).finetune_source["kind"] == "default"
    with pytest.raises(FileNotFoundError, match="missing.pt.xz does not exist"):
        load_source_policy(str(tmp_path / "missing.pt.xz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_source_policy(str(tmp_path / "empty"))


def _write_dataset(folder, task="reacher-easy", episodes=2, length=50, obs_dim=6, action_dim=2, name=None):
    from mbdpo_hub.data import DatasetWriter

    rng = np.random.default_rng(0)
    tasks = [dict(name=name or task, obs_dim=obs_dim, action_dim=action_dim, episode_length=length)]
    with DatasetWriter(folder, tasks=tasks) as w:
        for _ in range(episodes):
            act = np.concatenate([np.zeros((1, action_dim)), rng.uniform(-1, 1, (length, action_dim))])
            w.add_episode(rng.normal(size=(length + 1, obs_dim)), act, rng.uniform(0, 1, length + 1), task=0)
    return folder


def test_run_setup_errors(source_dir, tmp_path):
    def cfg(*extra):
        return load_finetune_config(FT_YAML, [f"checkpoint={source_dir}", "task=reacher-easy",
                                         f"output_dir={tmp_path / 'run'}", *RUN, *extra])

    with pytest.raises(ValueError, match=r"source_task 'walker-walk' is not in the checkpoint"):
        make_finetune_trainer(cfg("source_task=walker-walk"))
    with pytest.raises(ValueError, match="offline-to-online needs offline_dataset"):
        make_finetune_trainer(cfg("mode=offline-to-online"))
    other = _write_dataset(tmp_path / "other", task="cartpole-swingup", obs_dim=5, action_dim=1)
    with pytest.raises(ValueError, match=r"has tasks \['cartpole-swingup'\]: neither the fine-tuning task 'reacher-easy'"):
        make_finetune_trainer(cfg("mode=offline-to-online", f"offline_dataset={other}"))
    wrong = _write_dataset(tmp_path / "wrong", obs_dim=7, action_dim=2)  # reacher-easy claimed with obs 7
    with pytest.raises(ValueError, match=r"reacher-easy' has \(obs, action\) dims \(7, 2\)"):
        make_finetune_trainer(cfg("mode=offline-to-online", f"offline_dataset={wrong}"))
    with pytest.raises(ValueError, match="mode must be auto, online or offline-to-online"):
        make_finetune_trainer(cfg("mode=scratch"))
    with pytest.raises(ValueError, match=r"eval_old_tasks \['walker-walk'\] are not in the checkpoint"):
        make_finetune_trainer(cfg("eval_old_tasks=[walker-walk]"))
    with pytest.raises(ValueError, match="enc_dim=64 conflicts"):
        make_finetune_trainer(cfg("enc_dim=64"))
    with pytest.raises(ValueError, match=r"anchor_to_pretrained must be >= 0 \(0 = off\)"):
        make_finetune_trainer(cfg("anchor_to_pretrained=-1"))
    assert not (tmp_path / "run").exists()  # nothing started


def test_offline_buffer_of_a_held_out_task_rehearses_the_pretraining_tasks(source_dir, tmp_path):
    """A dataset without the fine-tuning task (the pretraining data of a held-out task): its episodes of the
    checkpoint's tasks come in under their own task ids; a dataset with the task: only that task's episodes."""
    from mbdpo_hub.finetune import load_offline_buffer

    policy, _ = adapt_policy_to_task(load_source_policy(str(source_dir)), "reacher-easy", init="mean")
    pre = _write_dataset(tmp_path / "pre", task="cartpole-balance", obs_dim=5, action_dim=1, episodes=3)
    buf = load_offline_buffer(str(pre), policy, "reacher-easy", batch_size=4, seed=0)
    assert buf.offline_tasks == ["cartpole-balance"] and buf.num_episodes == 3
    batch = buf.sample(16)
    assert set(batch["task"].flatten().tolist()) == {policy.config.task_id("cartpole-balance")}
    own = _write_dataset(tmp_path / "own", task="reacher-easy", obs_dim=6, action_dim=2, episodes=2)
    buf = load_offline_buffer(str(own), policy, "reacher-easy", batch_size=4, seed=0)
    assert buf.offline_tasks == ["reacher-easy"]
    assert set(buf.sample(16)["task"].flatten().tolist()) == {policy.config.task_id("reacher-easy")}


def test_pretraining_dataset_is_found_in_the_checkout_from_any_directory(source_dir, tmp_path, monkeypatch):
    from mbdpo_hub.finetune import pretraining_dataset_of

    policy = load_source_policy(str(source_dir))
    assert pretraining_dataset_of(policy) is None
    repo = Path(ft.__file__).resolve().parents[1]
    policy.config.pretraining_dataset = "datasets/dmc8-expert"
    monkeypatch.chdir(tmp_path)
    assert pretraining_dataset_of(policy) == str(repo / "datasets/dmc8-expert")
    policy.config.pretraining_dataset = "org/some-dataset"  # a Hub id stays as it is
    assert pretraining_dataset_of(policy) == "org/some-dataset"


EVAL = {"cartpole-balance": dict(mean_return=1.0, std_return=0.0, episodes=1)}


def test_missing_hub_repo_and_revision(local_hub, source_dir):
    with pytest.raises(OSError, match="cannot load checkpoint 'org/missing-model'"):
        load_source_policy("org/missing-model")
    MBDPODiffusionPolicy.from_pretrained(source_dir).push_to_hub("org/ft-src", eval_results=EVAL)
    with pytest.raises(OSError, match="'org/ft-src' at revision 'no-such-branch'"):
        load_source_policy("org/ft-src", revision="no-such-branch")


# ---------------------------------------------------------------------------------------------------------------------
# fine-tuning runs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_online_finetune_new_task_with_wider_dims(source_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hashes = tree_hash(source_dir)
    out = tmp_path / "run"
    cfg = load_finetune_config(FT_YAML, [f"checkpoint={source_dir}", "task=reacher-easy", "mode=online",
                                    "source_task=cartpole-balance", "eval_old_tasks=[cartpole-balance]",
                                    "freeze=[encoder]", f"output_dir={out}", *RUN])
    trainer = make_finetune_trainer(cfg)
    assert trainer.adapt_info["extended_obs"] == (5, 6) and trainer.adapt_info["extended_action"] == (1, 2)
    results = trainer.run()
    assert results["reacher-easy"]["steps"] == 100
    src = MBDPODiffusionPolicy.from_pretrained(source_dir)
    new = MBDPODiffusionPolicy.from_pretrained(out)
    assert new.config.tasks == ["cartpole-balance", "pendulum-swingup", "reacher-easy"]
    assert new.config.finetuned_from["source_task"] == "cartpole-balance"
    # frozen encoder: still the source's (with the zero column for the new obs dim)
    enc = new.world_model.encoder[0].weight
    assert torch.equal(enc[:, :5], src.world_model.encoder[0].weight[:, :5]) and torch.all(enc[:, 5] == 0)
    train = rows(out / "train.csv")
    assert [int(r["step"]) for r in train] == [50, 100]
    assert train[1]["reward_loss"] != ""  # a one-episode seed phase: updates right after the first stored episode
    assert trainer.learner.num_updates > 0
    assert [r["task"] for r in rows(out / "eval_old_tasks.csv")] == ["cartpole-balance"]
    card = (out / "README.md").read_text()
    assert "Fine-tuned (online)" in card and "reacher-easy" in card
    assert tree_hash(source_dir) == hashes  # the source checkpoint files are untouched


@pytest.mark.slow
def test_offline_to_online_finetune(source_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = _write_dataset(tmp_path / "data", task="reacher-easy", episodes=2)
    hashes = tree_hash(source_dir)
    out = tmp_path / "run"
    cfg = load_finetune_config(FT_YAML, [f"checkpoint={source_dir}", "task=reacher-easy", *RUN,
                                         "mode=offline-to-online", f"offline_dataset={data}", "task_init=mean",
                                         f"output_dir={out}"])
    trainer = make_finetune_trainer(cfg)
    off = trainer.offline_buffer
    assert off.num_episodes == 2 and (off.obs_dim, off.action_dim) == (6, 2)
    batch = off.sample()
    assert set(batch["task"].tolist()) == {2}  # remapped to the new task's id
    trainer.run()
    train = rows(out / "train.csv")
    assert train[0]["reward_loss"] == ""  # the seed phase: nothing is updated
    assert trainer.learner.num_updates == 5 + 25  # the burst after the seed phase, then utd 0.5
    assert MBDPODiffusionPolicy.from_pretrained(out).config.finetuned_from["init"] == "mean"
    assert tree_hash(source_dir) == hashes


@pytest.mark.slow
def test_finetune_from_local_hub_by_revision(local_hub, source_dir, tmp_path):
    src = MBDPODiffusionPolicy.from_pretrained(source_dir)
    src.push_to_hub("org/ft-base", eval_results=EVAL)
    info = src.push_to_hub("org/ft-base", eval_results=EVAL, revision="v1", commit_message="v1")
    local_hub.new_cache()
    out = tmp_path / "run"
    cfg = load_finetune_config(FT_YAML, ["checkpoint=org/ft-base", "revision=v1", "task=cartpole-swingup",
                                    "mode=online", f"output_dir={out}", *RUN])
    trainer = make_finetune_trainer(cfg)
    assert trainer.adapt_info["source_task"] == "cartpole-balance"  # nearest: same domain
    assert trainer.card_extra["base_model"] == "org/ft-base"
    assert trainer.card_extra["base_revision"] == info.oid  # the exact commit of the revision
    trainer.run()
    from mbdpo_hub.hub.cards import validate_card

    meta = validate_card(out / "README.md")
    assert "org/ft-base" in str(meta.get("base_model"))


@pytest.mark.slow
def test_finetune_from_official_checkpoint(tmp_path, monkeypatch):
    src = OFFICIAL / "tdmpc2-mt30-1m.pt.xz"
    if not src.is_file():
        pytest.skip(f"official fixture {src} not found")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "run"
    cfg = load_finetune_config(FT_YAML, [f"checkpoint={src}", "task=cartpole-swingup", "mode=online",
                                    f"output_dir={out}", *RUN, "utd=0.2"])
    trainer = make_finetune_trainer(cfg)
    assert not trainer.adapt_info["added"]  # cartpole-swingup is an mt30 task: reused
    assert trainer.card_extra["base_model"] is None  # a local file, named in the notes
    trainer.run()
    new = MBDPODiffusionPolicy.from_pretrained(out)
    assert len(new.config.tasks) == 30 and new.config.latent_dim == 128
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


@pytest.mark.slow
def test_killed_finetune_resumes(source_dir, tmp_path):
    hashes = tree_hash(source_dir)
    out = tmp_path / "run"
    over = [f"checkpoint={source_dir}", "task=reacher-easy", "mode=online", f"output_dir={out}", *RUN,
            "steps=200", "checkpoint_freq=100"]
    cmd = [sys.executable, str(REPO / "recipes" / "finetune.py"), "--config", str(FT_YAML), *over]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pointer = out / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and "step_000000100" in pointer.read_text():
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resumed from" in done.stdout + done.stderr
    steps = [int(r["step"]) for r in rows(out / "train.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == 200
    assert MBDPODiffusionPolicy.from_pretrained(out).config.tasks[-1] == "reacher-easy"
    assert json.loads((out / "eval_results.json").read_text())["env_steps"] == 200
    assert tree_hash(source_dir) == hashes


@pytest.mark.slow
def test_cli_demo_is_the_main_job(tmp_path, capsys):
    """`mbdpo-hub demo` runs what `make demo` runs (recipes/configs/finetune.yaml, output runs/demo), in-process."""
    from mbdpo_hub import cli

    assert cli.DEMO_CONFIG.samefile(FT_YAML)  # one file: recipes/configs/finetune.yaml links to the package's
    out = tmp_path / "demo"
    demo_run = [r for r in RUN if r != "mode=online"]  # the demo as configured (online, random seed phase)
    assert cli.main(["demo", *demo_run, f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "fine-tune the embedded default checkpoint on cartpole-balance-sparse" in printed
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    policy = MBDPODiffusionPolicy.from_pretrained(out)
    assert "cartpole-balance-sparse" in policy.config.tasks
    card = (out / "README.md").read_text()
    assert "from the embedded default checkpoint of mbdpo-hub" in card  # the base is named
    assert "Fine-tuned (online)" in card and "Offline data: " not in card
    assert 'task="cartpole-balance-sparse"' in card  # the usage snippet acts on the fine-tuned task


# ---------------------------------------------------------------------------------------------------------------------
# task_init, discount overrides, plan state (review fixes)
# ---------------------------------------------------------------------------------------------------------------------


def test_known_task_with_source_task_gets_the_source_row():
    # the paper's O2O recipe: the target starts from the source task's row, even when the target is in the checkpoint
    src = tiny_two_task()
    new, info = adapt_policy_to_task(src, "pendulum-swingup", source_task="cartpole-balance")
    emb = src.world_model.task_embedding.weight
    assert info["init"] == "source" and info["source_task"] == "cartpole-balance" and info["task_id"] == 1
    assert torch.equal(new.world_model.task_embedding.weight[1], emb[0])
    assert torch.equal(new.world_model.task_embedding.weight[0], emb[0])
    new2, info2 = adapt_policy_to_task(src, "pendulum-swingup", init="own")
    assert info2["init"] == "own" and torch.equal(new2.world_model.task_embedding.weight, emb)
    new3, info3 = adapt_policy_to_task(src, "pendulum-swingup", init="mean")
    assert torch.allclose(new3.world_model.task_embedding.weight[1], emb.mean(0))
    new4, info4 = adapt_policy_to_task(src, "cartpole-balance", init="nearest")  # never itself
    assert info4["source_task"] is None and info4["init"] == "mean"


@pytest.mark.parametrize("kw,match", [
    (dict(task="pendulum-swingup", source_task="cartpole-balance", init="own"), "only used with task_init=source"),
    (dict(task="cartpole-swingup", source_task="cartpole-balance", init="mean"), "only used with task_init=source"),
    (dict(task="cartpole-swingup", source_task="mean"), "use task_init=mean"),
    (dict(task="cartpole-swingup", init="own"), "task_init=own: task 'cartpole-swingup' is not in the checkpoint"),
    (dict(task="pendulum-swingup", source_task="pendulum-swingup"), "is the fine-tuning task itself"),
])
def test_task_init_never_ignores_a_value(kw, match):
    with pytest.raises(ValueError, match=match):
        adapt_policy_to_task(tiny_two_task(), kw.pop("task"), **kw)


def test_discount_override_reaches_the_buffer():
    src = tiny_two_task()
    old = src.world_model.discounts.clone()
    ft.apply_model_overrides(src, {"discount_max": 0.97})
    assert src.config.discount_max == 0.97
    torch.testing.assert_close(src.world_model.discounts, torch.tensor(src.config.discounts))
    assert (src.world_model.discounts <= 0.97 + 1e-6).all() and not torch.equal(src.world_model.discounts, old)


def test_evaluation_leaves_training_warm_starts_alone(monkeypatch):
    from mbdpo_hub import training

    policy = tiny_two_task()
    obs = torch.randn(2, 5)
    policy.select_action(obs, task=0)  # two training envs with warm starts
    before = (policy._prev_mean.clone(), policy._has_prev.clone())
    res = training.evaluate(policy, "cartpole-balance", episodes=2, seed=0, episode_length=20)  # same batch size
    assert res["episodes"] == 2
    assert torch.equal(policy._prev_mean, before[0]) and torch.equal(policy._has_prev, before[1])


# ---------------------------------------------------------------------------------------------------------------------
# task_init=fit: choose and fit the new task's row on its first episode
# ---------------------------------------------------------------------------------------------------------------------


def _task_batches(policy, task_id, n=3, B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg, H = policy.config, policy.config.horizon
    out = []
    for _ in range(n):
        obs = torch.randn(H + 1, B, cfg.obs_dim, generator=g)
        action = torch.rand(H, B, cfg.action_dim, generator=g) * 2 - 1
        out.append(dict(obs=obs, action=action, reward=obs[:-1, :, :1].tanh() + 1, terminated=torch.zeros(H, B, 1),
                        task=torch.full((B,), task_id, dtype=torch.long)))
    return out


def test_fit_task_row_chooses_the_best_candidate_and_moves_only_that_row():
    from mbdpo_hub.learner import MBDPOLearner

    src = tiny_two_task()
    policy, info = adapt_policy_to_task(src, "cartpole-swingup", init="nearest")
    learner = MBDPOLearner(policy, anchor_to_pretrained=1.0)
    tid = info["task_id"]
    batches = _task_batches(policy, tid)
    before = snapshot(policy)
    res = ft.fit_task_row(learner, batches, tid, steps=30, lr=1e-2)  # default candidates: every row and the mean
    # the trust region holds the fitted model, where the updates start
    assert torch.equal(learner.reference.task_embedding.weight, policy.world_model.task_embedding.weight)
    assert set(res["candidates"]) == {"cartpole-balance", "pendulum-swingup", "mean", "start"}
    assert res["chosen"] == min(res["candidates"], key=res["candidates"].get)
    assert res["loss_after_fit"] < res["loss_chosen"]  # fitting the row alone lowers the loss on the task's data
    after = policy.state_dict()
    for k, v in before.items():
        if k == "world_model.task_embedding.weight":
            assert torch.equal(after[k][:tid], v[:tid]) and not torch.equal(after[k][tid], v[tid])
        else:
            assert torch.equal(after[k], v), k  # nothing else moved


def test_fit_candidates_are_the_rows_of_the_same_domain_when_there_are_any():
    tasks = ["cartpole-balance", "reacher-easy", "cartpole-swingup", "walker-walk"]
    # a sparse-reward cartpole task once chose reacher-easy's row by its reward/value fit: never another body's row
    assert ft.fit_candidates("cartpole-balance-sparse", tasks) == (["cartpole-balance", "cartpole-swingup"], False)
    assert ft.fit_candidates("cartpole-balance", tasks) == (["cartpole-swingup"], False)  # never its own row
    assert ft.fit_candidates("finger-spin", tasks) == (tasks, True)  # no finger row: every row and the mean


def test_fit_task_row_restricted_candidates_and_bad_names():
    from mbdpo_hub.learner import MBDPOLearner

    src = tiny_two_task()
    policy, info = adapt_policy_to_task(src, "cartpole-swingup", init="nearest")
    learner, tid = MBDPOLearner(policy), info["task_id"]
    batches = _task_batches(policy, tid, n=1)
    names, with_mean = ft.fit_candidates("cartpole-swingup", policy.config.tasks)
    res = ft.fit_task_row(learner, batches, tid, 0, 1e-2, names, with_mean)
    assert set(res["candidates"]) == {"cartpole-balance", "start"}  # pendulum-swingup is another body
    with pytest.raises(ValueError, match="not other tasks"):
        ft.fit_task_row(learner, batches, tid, 0, 1e-2, ["cartpole-swingup"])  # the task itself
    with pytest.raises(ValueError, match="not other tasks"):
        ft.fit_task_row(learner, batches, tid, 0, 1e-2, ["walker-run"])


@pytest.mark.slow
def test_finetune_auto_fits_the_new_row_before_any_update(source_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    cfg = load_finetune_config(FT_YAML, [f"checkpoint={source_dir}", "task=cartpole-swingup", "mode=online",
                                         f"output_dir={out}", "fit_steps=5", "fit_batches=2", *RUN])
    assert cfg.task_init == "auto"
    trainer = make_finetune_trainer(cfg)
    assert trainer.adapt_info["init"] == "fit"
    trainer.run()
    fit = json.loads((out / "task_fit.json").read_text())
    assert fit["episodes"] == 1 and fit["steps"] == 5 and fit["chosen"] in fit["candidates"]
    train = rows(out / "train.csv")
    assert train[0]["reward_loss"] == ""  # the first episode is the seed phase: no update before the fit
    assert train[1]["reward_loss"] != "" and train[1]["q_mean"] != ""
    assert "chosen and fitted on its seed-phase data" in (out / "README.md").read_text()


@pytest.mark.slow
def test_finetune_embedded_default_onto_a_gym_id(tmp_path, monkeypatch):
    """The main job on a user's own environment: gym:Pendulum-v1 gets a new task row (and the model's padded
    dims stay), the run acts with rescaled actions and the Pendulum's 200-step time limit."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "pendulum"
    cfg = load_finetune_config(FT_YAML, ["checkpoint=null", "task=gym:Pendulum-v1", f"output_dir={out}",
                                         "fit_steps=3", "fit_batches=1", *[r for r in RUN if not
                                                                          r.startswith("episode_length")],
                                         "steps=400"])
    trainer = make_finetune_trainer(cfg)
    assert trainer.adapt_info["added"] and trainer.adapt_info["init"] == "fit"
    results = trainer.run()
    assert results["gym:Pendulum-v1"]["steps"] == 400 and results["gym:Pendulum-v1"]["mean_return"] < 0
    policy = MBDPODiffusionPolicy.from_pretrained(out)
    i = policy.config.tasks.index("gym:Pendulum-v1")
    assert (policy.config.obs_dims[i], policy.config.action_dims[i], policy.config.episode_lengths[i]) == (3, 1, 200)
    assert [int(r["step"]) for r in rows(out / "train.csv")] == [200, 400]


@pytest.mark.slow
def test_finetune_seed_phase_acts_with_the_checkpoint_and_updates_nothing(source_dir, tmp_path, monkeypatch):
    """The collapse fix (benchmarks/README "Fine-tuning collapse"): the first seed_steps are acted by the adapted
    checkpoint's planner (never at random), no update happens before they are stored, then a burst of seed_updates."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    original = MBDPODiffusionPolicy.select_action

    def counting(self, *a, **kw):
        calls.append(1)
        return original(self, *a, **kw)

    monkeypatch.setattr(MBDPODiffusionPolicy, "select_action", counting)
    monkeypatch.setattr(np.random, "uniform", lambda *a, **kw: pytest.fail("a fine-tuning run acted at random"))
    out = tmp_path / "run"
    over = [r for r in RUN if not r.startswith(("seed_steps", "seed_updates", "steps", "eval_freq"))]
    cfg = load_finetune_config(FT_YAML, [f"checkpoint={source_dir}", "task=cartpole-balance-sparse", "mode=online",
                                         f"output_dir={out}", "fit_steps=2", "fit_batches=1", "steps=150",
                                         "seed_steps=100", "seed_updates=7", "eval_freq=50", "seed_actions=checkpoint",
                                         *over])
    trainer = make_finetune_trainer(cfg)
    updates = []
    hook = trainer.first_update_hook
    trainer.first_update_hook = lambda tr: (updates.append((tr.step, tr.learner.num_updates)), hook(tr))
    trainer.run()
    assert trainer.random_steps == 0 and trainer.seed_steps == 100
    assert updates == [(100, 0)]  # the row is fitted on the whole seed phase, before any update
    assert len(calls) >= 150
    assert trainer.learner.num_updates == 7 + 25
    train = rows(out / "train.csv")
    assert [r["reward_loss"] == "" for r in train] == [True, True, False]
    # the model is unchanged through the seed phase: its step-0 evaluation stands for it (no copies at step 50)
    assert [int(r["step"]) for r in rows(out / "eval.csv")] == [0, 100, 150]


def test_finetune_seed_actions_random_acts_at_random_through_the_seed_phase(source_dir, tmp_path):
    over = [r for r in RUN if not r.startswith(("seed_steps", "steps"))]
    with pytest.raises(ValueError, match="seed_actions must be checkpoint or random"):
        load_finetune_config(FT_YAML, [f"checkpoint={source_dir}", "seed_actions=planner", *over])
    from mbdpo_hub.training.config import FinetuneConfig

    assert FinetuneConfig.seed_actions == "random"  # the library default: scratch's seed phase
    cfg = load_finetune_config(FT_YAML, [f"checkpoint={source_dir}", "task=cartpole-balance-sparse",
                                         f"output_dir={tmp_path / 'run'}", "steps=100", "seed_steps=60", *over])
    trainer = make_finetune_trainer(cfg)
    trainer.setup()
    try:
        assert trainer.random_steps == 60 == trainer.seed_steps
        obs = np.zeros((1, 5), np.float32)
        a = trainer.act(obs)  # at step 0: uniform random, not the planner
        assert a.shape == (1, 1) and np.all(np.abs(a) <= 1)
        trainer.step = 60
        called = []
        trainer.policy.select_action = lambda *x, **k: called.append(1) or torch.zeros(1, 1)
        trainer.act(obs)
        assert called  # after the seed phase the checkpoint plans
    finally:
        trainer.envs.close()


def test_mode_auto_rehearses_the_pretraining_data_when_it_is_there(source_dir, tmp_path):
    """mode=auto (the default): offline-to-online with offline_dataset or the checkpoint's own readable pretraining
    data, online (saying why) when the checkpoint names none or its folder is gone; explicit modes are kept."""
    from mbdpo_hub.finetune import resolve_mode
    from mbdpo_hub.training import FinetuneConfig

    policy = load_source_policy(str(source_dir))
    data = _write_dataset(tmp_path / "data", task="walker-walk", obs_dim=24, action_dim=6)

    def resolve(mode, named=None, given=None):
        policy.config.pretraining_dataset = named
        return resolve_mode(FinetuneConfig(task="reacher-easy", mode=mode, offline_dataset=given), policy)

    assert FinetuneConfig(task="reacher-easy").mode == "auto"
    assert resolve("auto", named=str(data))[:2] == ("offline-to-online", str(data))
    assert resolve("auto", given=str(data))[:2] == ("offline-to-online", str(data))
    mode, dataset, why = resolve("auto", named=str(tmp_path / "gone"))
    assert (mode, dataset) == ("online", None) and "is not here" in why and "offline_dataset=" in why
    assert resolve("auto")[:2] == ("online", None)
    assert resolve("online", named=str(data))[:2] == ("online", None)
    assert resolve("offline-to-online", named=str(data))[:2] == ("offline-to-online", str(data))
    with pytest.raises(ValueError, match="offline-to-online needs offline_dataset"):
        resolve("offline-to-online")


def test_diagnose_swaps_one_group_at_a_time():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from finetune_diagnose import SWAP_GROUPS, with_groups

    base = {"world_model.Qs.weight_0": 0, "world_model.Qs.target_weight_0": 0, "world_model.reward_head.0.weight": 0,
            "energy.0.weight": 0, "energy_mean": 0}
    donor = {k: 1 for k in base}
    swapped = with_groups(base, donor, SWAP_GROUPS["qs"])
    assert swapped["world_model.Qs.weight_0"] == swapped["world_model.Qs.target_weight_0"] == 1  # target follows
    assert swapped["world_model.reward_head.0.weight"] == swapped["energy.0.weight"] == 0
    assert with_groups(base, donor, SWAP_GROUPS["energy"])["energy_mean"] == 1


@pytest.mark.slow
def test_diagnose_script_runs_and_probes_the_burst(source_dir, tmp_path, monkeypatch):
    """benchmarks/finetune_diagnose.py on a tiny checkpoint: probes at the asked update counts, one swap per group."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "diag.json"
    over = [r for r in RUN if not r.startswith(("steps", "eval_episodes", "mode"))]
    monkeypatch.setattr(sys, "argv", ["finetune_diagnose.py", "--checkpoint", str(source_dir), "--probe-at", "0", "3",
                                      "--probe-episodes", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                                      "mode=online", "fit_steps=2", "fit_batches=1", *over])
    sys.path.insert(0, str(REPO / "benchmarks"))
    import finetune_diagnose

    finetune_diagnose.main()
    res = json.loads(out.read_text())
    assert [p["updates"] for p in res["probes"]] == [0, 3, 5]  # the probes, then after the 5-update burst
    assert res["seed_episode_returns"] and len(res["swaps"]) == len(finetune_diagnose.SWAP_GROUPS)
    assert "value_loss" in res["probes"][1]["updates_metrics"]


def test_zero_shot_script_evaluates_the_adapted_checkpoint(source_dir, tmp_path, monkeypatch):
    """benchmarks/zero_shot.py: one row per task, the row the new task starts from, the returns of each episode."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import zero_shot

    out = tmp_path / "zs.json"
    zero_shot.main(["--checkpoint", str(source_dir), "--tasks", "cartpole-balance-sparse", "--episodes", "2",
                    "--out", str(out), "episode_length=20", "diffusion_steps=2", "num_samples=16", "num_elites=4",
                    "num_pi_trajs=2"])
    res = json.loads(out.read_text())["results"]["cartpole-balance-sparse"]
    assert len(res["returns"]) == 2 and res["mean_return"] == pytest.approx(sum(res["returns"]) / 2)
    assert res["task_row_from"] == "cartpole-balance"  # the same-domain row of the two-task checkpoint


def test_keeps_zero_shot_criterion():
    """Issue 12 section 2's check, shared by finetune_anchors.py and finetune_vs_scratch.py."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _common import keeps_zero_shot

    assert keeps_zero_shot([0, 1000, 1500], [1000, 850, 790], 1000) == (790, False)  # 790 < 800
    assert keeps_zero_shot([0, 500, 1000], [1000, 10, 800], 1000) == (800, True)  # step 500 is before the window
    assert keeps_zero_shot([0, 1500], [50, 10], 50) == (10, None)  # zero-shot below 100: does not apply
    assert keeps_zero_shot([0, 500], [1000, 10], 1000) == (None, None)  # no evaluation from step 1,000 on
    assert keeps_zero_shot([1500], [10], None) == (10, None)  # no zero-shot evaluation
