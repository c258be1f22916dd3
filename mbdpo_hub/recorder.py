"""`EpisodeRecorder`: builds episodes in the replay-buffer layout (entry 0 = reset observation) in an online loop."""

from __future__ import annotations

import numpy as np
import torch


class EpisodeRecorder:
    """Builds episodes in the buffer layout in an online loop.

    Single env (``num_envs=None``)::

        rec = EpisodeRecorder(obs_dim, action_dim)
        rec.start(obs0)                          # obs0 (O,)
        rec.add(action, reward, next_obs, terminated)
        ep = rec.finish()                        # {'obs' (T+1,O), 'action' (T+1,A), 'reward' (T+1,),
        buffer.add_episode(**ep, task=k)         #  'terminated' (T+1,)}  numpy float32

    ``num_envs=N`` (synchronous vectorised envs started together): ``start(obs (N,O))``,
    ``add(action (N,A), reward (N,), next_obs (N,O), terminated (N,))``.  After an env reports
    ``terminated`` its later steps are ignored (it is done).  ``finish()`` returns the same keys with a
    leading env dim ``(N, T+1, ...)`` (rows after an env's end are zero) plus ``lengths (N,)`` (entries per
    env); ``finish_episodes()`` returns the list of per-env dicts trimmed to their own lengths, each usable
    as ``buffer.add_episode(**ep)``.  Entry 0 of action/reward is 0 (the layout's filler).
    """

    def __init__(self, obs_dim: int, action_dim: int, num_envs: int | None = None) -> None:
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.num_envs = num_envs
        self._n = 1 if num_envs is None else int(num_envs)
        self._obs: list[np.ndarray] | None = None
        self._done = np.zeros(self._n, bool)

    @staticmethod
    def _np(x, dtype=np.float32) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=dtype)

    def _shape(self, x, tail: tuple[int, ...], name: str) -> np.ndarray:
        a = self._np(x)
        want = tail if self.num_envs is None else (self._n, *tail)
        if a.shape != want:
            if a.size == int(np.prod(want)) and name in ("reward", "terminated"):
                a = a.reshape(want)
            else:
                raise ValueError(f"EpisodeRecorder: {name} must have shape {want}, got {a.shape}")
        return a.reshape(self._n, *tail)

    @property
    def started(self) -> bool:
        return self._obs is not None

    @property
    def num_steps(self) -> int:
        return 0 if self._obs is None else len(self._obs) - 1

    @property
    def done(self) -> np.ndarray:
        """Per-env done flags (terminated so far)."""
        return self._done.copy()

    def start(self, obs) -> None:
        o = self._shape(obs, (self.obs_dim,), "obs")
        self._obs = [o.copy()]
        self._action = [np.zeros((self._n, self.action_dim), np.float32)]
        self._reward = [np.zeros(self._n, np.float32)]
        self._term = [np.zeros(self._n, bool)]
        self._done = np.zeros(self._n, bool)
        self._lengths = np.ones(self._n, np.int64)

    def add(self, action, reward, next_obs, terminated=False) -> None:
        if self._obs is None:
            raise RuntimeError("EpisodeRecorder.add called before start(obs)")
        a = self._shape(action, (self.action_dim,), "action")
        r = self._shape(reward, (), "reward").reshape(self._n)
        o = self._shape(next_obs, (self.obs_dim,), "next_obs")
        term = np.broadcast_to(self._np(terminated, np.float32).reshape(-1), (self._n,)) > 0.5
        alive = ~self._done
        self._obs.append(np.where(alive[:, None], o, 0.0).astype(np.float32))
        self._action.append(np.where(alive[:, None], a, 0.0).astype(np.float32))
        self._reward.append(np.where(alive, r, 0.0).astype(np.float32))
        self._term.append(alive & term)
        self._lengths += alive
        self._done |= term

    def finish(self) -> dict[str, np.ndarray]:
        """Return the episode arrays (see the class docstring) and reset the recorder."""
        if self._obs is None:
            raise RuntimeError("EpisodeRecorder.finish called before start(obs)")
        out = {
            "obs": np.stack(self._obs, 1),
            "action": np.stack(self._action, 1),
            "reward": np.stack(self._reward, 1),
            "terminated": np.stack(self._term, 1),
        }
        lengths = self._lengths.copy()
        self._obs = None
        if self.num_envs is None:
            return {k: v[0] for k, v in out.items()}
        out["lengths"] = lengths
        return out

    def finish_episodes(self) -> list[dict[str, np.ndarray]]:
        """Per-env episode dicts trimmed to each env's length (resets the recorder)."""
        if self.num_envs is None:
            return [self.finish()]
        out = self.finish()
        lengths = out.pop("lengths")
        return [{k: v[i, :lengths[i]] for k, v in out.items()} for i in range(self._n)]


__all__ = ["EpisodeRecorder"]
