import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mbdpo_hub import MBDPODiffusionPolicy
from mbdpo_hub.training import OnlineTrainer, load_run_config, parse_overrides

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "configs" / "tiny.yaml"


def test_overrides_and_config_routing():
    cfg = load_run_config(TINY, ["steps=300", "planner=mppi", "freeze=[encoder]", "lr_scales={qs: 0.5}",
                                 "num_samples=8"])
    assert cfg.steps == 300 and cfg.model["planner"] == "mppi" and cfg.model["num_samples"] == 8
    assert cfg.freeze == ["encoder"] and cfg.lr_scales == {"qs": 0.5}
    assert parse_overrides(["--seed=3", "output_dir=runs/x"]) == {"seed": 3, "output_dir": "runs/x"}


@pytest.mark.parametrize("override,match", [
    ("task=walker-fly", "Unknown task"),
    ("steps=-5", "steps must be positive"),
    ("horizon=150", "horizon=150 is not shorter"),
    ("warp_speed=9", "unknown config key"),
    ("freeze=[decoder]", "unknown parameter groups"),
    ("mode=online", "unknown config key 'mode'"),  # a fine-tuning field: recipes/finetune.py
    ("steps=true", "steps=True is not an integer"),
    ("steps=abc", "steps='abc' is not an integer"),
    ("steps=1.5", "steps=1.5 is not an integer"),
    ("seed=abc", "seed='abc' is not an integer"),
    ("utd=abc", "utd='abc' is not a number"),
    ("resume=maybe", "resume='maybe' is not a boolean"),
    ("output_dir=", "output_dir is empty"),
    ("task=0.7", "Unknown task"),
    ("task=True", "task=True is not text"),
    ("model=[1,2]", "model must be a mapping"),
    ("num_samples=many", "num_samples='many' is not an integer"),
    ("steps=[", "not valid YAML"),
    ("seed_updates=-5", "seed_updates must be >= 0"),
    ("seed_steps=-1", "seed_steps must be >= 0"),
])
def test_bad_config_values(override, match):
    with pytest.raises(ValueError, match=match):
        load_run_config(TINY, [override])


def test_config_values_are_normalised():
    from mbdpo_hub.training import load_finetune_config

    cfg = load_run_config(TINY, ["freeze=encoder", "steps=1e3"])
    assert cfg.freeze == ["encoder"] and cfg.steps == 1000 and isinstance(cfg.steps, int)
    ft = load_finetune_config(REPO / "recipes" / "configs" / "finetune.yaml", ["lr=3e-5", "offline_ratio=1"])
    assert ft.model["lr"] == 3e-5  # YAML 1.1 reads 3e-5 as a string; the field's type makes it a number
    assert ft.offline_ratio == 1.0 and isinstance(ft.offline_ratio, float)
    with pytest.raises(ValueError, match="mode must be auto, online or offline-to-online"):
        load_finetune_config(REPO / "recipes" / "configs" / "finetune.yaml", ["mode=sideways"])
    with pytest.raises(ValueError, match="task_init must be one of"):
        load_finetune_config(REPO / "recipes" / "configs" / "finetune.yaml", ["task_init=random"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_run_config("nope.yaml", [])


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tiny_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    cfg = load_run_config(TINY, [f"output_dir={out}", "log_with=tensorboard"])
    results = OnlineTrainer(cfg).run()
    for name in ("config.json", "model.safetensors", "train_config.yaml", "train.csv", "eval.csv",
                 "learning_curve.png", "eval_video.mp4", "eval_results.json", "README.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "mbdpo").rglob("events.out.tfevents*")), "tensorboard logs"
    policy = MBDPODiffusionPolicy.from_pretrained(out)
    assert policy.config.tasks == ["cartpole-balance"]
    a = policy.select_action(torch.zeros(5), eval_mode=True)
    assert a.shape == (1,)
    train = _rows(out / "train.csv")
    assert [int(r["step"]) for r in train] == [100, 200, 300, 400]
    assert train[-1]["reward_loss"] != ""  # updates happened after the seed phase
    ev = _rows(out / "eval.csv")
    assert int(ev[-1]["step"]) == 400
    payload = json.loads((out / "eval_results.json").read_text())
    assert payload["results"]["cartpole-balance"]["mean_return"] == pytest.approx(results["cartpole-balance"]
                                                                                  ["mean_return"])
    from mbdpo_hub.hub.cards import validate_card

    meta = validate_card(out / "README.md")
    assert meta["library_name"] == "mbdpo-hub"
    # evaluate a saved run through the CLI
    from mbdpo_hub.cli import main

    assert main(["evaluate", str(out), "--episodes", "2", "--planner", "policy",
                 "--output", str(tmp_path / "ev.json")]) == 0
    ev_json = json.loads((tmp_path / "ev.json").read_text())
    assert ev_json["results"]["cartpole-balance"]["episodes"] == 2


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "recipes" / "train.py"), "--config", str(TINY), f"output_dir={out}",
           "steps=600", "save_video=false", "eval_freq=0", "log_with=none", "progress=false"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pointer = out / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and "step_000000300" in pointer.read_text():
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)  # killed mid-run, no chance to clean up
    proc.wait()
    assert not (out / "model.safetensors").exists()
    killed_at = _rows(out / "train.csv")
    assert killed_at, "some episodes were logged before the kill"
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resumed from" in done.stdout + done.stderr
    steps = [int(r["step"]) for r in _rows(out / "train.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == 600  # no duplicated or lost rows
    assert (out / "model.safetensors").is_file()
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert len(ckpts) <= 2 and not list((out / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_finished_run_extends_with_more_steps(tmp_path, capsys):
    out = tmp_path / "run"
    common = [f"output_dir={out}", "seed_steps=100", "eval_freq=100", "save_video=false", "log_with=none",
              "progress=false"]
    OnlineTrainer(load_run_config(TINY, common + ["steps=200"])).run()
    assert "step_000000200" in (out / "checkpoints" / "latest").read_text()  # the last step is checkpointed
    assert [int(r["step"]) for r in _rows(out / "eval.csv")] == [100, 200]
    capsys.readouterr()
    OnlineTrainer(load_run_config(TINY, common + ["steps=300"])).run()
    assert "(step 200)" in capsys.readouterr().out  # continued from the end of the first run, nothing redone
    assert [int(r["step"]) for r in _rows(out / "eval.csv")] == [100, 200, 300]  # one evaluation per point
    assert [int(r["step"]) for r in _rows(out / "train.csv")] == [100, 200, 300]
    assert json.loads((out / "eval_results.json").read_text())["env_steps"] == 300


# ---------------------------------------------------------------------------------------------------------------------
# a run folder is one run's: conflicting commands are refused before anything is written; one process at a time
# ---------------------------------------------------------------------------------------------------------------------

FAST = ["steps=200", "save_video=false", "eval_freq=0", "eval_episodes=1", "log_with=none", "progress=false",
        "checkpoint_freq=100"]


def _tree(folder):
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.slow
def test_used_output_dir_refuses_another_run_and_keeps_it(tmp_path):
    out = tmp_path / "run"
    OnlineTrainer(load_run_config(TINY, [f"output_dir={out}", *FAST])).run()
    assert json.loads((out / "run.json").read_text())["task"] == "cartpole-balance"
    before = _tree(out)
    # another task of the same shapes, a bad model config, resume=false: all refused, nothing written
    for extra, match in ((["task=cartpole-swingup"], "holds another run .*task: 'cartpole-balance' there"),
                         (["resume=false"], "resume=false would mix two runs"),
                         (["latent_dim=33"], "latent_dim")):
        with pytest.raises(ValueError, match=match):
            OnlineTrainer(load_run_config(TINY, [f"output_dir={out}", *FAST, *extra])).run()
        assert _tree(out) == before, extra
    # the same command extends it; overwrite=true moves the old run aside (nothing deleted)
    OnlineTrainer(load_run_config(TINY, [f"output_dir={out}", *FAST, "task=cartpole-swingup", "overwrite=true"])).run()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and _tree(aside[0]) == before
    assert json.loads((out / "run.json").read_text())["task"] == "cartpole-swingup"


def test_second_process_on_one_output_dir_is_refused(tmp_path):
    from filelock import FileLock

    out = tmp_path / "run"
    out.mkdir()
    with FileLock(str(out / ".lock")):  # another process holds the folder
        with pytest.raises(RuntimeError, match="another process is running in output_dir"):
            OnlineTrainer(load_run_config(TINY, [f"output_dir={out}", *FAST])).run()


def test_recipes_and_cli_print_one_line_errors(tmp_path):
    from mbdpo_hub.cli import main

    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "train.py"), "--config", str(TINY), "steps=abc",
                           f"output_dir={tmp_path / 'x'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: steps='abc' is not an integer")
    assert not (tmp_path / "x").exists()
    assert main(["evaluate", str(tmp_path / "no" / "such" / "run"), "--episodes", "1"]) == 2


def test_thread_count_follows_cores_and_processes(monkeypatch):
    from mbdpo_hub.utils import configure_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    try:
        assert configure_threads(num_processes=1) == 7
        assert configure_threads(num_processes=2) == 3
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        assert configure_threads(num_processes=1) == 1  # 2 cores: one torch thread, one core for the rest
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert configure_threads() == 2
    finally:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def test_demo_launch_passes_the_recommended_thread_count():
    """`accelerate launch` sets OMP_NUM_THREADS to physical cores / processes (2 on 2 cores) unless told, which
    configure_threads would honour: the demo's launch line must pass our count (a free core for the rest)."""
    recipe = (REPO / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "--num_cpu_threads_per_process" in recipe and "recommended_threads" in recipe


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_activation_memory_is_reused_without_page_faults():
    """keep_freed_memory (called by configure_threads): freeing and re-allocating an activation-sized tensor reuses
    the block instead of faulting in fresh pages each time (glibc's default for blocks over 128 KiB-32 MiB)."""
    import resource

    from mbdpo_hub.utils import keep_freed_memory

    def faults_per_alloc():
        torch.empty(2 << 20).fill_(1.0)  # 8 MiB, freed at once
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            torch.empty(2 << 20).fill_(1.0)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

    assert keep_freed_memory()
    faults_per_alloc()  # the heap grows once
    assert faults_per_alloc() < 100  # 8 MiB of fresh 4 KiB pages: 2048 faults (about 1600 measured by default)


@pytest.mark.slow
def test_resume_skips_a_damaged_checkpoint_and_logs_match(tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [f"output_dir={out}", *FAST, "steps=300"]
    OnlineTrainer(load_run_config(TINY, cmd)).run()
    steps_before = [int(r["step"]) for r in _rows(out / "eval.csv")]
    # re-running the finished command logs no second final evaluation
    OnlineTrainer(load_run_config(TINY, cmd)).run()
    assert [int(r["step"]) for r in _rows(out / "eval.csv")] == steps_before
    # damage the newest checkpoint and leave a temp folder of a killed write: the older one is used, the temp removed
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert [p.name for p in ckpts] == ["step_000000200", "step_000000300"]
    (ckpts[-1] / "learner.pt").write_bytes(b"not a checkpoint")
    (out / "checkpoints" / ".tmp-step_000000999-123").mkdir()
    trainer = OnlineTrainer(load_run_config(TINY, [f"output_dir={out}", *FAST, "steps=400"]))
    trainer.run()
    printed = capsys.readouterr().out
    assert "learner.pt cannot be read" in printed and "weights_only=False" not in printed
    assert "resumed from" in printed and "step_000000200 (step 200)" in printed
    assert trainer.step == 400
    train_steps = [int(r["step"]) for r in _rows(out / "train.csv")]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 400  # no duplicated rows
    assert not list((out / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_cli_evaluate_refuses_zero_episodes_and_updates_the_whole_card(tmp_path):
    from mbdpo_hub.cli import main
    from mbdpo_hub.hub.cards import validate_card

    out = tmp_path / "run"
    OnlineTrainer(load_run_config(TINY, [f"output_dir={out}", *FAST])).run()
    assert main(["evaluate", str(out), "--episodes", "0"]) == 2
    assert main(["evaluate", str(out), "--episodes", "2", "--episode-length", "30", "--planner", "policy", "--quiet",
                 "--output", str(tmp_path / "ev.json"), "--update-card", str(out / "README.md")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    r = ev["results"]["cartpole-balance"]
    assert r["episodes"] == 2 and r["normalized_score"] == pytest.approx(r["mean_return"] / 10)
    meta = validate_card(out / "README.md")
    metrics = {m["type"]: m["value"] for res in meta["model-index"][0]["results"] for m in res["metrics"]}
    assert metrics["normalized_score"] == pytest.approx(round(r["mean_return"] / 10, 4))
    assert "eval_s" in _rows(out / "eval.csv")[0]


def test_append_csv_keeps_an_existing_files_columns(tmp_path):
    """A run resumed by a newer version (one more metric) keeps its train.csv readable: the new column is left out."""
    import csv
    from types import SimpleNamespace

    from mbdpo_hub.training.run_folder import RunFolder

    folder = SimpleNamespace(out=tmp_path, accelerator=SimpleNamespace(is_main_process=True))
    (tmp_path / "train.csv").write_text("step,loss\n1,0.5\n")
    RunFolder.append_csv(folder, "train.csv", dict(step=2, loss=0.25, pi_energy=0.1))
    RunFolder.append_csv(folder, "new.csv", dict(step=2, loss=0.25, pi_energy=0.1))
    with open(tmp_path / "train.csv") as f:
        assert list(csv.DictReader(f)) == [dict(step="1", loss="0.5"), dict(step="2", loss="0.25")]
    assert (tmp_path / "new.csv").read_text().splitlines()[0] == "step,loss,pi_energy"


def test_compile_option_reaches_the_learner(monkeypatch, tiny):
    """compile=true is a typed run field (online and pretraining) handed to MBDPOLearner."""
    from mbdpo_hub import learner as learner_mod
    from mbdpo_hub.training import load_pretrain_config, load_run_config

    assert load_run_config(None, ["compile=true"]).compile is True
    assert load_pretrain_config(None, ["compile=true", "dataset=some/data"]).compile is True
    with pytest.raises(ValueError, match="compile"):
        load_run_config(None, ["compile=maybe"])
    seen = []
    monkeypatch.setattr(learner_mod.torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    from mbdpo_hub import MBDPODiffusionPolicy

    policy = MBDPODiffusionPolicy(tiny())
    assert learner_mod.MBDPOLearner(policy, compile=True).compiled and seen == [dict(dynamic=False)]


def test_replay_buffer_goes_to_the_gpu_only_when_it_fits(monkeypatch):
    from types import SimpleNamespace

    from mbdpo_hub.training.run_folder import RunFolder

    def folder(device, on=True):
        return SimpleNamespace(accelerator=SimpleNamespace(device=torch.device(device)),
                               cfg=SimpleNamespace(replay_on_device=on))

    assert RunFolder.replay_device(folder("cpu"), 10**6, 24, 6) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (8 * 2**30, 16 * 2**30))  # 8 GiB free
    gpu = folder("cuda:0")
    assert RunFolder.replay_device(gpu, 10**6, 24, 6) == torch.device("cuda:0")  # 128 MB
    assert RunFolder.replay_device(gpu, 60 * 10**6, 24, 6) == torch.device("cpu")  # 7.7 GB > a quarter of 8 GiB
    assert RunFolder.replay_device(folder("cuda:0", on=False), 10**6, 24, 6) == torch.device("cpu")


def _scripted_evaluations(monkeypatch, returns):
    """Replace the trainer's evaluation by one that returns `returns` in turn and records the weights it saw."""
    import mbdpo_hub.training.online as online

    seen = []

    def fake(policy, task, episodes, seed=0, **kw):
        seen.append(dict(seed=seed, weights={k: v.clone() for k, v in policy.state_dict().items()}))
        r = returns[len(seen) - 1]
        return dict(mean_return=float(r), std_return=0.5, episodes=episodes, planner="diffusion", seconds=0.0)

    monkeypatch.setattr(online, "evaluate", fake)
    return seen


def test_load_best_model_at_end_hands_back_the_best_evaluated_weights(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    common = [f"output_dir={out}", "seed_steps=100", "seed_updates=20", "utd=0.5", "eval_freq=100",
              "save_video=false", "log_with=none", "progress=false", "checkpoint_freq=100",
              "load_best_model_at_end=true"]
    # evaluations at steps 100, 200 (the best), 300 and the final one at 400; then the best is evaluated again
    seen = _scripted_evaluations(monkeypatch, [5, 9, 3, 2, 8.5])
    OnlineTrainer(load_run_config(TINY, common + ["steps=200"])).run()  # stops at 200: the best so far is its last
    assert len(seen) == 2 and "load_best_model_at_end: " not in capsys.readouterr().out
    assert (out / "checkpoints" / "step_000000200" / "best_model.safetensors").is_file()
    OnlineTrainer(load_run_config(TINY, common + ["steps=400"])).run()  # resumes: the best comes from the checkpoint
    assert len(seen) == 5 and seen[-1]["seed"] != seen[-2]["seed"]  # re-evaluated on fresh episodes
    assert "the model of step 200 (evaluated 9.0, on fresh episodes 8.5)" in capsys.readouterr().out
    saved = MBDPODiffusionPolicy.from_pretrained(out).state_dict()
    for k, v in seen[1]["weights"].items():  # the model handed back is step 200's, not the last one
        assert torch.equal(saved[k], v), k
    assert any(not torch.equal(seen[3]["weights"][k], v) for k, v in seen[1]["weights"].items())
    payload = json.loads((out / "eval_results.json").read_text())
    sel = payload["selected_model"]
    assert (sel["step"], sel["selection_return"], sel["reevaluated_return"], sel["last_step"], sel["last_return"]) == \
        (200, 9.0, 8.5, 400, 2.0)
    res = payload["results"]["cartpole-balance"]
    assert (res["mean_return"], res["model_step"], res["steps"]) == (8.5, 200, 400)
    assert [float(r["mean_return"]) for r in _rows(out / "eval.csv")] == [5, 9, 3, 2]  # the learning curve as measured
    # the last weights stay in the last checkpoint, so a larger `steps` continues learning from them
    from safetensors.torch import load_file

    last = load_file(str(out / "checkpoints" / "step_000000400" / "model" / "model.safetensors"))
    assert all(torch.equal(last[k], v) for k, v in seen[3]["weights"].items() if k in last)


def test_load_best_model_at_end_keeps_the_last_model_when_it_is_best_or_off(tmp_path, monkeypatch):
    base = ["steps=300", "seed_steps=100", "seed_updates=20", "utd=0.5", "eval_freq=100", "save_video=false",
            "log_with=none", "progress=false", "checkpoint_freq=0"]

    def run(name, returns, *extra):
        seen = _scripted_evaluations(monkeypatch, returns)
        OnlineTrainer(load_run_config(TINY, base + [f"output_dir={tmp_path / name}", *extra])).run()
        return len(seen), json.loads((tmp_path / name / "eval_results.json").read_text())

    # a tie is not better (as transformers): the earlier, less moved model of step 200 is handed back
    n, payload = run("tie", [5, 9, 9, 1], "load_best_model_at_end=true")
    assert n == 4 and payload["selected_model"]["step"] == 200 and payload["selected_model"]["reevaluated_return"] == 1
    n, payload = run("last", [5, 6, 7], "load_best_model_at_end=true")  # the last is the best: no re-evaluation
    assert n == 3 and payload["selected_model"] is None and payload["results"]["cartpole-balance"]["model_step"] == 300
    n, payload = run("off", [5, 9, 1])  # off for training from scratch: the last model, however it evaluated
    assert n == 3 and payload["selected_model"] is None
    assert (payload["results"]["cartpole-balance"]["mean_return"], payload["results"]["cartpole-balance"]["model_step"]) \
        == (1.0, 300)
