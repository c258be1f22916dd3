"""Streaming per-task statistics (observation / action / reward moments and min / max, episode returns) that
`DatasetWriter` keeps in `meta/stats.json`."""

from __future__ import annotations


import numpy as np


class _Moments:
    """Streaming count / sum / sum of squares / min / max (float64) of vectors of a fixed dim."""

    def __init__(self, dim: int | None) -> None:
        shape = () if dim is None else (dim,)
        self.n = 0
        self.s = np.zeros(shape)
        self.ss = np.zeros(shape)
        self.mn = np.full(shape, np.inf)
        self.mx = np.full(shape, -np.inf)

    def update(self, x: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        x64 = x.astype(np.float64)
        self.n += x.shape[0]
        self.s = self.s + x64.sum(0)
        self.ss = self.ss + (x64 * x64).sum(0)
        self.mn = np.minimum(self.mn, x64.min(0))
        self.mx = np.maximum(self.mx, x64.max(0))

    def merge_dict(self, d: dict | None) -> None:
        if not d or not d.get("count"):
            return
        n = int(d["count"])
        mean, std = np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64)
        self.n += n
        self.s = self.s + mean * n
        self.ss = self.ss + (std ** 2 + mean ** 2) * n
        self.mn = np.minimum(self.mn, np.asarray(d["min"], np.float64))
        self.mx = np.maximum(self.mx, np.asarray(d["max"], np.float64))

    def to_dict(self) -> dict:
        if self.n == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        mean = self.s / self.n
        var = np.maximum(self.ss / self.n - mean ** 2, 0.0)
        conv = (lambda a: a.tolist()) if np.ndim(mean) else float
        return {"count": int(self.n), "mean": conv(mean), "std": conv(np.sqrt(var)), "min": conv(self.mn),
                "max": conv(self.mx)}


class _TaskStats:
    def __init__(self, obs_dim: int, action_dim: int) -> None:
        self.obs = _Moments(obs_dim)
        self.action = _Moments(action_dim)
        self.reward = _Moments(None)
        self.ret = _Moments(None)
        self.episodes = 0

    def to_dict(self) -> dict:
        return {"num_episodes": self.episodes, "num_frames": self.obs.n, "num_transitions": self.action.n,
                "observation": self.obs.to_dict(), "action": self.action.to_dict(), "reward": self.reward.to_dict(),
                "return": self.ret.to_dict()}

    def merge_dict(self, d: dict) -> None:
        self.episodes += int(d.get("num_episodes", 0))
        self.obs.merge_dict(d.get("observation"))
        self.action.merge_dict(d.get("action"))
        self.reward.merge_dict(d.get("reward"))
        self.ret.merge_dict(d.get("return"))
