"""Parquet episode datasets (Hugging Face ``datasets`` compatible) for MBDPO / TD-MPC2 data.

Folder layout::

    data/shard-00000.parquet ...   one row per environment *entry* (see below), rows sorted by
                                   (episode_index, frame_index); an episode never straddles two shards
    meta/info.json                 format version, dims, row/episode counts, shard list, HF features
    meta/tasks.json                padded dims + per task: task_index, name, true obs/action dims,
                                   nominal episode_length, num_episodes
    meta/stats.json                per task (and "all"): obs/action/reward mean/std/min/max, return stats
    meta/episodes.parquet          one row per episode: episode_index, task_index, length (entries),
                                   row_start (global row), shard, return, terminated, truncated
    README.md                      dataset card (``write_dataset_card``; YAML ``configs`` point at data/)

Row (entry) layout -- identical to the replay buffer's: an episode of ``T`` agent steps has ``T + 1`` rows.
Row ``frame_index = 0`` holds the reset observation, a zero action, zero reward, ``terminated = False``; row
``t >= 1`` holds ``(obs_t, a_{t-1}, r_{t-1}, terminated_t)``.  ``truncated`` is True on the last row of an
episode that ended without termination (time limit / segment cut).  Columns: ``episode_index`` int64,
``frame_index`` int64, ``task_index`` int64, ``observation`` fixed_size_list<float32>[obs_dim] (zero-padded),
``action`` fixed_size_list<float32>[action_dim] (zero-padded), ``reward`` float32, ``terminated`` bool,
``truncated`` bool.  Fixed-size lists let the columns be viewed as ``(N, D)`` numpy arrays without per-row
Python work.

Shard bound: a shard is closed before the episode that would take it past ``max_shard_rows`` rows, so a shard
holds at most ``max(max_shard_rows, longest episode)`` rows.

Atomicity: ``DatasetWriter`` writes into a hidden temp folder next to the target and swaps it in on
``close()`` (rename old -> backup, rename temp -> target, delete backup).  If anything fails before the swap
the temp folder is removed and an existing dataset is untouched; if the process dies between the two
renames, the next writer/loader restores the backup.  ``append=True`` hard-links (or copies) the existing
shards into the temp folder and continues ``episode_index``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..utils import local_repo_id, recover_folder, swap_folder
from .stats import _TaskStats

FORMAT_NAME = "mbdpo_hub.dataset"
FORMAT_VERSION = 1
DEFAULT_MAX_SHARD_ROWS = 250_000

__all__ = ["DatasetWriter", "dataset_features", "write_dataset_card", "FORMAT_NAME", "FORMAT_VERSION",
           "DEFAULT_MAX_SHARD_ROWS"]


# ---------------------------------------------------------------------------------------------- schema
def dataset_features(obs_dim: int, action_dim: int):
    """``datasets.Features`` of a dataset with the given padded dims."""
    import datasets

    return datasets.Features({
        "episode_index": datasets.Value("int64"),
        "frame_index": datasets.Value("int64"),
        "task_index": datasets.Value("int64"),
        "observation": datasets.List(datasets.Value("float32"), length=int(obs_dim)),
        "action": datasets.List(datasets.Value("float32"), length=int(action_dim)),
        "reward": datasets.Value("float32"),
        "terminated": datasets.Value("bool"),
        "truncated": datasets.Value("bool"),
    })


def _json_dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")


# ---------------------------------------------------------------------------------------------- card
def write_dataset_card(folder: str | os.PathLike, info: dict) -> Path:
    """Write the dataset card ``README.md`` into ``folder`` with the one card builder the Hub push uses too
    (`mbdpo_hub.hub.build_dataset_card`), so the local and the pushed card are the same.

    ``info`` keys used: ``name``, ``obs_dim``, ``action_dim``, ``num_episodes``, ``num_frames``, ``tasks``
    (list of task dicts), optional ``source``, ``license``, ``description``, ``collection``.
    """
    from ..hub.cards import DEFAULT_LICENSE
    from ..hub.dataset_card import build_dataset_card

    folder = Path(folder)
    name = str(info.get("name") or folder.name)
    card = build_dataset_card(
        repo_id=local_repo_id(name, "dataset"), tasks=info.get("tasks") or [], obs_dim=info.get("obs_dim"),
        action_dim=info.get("action_dim"), num_episodes=info.get("num_episodes"), num_frames=info.get("num_frames"),
        source=info.get("source"), description=info.get("description"), collection=info.get("collection"),
        pretty_name=name, license=info.get("license") or DEFAULT_LICENSE)
    path = folder / "README.md"
    path.write_text(str(card))
    return path


# ---------------------------------------------------------------------------------------------- writer
def _normalise_tasks(tasks: Sequence[dict]) -> list[dict]:
    out = []
    seen_idx, seen_name = set(), set()
    for i, t in enumerate(tasks):
        try:
            d = {"task_index": int(t.get("task_index", i)), "name": str(t["name"]), "obs_dim": int(t["obs_dim"]),
                 "action_dim": int(t["action_dim"]), "episode_length": int(t.get("episode_length", 0) or 0)}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"task {i} must be a dict with name, obs_dim, action_dim[, episode_length]: {t!r}") from e
        if d["task_index"] in seen_idx or d["name"] in seen_name:
            raise ValueError(f"duplicate task index/name in tasks: {d}")
        seen_idx.add(d["task_index"])
        seen_name.add(d["name"])
        d["num_episodes"] = int(t.get("num_episodes", 0))
        out.append(d)
    if not out:
        raise ValueError("at least one task is required")
    return out


class DatasetWriter:
    """Writes an episode dataset folder (see the module docstring).

    ``tasks``: list of ``dict(name, obs_dim, action_dim, episode_length[, task_index])`` (``task_index``
    defaults to the list position).  ``obs_dim``/``action_dim``: padded dims (default: max over tasks).
    ``append=True`` continues an existing dataset (``tasks`` may then be None; given tasks must agree with the
    stored ones, new ones are added).  ``overwrite=True`` replaces an existing dataset on ``close()``.

    Use as a context manager: an exception inside the ``with`` block aborts the write (old data untouched).
    """

    def __init__(self, folder: str | os.PathLike, tasks: Sequence[dict] | None = None, obs_dim: int | None = None,
                 action_dim: int | None = None, max_shard_rows: int = DEFAULT_MAX_SHARD_ROWS, append: bool = False,
                 overwrite: bool = False, name: str | None = None, source: str | None = None,
                 compression: str = "zstd") -> None:
        self.folder = Path(folder)
        recover_folder(self.folder)
        self.max_shard_rows = int(max_shard_rows)
        if self.max_shard_rows < 1:
            raise ValueError("max_shard_rows must be >= 1")
        self.compression = compression
        self.name = name or self.folder.name
        self.source = source
        exists = self.folder.exists()
        if exists and not (append or overwrite):
            raise FileExistsError(f"dataset folder {self.folder} exists; pass append=True or overwrite=True")
        self.append = bool(append and exists)
        self._next_episode = 0
        self._shards: list[dict] = []
        self._episodes: list[dict[str, np.ndarray]] = []  # episode-table pieces
        old_tasks: list[dict] = []
        old_stats: dict = {}
        if self.append:
            from .reading import read_info, read_stats, read_tasks

            info = read_info(self.folder)
            tj = read_tasks(self.folder)
            old_tasks = tj["tasks"]
            old_stats = read_stats(self.folder)
            if obs_dim is not None and int(obs_dim) != int(info["obs_dim"]):
                raise ValueError(f"append: dataset {self.folder} has obs_dim {info['obs_dim']}, writer got obs_dim {obs_dim}")
            if action_dim is not None and int(action_dim) != int(info["action_dim"]):
                raise ValueError(f"append: dataset {self.folder} has action_dim {info['action_dim']}, writer got "
                                 f"action_dim {action_dim}")
            obs_dim, action_dim = int(info["obs_dim"]), int(info["action_dim"])
            self._next_episode = int(info["num_episodes_next_index"] if "num_episodes_next_index" in info
                                     else info["num_episodes"])
            self._shards = list(info["shards"])
            ep_path = self.folder / "meta" / "episodes.parquet"
            if ep_path.exists():
                import pyarrow.parquet as pq

                t = pq.read_table(ep_path)
                self._episodes.append({c: t.column(c).to_numpy() for c in t.column_names})
            merged = {t["name"]: dict(t) for t in old_tasks}
            for t in _normalise_tasks(tasks) if tasks else []:
                o = merged.get(t["name"])
                if o is None:
                    if any(x["task_index"] == t["task_index"] for x in merged.values()):
                        raise ValueError(f"append: task index {t['task_index']} of new task {t['name']!r} is taken")
                    merged[t["name"]] = t
                elif (o["task_index"], o["obs_dim"], o["action_dim"]) != (t["task_index"], t["obs_dim"], t["action_dim"]):
                    raise ValueError(f"append: task {t['name']!r} is stored as {o} but the writer got {t}")
            self.tasks = _normalise_tasks(sorted(merged.values(), key=lambda d: d["task_index"]))
        else:
            if tasks is None:
                raise ValueError("tasks are required for a new dataset")
            self.tasks = _normalise_tasks(tasks)
        self.obs_dim = int(obs_dim) if obs_dim is not None else max(t["obs_dim"] for t in self.tasks)
        self.action_dim = int(action_dim) if action_dim is not None else max(t["action_dim"] for t in self.tasks)
        for t in self.tasks:
            if t["obs_dim"] > self.obs_dim or t["action_dim"] > self.action_dim:
                raise ValueError(f"task {t['name']!r} dims ({t['obs_dim']}, {t['action_dim']}) exceed the dataset's "
                                 f"padded dims ({self.obs_dim}, {self.action_dim})")
        self._by_index = {t["task_index"]: t for t in self.tasks}
        self._by_name = {t["name"]: t for t in self.tasks}
        self._stats = {t["task_index"]: _TaskStats(self.obs_dim, self.action_dim) for t in self.tasks}
        self._all = _TaskStats(self.obs_dim, self.action_dim)
        if old_stats:
            for t in self.tasks:
                d = old_stats.get("per_task", {}).get(t["name"])
                if d:
                    self._stats[t["task_index"]].merge_dict(d)
            if old_stats.get("all"):
                self._all.merge_dict(old_stats["all"])
        self.features = dataset_features(self.obs_dim, self.action_dim)
        self._schema = self.features.arrow_schema
        self._tmp = self.folder.parent / f".{self.folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        (self._tmp / "data").mkdir(parents=True)
        (self._tmp / "meta").mkdir()
        if self.append:
            for sh in self._shards:
                src, dst = self.folder / sh["file"], self._tmp / sh["file"]
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._rows_total = sum(int(s["rows"]) for s in self._shards)
        self._closed = False

    # --------------------------------------------------------------------- adding
    def _task_entry(self, task) -> dict:
        if isinstance(task, str):
            if task not in self._by_name:
                raise ValueError(f"unknown task {task!r}; known: {sorted(self._by_name)}")
            return self._by_name[task]
        t = int(task)
        if t not in self._by_index:
            raise ValueError(f"unknown task index {t}; known: {sorted(self._by_index)}")
        return self._by_index[t]

    def _pad(self, x: np.ndarray, dim: int, name: str, task_dim: int | None) -> np.ndarray:
        d = x.shape[-1]
        if d == dim:
            return x
        if d > dim:
            raise ValueError(f"{name} dim {d} exceeds the dataset's padded {name} dim {dim}")
        if task_dim is not None and d != task_dim:
            raise ValueError(f"{name} dim {d} matches neither the task's true {name} dim {task_dim} nor the "
                             f"dataset's padded dim {dim}")
        pad = [(0, 0)] * (x.ndim - 1) + [(0, dim - d)]
        return np.pad(x, pad)

    def add_episode(self, obs, action, reward, terminated=None, task: int | str = 0, truncated: bool | None = None) -> int:
        """Add one episode (``T+1`` entries, buffer layout).  Obs/action may be given at the task's true dims
        (zero-padded here).  Returns its ``episode_index``."""
        obs = _np(obs, np.float32)
        if obs.ndim != 2:
            raise ValueError(f"obs must be (T+1, obs_dim), got shape {obs.shape}")
        act = _np(action, np.float32)
        rew = _np(reward, np.float32).reshape(-1)
        term = None if terminated is None else _np(terminated, np.float32).reshape(1, -1)
        trunc = None if truncated is None else np.asarray([bool(truncated)])
        return int(self.add_episodes(obs[None], act[None], rew[None], term, task=[task], truncated=trunc)[0])

    def add_episodes(self, obs, action, reward, terminated=None, task=0, truncated=None) -> np.ndarray:
        """Add ``E`` equal-length episodes: ``obs (E, T+1, O)``, ``action (E, T+1, A)``, ``reward (E, T+1)``,
        ``terminated (E, T+1)`` or None, ``task`` one value or ``(E,)`` (indices or names), ``truncated (E,)``
        or None (default: not terminated at the last entry).  Vectorised; returns the episode indices."""
        if self._closed:
            raise RuntimeError("DatasetWriter is closed")
        obs = _np(obs, np.float32)
        if obs.ndim != 3:
            raise ValueError(f"obs must be (E, T+1, obs_dim), got shape {obs.shape}")
        e, t1 = obs.shape[:2]
        if t1 < 1 or e < 1:
            raise ValueError(f"empty episode batch: obs shape {obs.shape}")
        act = _np(action, np.float32)
        rew = _np(reward, np.float32)
        if rew.ndim == 3 and rew.shape[-1] == 1:
            rew = rew[..., 0]
        if act.ndim != 3 or act.shape[:2] != (e, t1) or rew.shape != (e, t1):
            raise ValueError(f"action/reward shapes {act.shape}/{rew.shape} do not match obs {obs.shape}")
        tasks_in = list(task) if isinstance(task, (list, tuple, np.ndarray)) else [task] * e
        if len(tasks_in) != e:
            raise ValueError(f"task must be one value or have {e} entries, got {len(tasks_in)}")
        entries = [self._task_entry(t) for t in tasks_in]
        tids = np.asarray([t["task_index"] for t in entries], np.int64)
        single = len({t["task_index"] for t in entries}) == 1
        obs = self._pad(obs, self.obs_dim, "obs", entries[0]["obs_dim"] if single else None)
        act = self._pad(act, self.action_dim, "action", entries[0]["action_dim"] if single else None)
        act = act.copy()
        rew = rew.copy()
        act[:, 0] = 0.0
        rew[:, 0] = 0.0
        if not np.isfinite(obs).all():
            ep = int(np.nonzero(~np.isfinite(obs).reshape(e, -1).all(1))[0][0])
            raise ValueError(f"non-finite observation in episode {ep} of this batch")
        if not (np.isfinite(act).all() and np.isfinite(rew).all()):
            ep = int(np.nonzero(~(np.isfinite(act).reshape(e, -1).all(1) & np.isfinite(rew).all(1)))[0][0])
            raise ValueError(f"non-finite action/reward after entry 0 in episode {ep} of this batch")
        if terminated is None:
            term = np.zeros((e, t1), bool)
        else:
            term_f = _np(terminated, np.float32)
            if term_f.ndim == 3 and term_f.shape[-1] == 1:
                term_f = term_f[..., 0]
            if term_f.shape != (e, t1):
                raise ValueError(f"terminated shape {term_f.shape} does not match ({e}, {t1})")
            term = np.nan_to_num(term_f, nan=0.0) > 0.5
            term[:, 0] = False
        if truncated is None:
            trunc_ep = ~term[:, -1]
        else:
            trunc_ep = np.broadcast_to(np.asarray(truncated, bool).reshape(-1), (e,)) & ~term[:, -1]
        trunc = np.zeros((e, t1), bool)
        trunc[:, -1] = trunc_ep
        ep_idx = np.arange(self._next_episode, self._next_episode + e, dtype=np.int64)
        self._next_episode += e
        # stats (vectorised per task present in the batch)
        returns = rew[:, 1:].sum(1)
        for tid in np.unique(tids):
            m = tids == tid
            for st in (self._stats[int(tid)], self._all):
                st.episodes += int(m.sum())
                st.obs.update(obs[m].reshape(-1, self.obs_dim))
                st.action.update(act[m][:, 1:].reshape(-1, self.action_dim))
                st.reward.update(rew[m][:, 1:].reshape(-1))
                st.ret.update(returns[m])
        for t in entries:
            t["num_episodes"] += 1
        piece = {
            "episode_index": np.repeat(ep_idx, t1),
            "frame_index": np.tile(np.arange(t1, dtype=np.int64), e),
            "task_index": np.repeat(tids, t1),
            "observation": obs.reshape(e * t1, self.obs_dim),
            "action": act.reshape(e * t1, self.action_dim),
            "reward": rew.reshape(-1),
            "terminated": term.reshape(-1),
            "truncated": trunc.reshape(-1),
        }
        ep_meta = {"episode_index": ep_idx, "task_index": tids, "length": np.full(e, t1, np.int64),
                   "return": returns.astype(np.float64), "terminated": term[:, -1].copy(), "truncated": trunc_ep.copy()}
        # split the batch so that shards stay bounded (episodes never straddle shards)
        start = 0
        while start < e:
            room = self.max_shard_rows - self._pending_rows
            n_fit = max(room // t1, 0)
            if n_fit == 0:
                if self._pending_rows:
                    self._flush()
                    continue
                n_fit = 1  # one episode longer than max_shard_rows gets its own shard
            n = min(n_fit, e - start)
            sl = slice(start * t1, (start + n) * t1)
            self._pending.append({k: v[sl] for k, v in piece.items()})
            self._episodes.append({k: v[start:start + n] for k, v in ep_meta.items()}
                                  | {"row_start": self._rows_total + self._pending_rows
                                     + np.arange(n, dtype=np.int64) * t1,
                                     "shard": np.full(n, len(self._shards), np.int64)})
            self._pending_rows += n * t1
            start += n
            if self._pending_rows >= self.max_shard_rows:
                self._flush()
        return ep_idx

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        arrays = []
        for field in self._schema:
            v = cols[field.name]
            if pa.types.is_fixed_size_list(field.type):
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(v).reshape(-1),
                                                                         pa.float32()), field.type.list_size))
            else:
                arrays.append(pa.array(v, type=field.type))
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        name = f"data/shard-{len(self._shards):05d}.parquet"
        pq.write_table(table, self._tmp / name, compression=self.compression)
        self._shards.append({"file": name, "rows": int(table.num_rows),
                             "first_episode": int(cols["episode_index"][0]),
                             "last_episode": int(cols["episode_index"][-1])})
        self._rows_total += table.num_rows
        self._pending, self._pending_rows = [], 0

    # --------------------------------------------------------------------- closing
    def close(self) -> Path:
        """Flush, write meta + card and atomically swap the new folder in.  Returns the folder."""
        if self._closed:
            return self.folder
        try:
            self._flush()
            self._write_meta()
            swap_folder(self._tmp, self.folder)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.folder

    def abort(self) -> None:
        """Discard everything written by this writer (an existing dataset is left untouched)."""
        self._closed = True
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # pragma: no cover - best effort cleanup
        try:
            if not self._closed and self._tmp.exists():
                warnings.warn(f"DatasetWriter for {self.folder} was never closed; discarding its data")
                shutil.rmtree(self._tmp, ignore_errors=True)
        except Exception:  # noqa: BLE001
            pass

    def _write_meta(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = self._tmp / "meta"
        num_frames = self._rows_total
        num_episodes = int(sum(t["num_episodes"] for t in self.tasks))
        tasks = [dict(t) for t in self.tasks]
        _json_dump({"obs_dim": self.obs_dim, "action_dim": self.action_dim, "tasks": tasks}, meta / "tasks.json")
        stats = {"per_task": {t["name"]: {"task_index": t["task_index"], **self._stats[t["task_index"]].to_dict()}
                              for t in self.tasks},
                 "all": self._all.to_dict()}
        _json_dump(stats, meta / "stats.json")
        if self._episodes:
            cols = {k: np.concatenate([p[k] for p in self._episodes]) for k in self._episodes[0]}
        else:
            cols = {k: np.zeros(0, np.int64) for k in ("episode_index", "task_index", "length", "row_start", "shard")}
            cols |= {"return": np.zeros(0), "terminated": np.zeros(0, bool), "truncated": np.zeros(0, bool)}
        order = ["episode_index", "task_index", "length", "row_start", "shard", "return", "terminated", "truncated"]
        pq.write_table(pa.table({k: cols[k] for k in order}), meta / "episodes.parquet")
        info = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": self.name,
                "obs_dim": self.obs_dim, "action_dim": self.action_dim, "num_episodes": num_episodes,
                "num_episodes_next_index": self._next_episode, "num_frames": int(num_frames),
                "num_transitions": int(num_frames - num_episodes), "max_shard_rows": self.max_shard_rows,
                "shards": self._shards, "features": self.features.to_dict(),
                "layout": "row frame_index=0: reset obs, zero action/reward; row t>=1: (obs_t, a_{t-1}, r_{t-1}, "
                          "terminated_t); truncated marks the last row of a time-limited episode"}
        if self.source:
            info["source"] = self.source
        _json_dump(info, meta / "info.json")
        write_dataset_card(self._tmp, {**info, "tasks": tasks})


def _np(x, dtype) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x, dtype=dtype)
