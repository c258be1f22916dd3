"""Checking what users hand to `select_action`, once at the boundary (so the planner's hot path needs no checks or
host synchronisation): task ids and observation batches, each refused with a one-line error naming the problem."""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F

from .configuration_mbdpo import MBDPOConfig


def task_ids(task, config: MBDPOConfig, device) -> torch.Tensor:
    """`task` (None, a name, an id, or one per env as a list / numpy array / tensor of ids, (N,) or (N, 1)) -> a
    long tensor () or (N,) of valid task ids on `device`."""
    n = config.num_tasks
    if isinstance(task, np.generic):  # numpy scalars (np.int64(1), np.str_)
        task = task.item()
    if task is None:
        if n > 1:
            raise ValueError(f"This is a {n}-task model: pass task= (a name or id).")
        return torch.zeros((), dtype=torch.long, device=device)
    if isinstance(task, (str, bool, np.bool_)) or (isinstance(task, numbers.Number) and not hasattr(task, "shape")):
        return torch.tensor(_one_id(task, config), dtype=torch.long, device=device)
    if isinstance(task, (list, tuple)):
        return torch.tensor([_one_id(t, config) for t in task], dtype=torch.long, device=device)
    t = torch.as_tensor(task) if isinstance(task, np.ndarray) else task
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"task must be a name, an id or one id per env, got {type(task).__name__}")
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() > 1:
        raise ValueError(f"task ids must be a scalar or (num_envs,), got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"task ids must be integers, got dtype {t.dtype}")
    ids = t.detach().to("cpu", torch.long)  # one host check here, none in the planner
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise ValueError(f"task ids {ids.unique().tolist()} out of range [0, {n}) for tasks {config.tasks}")
    return ids.to(device)


def _one_id(task, config: MBDPOConfig) -> int:
    if isinstance(task, (bool, np.bool_)):
        raise ValueError(f"task={task!r} is a boolean: give a task name or an integer id")
    if isinstance(task, numbers.Real) and not isinstance(task, numbers.Integral):
        if not float(task).is_integer():
            raise ValueError(f"task={task!r} is not an integer id nor a task name")
        task = int(task)
    return config.task_id(task if isinstance(task, str) else int(task))


def obs_batch(obs, task: torch.Tensor, config: MBDPOConfig, device, dtype) -> tuple[torch.Tensor, bool]:
    """Observation(s) (O,) or (B, O), a task's true dim allowed, -> (B, O) zero-padded on `device` in `dtype`, and
    whether a single observation was given."""
    try:
        obs = torch.as_tensor(obs, dtype=torch.float32).to(device=device, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"obs must be an array of numbers (O,) or (num_envs, O), got {type(obs).__name__}: "
                         f"{str(e).splitlines()[0]}") from None
    single = obs.dim() == 1
    if single:
        obs = obs.unsqueeze(0)
    if obs.dim() != 2:
        raise ValueError(f"obs must be (obs_dim,) or (num_envs, obs_dim), got shape {tuple(obs.shape)}")
    if obs.shape[0] == 0:
        raise ValueError("obs is an empty batch (0 observations): give at least one")
    if not torch.isfinite(obs).all():
        raise ValueError("observation contains NaN or inf")
    O = config.obs_dim
    if obs.shape[-1] < O:
        dims = {config.obs_dims[i] for i in (task.tolist() if task.dim() else [int(task)])}
        if dims != {obs.shape[-1]}:
            raise ValueError(f"observation has dim {obs.shape[-1]}, expected {O} (padded) or the task's own "
                             f"{sorted(dims)}")
        obs = F.pad(obs, (0, O - obs.shape[-1]))
    elif obs.shape[-1] > O:
        raise ValueError(f"observation has dim {obs.shape[-1]}, larger than this model's obs_dim {O}")
    return obs, single


__all__ = ["task_ids", "obs_batch"]
