"""Data collection (recipes/collect.py) and multi-task offline pretraining (recipes/pretrain.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mbdpo_hub.data import DatasetWriter, read_tasks

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "recipes" / "configs" / "pretrain_tiny.yaml"
COLLECT_YAML = REPO / "recipes" / "configs" / "collect.yaml"
TINY_MODEL = ["enc_dim=32", "mlp_dim=32", "latent_dim=16", "num_q=2", "diffusion_steps=2", "num_samples=8",
              "num_elites=2", "num_pi_trajs=2"]
TASKS = (("cartpole-balance", 5, 1), ("reacher-easy", 6, 2))


def write_dataset(folder, tasks=TASKS, episodes=2, T=40, seed=0):
    rng = np.random.default_rng(seed)
    table = [dict(name=n, obs_dim=o, action_dim=a, episode_length=T) for n, o, a in tasks]
    with DatasetWriter(folder, tasks=table) as w:
        for n, o, a in tasks:
            for _ in range(episodes):
                act = rng.uniform(-1, 1, (T + 1, a)).astype(np.float32)
                act[0] = 0
                rew = rng.uniform(0, 1, T + 1).astype(np.float32)
                rew[0] = 0
                w.add_episode(rng.normal(size=(T + 1, o)).astype(np.float32), act, rew, np.zeros(T + 1, bool),
                              task=n)
    return Path(folder)


def pretrain_cfg(dataset, out, *extra):
    from mbdpo_hub.training import load_pretrain_config

    return load_pretrain_config(TINY_YAML, [f"dataset={dataset}", f"output_dir={out}", "steps=4",
                                            "checkpoint_freq=2", "log_freq=2", "episode_length=20", *extra])


# ---------------------------------------------------------------------------------------------------------------------
# configs and bad input (fast)
# ---------------------------------------------------------------------------------------------------------------------
def test_pretrain_config_loading(tmp_path):
    from mbdpo_hub.training import load_pretrain_config

    cfg = load_pretrain_config(TINY_YAML, ["dataset=x/y", "planner=mppi", "steps=7", "held_out_tasks=[a,b]"])
    assert cfg.steps == 7 and cfg.model["planner"] == "mppi" and cfg.held_out_tasks == ["a", "b"]
    assert load_pretrain_config(REPO / "recipes/configs/pretrain_1m.yaml", ["dataset=d"]).model_size == 1
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        load_pretrain_config(TINY_YAML, ["dataset=x/y", "nope=1"])
    with pytest.raises(ValueError, match="dataset= is required"):
        load_pretrain_config(TINY_YAML, [])
    with pytest.raises(ValueError, match="hub_repo_id"):
        load_pretrain_config(TINY_YAML, ["dataset=x/y", "push_to_hub=true"])


def test_collect_config_loading():
    from mbdpo_hub.collect import load_collect_config

    cfg = load_collect_config(COLLECT_YAML, ["tasks=[cartpole-balance,reacher-easy]", "steps_per_task=300",
                                             "utd=0.5", "num_samples=16", "num_elites=4", "num_pi_trajs=4"])
    rc = cfg.run_config("reacher-easy")
    assert rc.task == "reacher-easy" and rc.steps == 300 and rc.utd == 0.5 and rc.model["num_samples"] == 16
    assert rc.output_dir.endswith("reacher-easy")
    with pytest.raises(ValueError, match="set per task"):
        load_collect_config(COLLECT_YAML, ["task=cartpole-balance"])
    with pytest.raises(ValueError):
        load_collect_config(COLLECT_YAML, ["tasks=[not-a-task]"])


def test_missing_local_dataset(tmp_path):
    from mbdpo_hub.training import OfflinePretrainer

    with pytest.raises(FileNotFoundError, match="no such local folder"):
        OfflinePretrainer(pretrain_cfg(tmp_path / "nope", tmp_path / "run")).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an mbdpo_hub dataset"):
        OfflinePretrainer(pretrain_cfg(tmp_path / "empty", tmp_path / "run")).setup()


def test_missing_hub_dataset_and_revision(local_hub, tmp_path):
    from mbdpo_hub.hub.publish import push_dataset_folder
    from mbdpo_hub.training import OfflinePretrainer

    with pytest.raises(ValueError, match="no local folder of that name, and no such dataset repo"):
        OfflinePretrainer(pretrain_cfg("org/missing-data", tmp_path / "run")).setup()
    push_dataset_folder(write_dataset(tmp_path / "ds"), "org/data", validate=False)
    with pytest.raises(ValueError, match="revision 'nope' not found"):
        OfflinePretrainer(pretrain_cfg("org/data", tmp_path / "run", "dataset_revision=nope")).setup()


def test_dataset_dims_must_match_model_config(tmp_path):
    from mbdpo_hub import MBDPOConfig
    from mbdpo_hub.training import OfflinePretrainer

    ds = write_dataset(tmp_path / "ds")  # padded (6, 2); cartpole-balance (5, 1), reacher-easy (6, 2)
    small = MBDPOConfig.from_preset(1, ["cartpole-balance", "reacher-easy"], obs_dims=[5, 5], action_dims=[1, 1],
                                    obs_dim=5, action_dim=1, enc_dim=32, mlp_dim=32, latent_dim=16)
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match=r"padded dims \(obs 6, action 2\)"):
        OfflinePretrainer(pretrain_cfg(ds, tmp_path / "run", f"model_config={tmp_path / 'small'}")).setup()
    wrong = MBDPOConfig.from_preset(1, ["cartpole-balance", "reacher-easy"], obs_dims=[5, 4], action_dims=[1, 2], obs_dim=6,
                                    enc_dim=32, mlp_dim=32, latent_dim=16)
    wrong.save_pretrained(tmp_path / "wrong")
    with pytest.raises(ValueError, match="'reacher-easy': dataset dims"):
        OfflinePretrainer(pretrain_cfg(ds, tmp_path / "run", f"model_config={tmp_path / 'wrong'}")).setup()
    other = MBDPOConfig.from_preset(1, ["walker-walk", "cartpole-balance"], enc_dim=32, mlp_dim=32, latent_dim=16)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="not one of the model config's tasks"):
        OfflinePretrainer(pretrain_cfg(ds, tmp_path / "run", f"model_config={tmp_path / 'other'}")).setup()
    with pytest.raises(ValueError, match="not in dataset"):
        OfflinePretrainer(pretrain_cfg(ds, tmp_path / "run", "tasks=[walker-walk]")).setup()


# ---------------------------------------------------------------------------------------------------------------------
# runs (slow)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_collect_two_tasks_and_resume(tmp_path, monkeypatch):
    import mbdpo_hub.collect as collect_mod
    from mbdpo_hub.collect import collect, load_collect_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    over = ["tasks=[cartpole-balance,reacher-easy]", "steps_per_task=40", "episode_length=20", "seed_steps=20",
            "seed_updates=1", "utd=0.1", "batch_size=8", "eval_episodes=1", "checkpoint_freq=40", "progress=false",
            f"output_dir={tmp_path / 'runs'}", f"dataset_dir={tmp_path / 'ds'}", *TINY_MODEL]
    cfg = load_collect_config(COLLECT_YAML, over)
    runs = []
    real_run = collect_mod.OnlineTrainer.run

    def killed_on_second(self):
        runs.append(self.cfg.task)
        if len(runs) == 2:
            raise KeyboardInterrupt("killed")
        return real_run(self)

    monkeypatch.setattr(collect_mod.OnlineTrainer, "run", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        collect(cfg)
    tj = read_tasks(tmp_path / "ds")
    assert (tj["obs_dim"], tj["action_dim"]) == (6, 2)  # the union table, padded to the max dims
    counts = {t["name"]: t["num_episodes"] for t in tj["tasks"]}
    assert counts == {"cartpole-balance": 2, "reacher-easy": 0}

    runs.clear()
    monkeypatch.setattr(collect_mod.OnlineTrainer, "run", lambda self: (runs.append(self.cfg.task), real_run(self))[1])
    summary = collect(cfg)  # the same command resumes: cartpole-balance is skipped
    assert runs == ["reacher-easy"]
    counts = {t["name"]: t["num_episodes"] for t in read_tasks(tmp_path / "ds")["tasks"]}
    assert counts == {"cartpole-balance": 2, "reacher-easy": 2}
    assert summary["reacher-easy"]["episodes"] == 2
    runs.clear()
    collect(cfg)
    assert runs == []  # everything done

    # the dataset feeds a multi-task buffer
    from mbdpo_hub.buffer import ReplayBuffer
    from mbdpo_hub.data import fill_buffer

    buf = ReplayBuffer(1000, 6, 2, 3, 4)
    info = fill_buffer(buf, tmp_path / "ds", task_map=["cartpole-balance", "reacher-easy"])
    assert info["num_episodes"] == 4 and info["task_ids"] == [0, 1]


@pytest.mark.slow
def test_pretrain_push_and_pull_by_revision(local_hub, tmp_path):
    from mbdpo_hub import MBDPODiffusionPolicy
    from mbdpo_hub.hub.cards import validate_card
    from mbdpo_hub.hub.publish import push_dataset_folder
    from mbdpo_hub.training import OfflinePretrainer

    push_dataset_folder(write_dataset(tmp_path / "ds"), "org/pt-data", validate=False)
    out = tmp_path / "run"
    cfg = pretrain_cfg("org/pt-data", out, "push_to_hub=true", "hub_repo_id=org/pt-model", "hub_tag=v1",
                       "held_out_tasks=[reacher-hard]")
    res = OfflinePretrainer(cfg, command="pytest pretrain").run()
    assert set(res["results"]) == {"cartpole-balance", "reacher-easy"} and res["updates"] == 4
    refs = local_hub.api.list_repo_refs("org/pt-model")
    branches = {b.name for b in refs.branches}
    assert {"main", "step-000002", "step-000004"} <= branches
    assert "v1" in {t.name for t in refs.tags}
    meta = validate_card(out / "README.md")
    assert "org/pt-data" in str(meta.get("datasets"))
    text = (out / "README.md").read_text()
    assert "reacher-hard" in text and "pytest pretrain" in text and "cartpole-balance" in text
    payload = json.loads((out / "eval_results.json").read_text())
    assert payload["normalized_score"] is not None and payload["held_out_tasks"] == ["reacher-hard"]
    assert (out / "eval.csv").read_text().count("\n") >= 3

    local_hub.new_cache()
    for rev in ("step-000002", "v1"):
        policy = MBDPODiffusionPolicy.from_pretrained("org/pt-model", revision=rev)
        assert policy.config.tasks == ["cartpole-balance", "reacher-easy"]
        assert policy.config.held_out_tasks == ["reacher-hard"]
        for task in policy.config.tasks:
            a = policy.select_action(np.zeros(policy.config.obs_dim, np.float32), task=task, eval_mode=True)
            assert a.shape == (2,) and bool(a.abs().max() <= 1)
        assert validate_card(Path(local_hub.api.hf_hub_download("org/pt-model", "README.md", revision=rev)))


@pytest.mark.slow
def test_pretrain_resume(tmp_path, monkeypatch):
    import csv

    from mbdpo_hub.training import OfflinePretrainer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = write_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    OfflinePretrainer(pretrain_cfg(ds, out, "steps=2", "eval_episodes=0", "mixed_precision=bf16")).run()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000000002"
    t = OfflinePretrainer(pretrain_cfg(ds, out, "steps=4", "eval_episodes=0", "mixed_precision=bf16"))
    t.run()
    assert t.ckpt_loaded is not None and t.learner.num_updates == 4
    steps = [int(r["step"]) for r in csv.DictReader((out / "train.csv").open())]
    assert steps == [2, 4]


@pytest.mark.slow
def test_killed_in_the_final_evaluation_resumes_without_updating(tmp_path, monkeypatch):
    """The final evaluation can take longer than the updates (a 5M model on a CPU): the last step is checkpointed
    before it, so a rerun only evaluates."""
    from mbdpo_hub.training import OfflinePretrainer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = write_dataset(tmp_path / "ds")
    out = tmp_path / "run"

    def killed(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(OfflinePretrainer, "run_eval", killed)
        with pytest.raises(KeyboardInterrupt):
            OfflinePretrainer(pretrain_cfg(ds, out, "steps=3", "checkpoint_freq=2", "eval_episodes=1")).run()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000000003"
    t = OfflinePretrainer(pretrain_cfg(ds, out, "steps=3", "checkpoint_freq=2", "eval_episodes=1"))
    t.run()
    assert t.ckpt_loaded is not None and t.learner.num_updates == 3
    assert json.loads((out / "eval_results.json").read_text())["eval_step"] == 3


@pytest.mark.slow
def test_two_processes_one_consistent_checkpoint(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    # --multi_gpu selects accelerate's torchrun launcher; without a GPU every process runs on the CPU (gloo)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "recipes" / "pretrain.py"), "--config", str(TINY_YAML), f"dataset={ds}", f"output_dir={out}",
           "steps=4", "checkpoint_freq=2", "batch_size=16", "episode_length=20", "write_state_hash=true"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    h0 = (out / "state_hash_rank0.txt").read_text()
    h1 = (out / "state_hash_rank1.txt").read_text()
    assert h0 == h1  # both processes end with identical weights
    # one set of files, written by the main process: the final model + the checkpoints of steps 2 and 4
    assert len(list(out.rglob("model.safetensors"))) == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_000000002", "step_000000004"]
    assert not list(out.rglob(".tmp*"))
    cfg_yaml = (out / "pretrain_config.yaml").read_text()
    assert "batch_size: 16" in cfg_yaml
    res = json.loads((out / "eval_results.json").read_text())
    assert res["num_processes"] == 2 and set(res["results"]) == {"cartpole-balance", "reacher-easy"}
    from mbdpo_hub import MBDPODiffusionPolicy
    from mbdpo_hub.training.offline import state_hash

    assert state_hash(MBDPODiffusionPolicy.from_pretrained(out)) == h0.strip()


def test_collectors_with_different_task_lists_share_one_dataset(tmp_path):
    from mbdpo_hub.buffer import ReplayBuffer
    from mbdpo_hub.collect import export_buffer, task_table
    from mbdpo_hub.data import read_tasks

    def buffer_with(task_dims):
        buf = ReplayBuffer(200, 24, 6, 3, 4)
        o, a = task_dims
        obs = np.zeros((11, 24), np.float32)
        buf.add_episode(obs, np.zeros((11, 6), np.float32), np.ones(11, np.float32), task=0)
        return buf

    ds = tmp_path / "ds"
    first = task_table(["cartpole-balance", "walker-stand"])   # worker 0
    second = task_table(["finger-spin", "walker-walk"])         # worker 1: its own list, its own positions
    export_buffer(buffer_with((5, 1)), ds, "cartpole-balance", first)
    export_buffer(buffer_with((9, 2)), ds, "finger-spin", second)
    export_buffer(buffer_with((24, 6)), ds, "walker-stand", first)
    names = {t["name"]: (t["task_index"], t["num_episodes"]) for t in read_tasks(ds)["tasks"]}
    assert names["cartpole-balance"] == (0, 1) and names["walker-stand"] == (1, 1)
    assert names["finger-spin"][1] == 1 and names["finger-spin"][0] not in (0, 1)
