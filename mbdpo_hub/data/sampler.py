"""Window sampler that reads straight from a memory-mapped Arrow table (datasets larger than RAM).

``ParquetEpisodeSampler`` never copies the dataset into a replay buffer.  At construction it reads only the
three int64 index columns (``episode_index``, ``frame_index``, ``task_index``) to compute episode offsets
(vectorised, ``episode_table``); each ``sample()`` draws ``B`` windows uniformly over valid start positions
(same rule as ``ReplayBuffer.sample``), builds the ``(H+1, B)`` row-index matrix with index arithmetic and
fetches all rows with one ``table.take(indices)`` on the needed columns.  With a ``datasets.Dataset`` loaded
by ``load_dataset_folder`` the table is the memory-mapped Arrow cache, so only the touched pages are read.

It exposes the same ``sample()`` output and ``obs_dim``/``action_dim``/``horizon``/``batch_size``/``device``
attributes as ``ReplayBuffer``, so it can be mixed with online buffers in ``MixedSampler``.
"""

from __future__ import annotations

import numpy as np
import torch

from .format import (_fixed_dim, _tasks_from_dataset, dataset_arrow_table, episode_table, load_dataset_folder,
                     read_tasks, resolve_task_selection)

__all__ = ["ParquetEpisodeSampler"]


class ParquetEpisodeSampler:
    """Sample ``(H+1)``-entry windows from an episode dataset without loading it.

    ``dataset``: ``datasets.Dataset``, ``pyarrow.Table`` or a local dataset folder.  ``tasks`` / ``task_map``
    / ``dataset_tasks``: as in ``fill_buffer``.  ``obs_dim``/``action_dim``: model dims; the dataset's are
    zero-padded up to them, a larger dataset dim raises ``ValueError``.
    """

    def __init__(self, dataset, horizon: int, batch_size: int, seed: int | None = None, tasks=None, task_map=None,
                 dataset_tasks: dict | None = None, obs_dim: int | None = None, action_dim: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        if isinstance(dataset, (str,)) or hasattr(dataset, "__fspath__"):
            if dataset_tasks is None:
                dataset_tasks = read_tasks(dataset)
            dataset = load_dataset_folder(dataset)
        if dataset_tasks is None and hasattr(dataset, "info"):
            dataset_tasks = _tasks_from_dataset(dataset)
        table = dataset_arrow_table(dataset)
        self.data_obs_dim = _fixed_dim(table, "observation")
        self.data_action_dim = _fixed_dim(table, "action")
        self.obs_dim = int(obs_dim) if obs_dim is not None else self.data_obs_dim
        self.action_dim = int(action_dim) if action_dim is not None else self.data_action_dim
        for what, d_data, d_model in (("observation", self.data_obs_dim, self.obs_dim),
                                      ("action", self.data_action_dim, self.action_dim)):
            if d_data > d_model:
                raise ValueError(f"dataset {what} dim {d_data} exceeds the model {what} dim {d_model}")
        self.horizon = int(horizon)
        self.batch_size = int(batch_size)
        if self.horizon < 1 or self.batch_size < 1:
            raise ValueError("horizon and batch_size must be >= 1")
        self.device = torch.device(device)
        self._table = table.select(["observation", "action", "reward", "terminated"])
        eps = episode_table(table)
        keep, model_ids = resolve_task_selection(eps["task_index"], tasks, task_map, dataset_tasks)
        nwin = np.where(keep, np.maximum(eps["length"] - self.horizon, 0), 0)
        self._start = torch.as_tensor(eps["start"])
        self._task = torch.as_tensor(model_ids)
        self._cum = torch.as_tensor(np.cumsum(nwin))
        self._first = self._cum - torch.as_tensor(nwin)
        self._total = int(self._cum[-1]) if len(self._cum) else 0
        if self._total == 0:
            raise ValueError(f"no selected episode has >= horizon+1 = {self.horizon + 1} entries")
        self.num_episodes = int(keep.sum())
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed))
        self._arange = torch.arange(self.horizon + 1).unsqueeze(1)

    @property
    def num_windows(self) -> int:
        return self._total

    def sample(self, batch_size: int | None = None, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        import pyarrow as pa

        b = self.batch_size if batch_size is None else int(batch_size)
        gen = self._generator if generator is None else generator
        u = torch.randint(self._total, (b,), generator=gen, device=gen.device).cpu()
        ep = torch.searchsorted(self._cum, u, right=True)
        starts = self._start[ep] + (u - self._first[ep])
        idx = (starts.unsqueeze(0) + self._arange).reshape(-1).numpy()  # (H+1)*B rows, time-major
        rows = self._table.take(pa.array(idx))
        h1 = self.horizon + 1

        def fixed(col: str, d_model: int) -> torch.Tensor:
            arr = rows.column(col).combine_chunks()
            x = arr.flatten().to_numpy(zero_copy_only=False).reshape(h1, b, arr.type.list_size)
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if t.shape[-1] < d_model:
                t = torch.nn.functional.pad(t, (0, d_model - t.shape[-1]))
            return t

        obs = fixed("observation", self.obs_dim)
        act = fixed("action", self.action_dim)[1:]
        rew = torch.from_numpy(np.asarray(rows.column("reward").to_numpy(), np.float32).reshape(h1, b))[1:]
        term = torch.from_numpy(np.asarray(rows.column("terminated").to_numpy(zero_copy_only=False),
                                           np.float32).reshape(h1, b))[1:]
        d = self.device
        return {"obs": obs.to(d), "action": act.to(d), "reward": rew.unsqueeze(-1).to(d),
                "terminated": term.unsqueeze(-1).to(d), "task": self._task[ep].to(d)}
