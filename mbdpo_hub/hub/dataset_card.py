"""The dataset card of an mbdpo_hub parquet dataset (one builder for the local README.md and the pushed one), from
``model_cards/dataset_card_template.md``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from .cards import (DATASET_TAGS, DATASET_TEMPLATE, DEFAULT_LICENSE, _card_tags, _check_repo_id, find_template,
                    validate_card)


def _normalize_tasks(tasks: Any) -> list[dict[str, Any]]:
    """Accept ``[{"name", "obs_dim", "action_dim", ...}]`` (meta/tasks.json style) or ``{name: {...}}``."""
    if isinstance(tasks, Mapping) and "tasks" in tasks and isinstance(tasks["tasks"], list):
        tasks = tasks["tasks"]  # a whole meta/tasks.json
    if isinstance(tasks, Mapping):
        tasks = [{"name": k, **dict(v)} for k, v in tasks.items()]
    if not isinstance(tasks, Sequence) or isinstance(tasks, str) or not tasks:
        raise ValueError("tasks must be a non-empty list of task dicts or a {name: {...}} dict")
    out = []
    for i, t in enumerate(tasks):
        if not isinstance(t, Mapping) or not t.get("name"):
            raise ValueError(f"tasks[{i}] must be a dict with at least 'name', 'obs_dim', 'action_dim'")
        for k in ("obs_dim", "action_dim"):
            v = t.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"tasks[{i}] ({t['name']}): {k} must be a positive int, got {v!r}")
        out.append(
            {
                "task_index": t.get("task_index", i),
                "name": str(t["name"]),
                "obs_dim": t["obs_dim"],
                "action_dim": t["action_dim"],
                "episode_length": t.get("episode_length"),
                "num_episodes": t.get("num_episodes", t.get("episodes")),
            }
        )
    return out


def _size_category(n: int | None) -> str | None:
    if n is None:
        return None
    for bound, name in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]:
        if n < bound:
            return name
    return "1B<n<10B"


def build_dataset_card(
    *,
    repo_id: str,
    tasks: Any,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    num_episodes: int | None = None,
    num_frames: int | None = None,
    collection: str | None = None,
    source: str | None = None,
    command: str | None = None,
    description: str | None = None,
    pretty_name: str | None = None,
    license: str = DEFAULT_LICENSE,
    extra_tags: Sequence[str] | None = None,
    data_files: str = "data/*.parquet",
    notes: str | None = None,
    template_path: str | os.PathLike | None = None,
) -> DatasetCard:
    """Build the dataset card of an mbdpo_hub parquet dataset.

    ``tasks`` is a list of ``{"name", "obs_dim", "action_dim", "episode_length"?, "num_episodes"?, "task_index"?}``
    (the ``meta/tasks.json`` entries), a whole ``meta/tasks.json`` dict, or ``{name: {...}}``. ``obs_dim`` /
    ``action_dim`` default to the max over tasks, ``num_episodes`` to the sum of the per-task counts. ``collection``
    says how the data was collected (agent, checkpoints, seeds, noise...). YAML ``configs`` point
    ``datasets.load_dataset(repo)`` at ``data_files``.
    """
    _check_repo_id(repo_id)
    rows = _normalize_tasks(tasks)
    if obs_dim is None:
        obs_dim = max(t["obs_dim"] for t in rows)
    if action_dim is None:
        action_dim = max(t["action_dim"] for t in rows)
    if num_episodes is None and all(t["num_episodes"] is not None for t in rows):
        num_episodes = sum(int(t["num_episodes"]) for t in rows)
    if not isinstance(data_files, str) or not data_files or data_files.startswith("/"):
        raise ValueError(f"data_files must be a repo-relative glob such as 'data/*.parquet', got {data_files!r}")
    tags = _card_tags(DATASET_TAGS, extra_tags, [t["name"] for t in rows])
    name = pretty_name or repo_id.split("/")[-1]
    size = _size_category(num_frames)
    card_data = DatasetCardData(
        license=license,
        pretty_name=name,
        task_categories=["reinforcement-learning"],
        tags=tags,
        size_categories=[size] if size else None,
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
    )
    template = Path(template_path) if template_path is not None else find_template(DATASET_TEMPLATE)
    card = DatasetCard.from_template(
        card_data,
        template_path=str(template),
        repo_id=repo_id,
        pretty_name=name,
        description=description,
        tasks=rows,
        obs_dim=obs_dim,
        action_dim=action_dim,
        num_episodes=num_episodes,
        num_frames=num_frames,
        collection=collection,
        source=source,
        command=command.strip() if command else None,
        license=license,
        data_files=data_files,
        notes=notes,
    )
    validate_card(card)
    return card


__all__ = ["build_dataset_card"]
