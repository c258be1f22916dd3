"""Import TD-MPC2 mt30 / mt80 offline data chunks (``chunk_{i}.pt``) into the mbdpo_hub parquet format.

Chunk format (HF dataset ``nicklashansen/tdmpc2``): a pickled ``tensordict.TensorDict`` with batch dims
``[num_episodes, T]`` (``T = 501`` for mt30, ``101`` for mt80) and keys ``obs`` float32 ``[E, T, O]``
(zero-padded to 24 / 39), ``action`` float32 ``[E, T, 6]`` (zero-padded), ``reward`` float32 ``[E, T]``,
``task`` int32 ``[E, T]`` (index into the TD-MPC2 ``TASK_SET`` list order, constant per episode) and
optionally ``terminated``.  Entry 0 of each episode holds the reset obs and a filler action/reward (NaN in
current code, arbitrary values in the Oct-2023 code): it is converted to zeros, keeping the layout.

Safe loading route (no arbitrary code execution, tensordict not required)
    ``torch.load(path, weights_only=True)`` refuses the chunk because its pickle references two non-tensor
    globals: ``tensordict._reductions._make_td`` (the reconstruction function) and
    ``tensordict._td.TensorDict`` (the class passed to it).  We keep the *weights-only* unpickler -- which only
    rebuilds tensors, storages, ``torch.Size``/``torch.device`` and builtin containers -- and allow-list exactly
    those two *names*, bound to local stand-ins via ``torch.serialization.safe_globals([(stub, "name"), ...])``:
    the stand-in reconstruction function receives ``(cls, state)`` and returns the plain ``state`` dict (whose
    ``"_tensordict"`` maps key -> tensor).  Nothing from tensordict is imported or executed, even if it is
    installed, and every other global still makes the load fail.  ``mmap=True`` keeps multi-GB chunks on disk.
    A chunk that was re-saved as a plain ``dict`` of tensors loads through the same call.  We never fall back
    to ``weights_only=False``; a chunk whose pickle names other globals (e.g. one written by a different
    tensordict version) raises ``ValueError`` listing them, so they can be reviewed and allow-listed through
    ``extra_safe_globals``.

Task ids: ``MT30_TASKS`` / ``MT80_TASKS`` come from ``mbdpo_hub.envs.tasks`` (TD-MPC2's order); the dataset's
``task_index`` equals the TD-MPC2 task id.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..envs.tasks import list_tasks, task_spec
from .format import DEFAULT_MAX_SHARD_ROWS, DatasetWriter

__all__ = ["load_tdmpc2_chunk", "convert_tdmpc2_chunks", "convert_dataset_main", "tdmpc2_task_list",
           "tdmpc2_task_dims", "TDMPC2_CHUNK_GLOBALS"]

TDMPC2_CHUNK_GLOBALS = ("tensordict._reductions._make_td", "tensordict._td.TensorDict")

# padded (obs, action) dims and entries per episode of the released chunks
TASK_SET_DIMS = {"mt30": (24, 6, 501), "mt80": (39, 6, 101)}


def tdmpc2_task_list(task_set: str | Sequence[str]) -> list[str]:
    """Task names in TD-MPC2 id order for ``"mt30"`` / ``"mt80"``, or a given list of names."""
    if not isinstance(task_set, str):
        return [str(t) for t in task_set]
    key = task_set.lower()
    if key not in ("mt30", "mt80"):
        raise ValueError(f"unknown task set {task_set!r}; use 'mt30', 'mt80' or a list of task names")
    return list_tasks(key)


def tdmpc2_task_dims(name: str) -> tuple[int, int, int]:
    """``(obs_dim, action_dim, episode_length)`` of a task (DMC: 500 agent steps, Meta-World: 100)."""
    spec = task_spec(name)
    return int(spec.obs_dim), int(spec.action_dim), int(spec.episode_length)


# ---------------------------------------------------------------------------------------------- loading
def _make_td_stub(cls, state, *args, **kwargs):
    """Stand-in for ``tensordict._reductions._make_td``: return the plain pickled state dict."""
    return dict(state) if isinstance(state, dict) else state


class _TensorDictStub:
    """Stand-in for ``tensordict._td.TensorDict`` (only passed around, or rebuilt via ``__setstate__``)."""

    def __setstate__(self, state):  # older tensordict pickles via copyreg + BUILD
        self.__dict__["_state"] = state


def _plain(obj: Any) -> dict[str, Any]:
    if isinstance(obj, _TensorDictStub):
        obj = obj.__dict__.get("_state", {})
    if isinstance(obj, dict) and "_tensordict" in obj:
        fields = obj["_tensordict"]
        out = {k: _plain(v) if isinstance(v, (dict, _TensorDictStub)) else v for k, v in dict(fields).items()}
        if obj.get("_batch_size") is not None:
            out["__batch_size__"] = tuple(obj["_batch_size"])
        return out
    if isinstance(obj, dict):
        return dict(obj)
    raise ValueError(f"unexpected object of type {type(obj).__name__} in the chunk")


def load_tdmpc2_chunk(path: str | Path, mmap: bool = True, extra_safe_globals: Sequence = ()) -> dict[str, Any]:
    """Load a TD-MPC2 chunk safely (see the module docstring) as a plain dict of tensors.

    Returns ``{"obs", "action", "reward", "task"[, "terminated"], "batch_size": (E, T)}``.  Raises
    ``ValueError`` naming the file for unreadable/unsafe pickles or missing keys / bad shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TD-MPC2 chunk {path} not found")
    allowed = [(_make_td_stub, TDMPC2_CHUNK_GLOBALS[0]), (_TensorDictStub, TDMPC2_CHUNK_GLOBALS[1]),
               *extra_safe_globals]
    try:
        with torch.serialization.safe_globals(allowed):
            try:
                obj = torch.load(path, weights_only=True, mmap=mmap, map_location="cpu")
            except RuntimeError as e:
                if mmap and "mmap" in str(e).lower():  # legacy (non-zip) format cannot be mmapped
                    obj = torch.load(path, weights_only=True, map_location="cpu")
                else:
                    raise
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing to load {path}: its pickle needs globals outside the weights-only allow-list "
                         f"(details below); review them and pass extra_safe_globals if they are harmless.\n{e}") from e
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read TD-MPC2 chunk {path}: {type(e).__name__}: {e}") from e
    d = _plain(obj)
    missing = [k for k in ("obs", "action", "reward", "task") if k not in d]
    if missing:
        raise ValueError(f"TD-MPC2 chunk {path} lacks keys {missing} (has {sorted(k for k in d if k[:2] != '__')})")
    obs = d["obs"]
    if not isinstance(obs, torch.Tensor) or obs.ndim != 3:
        raise ValueError(f"TD-MPC2 chunk {path}: obs must be a [E, T, O] tensor, got "
                         f"{getattr(obs, 'shape', type(obs).__name__)} (pixel chunks are not supported)")
    e, t = obs.shape[:2]
    reward = d["reward"]
    if reward.ndim == 3 and reward.shape[-1] == 1:
        reward = reward[..., 0]
    task = d["task"]
    if task.ndim == 3 and task.shape[-1] == 1:
        task = task[..., 0]
    out = {"obs": obs, "action": d["action"], "reward": reward, "task": task, "batch_size": (int(e), int(t))}
    if "terminated" in d:
        term = d["terminated"]
        out["terminated"] = term[..., 0] if term.ndim == 3 else term
    for k in ("action", "reward", "task") + (("terminated",) if "terminated" in out else ()):
        if tuple(out[k].shape[:2]) != (e, t):
            raise ValueError(f"TD-MPC2 chunk {path}: {k} has shape {tuple(out[k].shape)}, expected batch dims "
                             f"({e}, {t}) like obs")
    if out["action"].ndim != 3:
        raise ValueError(f"TD-MPC2 chunk {path}: action must be [E, T, A], got {tuple(out['action'].shape)}")
    return out


# ---------------------------------------------------------------------------------------------- converting
def _chunk_paths(src) -> list[Path]:
    items = [src] if isinstance(src, (str, Path)) else list(src)
    paths: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = sorted(p.glob("*.pt"))
            if not found:
                raise FileNotFoundError(f"no *.pt chunks in {p}")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"TD-MPC2 chunk source {p} not found")
    return paths


def convert_tdmpc2_chunks(src_paths_or_dir, dst_folder: str | Path, task_set: str | Sequence[str] = "mt30",
                          append: bool = False, overwrite: bool = False, max_shard_rows: int = DEFAULT_MAX_SHARD_ROWS,
                          episodes_per_batch: int = 2000, max_episodes: int | None = None,
                          mmap: bool = True, extra_safe_globals: Sequence = ()) -> Path:
    """Convert TD-MPC2 chunks (files, or a directory of ``*.pt`` sorted by name) into a dataset folder.

    ``task_set``: ``"mt30"``, ``"mt80"`` or a list of task names in the chunks' task-id order.  The dataset
    lists every task of the set with ``task_index`` = TD-MPC2 id and true dims; padded dims are the chunks'.
    Episodes are processed ``episodes_per_batch`` at a time (memory-mapped chunks stay on disk).  Entry-0
    fillers become zeros; NaN/inf elsewhere, a task id outside the set, a task id that changes inside an
    episode or dims that disagree with the task set raise ``ValueError`` naming the chunk.  The write is
    atomic (see ``DatasetWriter``).  Returns the dataset folder.
    """
    paths = _chunk_paths(src_paths_or_dir)
    names = tdmpc2_task_list(task_set)
    set_key = task_set.lower() if isinstance(task_set, str) else None
    tasks = []
    for i, n in enumerate(names):
        o, a, length = tdmpc2_task_dims(n)
        tasks.append({"task_index": i, "name": n, "obs_dim": o, "action_dim": a, "episode_length": length})
    writer: DatasetWriter | None = None
    done = 0
    try:
        for path in paths:
            chunk = load_tdmpc2_chunk(path, mmap=mmap, extra_safe_globals=extra_safe_globals)
            e, t = chunk["batch_size"]
            od, ad = int(chunk["obs"].shape[-1]), int(chunk["action"].shape[-1])
            if set_key is not None:
                eo, ea, et = TASK_SET_DIMS[set_key]
                if (od, ad) != (eo, ea):
                    raise ValueError(f"{path}: chunk obs/action dims ({od}, {ad}) do not match task set {set_key} "
                                     f"padded dims ({eo}, {ea})")
                if t != et:
                    raise ValueError(f"{path}: chunk episodes have {t} entries, task set {set_key} expects {et}")
            need_o = max(x["obs_dim"] for x in tasks)
            need_a = max(x["action_dim"] for x in tasks)
            if od < need_o or ad < need_a:
                raise ValueError(f"{path}: chunk dims ({od}, {ad}) are smaller than the task set's largest task "
                                 f"dims ({need_o}, {need_a})")
            if writer is None:
                writer = DatasetWriter(dst_folder, tasks, obs_dim=od, action_dim=ad, max_shard_rows=max_shard_rows,
                                       append=append, overwrite=overwrite, source="TD-MPC2 offline chunks "
                                       f"({', '.join(p.name for p in paths)}; task set {task_set if set_key else 'custom'})")
            elif (od, ad) != (writer.obs_dim, writer.action_dim):
                raise ValueError(f"{path}: chunk dims ({od}, {ad}) differ from the previous chunks' "
                                 f"({writer.obs_dim}, {writer.action_dim})")
            for s in range(0, e, episodes_per_batch):
                if max_episodes is not None and done >= max_episodes:
                    break
                n = min(episodes_per_batch, e - s)
                if max_episodes is not None:
                    n = min(n, max_episodes - done)
                sl = slice(s, s + n)
                task = chunk["task"][sl].to(torch.int64).numpy()
                tid = task[:, 0]
                bad = np.flatnonzero((task != tid[:, None]).any(1))
                if bad.size:
                    raise ValueError(f"{path}: task id changes inside episode {s + int(bad[0])}")
                out = np.flatnonzero((tid < 0) | (tid >= len(names)))
                if out.size:
                    raise ValueError(f"{path}: episode {s + int(out[0])} has task id {int(tid[out[0]])}, outside "
                                     f"the {len(names)}-task set")
                obs = chunk["obs"][sl].numpy()
                act = chunk["action"][sl].numpy().copy()
                rew = chunk["reward"][sl].numpy().copy()
                act[:, 0] = 0.0
                rew[:, 0] = 0.0
                for what, arr in (("obs", obs), ("action", act), ("reward", rew)):
                    finite = np.isfinite(arr).reshape(n, -1).all(1)
                    if not finite.all():
                        raise ValueError(f"{path}: non-finite {what} in episode {s + int(np.flatnonzero(~finite)[0])}"
                                         " (after the entry-0 filler)")
                term = chunk["terminated"][sl].numpy() if "terminated" in chunk else None
                writer.add_episodes(obs, act, rew, term, task=tid)
                done += n
            del chunk
        if writer is None:
            raise ValueError("no chunks to convert")
        return writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def convert_dataset_main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``mbdpo-hub convert-dataset SRC [SRC ...] DST [--task-set mt30|mt80|a,b,c] [--append] ...``."""
    p = argparse.ArgumentParser(prog="mbdpo-hub convert-dataset",
                                description="Convert TD-MPC2 mt30/mt80 .pt chunks into an mbdpo_hub parquet dataset "
                                            "(safe weights-only loading; no arbitrary code runs).")
    p.add_argument("src", nargs="+", help="chunk files or directories of *.pt chunks (last positional is DST)")
    p.add_argument("dst", help="output dataset folder")
    p.add_argument("--task-set", default="mt30", help="mt30, mt80 or a comma-separated task list in id order")
    p.add_argument("--append", action="store_true", help="append to an existing dataset")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset (atomically)")
    p.add_argument("--max-shard-rows", type=int, default=DEFAULT_MAX_SHARD_ROWS)
    p.add_argument("--episodes-per-batch", type=int, default=2000)
    p.add_argument("--max-episodes", type=int, default=None, help="convert at most this many episodes")
    p.add_argument("--no-mmap", action="store_true", help="load chunks fully into memory")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    task_set = args.task_set if args.task_set.lower() in ("mt30", "mt80") else \
        [t.strip() for t in args.task_set.split(",") if t.strip()]
    try:
        out = convert_tdmpc2_chunks(args.src, args.dst, task_set=task_set, append=args.append,
                                    overwrite=args.overwrite, max_shard_rows=args.max_shard_rows,
                                    episodes_per_batch=args.episodes_per_batch, max_episodes=args.max_episodes,
                                    mmap=not args.no_mmap)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"convert-dataset: error: {e}", file=sys.stderr)
        return 2
    from .reading import read_info

    info = read_info(out)
    print(f"wrote {out}: {info['num_episodes']} episodes, {info['num_frames']} rows, "
          f"{len(info['shards'])} shard(s), obs_dim {info['obs_dim']}, action_dim {info['action_dim']}")
    return 0
