"""Reading mbdpo_hub parquet datasets (local folders or Hub dataset repos): metadata, the `datasets` view, and
filling a replay buffer from it. The layout is described in `mbdpo_hub.data.format`."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..utils import recover_folder


# ---------------------------------------------------------------------------------------------- reading
def _is_local(path_or_repo) -> bool:
    """A local folder (also one a crash left as a backup, and any name that is not a Hub id), not a Hub repo."""
    from ..utils import is_hub_repo_id

    s = str(path_or_repo)
    if isinstance(path_or_repo, Path) or os.path.exists(s) or not is_hub_repo_id(s):
        return True
    folder = Path(s)
    return any(folder.parent.glob(f".{folder.name}.old-*"))  # left by a crash mid-swap: recover it


def _hub_file(repo: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, filename, repo_type="dataset", revision=revision))


def _read_meta_json(path_or_repo, name: str, revision: str | None = None) -> dict:
    if _is_local(path_or_repo):
        folder = Path(path_or_repo)
        recover_folder(folder)
        p = folder / "meta" / name
        if not folder.exists():
            raise FileNotFoundError(f"dataset {str(path_or_repo)!r}: no such local folder (and not a Hub dataset id "
                                    "org/name)")
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: {folder} is not an mbdpo_hub dataset folder")
    else:
        p = _hub_file(str(path_or_repo), f"meta/{name}", revision)
    try:
        return json.loads(Path(p).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupted metadata file {p}: {e}") from e


def read_tasks(path_or_repo, revision: str | None = None) -> dict:
    """``meta/tasks.json``: ``{"obs_dim", "action_dim", "tasks": [{task_index, name, obs_dim, action_dim,
    episode_length, num_episodes}]}`` (local folder or Hub dataset repo)."""
    return _read_meta_json(path_or_repo, "tasks.json", revision)


def read_info(path_or_repo, revision: str | None = None) -> dict:
    return _read_meta_json(path_or_repo, "info.json", revision)


def read_stats(path_or_repo, revision: str | None = None) -> dict:
    return _read_meta_json(path_or_repo, "stats.json", revision)


def _check_shards(files: Iterable[Path]) -> int:
    import pyarrow.parquet as pq

    rows = 0
    for f in files:
        try:
            rows += pq.ParquetFile(f).metadata.num_rows
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"corrupted or truncated parquet shard {f}: {e}") from e
    return rows


def _find_bad_shard(files: Sequence[Path]) -> None:
    import pyarrow.parquet as pq

    for f in files:
        try:
            pq.read_table(f)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"corrupted parquet shard {f}: {e}") from e


def _attach_tasks(ds, tasks_meta: dict | None):
    if tasks_meta is not None:
        ds.info.description = json.dumps({"mbdpo_hub": {"tasks": tasks_meta}})
    return ds


def _tasks_from_dataset(ds) -> dict | None:
    try:
        return json.loads(ds.info.description)["mbdpo_hub"]["tasks"]
    except Exception:  # noqa: BLE001
        return None


def load_dataset_folder(path_or_repo, revision: str | None = None, split: str = "train",
                        cache_dir: str | os.PathLike | None = None, keep_in_memory: bool = False):
    """Load an episode dataset as a ``datasets.Dataset`` (memory-mapped Arrow cache).

    ``path_or_repo``: a local dataset folder (its ``data/*.parquet`` shards are footer-checked first: a
    corrupted/truncated shard raises ``ValueError`` naming the file) or a Hub dataset repo id (``revision``
    honoured).  ``meta/tasks.json`` is attached to ``ds.info.description`` (JSON ``{"mbdpo_hub": {"tasks":
    ...}}``) so that ``fill_buffer`` can filter/remap by task name without the folder.
    """
    import datasets

    if _is_local(path_or_repo):
        folder = Path(path_or_repo)
        recover_folder(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder {folder} does not exist")
        files = sorted((folder / "data").glob("*.parquet"))
        if not files:
            if (folder / "meta" / "info.json").is_file() and int(read_info(folder).get("num_frames", 1)) == 0:
                raise ValueError(f"dataset {folder} is empty (0 episodes): add episodes before training on it")
            raise FileNotFoundError(f"no parquet shards under {folder / 'data'}: not an mbdpo_hub dataset folder")
        rows = _check_shards(files)
        tasks_meta = None
        info_path = folder / "meta" / "info.json"
        if info_path.exists():
            info = read_info(folder)
            listed = {folder / s["file"] for s in info.get("shards", [])}
            missing = sorted(str(p) for p in listed if not p.exists())
            if missing:
                raise ValueError(f"dataset {folder} is missing shards {missing}")
            if int(info.get("num_frames", rows)) != rows:
                raise ValueError(f"dataset {folder}: shards hold {rows} rows but meta/info.json says "
                                 f"{info['num_frames']} (truncated or extra shard?)")
            tasks_meta = read_tasks(folder)
        try:
            ds = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split,
                                       cache_dir=None if cache_dir is None else str(cache_dir),
                                       keep_in_memory=keep_in_memory)
        except Exception as e:  # noqa: BLE001
            _find_bad_shard(files)
            raise ValueError(f"failed to load dataset {folder}: {e}") from e
        return _attach_tasks(ds, tasks_meta)
    repo = str(path_or_repo)
    ds = datasets.load_dataset(repo, revision=revision, split=split, data_files={split: "data/*.parquet"},
                               cache_dir=None if cache_dir is None else str(cache_dir), keep_in_memory=keep_in_memory)
    try:
        tasks_meta = read_tasks(repo, revision)
    except Exception:  # noqa: BLE001
        tasks_meta = None
    return _attach_tasks(ds, tasks_meta)


def dataset_arrow_table(dataset):
    """The ``pyarrow.Table`` behind a ``datasets.Dataset`` (indices mapping applied), a table, or a folder."""
    import pyarrow as pa

    if isinstance(dataset, pa.Table):
        return dataset
    if isinstance(dataset, (str, Path)):
        dataset = load_dataset_folder(dataset)
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    return dataset.data.table


def check_columns(table) -> None:
    """The columns a buffer needs, with usable types: one line naming what is missing or wrong."""
    import pyarrow as pa

    need = {"episode_index": pa.types.is_integer, "frame_index": pa.types.is_integer,
            "task_index": pa.types.is_integer, "reward": pa.types.is_floating,
            "terminated": lambda t: pa.types.is_boolean(t) or pa.types.is_integer(t)}
    for col, ok in need.items():
        if col not in table.column_names:
            raise ValueError(f"dataset has no {col!r} column (columns: {table.column_names}): not an mbdpo_hub "
                             "episode dataset")
        if not ok(table.schema.field(col).type):
            raise ValueError(f"dataset column {col!r} has type {table.schema.field(col).type}, which is not usable "
                             "(rewards must be floats, indices integers)")


def _fixed_dim(table, col: str) -> int:
    import pyarrow as pa

    if col not in table.column_names:
        raise ValueError(f"dataset has no {col!r} column (columns: {table.column_names})")
    t = table.schema.field(col).type
    if not pa.types.is_fixed_size_list(t):
        raise ValueError(f"column {col!r} must be a fixed-size list of float32, got {t}")
    return int(t.list_size)


def _col_2d(table, col: str) -> np.ndarray:
    """(N, D) float32 numpy view (zero-copy when possible) of a fixed-size-list column."""
    arr = table.column(col).combine_chunks()
    d = arr.type.list_size
    vals = arr.flatten().to_numpy(zero_copy_only=False)
    return vals.reshape(-1, d)


def _col_1d(table, col: str, dtype) -> np.ndarray:
    return np.asarray(table.column(col).to_numpy(), dtype=dtype)


def episode_table(table) -> dict[str, np.ndarray]:
    """Episode offsets of an entry table sorted by (episode_index, frame_index), vectorised.

    Returns ``episode_index (E,)``, ``start (E,)`` (row), ``length (E,)`` (entries), ``task_index (E,)``.
    Raises ``ValueError`` on unsorted rows, missing/duplicated frames or a task that changes inside an episode.
    """
    ep = _col_1d(table, "episode_index", np.int64)
    fr = _col_1d(table, "frame_index", np.int64)
    tk = _col_1d(table, "task_index", np.int64)
    n = ep.shape[0]
    if n == 0:
        z = np.zeros(0, np.int64)
        return {"episode_index": z, "start": z, "length": z, "task_index": z}
    if (np.diff(ep) < 0).any():
        raise ValueError("dataset rows are not sorted by episode_index (write datasets with DatasetWriter)")
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    lengths = np.diff(np.r_[starts, n])
    expected = np.arange(n) - np.repeat(starts, lengths)
    if not np.array_equal(fr, expected):
        row = int(np.flatnonzero(fr != expected)[0])
        raise ValueError(f"episode {int(ep[row])}: frame_index {int(fr[row])} at row {row}, expected "
                         f"{int(expected[row])} (frames must be 0..T, consecutive)")
    if not np.array_equal(tk, np.repeat(tk[starts], lengths)):
        row = int(np.flatnonzero(tk != np.repeat(tk[starts], lengths))[0])
        raise ValueError(f"episode {int(ep[row])}: task_index changes inside the episode")
    return {"episode_index": ep[starts], "start": starts.astype(np.int64), "length": lengths.astype(np.int64),
            "task_index": tk[starts]}


def resolve_task_selection(ep_tasks: np.ndarray, tasks=None, task_map=None, dataset_tasks: dict | None = None):
    """Used by ``fill_buffer``: returns (episode keep mask, model task id per
    episode)."""
    by_name = by_index = None
    if dataset_tasks is not None:
        tl = dataset_tasks["tasks"] if isinstance(dataset_tasks, dict) else dataset_tasks
        by_name = {t["name"]: int(t["task_index"]) for t in tl}
        by_index = {int(t["task_index"]): t["name"] for t in tl}

    def to_index(x) -> int:
        if isinstance(x, str):
            if by_name is None:
                raise ValueError(f"task name {x!r} given but the dataset's task names are unknown: pass "
                                 "dataset_tasks=read_tasks(folder) or load with load_dataset_folder")
            if x not in by_name:
                raise ValueError(f"task {x!r} not in the dataset (tasks: {sorted(by_name)})")
            return by_name[x]
        return int(x)

    keep = np.ones(ep_tasks.shape, bool)
    if tasks is not None:
        wanted = np.asarray([to_index(t) for t in tasks], np.int64)
        keep = np.isin(ep_tasks, wanted)
    model_ids = ep_tasks.copy()
    if task_map is not None:
        if isinstance(task_map, dict):
            mapping = {to_index(k): int(v) for k, v in task_map.items()}
        else:  # a list of model task names, in model task-id order
            if by_index is None:
                raise ValueError("task_map as a list of model task names needs the dataset's task names")
            pos = {name: i for i, name in enumerate(task_map)}
            mapping = {i: pos[n] for i, n in by_index.items() if n in pos}
        present = np.unique(ep_tasks[keep])
        unmapped = [int(t) for t in present if int(t) not in mapping]
        if unmapped:
            names = [by_index.get(t, t) if by_index else t for t in unmapped]
            raise ValueError(f"dataset tasks {names} have no model task id in task_map (filter them with tasks=...)")
        lut_keys = np.asarray(list(mapping), np.int64)
        lut_vals = np.asarray(list(mapping.values()), np.int64)
        order = np.argsort(lut_keys)
        pos_ = np.searchsorted(lut_keys[order], ep_tasks[keep])
        model_ids[keep] = lut_vals[order][pos_]
    return keep, model_ids


def fill_buffer(buffer, dataset, tasks=None, task_map=None, dataset_tasks: dict | None = None, episodes=None,
                pad: bool = False, chunk_rows: int = 1 << 21) -> dict:
    """Feed a ``ReplayBuffer`` from an episode dataset in bulk.

    ``dataset``: ``datasets.Dataset`` / ``pyarrow.Table`` / local folder path.  Columns are viewed as numpy
    arrays straight from Arrow and grouped by episode with vectorised offset arithmetic (no per-row Python);
    episodes are handed to ``buffer.add_episodes_from_arrays`` in slices of about ``chunk_rows`` rows.

    ``tasks``: keep only these tasks (names or dataset task indices).  ``task_map``: dataset task (name or
    index) -> model task id dict, or the model's task-name list (ids = positions); default keeps dataset ids.
    ``dataset_tasks``: ``read_tasks(folder)`` (found automatically for folders/``load_dataset_folder``).
    ``episodes``: an int (first N episodes) or an iterable of ``episode_index`` values -- a subset for data
    larger than RAM.  ``pad``: zero-pad dataset obs/action dims smaller
    than the buffer's (otherwise any dim mismatch raises ``ValueError`` naming both dims).
    Returns ``{"num_episodes", "num_steps", "task_ids"}`` of what was added.
    """
    if isinstance(dataset, (str, Path)):
        if dataset_tasks is None:
            dataset_tasks = read_tasks(dataset)
        dataset = load_dataset_folder(dataset)
    if dataset_tasks is None and not _is_arrow_table(dataset):
        dataset_tasks = _tasks_from_dataset(dataset)
    table = dataset_arrow_table(dataset)
    check_columns(table)
    od, ad = _fixed_dim(table, "observation"), _fixed_dim(table, "action")
    for what, d_data, d_buf in (("observation", od, buffer.obs_dim), ("action", ad, buffer.action_dim)):
        if d_data != d_buf and not (pad and d_data < d_buf):
            raise ValueError(f"dataset {what} dim {d_data} does not match the buffer/model {what} dim {d_buf}"
                             + ("" if d_data > d_buf else " (pass pad=True to zero-pad)"))
    eps = episode_table(table)
    if dataset_tasks:
        known = {int(t["task_index"]) for t in dataset_tasks.get("tasks", [])}
        unknown = sorted(set(eps["task_index"].tolist()) - known)
        if unknown:
            raise ValueError(f"dataset episodes have task_index {unknown[:5]}, which meta/tasks.json does not list "
                             f"(it lists {sorted(known)}): the dataset is inconsistent")
    keep, model_ids = resolve_task_selection(eps["task_index"], tasks, task_map, dataset_tasks)
    if episodes is not None:
        if isinstance(episodes, (int, np.integer)):
            sel = np.zeros_like(keep)
            sel[np.flatnonzero(keep)[: int(episodes)]] = True
            keep &= sel
        else:
            keep &= np.isin(eps["episode_index"], np.asarray(list(episodes), np.int64))
    idx = np.flatnonzero(keep)
    added_eps = added_steps = 0
    i = 0
    while i < idx.size:
        # group consecutive kept episodes into one contiguous row slice of ~chunk_rows rows
        j = i + 1
        rows = int(eps["length"][idx[i]])
        while (j < idx.size and idx[j] == idx[j - 1] + 1 and rows + int(eps["length"][idx[j]]) <= chunk_rows):
            rows += int(eps["length"][idx[j]])
            j += 1
        sel = idx[i:j]
        r0 = int(eps["start"][sel[0]])
        part = table.slice(r0, rows)
        obs = _col_2d(part, "observation")
        act = _col_2d(part, "action")
        if od < buffer.obs_dim:
            obs = np.pad(obs, [(0, 0), (0, buffer.obs_dim - od)])
        if ad < buffer.action_dim:
            act = np.pad(act, [(0, 0), (0, buffer.action_dim - ad)])
        rew = _col_1d(part, "reward", np.float32)
        term = _col_1d(part, "terminated", bool)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            buffer.add_episodes_from_arrays(obs, act, rew, term, episode_lengths=eps["length"][sel],
                                            tasks=model_ids[sel])
        added_eps += sel.size
        added_steps += rows - sel.size
        i = j
    return {"num_episodes": int(added_eps), "num_steps": int(added_steps),
            "task_ids": sorted({int(t) for t in model_ids[idx]})}


def _is_arrow_table(x) -> bool:
    try:
        import pyarrow as pa

        return isinstance(x, pa.Table)
    except ImportError:  # pragma: no cover
        return False


__all__ = ["load_dataset_folder", "read_tasks", "read_info", "read_stats", "fill_buffer", "episode_table",
           "dataset_arrow_table", "resolve_task_selection"]
