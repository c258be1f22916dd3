"""Episode replay buffer for MBDPO / TD-MPC2 world-model training.

Layout (same as the official TD-MPC2 online trainer): an episode of ``T`` agent steps is stored as
``T + 1`` *entries*.

* entry 0 holds ``obs_0`` (the reset observation); its action / reward are fillers (stored as 0, never
  sampled) and ``terminated_0 = 0``;
* entry ``t >= 1`` holds ``(obs_t, a_{t-1}, r_{t-1}, terminated_t)``: the transition *into* ``obs_t``.

Storage
    One preallocated tensor per field with ``capacity`` entries (on ``device``).  Episodes are written
    contiguously, so every ``(H+1)``-entry window is a contiguous index range.  A **ring over entries with
    whole-episode eviction**: when the next episode does not fit before the end, the tail is abandoned and the
    head wraps to 0; overlapped episodes are evicted, always the *oldest* ones (strict FIFO).

Short episodes
    An episode with fewer than ``horizon + 1`` entries is **stored but never sampled** (it has no valid
    window).  ``sample()`` raises a clear error when no stored episode has a valid window.  An episode longer
    than ``capacity`` entries is rejected.

Sampling
    ``sample()`` draws ``B`` windows uniformly over all valid start positions (every valid ``(H+1)``-entry
    sub-trajectory is equally likely): ``searchsorted`` over the cumulative window counts, then one gather per
    field on an ``(H+1, B)`` index matrix (no Python loop over the batch).  Returned: ``obs (H+1,B,O)``, ``action (H,B,A)``, ``reward (H,B,1)``, ``terminated (H,B,1)``
    (float32) and ``task (B,)`` int64; ``action[t]``/``reward[t]``/``terminated[t]`` come from entry
    ``start + 1 + t``.

Persistence
    ``state_dict()`` holds only the live episodes, compacted in FIFO order, plus the RNG state.  ``save(path)``
    writes one safetensors file (tensors + a JSON header in the safetensors metadata) through a temp file and
    ``os.replace`` (atomic), plus a human-readable JSON sidecar.  ``load(path)`` restores into an existing
    buffer (the obs/action dims must match; capacity may differ: the newest episodes that fit are kept).

``mbdpo_hub.recorder.EpisodeRecorder`` builds episodes in this layout.  ``sample_mixed`` concatenates batches from
several buffers (offline + online data for offline-to-online fine-tuning).
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .utils import atomic_path, atomic_write_text


_FORMAT = "mbdpo_hub.replay_buffer"
_FORMAT_VERSION = 1


def _as_tensor(x: Any, dtype: torch.dtype, name: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"{name} is required")
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        t = torch.as_tensor(np.asarray(x))
    if t.dtype == torch.bool and dtype != torch.bool:
        t = t.to(torch.uint8)
    return t.to(dtype=dtype, device="cpu")


class ReplayBuffer:
    """Whole-episode replay buffer (see the module docstring for layout, eviction and sampling)."""

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        action_dim: int,
        horizon: int,
        batch_size: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ) -> None:
        for name, v, lo in (("capacity", capacity, 2), ("obs_dim", obs_dim, 1), ("action_dim", action_dim, 1),
                            ("horizon", horizon, 1), ("batch_size", batch_size, 1)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or int(v) < lo:
                raise ValueError(f"ReplayBuffer: {name} must be an int >= {lo}, got {v!r}")
        self.capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.horizon = int(horizon)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self._obs = torch.zeros(self.capacity, self.obs_dim, dtype=torch.float32, device=self.device)
        self._action = torch.zeros(self.capacity, self.action_dim, dtype=torch.float32, device=self.device)
        self._reward = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self._terminated = torch.zeros(self.capacity, dtype=torch.bool, device=self.device)
        # FIFO episode table: (start entry, number of entries, task id)
        self._episodes: deque[tuple[int, int, int]] = deque()
        self._head = 0  # next write position
        self._num_entries = 0
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed))
        self._cache: dict[str, torch.Tensor] | None = None
        self._arange: torch.Tensor | None = None

    # ------------------------------------------------------------------ sizes
    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_entries(self) -> int:
        """Stored entries (``num_steps + num_episodes``)."""
        return self._num_entries

    @property
    def num_steps(self) -> int:
        """Stored transitions (agent steps): entries minus one filler entry per episode."""
        return self._num_entries - len(self._episodes)

    def __len__(self) -> int:
        """Number of stored transitions (same as ``num_steps``)."""
        return self.num_steps

    @property
    def num_windows(self) -> int:
        """Number of valid ``(H+1)``-entry start positions (0 means ``sample()`` would fail)."""
        return int(sum(max(0, n - self.horizon) for _, n, _ in self._episodes))

    def __repr__(self) -> str:
        keys = ("capacity", "obs_dim", "action_dim", "horizon", "batch_size", "num_episodes", "num_steps")
        return f"ReplayBuffer({', '.join(f'{k}={getattr(self, k)}' for k in keys)}, device={str(self.device)!r})"

    # ------------------------------------------------------------------ adding
    def _validate_episode_arrays(self, obs, action, reward, terminated, lengths_total: int | None = None):
        obs_t = _as_tensor(obs, torch.float32, "obs")
        act_t = _as_tensor(action, torch.float32, "action")
        rew_t = _as_tensor(reward, torch.float32, "reward")
        if obs_t.ndim != 2 or obs_t.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (N, obs_dim={self.obs_dim}), got {tuple(obs_t.shape)} "
                             f"(obs dim of the data {obs_t.shape[-1] if obs_t.ndim else '?'} != buffer obs_dim "
                             f"{self.obs_dim})")
        n = obs_t.shape[0]
        if act_t.ndim != 2 or act_t.shape[1] != self.action_dim:
            raise ValueError(f"action must have shape (N, action_dim={self.action_dim}), got {tuple(act_t.shape)} "
                             f"(action dim of the data {act_t.shape[-1] if act_t.ndim else '?'} != buffer "
                             f"action_dim {self.action_dim})")
        if rew_t.ndim == 2 and rew_t.shape[1] == 1:
            rew_t = rew_t[:, 0]
        if act_t.shape[0] != n or rew_t.shape != (n,):
            raise ValueError(f"obs/action/reward lengths differ: obs {tuple(obs_t.shape)}, action "
                             f"{tuple(act_t.shape)}, reward {tuple(rew_t.shape)}")
        if terminated is None:
            term_t = torch.zeros(n, dtype=torch.bool)
        else:
            term_f = _as_tensor(terminated, torch.float32, "terminated")
            if term_f.ndim == 2 and term_f.shape[1] == 1:
                term_f = term_f[:, 0]
            if term_f.shape != (n,):
                raise ValueError(f"terminated must have shape ({n},), got {tuple(term_f.shape)}")
            term_t = torch.nan_to_num(term_f, nan=0.0) > 0.5
        return obs_t, act_t, rew_t, term_t

    def add_episode(self, obs, action, reward, terminated=None, task: int = 0) -> None:
        """Add one episode of ``T+1`` entries.

        ``obs (T+1, obs_dim)``, ``action (T+1, A)`` and ``reward (T+1,)`` (row 0 ignored; NaN allowed there),
        ``terminated (T+1,)`` or None (all False; entry 0 is always stored as False).  Accepts numpy arrays or
        tensors.  ``buffer.add_episode(**recorder.finish(), task=k)`` works for a single-env ``EpisodeRecorder``.
        """
        obs_t, act_t, rew_t, term_t = self._validate_episode_arrays(obs, action, reward, terminated)
        self.add_episodes_from_arrays(obs_t, act_t, rew_t, term_t, episode_lengths=[obs_t.shape[0]], tasks=task)

    def add_episodes_from_arrays(self, obs, action, reward, terminated=None, episode_lengths=None, tasks=0) -> None:
        """Bulk-add many episodes (offline data).

        Either flat concatenated arrays ``obs (N, O)``, ``action (N, A)``, ``reward (N,)``, ``terminated (N,)``
        with ``episode_lengths (E,)`` (entries per episode, summing to N), or equal-length batched arrays
        ``obs (E, T+1, O)``, ``action (E, T+1, A)``, ``reward (E, T+1)`` (TD-MPC2 chunk layout; leave
        ``episode_lengths`` None).  ``tasks`` is one int or ``(E,)`` ints.  Entry 0 of every episode is
        normalised (action/reward 0, terminated False).  Copies are done per contiguous run of episodes, not
        per row; a loop over episodes only computes placements.
        """
        obs_t = _as_tensor(obs, torch.float32, "obs")
        if obs_t.ndim == 3:
            if episode_lengths is not None:
                raise ValueError("episode_lengths must be None for batched (E, T+1, ...) arrays")
            e, t1 = obs_t.shape[:2]
            episode_lengths = [t1] * e

            def _flat(x, name, dtype):
                if x is None:
                    return None
                xt = _as_tensor(x, dtype, name)
                if xt.shape[:2] != (e, t1):
                    raise ValueError(f"{name} must start with batch dims ({e}, {t1}) like obs, got {tuple(xt.shape)}")
                return xt.reshape(e * t1, *xt.shape[2:])

            obs_t = obs_t.reshape(e * t1, obs_t.shape[2])
            action = _flat(action, "action", torch.float32)
            reward = _flat(reward, "reward", torch.float32)
            terminated = _flat(terminated, "terminated", torch.float32)
        if episode_lengths is None:
            raise ValueError("episode_lengths is required for flat (N, ...) arrays")
        lengths = np.asarray(episode_lengths, dtype=np.int64).reshape(-1)
        obs_t, act_t, rew_t, term_t = self._validate_episode_arrays(obs_t, action, reward, terminated)
        n = obs_t.shape[0]
        if lengths.size == 0:
            return
        if (lengths < 1).any():
            raise ValueError(f"every episode needs at least 1 entry (the reset obs); got lengths {lengths.tolist()[:10]}")
        if int(lengths.sum()) != n:
            raise ValueError(f"episode_lengths sum to {int(lengths.sum())} but the arrays hold {n} entries")
        if int(lengths.max()) > self.capacity:
            raise ValueError(f"an episode of {int(lengths.max())} entries does not fit in a buffer of capacity "
                             f"{self.capacity} entries")
        task_arr = np.broadcast_to(np.asarray(tasks, dtype=np.int64).reshape(-1), lengths.shape).copy() \
            if np.ndim(tasks) else np.full(lengths.shape, int(tasks), dtype=np.int64)
        if task_arr.shape != lengths.shape:
            raise ValueError(f"tasks must be one int or have one entry per episode ({lengths.size}), got "
                             f"shape {task_arr.shape}")
        if (task_arr < 0).any():
            raise ValueError("task ids must be >= 0")
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        first = torch.as_tensor(offsets)
        # entry 0 of every episode is a filler (NaN allowed): validate the rest without copying the inputs
        bad = ~torch.isfinite(act_t).all(-1) | ~torch.isfinite(rew_t)
        bad[first] = False
        bad |= ~torch.isfinite(obs_t).all(-1)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0])
            ep = int(np.searchsorted(offsets, row, side="right") - 1)
            raise ValueError(f"non-finite obs/action/reward in episode {ep} (of this call) at entry "
                             f"{row - int(offsets[ep])} (only entry 0 may hold NaN action/reward fillers)")
        # keep only the newest episodes that can possibly survive (skip copies that would be overwritten)
        keep_from = 0
        rev_cum = np.cumsum(lengths[::-1])
        n_fit = int(np.searchsorted(rev_cum, self.capacity, side="right"))
        if n_fit < lengths.size:
            keep_from = lengths.size - n_fit
        # placements (loop over episodes: arithmetic only)
        runs: list[tuple[int, int, int]] = []  # (src start, dst start, n entries)
        for i in range(keep_from, lengths.size):
            length = int(lengths[i])
            dst = self._place(length)
            self._episodes.append((dst, length, int(task_arr[i])))
            self._num_entries += length
            src = int(offsets[i])
            if runs and runs[-1][0] + runs[-1][2] == src and runs[-1][1] + runs[-1][2] == dst:
                s, d, m = runs[-1]
                runs[-1] = (s, d, m + length)
            else:
                runs.append((src, dst, length))
        for s, d, m in runs:
            self._obs[d:d + m] = obs_t[s:s + m].to(self.device)
            self._action[d:d + m] = act_t[s:s + m].to(self.device)
            self._reward[d:d + m] = rew_t[s:s + m].to(self.device)
            self._terminated[d:d + m] = term_t[s:s + m].to(self.device)
        # normalise the filler entry 0 of every newly written episode (vectorised)
        # eviction is FIFO, so the surviving new episodes are the last k of the table
        k = min(lengths.size - keep_from, len(self._episodes))
        if k:
            dst_first = torch.as_tensor([self._episodes[-i - 1][0] for i in range(k)], device=self.device)
            self._action[dst_first] = 0.0
            self._reward[dst_first] = 0.0
            self._terminated[dst_first] = False
        self._cache = None

    def _place(self, length: int) -> int:
        """Choose the write position for an episode of ``length`` entries and evict what it overwrites."""
        start = self._head
        if start + length > self.capacity:
            # abandon the tail [head, capacity): evict the (oldest) episodes stored there, then wrap
            while self._episodes and self._episodes[0][0] >= start:
                self._evict_oldest()
            start = 0
        end = start + length
        while self._episodes and self._episodes[0][0] < end and self._episodes[0][0] + self._episodes[0][1] > start:
            self._evict_oldest()
        self._head = end
        return start

    def _evict_oldest(self) -> None:
        _, n, _ = self._episodes.popleft()
        self._num_entries -= n

    # ------------------------------------------------------------------ sampling
    def _build_cache(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            if self._episodes:
                arr = np.asarray(self._episodes, dtype=np.int64).reshape(-1, 3)
            else:
                arr = np.zeros((0, 3), dtype=np.int64)
            nwin = np.maximum(arr[:, 1] - self.horizon, 0)
            cum = np.cumsum(nwin)
            self._cache = {
                "start": torch.as_tensor(arr[:, 0]),
                "task": torch.as_tensor(arr[:, 2]),
                "cum": torch.as_tensor(cum),
                "first": torch.as_tensor(cum - nwin),
                "total": torch.tensor(int(cum[-1]) if cum.size else 0),
            }
            self._arange = torch.arange(self.horizon + 1, device=self.device).unsqueeze(1)
        return self._cache

    def sample_indices(self, batch_size: int | None = None, generator: torch.Generator | None = None):
        """Draw window start entries; returns ``(starts (B,), tasks (B,))`` (CPU int64)."""
        b = self.batch_size if batch_size is None else int(batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {b}")
        cache = self._build_cache()
        total = int(cache["total"])
        if total == 0:
            raise RuntimeError(
                f"ReplayBuffer.sample: no episode has >= horizon+1 = {self.horizon + 1} entries "
                f"({self.num_episodes} episodes stored); add longer episodes first")
        gen = self._generator if generator is None else generator
        u = torch.randint(total, (b,), generator=gen, device=gen.device).cpu()
        ep = torch.searchsorted(cache["cum"], u, right=True)
        starts = cache["start"][ep] + (u - cache["first"][ep])
        return starts, cache["task"][ep]

    def sample(self, batch_size: int | None = None, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Sample ``B`` sub-trajectories of ``H+1`` entries (see the module docstring for shapes)."""
        starts, tasks = self.sample_indices(batch_size, generator)
        idx = starts.to(self.device).unsqueeze(0) + self._arange  # (H+1, B)
        nxt = idx[1:]
        return {
            "obs": self._obs[idx],
            "action": self._action[nxt],
            "reward": self._reward[nxt].unsqueeze(-1),
            "terminated": self._terminated[nxt].unsqueeze(-1).to(torch.float32),
            "task": tasks.to(self.device),
        }

    # ------------------------------------------------------------------ episodes access
    def episodes(self) -> list[dict[str, Any]]:
        """Metadata of the stored episodes, oldest first: ``[{start, length, task}]``."""
        return [{"start": s, "length": n, "task": t} for s, n, t in self._episodes]

    def get_episode(self, i: int) -> dict[str, torch.Tensor]:
        """Entries of the ``i``-th stored episode (0 = oldest)."""
        s, n, t = self._episodes[i]
        return {"obs": self._obs[s:s + n], "action": self._action[s:s + n], "reward": self._reward[s:s + n],
                "terminated": self._terminated[s:s + n], "task": torch.tensor(t)}

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "obs_dim": self.obs_dim, "action_dim": self.action_dim,
                "horizon": self.horizon, "batch_size": self.batch_size}

    def state_dict(self) -> dict[str, Any]:
        """Live episodes compacted in FIFO order (CPU tensors), episode table, RNG state and config."""
        if self._episodes:
            arr = np.asarray(self._episodes, dtype=np.int64).reshape(-1, 3)
            lens = arr[:, 1]
            base = arr[:, 0] - (np.cumsum(lens) - lens)
            idx = torch.as_tensor(np.repeat(base, lens) + np.arange(int(lens.sum())))
        else:
            arr = np.zeros((0, 3), dtype=np.int64)
            idx = torch.zeros(0, dtype=torch.long)
        idx = idx.to(self.device)
        return {
            "obs": self._obs[idx].cpu(),
            "action": self._action[idx].cpu(),
            "reward": self._reward[idx].cpu(),
            "terminated": self._terminated[idx].cpu(),
            "episode_lengths": torch.as_tensor(arr[:, 1].copy()),
            "episode_tasks": torch.as_tensor(arr[:, 2].copy()),
            "rng_state": self._generator.get_state(),
            "config": self._config(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents with ``state`` (from ``state_dict``).  obs/action dims must match."""
        cfg = state.get("config", {})
        for key, mine in (("obs_dim", self.obs_dim), ("action_dim", self.action_dim)):
            if key in cfg and int(cfg[key]) != mine:
                raise ValueError(f"buffer state has {key}={cfg[key]} but this buffer has {key}={mine}")
        obs = state["obs"]
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim or state["action"].shape[-1] != self.action_dim:
            raise ValueError(f"buffer state has obs dim {obs.shape[-1]} / action dim {state['action'].shape[-1]}, "
                             f"this buffer has obs_dim={self.obs_dim} / action_dim={self.action_dim}")
        self._episodes.clear()
        self._head = 0
        self._num_entries = 0
        self._cache = None
        lengths = state["episode_lengths"]
        if len(lengths):
            self.add_episodes_from_arrays(state["obs"], state["action"], state["reward"], state["terminated"],
                                          episode_lengths=np.asarray(lengths), tasks=np.asarray(state["episode_tasks"]))
        if state.get("rng_state") is not None:
            self._generator.set_state(state["rng_state"].to(torch.uint8).cpu())

    @staticmethod
    def _resolve_path(path: str | os.PathLike) -> tuple[Path, Path]:
        p = Path(path)
        if p.suffix == ".safetensors":
            return p, p.with_suffix(".json")
        return p / "replay_buffer.safetensors", p / "replay_buffer.json"

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (a ``.safetensors`` file, or a directory receiving ``replay_buffer.safetensors``).

        The safetensors file is self-contained (its metadata holds the JSON header) and is written atomically
        (temp file in the same directory + ``os.replace``).  A JSON sidecar with the same header is written
        afterwards for humans; ``load`` does not need it.  Returns the safetensors path.
        """
        from safetensors.torch import save_file

        st_path, json_path = self._resolve_path(path)
        st_path.parent.mkdir(parents=True, exist_ok=True)
        sd = self.state_dict()
        header = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "config": sd["config"],
                  "num_episodes": self.num_episodes, "num_steps": self.num_steps, "num_entries": self.num_entries}
        tensors = {k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
        tensors["terminated"] = tensors["terminated"].to(torch.uint8)
        with atomic_path(st_path) as tmp:
            save_file(tensors, str(tmp), metadata={"header": json.dumps(header)})
        atomic_write_text(json_path, json.dumps(header, indent=1))
        return st_path

    @staticmethod
    def _read_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
        from safetensors import safe_open

        st_path, _ = ReplayBuffer._resolve_path(path)
        if not st_path.exists():
            raise FileNotFoundError(f"no replay buffer file at {st_path}")
        try:
            with safe_open(str(st_path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot read replay buffer file {st_path}: {e}") from e
        try:
            header = json.loads(meta["header"])
            assert header.get("format") == _FORMAT
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{st_path} is not a {_FORMAT} file (missing/invalid header)") from e
        required = {"obs", "action", "reward", "terminated", "episode_lengths", "episode_tasks"}
        if not required <= tensors.keys():
            raise ValueError(f"{st_path} lacks tensors {sorted(required - tensors.keys())}")
        return header, tensors

    def load(self, path: str | os.PathLike) -> "ReplayBuffer":
        """Restore the contents saved by ``save(path)`` into this buffer (returns self)."""
        header, tensors = self._read_file(path)
        state = dict(tensors)
        state["terminated"] = state["terminated"].bool()
        state["config"] = header["config"]
        self.load_state_dict(state)
        return self

    @classmethod
    def from_saved(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **overrides) -> "ReplayBuffer":
        """Build a buffer with the saved config (``overrides`` replace config entries) and load it."""
        header, _ = cls._read_file(path)
        cfg = {**header["config"], **overrides}
        buf = cls(device=device, **cfg)
        return buf.load(path)


# ---------------------------------------------------------------------- mixing
def _split_batch(batch_size: int, ratios: Sequence[float]) -> list[int]:
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"ratios must be non-negative with a positive sum, got {list(ratios)}")
    r = r / r.sum()
    raw = r * batch_size
    counts = np.floor(raw).astype(np.int64)
    rest = batch_size - int(counts.sum())
    if rest:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:rest]] += 1
    return counts.tolist()


def sample_mixed(buffers: Sequence[ReplayBuffer], ratios: Sequence[float], batch_size: int,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One batch of ``batch_size`` windows, ``ratios[i]`` of them from ``buffers[i]``, concatenated on B.

    Counts are rounded with the largest-remainder rule (they always sum to ``batch_size``).  All buffers must
    share obs/action dims and horizon; the result is on the first buffer's device.
    """
    if len(buffers) != len(ratios) or not buffers:
        raise ValueError("buffers and ratios must be non-empty and of the same length")
    b0 = buffers[0]
    for b in buffers[1:]:
        if (b.obs_dim, b.action_dim, b.horizon) != (b0.obs_dim, b0.action_dim, b0.horizon):
            raise ValueError(f"buffers differ in (obs_dim, action_dim, horizon): {(b0.obs_dim, b0.action_dim, b0.horizon)}"
                             f" vs {(b.obs_dim, b.action_dim, b.horizon)}")
    counts = _split_batch(int(batch_size), ratios)
    parts = [b.sample(c, generator) for b, c in zip(buffers, counts) if c > 0]
    return {k: torch.cat([p[k].to(b0.device) for p in parts], dim=0 if k == "task" else 1) for k in parts[0]}


__all__ = ["ReplayBuffer", "sample_mixed"]
