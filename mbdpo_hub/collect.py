"""Data collection: online MBDPO agents, one task at a time, whose whole replay (mixed-quality data, as TD-MPC2's
mt30/mt80 datasets) goes into ONE parquet episode dataset.

    cfg = load_collect_config("recipes/configs/collect.yaml", ["tasks=[cartpole-balance,pendulum-swingup]"])
    collect(cfg)

or `python recipes/collect.py --config recipes/configs/collect.yaml tasks=[a,b] steps_per_task=N dataset_dir=...`.

For each task an `OnlineTrainer` (training.py) runs in `output_dir/<task>/` (its own checkpoints: a task killed
half-way resumes from its last checkpoint); at the end its replay buffer is appended to `dataset_dir` (a
`DatasetWriter` in append mode with the union task table, observations/actions zero-padded to the max dims over
`tasks`). The dataset swap is atomic, so a killed collection restarted with the same command skips the tasks that
are already in the dataset.

Keys: the `CollectConfig` fields below, plus any `RunConfig` field (`seed, num_envs, utd, batch_size, seed_steps,
episode_length, ...`) and any `MBDPOConfig` field (`planner, num_samples, diffusion_steps, ...`), applied to every
task's online run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .training import RUN_FIELDS, OnlineTrainer, load_dataclass_config, load_run_config
from .utils import atomic_write_text

# RunConfig fields that collect sets itself for each task
_PER_TASK = {"task", "steps", "output_dir", "push_to_hub", "hub_repo_id"}


@dataclass
class CollectConfig:
    tasks: list[str] = field(default_factory=lambda: ["cartpole-balance"])
    steps_per_task: int = 5_000
    dataset_dir: str = "datasets/collected"
    output_dir: str = "runs/collect"  # per-task online run folders: output_dir/<task>
    dataset_name: str | None = None
    push_to_hub: bool = False  # push the dataset folder at the end
    hub_repo_id: str | None = None  # dataset repo id
    summary_path: str | None = None  # the data agents' scores per task (default output_dir/collect_summary.json)
    keep_runs: bool = True  # keep the per-task run folders (models, csvs) after their data is in the dataset
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig fields for every task's run
    model: dict[str, Any] = field(default_factory=dict)  # MBDPOConfig fields for every task's run

    def run_config(self, task: str):
        over = dict(self.run)
        over["model"] = {**(over.get("model") or {}), **self.model}
        over.update(task=task, steps=int(self.steps_per_task), output_dir=str(Path(self.output_dir) / task),
                    push_to_hub=False)
        return load_run_config(None, over)

    def validate(self) -> None:
        from .envs.tasks import check_task_name

        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        if not self.tasks:
            raise ValueError("tasks is empty: give at least one task, e.g. tasks=[cartpole-balance]")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks has duplicates: {self.tasks}")
        for t in self.tasks:
            check_task_name(t)
        if int(self.steps_per_task) <= 0:
            raise ValueError(f"steps_per_task must be positive, got {self.steps_per_task}")
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("push_to_hub=true needs hub_repo_id=org/name (a dataset repo)")
        for t in self.tasks:  # every per-task RunConfig must validate before anything runs
            self.run_config(t)


def load_collect_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None
                        ) -> CollectConfig:
    """A CollectConfig from a YAML file plus `key=value` overrides: RunConfig fields go to `run`, MBDPOConfig fields
    to `model` (both applied to every task's run)."""
    why = "is set per task by collect (use tasks=, steps_per_task=, output_dir=, hub_repo_id= for the dataset)"
    return load_dataclass_config(CollectConfig, path, overrides, "collect",
                                 routes={"run": RUN_FIELDS - _PER_TASK - {"model"}},
                                 refused={k: why for k in _PER_TASK})


def task_table(tasks: list[str], episode_length: int | None = None) -> list[dict]:
    from .envs.tasks import task_spec

    out = []
    for t in tasks:
        s = task_spec(t)
        out.append(dict(name=t, obs_dim=s.obs_dim, action_dim=s.action_dim,
                        episode_length=int(episode_length or s.episode_length)))
    return out


def done_tasks(dataset_dir: str | os.PathLike) -> set[str]:
    """Tasks with at least one episode in the dataset (empty if the dataset does not exist yet)."""
    from .data import read_tasks
    from .utils import recover_folder

    folder = Path(dataset_dir)
    recover_folder(folder)
    if not (folder / "meta" / "tasks.json").is_file():
        return set()
    return {t["name"] for t in read_tasks(folder)["tasks"] if int(t.get("num_episodes", 0)) > 0}


def export_buffer(buffer, dataset_dir, task: str, table: list[dict], name: str | None = None,
                  source: str | None = None) -> int:
    """Append every complete episode of `buffer` (entries in buffer layout) to the dataset as `task`."""
    from .data import DatasetWriter

    spec = {t["name"]: t for t in table}[task]
    table, obs_dim, action_dim = merged_task_table(dataset_dir, table)
    n = 0
    with DatasetWriter(dataset_dir, tasks=table, obs_dim=obs_dim, action_dim=action_dim, append=True,
                       name=name, source=source) as w:
        for i in range(len(buffer.episodes())):
            ep = buffer.get_episode(i)
            obs = ep["obs"].float().cpu().numpy()[:, : spec["obs_dim"]]
            act = ep["action"].float().cpu().numpy()[:, : spec["action_dim"]]
            rew = ep["reward"].float().cpu().numpy().reshape(-1)
            term = ep["terminated"].cpu().numpy().reshape(-1).astype(bool)
            w.add_episode(obs, act, rew, term, task=task, truncated=not bool(term[-1]))
            n += 1
    return n


def merged_task_table(dataset_dir, table: list[dict]) -> tuple[list[dict], int, int]:
    """`table` with the task indices an existing dataset already gave (new tasks take the next free ones), and the
    padded dims: several collectors with different task lists append to one dataset consistently."""
    from .data import read_tasks

    if not (Path(dataset_dir) / "meta" / "tasks.json").is_file():
        table = [dict(t, task_index=i) for i, t in enumerate(table)]
        return table, max(t["obs_dim"] for t in table), max(t["action_dim"] for t in table)
    meta = read_tasks(dataset_dir)
    existing = {t["name"]: t for t in meta["tasks"]}
    nxt = max((int(t["task_index"]) for t in meta["tasks"]), default=-1) + 1
    out = []
    for t in table:
        if t["name"] in existing:
            out.append({k: existing[t["name"]][k] for k in ("task_index", "name", "obs_dim", "action_dim",
                                                                "episode_length") if k in existing[t["name"]]})
            continue
        if t["obs_dim"] > int(meta["obs_dim"]) or t["action_dim"] > int(meta["action_dim"]):
            raise ValueError(f"task {t['name']!r} (obs {t['obs_dim']}, action {t['action_dim']}) does not fit dataset "
                             f"{dataset_dir}, padded to (obs {meta['obs_dim']}, action {meta['action_dim']})")
        out.append(dict(t, task_index=nxt))
        nxt += 1
    return out, int(meta["obs_dim"]), int(meta["action_dim"])


def write_collection_card(dataset_dir, summary: dict, steps_per_task: int) -> None:
    """Rewrite the dataset card with how it was collected and each data agent's final evaluation return."""
    from .data import read_info, read_tasks, write_dataset_card

    info = read_info(dataset_dir)
    rows = ", ".join(f"{t} {s['final_eval_return']:.1f} (+/- {s.get('final_eval_std') or 0:.1f}, "
                     f"{s.get('final_eval_episodes')} episodes)" for t, s in sorted(summary.items())
                     if s.get("final_eval_return") is not None)
    collection = (f"The whole replay buffers of single-task online MBDPO agents trained from scratch, "
                  f"{steps_per_task} environment steps each (a random seed phase, then the learning agent: mixed "
                  f"quality from random to the agent's best), collected with mbdpo_hub.collect (recipes/collect.py). "
                  f"The agents' final evaluation returns (deterministic planner): {rows}.")
    write_dataset_card(dataset_dir, {**info, "tasks": read_tasks(dataset_dir)["tasks"], "collection": collection})


def dataset_lock(dataset_dir: str | os.PathLike):
    """An exclusive inter-process lock for appending to `dataset_dir` (a `.lock` file beside it)."""
    from filelock import FileLock

    folder = Path(dataset_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder.parent / f".{folder.name}.lock"))


def collect(cfg: CollectConfig, command: str | None = None) -> dict:
    """Run the collection (skipping tasks already in the dataset). Returns {task: {episodes, eval return...}}."""
    cfg.validate()
    ep_len = cfg.run.get("episode_length")
    table = task_table(cfg.tasks, ep_len)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = Path(cfg.summary_path) if cfg.summary_path else out / "collect_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    with dataset_lock(cfg.dataset_dir):  # crash recovery must not run while another collector appends
        done = done_tasks(cfg.dataset_dir)
    for task in cfg.tasks:
        if task in done:
            print(f"collect: {task} is already in {cfg.dataset_dir}: skipped")
            continue
        rcfg = cfg.run_config(task)
        trainer = OnlineTrainer(rcfg, command=command)
        results = trainer.run()
        if not trainer.accelerator.is_main_process:
            continue
        res = results.get(task, {})
        # several collect processes (disjoint task lists, one per core) may share one dataset and summary: appends
        # and summary updates happen one at a time under a lock file beside the dataset
        with dataset_lock(cfg.dataset_dir):
            n = export_buffer(trainer.buffer, cfg.dataset_dir, task, table, name=cfg.dataset_name,
                              source="mbdpo_hub.collect (online MBDPO replay)")
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
            summary[task] = dict(episodes=n, env_steps=int(trainer.step), updates=int(trainer.learner.num_updates),
                                 final_eval_return=res.get("mean_return"), final_eval_std=res.get("std_return"),
                                 final_eval_episodes=res.get("episodes"), elapsed_s=round(trainer.elapsed, 1))
            atomic_write_text(summary_path, json.dumps(summary, indent=2))
            write_collection_card(cfg.dataset_dir, summary, cfg.steps_per_task)
        print(f"collect: {task}: {n} episodes ({trainer.step} env steps) -> {cfg.dataset_dir}")
        del trainer
    if cfg.push_to_hub:
        from .data import read_info, read_tasks
        from .hub.dataset_card import build_dataset_card
        from .hub.publish import push_dataset_folder

        info = read_info(cfg.dataset_dir)
        card = build_dataset_card(
            repo_id=cfg.hub_repo_id, tasks=read_tasks(cfg.dataset_dir), num_frames=int(info["num_frames"]),
            collection=(f"online MBDPO agents trained from scratch, one per task, {cfg.steps_per_task} environment "
                        f"steps each; the whole replay is kept (mixed quality: random seed phase, then the "
                        f"learning agent). Per-task summary: {json.dumps(summary)}"),
            source="mbdpo_hub.collect", command=command)
        push_dataset_folder(cfg.dataset_dir, cfg.hub_repo_id, card=card)
    return summary


__all__ = ["CollectConfig", "load_collect_config", "collect", "export_buffer", "done_tasks", "task_table", "dataset_lock"]
