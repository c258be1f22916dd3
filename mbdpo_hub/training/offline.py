"""Multi-task OFFLINE pretraining of an `MBDPODiffusionPolicy` (world model, energy, policy prior, optional score
net) from an episode dataset, on 1..N processes with accelerate.

    accelerate launch recipes/pretrain.py --config recipes/configs/pretrain_1m.yaml dataset=datasets/dmc-small
    python recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml dataset=org/data dataset_revision=v1

    cfg = load_pretrain_config("recipes/configs/pretrain_1m.yaml", ["dataset=datasets/dmc-small", "steps=2000"])
    OfflinePretrainer(cfg).run()

The model is `MBDPOConfig.from_preset(model_size, tasks=<the dataset's tasks>)` with the dataset's padded dims,
per-task dims and episode lengths (plus any `MBDPOConfig` field given as key=value), or, with
`model_config=<folder or config.json>`, that config (the dataset's dims must then fit it).

Multi-process (`accelerate launch --num_processes N`): every process holds the whole dataset in its replay buffer
and samples its own `batch_size / N` windows with its own seed (the global batch is split, not repeated); the
gradients and the running statistics are averaged over processes by the learner's `reduce_fn`, so every process
keeps identical weights (it starts from the same initialisation). Only the main process writes files and pushes.
Evaluation spreads the tasks over the processes and gathers the results.

Outputs (`output_dir`): `checkpoints/step_XXXXXXXXX/` (model safetensors, `learner.pt` loaded with
`weights_only=True`, `state.json`) + `checkpoints/latest`; `train.csv`, `eval.csv` (one row per task and
evaluation, plus a row `task=all` with the normalised score), `eval_results.json`, `pretrain_config.yaml`, the
final model (`config.json` + `model.safetensors`), `learning_curve.png` and the model card `README.md`. Killed at
any moment, the same command resumes from the last checkpoint.

Hub (`push_to_hub=true hub_repo_id=org/name`): each checkpoint is pushed to a branch `step-000500` and then to
`main` (main = the latest good checkpoint: its losses were finite); at the end the final model goes to `main` and
is tagged `hub_tag` (default `final`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..configuration_mbdpo import MBDPOConfig
from ..learner import MBDPOLearner, mean_metrics
from ..modeling_mbdpo import MBDPODiffusionPolicy
from ..utils import atomic_write_text, is_hub_repo_id, set_seed
from .config import PretrainConfig
from .evaluation import evaluate, plot_learning_curve
from .run_folder import TRAIN_METRICS, RunFolder


# ---------------------------------------------------------------------------------------------------------------------
# dataset resolution
# ---------------------------------------------------------------------------------------------------------------------


def read_dataset_tasks(dataset: str, revision: str | None = None) -> dict:
    """`meta/tasks.json` of a local folder or Hub dataset, with clear errors for a missing path/repo/revision."""
    from ..data import read_tasks

    if not is_hub_repo_id(dataset):
        folder = Path(dataset).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"dataset {dataset!r}: no such local folder (and not a Hub repo id org/name)")
        if not (folder / "meta" / "tasks.json").is_file():
            raise FileNotFoundError(f"dataset {dataset!r} is not an mbdpo_hub dataset folder (no meta/tasks.json); "
                                    f"write one with DatasetWriter or recipes/collect.py")
        return read_tasks(folder)
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return read_tasks(dataset, revision)
    except RevisionNotFoundError as e:
        raise ValueError(f"dataset {dataset!r}: revision {revision!r} not found on the Hub") from e
    except RepositoryNotFoundError as e:
        raise ValueError(f"dataset {dataset!r}: no local folder of that name, and no such dataset repo on the Hub "
                         f"(or no access)") from e
    except EntryNotFoundError as e:
        raise ValueError(f"dataset {dataset!r}@{revision or 'main'} has no meta/tasks.json: not an mbdpo_hub "
                         f"dataset") from e


def build_model_config(cfg: PretrainConfig, tasks_meta: dict) -> tuple[MBDPOConfig, list[str]]:
    """The model config for the dataset (preset or `model_config`) and the dataset tasks to train on."""
    by_name = {t["name"]: t for t in tasks_meta["tasks"]}
    if cfg.tasks:
        missing = [t for t in cfg.tasks if t not in by_name]
        if missing:
            raise ValueError(f"tasks {missing} are not in dataset {cfg.dataset!r} (it has {sorted(by_name)})")
        names = list(cfg.tasks)
    else:
        names = [t["name"] for t in sorted(tasks_meta["tasks"], key=lambda d: d["task_index"])
                 if int(t.get("num_episodes", 1)) > 0]
    if not names:
        raise ValueError(f"dataset {cfg.dataset!r} holds no episodes")
    od, ad = int(tasks_meta["obs_dim"]), int(tasks_meta["action_dim"])
    if cfg.model_config:
        path = Path(cfg.model_config)
        if not path.exists():
            raise FileNotFoundError(f"model_config {cfg.model_config!r} not found")
        config = MBDPOConfig.from_pretrained(str(path.parent if path.is_file() else path))
        for k, v in cfg.model.items():
            setattr(config, k, v)
        if od > config.obs_dim or ad > config.action_dim:
            raise ValueError(f"dataset {cfg.dataset!r} has padded dims (obs {od}, action {ad}) but the model config "
                             f"{cfg.model_config} takes (obs {config.obs_dim}, action {config.action_dim})")
        for n in names:
            if n not in config.tasks:
                raise ValueError(f"dataset task {n!r} is not one of the model config's tasks {config.tasks}")
            i, t = config.tasks.index(n), by_name[n]
            if (config.obs_dims[i], config.action_dims[i]) != (int(t["obs_dim"]), int(t["action_dim"])):
                raise ValueError(f"task {n!r}: dataset dims (obs {t['obs_dim']}, action {t['action_dim']}) do not "
                                 f"match the model config's (obs {config.obs_dims[i]}, action "
                                 f"{config.action_dims[i]})")
        return config, names
    overrides = dict(obs_dims=[int(by_name[n]["obs_dim"]) for n in names],
                     action_dims=[int(by_name[n]["action_dim"]) for n in names],
                     episode_lengths=[int(by_name[n].get("episode_length") or 500) for n in names],
                     obs_dim=od, action_dim=ad)
    overrides.update(cfg.model)
    return MBDPOConfig.from_preset(int(cfg.model_size), list(names), **overrides), names


def state_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def hub_branch(step: int) -> str:
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------------------------------
class OfflinePretrainer(RunFolder):
    """Multi-task offline pretraining from an episode dataset (see the module docstring)."""

    config_file = "pretrain_config.yaml"
    csv_files = ("train.csv", "eval.csv", "eval_score.csv")

    # --- setup -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from ..buffer import ReplayBuffer
        from ..data import fill_buffer, load_dataset_folder

        cfg = self.cfg
        cfg.validate()
        acc = self.init_accelerator()
        self.check_folder()  # before anything is built, resumed or written
        if cfg.batch_size % acc.num_processes:
            raise ValueError(f"batch_size={cfg.batch_size} is not divisible by num_processes={acc.num_processes}")
        self.local_batch = cfg.batch_size // acc.num_processes
        with acc.main_process_first():
            self.tasks_meta = read_dataset_tasks(cfg.dataset, cfg.dataset_revision)
            config, self.dataset_tasks = build_model_config(cfg, self.tasks_meta)
            if cfg.held_out_tasks:
                config.held_out_tasks = list(cfg.held_out_tasks)
            # recorded so offline-to-online fine-tuning can fall back to the pretraining data
            config.pretraining_dataset = str(cfg.dataset)
            if cfg.dataset_revision:
                config.pretraining_dataset_revision = str(cfg.dataset_revision)
            try:
                ds = load_dataset_folder(cfg.dataset,
                                         revision=cfg.dataset_revision if is_hub_repo_id(cfg.dataset) else None)
            except FileNotFoundError:
                raise
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"could not load dataset {cfg.dataset!r}@{cfg.dataset_revision or 'main'}: "
                                 f"{type(e).__name__}: {e}") from e
        # identical initialisation on every process, then per-process randomness
        set_seed(cfg.seed)
        self.policy = MBDPODiffusionPolicy(config).to(acc.device)
        if cfg.compile:
            self.policy.compile_planning()
        self.config = self.policy.config
        reduce_fn = (lambda x: acc.reduce(x, "mean")) if acc.num_processes > 1 else None
        self.learner = MBDPOLearner(self.policy, reduce_fn=reduce_fn, mixed_precision=cfg.mixed_precision,
                                    compile=cfg.compile)
        self.step = 0
        self.elapsed = 0.0
        self.last_eval: dict | None = None
        self.last_eval_step = -1
        self.metrics_acc: dict[str, list[float]] = {}
        self.ckpt_loaded = self.resume()
        set_seed(cfg.seed + 1000 * acc.process_index + 7919 * self.step + 1)
        from ..data import read_info

        try:
            frames = int(read_info(cfg.dataset, cfg.dataset_revision)["num_frames"]) \
                if is_hub_repo_id(cfg.dataset) else int(read_info(cfg.dataset)["num_frames"])
        except Exception:  # noqa: BLE001
            frames = len(ds)
        self.buffer = ReplayBuffer(max(frames + 1, 2), config.obs_dim, config.action_dim, config.horizon,
                                   self.local_batch, seed=cfg.seed + 1000 * acc.process_index + 7919 * self.step,
                                   device=self.replay_device(max(frames + 1, 2), config.obs_dim, config.action_dim))
        self.fill_info = fill_buffer(self.buffer, ds, tasks=self.dataset_tasks, task_map=list(config.tasks),
                                     dataset_tasks=self.tasks_meta, pad=True)
        if self.buffer.num_windows == 0:
            raise ValueError(f"dataset {cfg.dataset!r}: no episode is longer than the horizon ({config.horizon})")
        self.eval_tasks = list(cfg.eval_tasks or config.tasks)
        for t in self.eval_tasks:
            config.task_id(t)
        self.start_folder()

    # --- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        return dict(step=self.step, elapsed=self.elapsed, last_eval=self.last_eval,
                    last_eval_step=self.last_eval_step, num_processes=self.accelerator.num_processes)

    def restore_state(self, state: dict, path: Path) -> None:
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.last_eval, self.last_eval_step = state.get("last_eval"), int(state.get("last_eval_step", -1))

    # --- steps -------------------------------------------------------------------------------------------------
    def update(self) -> dict:
        metrics = self.learner.update(self.device_batch(self.buffer.sample()))  # bf16 autocast around its forward passes only
        self.step += 1
        for k, v in metrics.items():
            self.metrics_acc.setdefault(k, []).append(v)
        return metrics

    def run_eval(self) -> dict:
        """Evaluate every eval task (spread over processes); returns {results, normalized_score}."""
        from accelerate.utils import gather_object

        from ..envs import normalized_score, task_score

        cfg, acc = self.cfg, self.accelerator
        mine = self.eval_tasks[acc.process_index::acc.num_processes]
        local = []
        for task in mine:
            # bf16 autocast at evaluation only on accelerators (CPU bf16 kernels for these small ops are slower)
            with (self.learner.autocast() if acc.device.type != "cpu" else nullcontext()):
                r = evaluate(self.policy, task, cfg.eval_episodes, seed=cfg.seed + 777, planner=cfg.eval_planner,
                             episode_length=cfg.episode_length)
            local.append((task, dict(mean_return=r["mean_return"], std_return=r["std_return"],
                                     episodes=int(cfg.eval_episodes), planner=r["planner"],
                                     normalized_score=task_score(task, r["mean_success"] if task.startswith("mw-")
                                                                 else r["mean_return"]),
                                     mean_success=r["mean_success"])))
        gathered = gather_object(local) if acc.num_processes > 1 else local
        results = {t: r for t, r in gathered}
        results = {t: results[t] for t in self.eval_tasks}
        score = normalized_score({t: (r["mean_success"] if t.startswith("mw-") else r["mean_return"])
                                  for t, r in results.items()})
        rows = [dict(step=self.step, task=t, mean_return=r["mean_return"], std_return=r["std_return"],
                     normalized_score=r["normalized_score"], episodes=r["episodes"], planner=r["planner"],
                     elapsed_s=round(self.elapsed, 1)) for t, r in results.items()]
        rows.append(dict(step=self.step, task="all", mean_return="", std_return="", normalized_score=score,
                         episodes=cfg.eval_episodes, planner=rows[0]["planner"], elapsed_s=round(self.elapsed, 1)))
        self.append_csv("eval.csv", rows)
        self.append_csv("eval_score.csv", [dict(step=self.step, mean_return=score, std_return=0.0)])
        self.last_eval = dict(results=results, normalized_score=score, step=self.step)
        self.last_eval_step = self.step
        acc.print(f"eval @ {self.step}: normalised score {score:.2f} "
                  + " ".join(f"{t}={r['mean_return']:.1f}" for t, r in results.items()))
        return self.last_eval

    def eval_changed(self) -> bool:
        """The last evaluation (e.g. restored from a checkpoint) used other tasks/episodes/planner than now."""
        ev = self.last_eval or {}
        res = ev.get("results") or {}
        planner = self.cfg.eval_planner or self.config.planner
        return (list(res) != list(self.eval_tasks)
                or any(r.get("planner") != planner or r.get("episodes") != self.cfg.eval_episodes
                       for r in res.values()))

    # --- cards / hub -------------------------------------------------------------------------------------------
    def build_card(self, revision: str | None = None):
        cfg = self.cfg
        ev = self.last_eval or {}
        results = {t: {k: v for k, v in r.items() if k != "planner"} for t, r in (ev.get("results") or {}).items()}
        lines = [f"Offline multi-task pretraining on `{cfg.dataset}`"
                 + (f" (revision `{cfg.dataset_revision}`)" if cfg.dataset_revision else "")
                 + f": {self.step} updates at global batch {cfg.batch_size} on {self.accelerator.num_processes} "
                 f"process(es); {self.fill_info['num_episodes']} episodes / {self.fill_info['num_steps']} "
                 f"transitions over {len(self.dataset_tasks)} tasks.",
                 f"Evaluation: {cfg.eval_episodes} episode(s) per task at update {ev.get('step', 'n/a')}, planner "
                 f"`{cfg.eval_planner or self.config.planner}`"
                 + (f", episodes cut to {cfg.episode_length} steps" if cfg.episode_length else "") + "."]
        if cfg.held_out_tasks:
            lines.append("Held-out tasks (never in the training data; for fine-tuning studies): "
                         + ", ".join(f"`{t}`" for t in cfg.held_out_tasks) + ".")
        if cfg.notes:
            lines.append(str(cfg.notes))
        curve = self.out / "learning_curve.png"
        return self.model_card(results, ev.get("normalized_score"), curve if curve.exists() else None,
                               datasets=cfg.dataset if is_hub_repo_id(cfg.dataset) else None, notes="\n\n".join(lines),
                               revision=revision, extra_tags=["offline", "multi-task"])

    def push(self, branch: str | None, tag: str | None = None, message: str = "") -> None:
        files = [self.out / n for n in ("pretrain_config.yaml", "eval_results.json", "eval.csv", "train.csv",
                                         "learning_curve.png")]
        super().push(self.build_card(revision=tag), files, message or f"pretrain update {self.step}",
                     revision=branch, tag=tag)

    def plot_curve(self):
        return plot_learning_curve(self.out / "eval_score.csv", self.out / "learning_curve.png",
                                   title="mean normalised score over the tasks", xlabel="gradient updates",
                                   ylabel="normalised score")

    def write_eval_results(self) -> None:
        ev = self.last_eval or {}
        payload = dict(results=ev.get("results", {}), normalized_score=ev.get("normalized_score"),
                       eval_step=ev.get("step"), updates=self.step, batch_size=self.cfg.batch_size,
                       num_processes=self.accelerator.num_processes, dataset=self.cfg.dataset,
                       dataset_revision=self.cfg.dataset_revision, tasks=list(self.config.tasks),
                       held_out_tasks=list(self.cfg.held_out_tasks), elapsed_s=round(self.elapsed, 1),
                       dataset_episodes=self.fill_info["num_episodes"],
                       dataset_transitions=self.fill_info["num_steps"])
        atomic_write_text(self.out / "eval_results.json", json.dumps(payload, indent=2))

    def checkpoint(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        if cfg.push_to_hub and self.last_eval_step != self.step and cfg.eval_episodes > 0:
            self.run_eval()
        self.save_checkpoint()
        if cfg.push_to_hub and acc.is_main_process:
            good = all(math.isfinite(v) for v in mean_metrics(self.metrics_last).values()) if getattr(
                self, "metrics_last", None) else True
            self.write_eval_results()
            self.plot_curve()
            self.push(hub_branch(self.step), message=f"checkpoint at update {self.step}")
            if good:
                self.push(None, message=f"main <- update {self.step}")
        acc.wait_for_everyone()

    # --- the loop ----------------------------------------------------------------------------------------------
    def _run(self) -> dict:
        self.setup()
        cfg, acc = self.cfg, self.accelerator
        bar = self.progress_bar(unit="upd", desc="pretrain")
        t_last = time.perf_counter()
        while self.step < cfg.steps:
            self.update()
            if self.step % cfg.log_freq == 0 or self.step == cfg.steps:
                now = time.perf_counter()
                self.elapsed += now - t_last
                t_last = now
                row = dict(step=self.step, elapsed_s=round(self.elapsed, 1))
                means = mean_metrics(self.metrics_acc)
                row.update({k: means.get(k, "") for k in TRAIN_METRICS})
                self.append_csv("train.csv", row)
                self.log({f"train/{k}": v for k, v in row.items() if isinstance(v, float)})
                self.metrics_last, self.metrics_acc = self.metrics_acc, {}
            if bar is not None:
                bar.update(1)
            if self.step < cfg.steps:
                if cfg.eval_freq > 0 and cfg.eval_episodes > 0 and self.step % cfg.eval_freq == 0:
                    self.run_eval()
                if cfg.checkpoint_freq > 0 and self.step % cfg.checkpoint_freq == 0:
                    now = time.perf_counter()
                    self.elapsed += now - t_last
                    t_last = now
                    self.checkpoint()
        self.elapsed += time.perf_counter() - t_last
        if bar is not None:
            bar.close()
        if cfg.eval_episodes > 0 and (self.last_eval_step != self.step or self.eval_changed()):
            if cfg.checkpoint_freq > 0:  # the final evaluation can take longer than the updates: killed in it, a
                self.save_checkpoint()  # rerun resumes here and only evaluates
            self.run_eval()
        if cfg.checkpoint_freq > 0:  # a final checkpoint: a later run with more steps resumes from here
            self.save_checkpoint()
        results = self.write_outputs()
        if cfg.write_state_hash:
            atomic_write_text(self.out / f"state_hash_rank{acc.process_index}.txt", state_hash(self.policy) + "\n")
        acc.wait_for_everyone()
        acc.end_training()
        return results

    def write_outputs(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        ev = self.last_eval or {}
        if acc.is_main_process:
            self.policy.save_pretrained(self.out)
            self.write_eval_results()
            self.plot_curve()
            card = self.build_card(revision=cfg.hub_tag if cfg.push_to_hub else None)
            atomic_write_text(self.out / "README.md", str(card))
            if cfg.push_to_hub:
                self.push(hub_branch(self.step), message=f"final at update {self.step}")
                self.push(None, tag=cfg.hub_tag, message=f"final at update {self.step}")
            score = ev.get("normalized_score")
            print(f"done: {self.step} updates, normalised score "
                  f"{'n/a' if score is None else f'{score:.2f}'} -> {self.out}")
        acc.wait_for_everyone()
        return dict(results=ev.get("results", {}), normalized_score=ev.get("normalized_score"), updates=self.step)


def pretrain(cfg: PretrainConfig, command: str | None = None) -> dict:
    return OfflinePretrainer(cfg, command=command).run()



__all__ = ["OfflinePretrainer", "pretrain", "build_model_config", "read_dataset_tasks", "state_hash", "hub_branch"]
