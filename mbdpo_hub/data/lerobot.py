"""Our episode datasets as LeRobotDataset v3 folders and back.

    export_lerobot("datasets/dmc8-expert", "exports/dmc8-lerobot", fps=30)
    import_lerobot("exports/dmc8-lerobot", "datasets/dmc8-again")            # exact round trip

Our rows are entries in the replay-buffer layout (row t holds obs_t, a_{t-1}, r_{t-1}); LeRobot rows are frames:
frame t of an episode of T steps holds ``observation.state`` = obs_t, ``action`` = a_t, ``next.reward`` = r_t,
``next.done`` (the episode ends after this frame), plus ``next.observation.state`` = obs_{t+1},
``next.terminated`` and ``next.truncated`` so that nothing is lost (the last observation, and whether an episode
ended by termination or by its time limit). ``timestamp`` = frame_index / fps; ``index`` is the global frame
index. Tasks are the task names; LeRobot looks a frame's task up by position (``tasks.iloc[task_index]``), so
the frames' ``task_index`` is the row of ``meta/tasks.parquet`` (0..K-1 over the tasks present, in our order) and
our own task indices stay in the task table in ``meta/info.json`` (the import maps back by task name).
Layout (v3.0): ``meta/info.json`` (codebase_version, fps, features with names, our task table under
``mbdpo_hub``), ``meta/stats.json``, ``meta/tasks.parquet``, ``meta/episodes/chunk-000/file-000.parquet``,
``data/chunk-000/file-NNN.parquet``, ``README.md``.

Importing a LeRobot dataset written elsewhere (no ``next.observation.state``) uses the next frame's state and drops
each episode's last transition, whose next observation is unknown.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..utils import swap_folder

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
ROWS_PER_FILE = 500_000


def _features(obs_dim: int, action_dim: int) -> dict:
    vec = lambda n, p: {"dtype": "float32", "shape": [n], "names": [f"{p}_{i}" for i in range(n)]}  # noqa: E731
    one = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
    return {"observation.state": vec(obs_dim, "obs"), "action": vec(action_dim, "action"),
            "next.observation.state": vec(obs_dim, "obs"), "next.reward": one("float32"),
            "next.done": one("bool"), "next.terminated": one("bool"), "next.truncated": one("bool"),
            "timestamp": one("float32"), "frame_index": one("int64"), "episode_index": one("int64"),
            "index": one("int64"), "task_index": one("int64")}


def _fixed(values: np.ndarray):
    import pyarrow as pa

    v = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


def _stats(x: np.ndarray) -> dict:
    x = x.reshape(len(x), -1).astype(np.float64)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [int(len(x))]}


def _prepare(dst: Path, overwrite: bool) -> Path:
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists: pass overwrite=True (CLI --overwrite) to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))


def export_lerobot(dataset, dst, fps: int = 30, overwrite: bool = False) -> Path:
    """Write our dataset (a folder or Hub id) as a LeRobotDataset v3 folder `dst` (atomically)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .reading import _col_1d, _col_2d, dataset_arrow_table, episode_table, read_tasks

    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    tasks_meta = read_tasks(dataset)
    table = dataset_arrow_table(dataset)
    for col in ("observation", "action", "reward", "terminated", "episode_index", "frame_index", "task_index"):
        if col not in table.column_names:
            raise ValueError(f"dataset {dataset}: no {col!r} column: not an mbdpo_hub dataset")
    eps = episode_table(table)
    obs, act = _col_2d(table, "observation"), _col_2d(table, "action")
    rew, term = _col_1d(table, "reward", np.float32), _col_1d(table, "terminated", bool)
    trunc = (_col_1d(table, "truncated", bool) if "truncated" in table.column_names else np.zeros(len(rew), bool))
    frame = _col_1d(table, "frame_index", np.int64)
    nxt = np.flatnonzero(frame > 0)  # the entry after each frame
    cur = nxt - 1
    if len(nxt) == 0:
        raise ValueError(f"dataset {dataset} has no transitions to export")
    ep_of = np.repeat(eps["episode_index"], eps["length"])[nxt]
    last = np.r_[ep_of[1:] != ep_of[:-1], True]
    ep_ids, ep_len = np.unique(ep_of, return_counts=True)
    names = {int(t["task_index"]): t["name"] for t in tasks_meta["tasks"]}
    task_idx = np.repeat(eps["task_index"], eps["length"])[nxt]
    used = np.unique(task_idx)  # our task indices present, sorted; LeRobot's index is the position in this list
    lr_task = np.searchsorted(used, task_idx)
    cols = {
        "observation.state": _fixed(obs[cur]), "action": _fixed(act[nxt]),
        "next.observation.state": _fixed(obs[nxt]), "next.reward": pa.array(rew[nxt], pa.float32()),
        "next.done": pa.array(last | term[nxt]), "next.terminated": pa.array(term[nxt]),
        "next.truncated": pa.array(trunc[nxt]), "timestamp": pa.array((frame[cur] / fps).astype(np.float32)),
        "frame_index": pa.array(frame[cur]), "episode_index": pa.array(ep_of), "index": pa.array(np.arange(len(nxt))),
        "task_index": pa.array(lr_task)}
    frames = pa.table(cols)
    dst = Path(dst)
    tmp = _prepare(dst, overwrite)
    try:
        for i, start in enumerate(range(0, frames.num_rows, ROWS_PER_FILE)):
            path = tmp / DATA_PATH.format(chunk_index=0, file_index=i)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(frames.slice(start, ROWS_PER_FILE), path)
        starts = np.r_[0, np.cumsum(ep_len)[:-1]]
        ep_tasks = task_idx[starts]
        episodes = pa.table({
            "episode_index": pa.array(ep_ids), "tasks": pa.array([[names[int(t)]] for t in ep_tasks]),
            "length": pa.array(ep_len.astype(np.int64)), "data/chunk_index": pa.array(np.zeros(len(ep_ids), np.int64)),
            "data/file_index": pa.array((starts // ROWS_PER_FILE).astype(np.int64)),
            "dataset_from_index": pa.array(starts.astype(np.int64)),
            "dataset_to_index": pa.array((starts + ep_len).astype(np.int64)),
            "meta/episodes/chunk_index": pa.array(np.zeros(len(ep_ids), np.int64)),
            "meta/episodes/file_index": pa.array(np.zeros(len(ep_ids), np.int64))})
        path = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episodes, path)
        used = [int(t) for t in used]
        pd.DataFrame({"task_index": np.arange(len(used), dtype=np.int64)},
                     index=pd.Index([names[t] for t in used], name="task")).to_parquet(tmp / "meta" / "tasks.parquet")
        stats = {k: _stats(np.asarray(v.flatten().to_numpy(zero_copy_only=False)).reshape(frames.num_rows, -1)
                           if pa.types.is_fixed_size_list(v.type) else np.asarray(v.to_numpy(zero_copy_only=False)))
                 for k, v in ((k, frames.column(k).combine_chunks()) for k in frames.column_names)}
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": None, "total_episodes": int(len(ep_ids)),
                "total_frames": int(frames.num_rows), "total_tasks": len(used), "chunks_size": 1000,
                "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": int(fps),
                "splits": {"train": f"0:{len(ep_ids)}"}, "data_path": DATA_PATH, "video_path": None,
                "features": _features(obs.shape[1], act.shape[1]), "mbdpo_hub": tasks_meta}
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats))
        (tmp / "README.md").write_text(
            "---\nlicense: mit\ntask_categories:\n- robotics\n- reinforcement-learning\ntags:\n- LeRobot\n- mbdpo\n"
            "configs:\n- config_name: default\n  data_files: data/*/*.parquet\n---\n\n"
            f"# {dst.name}\n\nA LeRobotDataset ({CODEBASE_VERSION}) exported by `mbdpo-hub export-lerobot` from "
            f"`{dataset}`: {len(ep_ids)} episodes, {frames.num_rows} frames, tasks "
            f"{', '.join(names[t] for t in used)}. `fps` ({fps}) is nominal. Each frame also holds "
            "`next.observation.state`, `next.terminated` and `next.truncated`, so `mbdpo-hub import-lerobot` "
            "restores the original exactly.\n")
        swap_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def import_lerobot(src, dst, overwrite: bool = False) -> Path:
    """Read a LeRobotDataset v3 folder back into our format (`dst`, written atomically by `DatasetWriter`)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from .format import DatasetWriter

    src = Path(src)
    info_path = src / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{src} is not a LeRobot dataset folder (no meta/info.json)")
    info = json.loads(info_path.read_text())
    from .format import FORMAT_NAME

    if info.get("format") == FORMAT_NAME:
        raise ValueError(f"{src} is already an mbdpo_hub dataset (nothing to import)")
    if not str(info.get("codebase_version", "")).startswith("v3"):
        raise ValueError(f"{src}: LeRobot codebase_version {info.get('codebase_version')!r}; only v3.x is supported")
    files = sorted((src / "data").glob("*/*.parquet"))
    if not files:
        raise ValueError(f"{src}: no data/*/*.parquet files")
    t = pq.read_table(files) if len(files) == 1 else __import__("pyarrow").concat_tables(
        [pq.read_table(f) for f in files])
    for col in ("observation.state", "action", "episode_index", "frame_index"):
        if col not in t.column_names:
            raise ValueError(f"{src}: no {col!r} column")
    t = t.sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])
    col = lambda k: np.asarray(t.column(k).to_numpy(zero_copy_only=False))  # noqa: E731
    vec = lambda k: np.stack(col(k)).astype(np.float32)  # noqa: E731
    state, action = vec("observation.state"), vec("action")
    ep = col("episode_index").astype(np.int64)
    n = len(ep)
    reward = col("next.reward").astype(np.float32).reshape(n) if "next.reward" in t.column_names else np.zeros(n)
    term = col("next.terminated").astype(bool).reshape(n) if "next.terminated" in t.column_names else (
        col("next.done").astype(bool).reshape(n) if "next.done" in t.column_names else np.zeros(n, bool))
    trunc = col("next.truncated").astype(bool).reshape(n) if "next.truncated" in t.column_names else None
    has_next = "next.observation.state" in t.column_names
    nstate = vec("next.observation.state") if has_next else None
    task_idx = col("task_index").astype(np.int64).reshape(n) if "task_index" in t.column_names else np.zeros(n, int)
    ours = info.get("mbdpo_hub")
    names = pd.read_parquet(src / "meta" / "tasks.parquet") if (src / "meta" / "tasks.parquet").is_file() else None
    by_index = {int(r): str(name) for name, r in names["task_index"].items()} if names is not None else {}
    if ours:
        keep = ("task_index", "name", "obs_dim", "action_dim", "episode_length")
        tasks = [{k: t[k] for k in keep if k in t} for t in ours["tasks"]]
        if by_index:  # LeRobot's task_index (a row of tasks.parquet) -> ours, by task name
            by_name = {t["name"]: int(t["task_index"]) for t in tasks}
            uniq, inv = np.unique(task_idx, return_inverse=True)
            missing = [int(u) for u in uniq if by_index.get(int(u)) not in by_name]
            if missing:
                raise ValueError(f"{src}: task_index {missing} not in meta/tasks.parquet or not in our task table")
            task_idx = np.asarray([by_name[by_index[int(u)]] for u in uniq], np.int64)[inv.reshape(-1)]
    else:
        tasks = [dict(task_index=int(i), name=by_index.get(int(i), f"task-{int(i)}"), obs_dim=state.shape[1],
                      action_dim=action.shape[1]) for i in sorted(set(task_idx.tolist()))]
    bounds = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1], True])
    with DatasetWriter(dst, tasks=tasks, obs_dim=state.shape[1], action_dim=action.shape[1],
                       overwrite=overwrite, source=f"import-lerobot {src}") as w:
        for a, b in zip(bounds[:-1], bounds[1:]):
            if has_next:
                obs = np.concatenate([state[a:a + 1], nstate[a:b]])
                sl = slice(a, b)
            else:  # the last transition's next observation is unknown
                if b - a < 2:
                    continue
                obs, sl = state[a:b], slice(a, b - 1)
            acts = np.concatenate([np.zeros((1, action.shape[1]), np.float32), action[sl]])
            rews = np.concatenate([[0.0], reward[sl]]).astype(np.float32)
            terms = np.concatenate([[False], term[sl]])
            w.add_episode(obs, acts, rews, terms, task=int(task_idx[a]),
                          truncated=None if trunc is None else bool(trunc[sl][-1]))
    return Path(dst)


__all__ = ["export_lerobot", "import_lerobot", "CODEBASE_VERSION"]
