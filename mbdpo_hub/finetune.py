"""Fine-tuning a pretrained MBDPO / TD-MPC2 world model on a (possibly new) task: online or offline-to-online.

    policy = load_source_policy("runs/mt", revision=None)       # folder, Hub id, official .pt/.pt.xz, or None
    new, info = adapt_policy_to_task(policy, "reacher-easy", source_task="cartpole-balance")
    trainer = make_finetune_trainer(load_finetune_config("recipes/configs/finetune.yaml", ["checkpoint=runs/mt"]))
    trainer.run()

or `accelerate launch recipes/finetune.py --config recipes/configs/finetune.yaml checkpoint=... task=...`.

Model surgery (`adapt_policy_to_task`) always returns a NEW policy; the source object and its files are never
modified. The rules:

The task's embedding row is chosen by `task_init` (`resolve_task_init`): ``own`` keeps a known task's row,
``source`` copies `source_task`'s row, ``nearest`` the row of the nearest task by `nearest_task` (the paper's O2O
pairs first, e.g. walker-run <- walker-walk, then the same domain prefix with the same (obs, action) dims, then the
same domain, then the same dims; first in checkpoint order; else the mean of all rows), ``mean`` the mean of all rows;
``fit`` starts from the nearest row, and the fine-tuning run then chooses the row with the lowest world-model loss on
the task's seed-phase episodes (among the rows of its domain, or, if the checkpoint has none, every row and their mean:
`fit_candidates`) and fits it alone before any other update (`fit_task_row`).
``auto`` (default) is ``source`` when `source_task` is given, else ``own`` for a known task and, in a fine-tuning run,
``fit`` for a new one (``nearest`` for model surgery alone). A given `source_task` is never ignored: it with any
task_init but source/auto is an error.

* the task is already in the checkpoint: a copy of the model, its row kept (own) or re-initialised (the paper's O2O
  recipe: the target starts from the source task's row).
* a multi-task checkpoint (task_dim > 0) and a new task: one task-embedding row is appended (task id = the old
  number of tasks), initialised as above.
  `tasks / obs_dims / action_dims / episode_lengths` gain the task, its action-mask row comes from its true action
  dim and its discount from its episode length (TD-MPC2's heuristic).
* a single-task checkpoint (task_dim 0): there is no embedding to add; the task REPLACES the old one when its dims
  fit the checkpoint's (padded) dims, else a ValueError.
* dims: a task whose obs dim exceeds the padded obs_dim extends the encoder's first Linear with zero input columns
  at the end of the observation part (before the task-embedding columns); a larger action dim extends the action
  input columns of the dynamics / reward / Q (and its Polyak target) / energy first layers (zero columns at the end),
  the policy head's output rows (zero rows at the end of both the mean and the log-std halves) and the score
  network's input/output slots (zeros). Old weights are kept exactly, so on the old tasks the adapted model's
  encoder / dynamics / reward / Q / policy / energy outputs equal the source's.

`make_finetune_trainer(cfg)` builds the `OnlineTrainer` for `mode=online` or `mode=offline-to-online` (offline data
from `cfg.offline_dataset`, a local dataset folder or a Hub dataset id: its episodes of the fine-tuning task, or,
for a task it lacks, its episodes of the checkpoint's own tasks under their ids: see `load_offline_buffer`).
`cfg.task_init` and `cfg.source_task` select the embedding initialisation.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .configuration_mbdpo import MBDPOConfig
from .modeling_mbdpo import MBDPODiffusionPolicy

logger = logging.getLogger(__name__)

#: the embedded default checkpoint (used when `checkpoint` is None)
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent / "pretrained" / "default"

#: the paper's offline-to-online pairs (target <- source whose embedding row is copied; the paper's fine-tuning setup)
PAPER_SOURCE_TASKS: dict[str, str] = {
    "walker-run": "walker-walk",
    "cheetah-run": "cheetah-run-backwards",
    "hopper-hop": "hopper-stand",
    "pendulum-swingup": "pendulum-spin",
    "reacher-hard": "reacher-easy",
    "mw-bin-picking": "mw-pick-place",
    "mw-box-close": "mw-assembly",
    "mw-door-lock": "mw-door-open",
    "mw-door-unlock": "mw-door-open",
    "mw-hand-insert": "mw-sweep-into",
}

#: how the fine-tuning task's embedding row starts: `own` keeps a known task's row; `source` copies source_task's row;
#: `nearest` copies the nearest task's row (`nearest_task`); `mean` is the mean of all rows; `auto` is source when
#: source_task is given, else own for a known task and nearest for a new one
INITS = ("own", "source", "nearest", "mean")
#: `fit` (the default for a new task in a fine-tuning run, `auto`): start from the nearest row, collect the seed
#: episodes without updating (`seed_actions`), then choose the row (of its domain: `fit_candidates`) with the lowest
#: world-model loss on them and fit it alone (`fit_task_row`) before the rest of the model moves
TASK_INITS = ("auto", "fit") + INITS


def resolve_task_init(task_init: str | None, source_task: str | None, known: bool) -> str:
    """The concrete `INITS` entry for (task_init, source_task), refusing combinations that would ignore a value."""
    task_init = task_init or "auto"
    if task_init not in TASK_INITS:
        raise ValueError(f"task_init must be one of {TASK_INITS}, got {task_init!r}")
    if source_task in ("mean", "nearest"):
        raise ValueError(f"source_task={source_task!r} is not a task name: use task_init={source_task} instead")
    if task_init == "auto":
        return "source" if source_task else ("own" if known else "nearest")
    if task_init == "fit":  # model surgery as nearest / own; the row is then chosen and fitted on data
        if source_task:
            raise ValueError(f"source_task={source_task!r} is only used with task_init=source (or auto), but "
                             "task_init=fit chooses the row itself: drop one of them")
        return "own" if known else "nearest"
    if task_init == "source" and not source_task:
        raise ValueError("task_init=source needs source_task=<one of the checkpoint's tasks>")
    if source_task and task_init != "source":
        raise ValueError(f"source_task={source_task!r} is only used with task_init=source (or auto), but "
                         f"task_init={task_init}: drop one of them")
    return task_init

#: config fields that change tensor shapes or module structure: a run override may not change them
STRUCTURAL_FIELDS = MBDPOConfig.ARCHITECTURE_FIELDS

#: config attributes where a checkpoint may name the dataset it was pretrained on (first found is used)
PRETRAINING_DATASET_ATTRS = ("pretraining_dataset", "pretrain_dataset", "offline_dataset", "dataset")

__all__ = [
    "DEFAULT_CHECKPOINT_DIR",
    "PAPER_SOURCE_TASKS",
    "load_source_policy",
    "adapt_policy_to_task",
    "nearest_task",
    "apply_model_overrides",
    "load_offline_buffer",
    "resolve_mode",
    "make_finetune_trainer",
]


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------


def _is_official_file(path: str) -> bool:
    return path.endswith((".pt", ".pt.xz", ".pth"))


def load_source_policy(checkpoint: str | os.PathLike | None = None, revision: str | None = None,
                       **kwargs: Any) -> MBDPODiffusionPolicy:
    """The pretrained policy to fine-tune.

    `checkpoint`: a local `save_pretrained` folder, a Hub model id (`revision`: branch, tag or commit sha), an
    official TD-MPC2 / MBDPO ``.pt`` / ``.pt.xz`` file (through `convert_official_checkpoint`; `kwargs` go to it,
    e.g. ``tasks="mt30"``), or None for the embedded default (`mbdpo_hub/pretrained/default/`).
    The returned policy has `finetune_source` = dict(checkpoint, revision, commit, kind) attached.
    """
    kind = "folder"
    if checkpoint is None:
        path = DEFAULT_CHECKPOINT_DIR
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no checkpoint given and the embedded default checkpoint {path} does not exist (yet): pass "
                "checkpoint=<local folder | Hub model id | official .pt/.pt.xz file>.")
        checkpoint, kind = str(path), "default"
    ckpt = str(checkpoint)
    commit = None
    if _is_official_file(ckpt):
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"official checkpoint file {ckpt} does not exist")
        from .convert import convert_official_checkpoint  # lazy: optional, heavy

        policy = convert_official_checkpoint(ckpt, **kwargs)
        kind = "official"
    elif Path(ckpt).exists():
        if not Path(ckpt).is_dir() or not (Path(ckpt) / "config.json").is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} is not a model folder (no config.json in it) nor an "
                                    "official .pt/.pt.xz file")
        if revision is not None:
            warnings.warn(f"revision={revision!r} ignored: checkpoint {ckpt} is a local folder", stacklevel=2)
        policy = MBDPODiffusionPolicy.from_pretrained(ckpt)
    else:
        kind = "hub"
        try:
            policy = MBDPODiffusionPolicy.from_pretrained(ckpt, revision=revision)
        except Exception as e:  # noqa: BLE001 - transformers raises OSError / ValueError / HF errors
            rev = "" if revision is None else f" at revision {revision!r}"
            raise OSError(
                f"cannot load checkpoint {ckpt!r}{rev}: it is not a local folder or file, and the Hub repo"
                f"{' / revision' if revision else ''} could not be loaded ({type(e).__name__}: {e}). Check the "
                "repo id, the revision (branch, tag or commit) and, offline, that it is in the cache.") from e
        commit = getattr(policy.config, "_commit_hash", None) or _cached_commit(ckpt, revision)
    policy.finetune_source = dict(checkpoint=ckpt, revision=revision, commit=commit, kind=kind)
    return policy


def _cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit sha a Hub revision resolved to (from the cache snapshot just downloaded; works offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        return Path(path).parent.name if isinstance(path, str) else None
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------------------------------
# model surgery
# ---------------------------------------------------------------------------------------------------------------------


def _domain(task: str) -> str:
    return task.split("-", 1)[0]


def nearest_task(task: str, tasks: list[str], obs_dims: list[int], action_dims: list[int], obs_dim: int,
                 action_dim: int) -> str | None:
    """The checkpoint task whose embedding row initialises `task` under ``init="nearest"``, or None (use the mean).

    Rule, first match wins, ties broken by checkpoint order: (1) the paper's O2O source (`PAPER_SOURCE_TASKS`);
    (2) same domain prefix (``walker-``) and same (obs, action) dims; (3) same domain prefix; (4) same (obs, action)
    dims; else None.
    """
    paper = PAPER_SOURCE_TASKS.get(task)
    if paper in tasks:
        return paper
    dims = {t: (o, a) for t, o, a in zip(tasks, obs_dims, action_dims)}
    same_domain = [t for t in tasks if _domain(t) == _domain(task)]
    for cands in ([t for t in same_domain if dims[t] == (obs_dim, action_dim)], same_domain,
                  [t for t in tasks if dims[t] == (obs_dim, action_dim)]):
        if cands:
            return cands[0]
    return None


def _task_dims(task: str, obs_dim: int | None, action_dim: int | None, episode_length: int | None):
    if obs_dim is None or action_dim is None or episode_length is None:
        from .envs.tasks import task_spec

        spec = task_spec(task)
        obs_dim = spec.obs_dim if obs_dim is None else obs_dim
        action_dim = spec.action_dim if action_dim is None else action_dim
        episode_length = spec.episode_length if episode_length is None else episode_length
    return int(obs_dim), int(action_dim), int(episode_length)


def adapt_policy_to_task(policy: MBDPODiffusionPolicy, task: str, source_task: str | None = None,
                         init: str | None = None, *, obs_dim: int | None = None, action_dim: int | None = None,
                         episode_length: int | None = None) -> tuple[MBDPODiffusionPolicy, dict[str, Any]]:
    """A NEW policy that knows `task` (see the module docstring for the rules); the source is not modified.

    `init`: one of `TASK_INITS` (default ``"auto"``, see the module docstring). The task's true obs/action dims and episode length come from
    `mbdpo_hub.envs.task_spec` unless given. Returns (policy, info) with info keys: task, task_id, added,
    replaced, init, source_task (the row copied, None for the mean), extended_obs (old, new) or None,
    extended_action (old, new) or None.
    """
    cfg = policy.config
    init = resolve_task_init(init, source_task, task in cfg.tasks)
    if source_task and source_task not in cfg.tasks:
        raise ValueError(f"source_task {source_task!r} is not in the checkpoint; its tasks are {cfg.tasks}")
    if init == "source" and source_task == task:
        raise ValueError(f"source_task={task!r} is the fine-tuning task itself: use task_init=own to keep its row")
    o, a, ep_len = _task_dims(task, obs_dim, action_dim, episode_length)
    info: dict[str, Any] = dict(task=task, added=False, replaced=None, init=None, source_task=None,
                                extended_obs=None, extended_action=None)
    state = {k: v.detach().clone() for k, v in policy.state_dict().items()}

    if task in cfg.tasks:  # keep its row (own) or re-initialise it (the paper's O2O: start from the source's row)
        i = cfg.tasks.index(task)
        if (cfg.obs_dims[i], cfg.action_dims[i]) != (o, a):
            raise ValueError(f"task {task!r} is in the checkpoint with (obs, action) dims "
                             f"({cfg.obs_dims[i]}, {cfg.action_dims[i]}) but the environment has ({o}, {a})")
        new = MBDPODiffusionPolicy(cfg.replace())
        new.load_state_dict(state, strict=True)
        if init == "own":
            info.update(init="own", source_task=task)
        else:
            if cfg.task_dim == 0:
                raise ValueError(f"task_init={init} needs a task embedding, and this single-task checkpoint has "
                                 "none: use task_init=own")
            row, src = _initial_row(policy, task, init, source_task, o, a)
            new.world_model.set_task_embedding(task, row)
            info.update(init=init if src is not None or init == "mean" else "mean", source_task=src)
        info["task_id"] = i
        return _finish(new, policy), info

    if cfg.task_dim == 0:  # single-task checkpoint: replace the task, no embedding to add
        if o > cfg.obs_dim or a > cfg.action_dim:
            raise ValueError(
                f"cannot fine-tune the single-task checkpoint ({cfg.tasks[0]}, padded obs {cfg.obs_dim} / action "
                f"{cfg.action_dim}) on {task!r} (obs {o} / action {a}): its dims do not fit and a single-task model "
                "has no task embedding to extend. Use a multi-task checkpoint.")
        new = MBDPODiffusionPolicy(cfg.replace(tasks=[task], obs_dims=[o], action_dims=[a], episode_lengths=[ep_len],
                                               task_set=None))
        state["world_model.action_masks"] = new.world_model.action_masks.detach().clone()
        state["world_model.discounts"] = new.world_model.discounts.detach().clone()
        new.load_state_dict(state, strict=True)
        info.update(task_id=0, replaced=cfg.tasks[0])
        return _finish(new, policy), info

    if init == "own":
        raise ValueError(f"task_init=own: task {task!r} is not in the checkpoint (its tasks are {cfg.tasks}); use "
                         "task_init=source (with source_task=...), nearest or mean")
    # multi-task checkpoint, new task: one more embedding row (the model widens its inputs where the dims need it)
    new = MBDPODiffusionPolicy(cfg.replace())
    new.load_state_dict(state, strict=True)
    row, src = _initial_row(policy, task, init, source_task, o, a)
    O, A = cfg.obs_dim, cfg.action_dim
    task_id = new.add_task(task, o, a, ep_len, embedding=row)
    info.update(task_id=task_id, added=True, init=init if src is not None or init == "mean" else "mean",
                source_task=src, extended_obs=(O, o) if o > O else None,
                extended_action=(A, a) if a > A else None)
    return _finish(new, policy), info


def _initial_row(policy: MBDPODiffusionPolicy, task: str, init: str, source_task: str | None, obs_dim: int,
                 action_dim: int) -> tuple[torch.Tensor, str | None]:
    """The embedding row `task` starts from under `init` (source / nearest / mean) and the task it was copied from
    (None for the mean). `nearest` never picks `task` itself."""
    cfg = policy.config
    emb = policy.world_model.task_embedding.weight.detach()
    if init == "source":
        return emb[cfg.tasks.index(source_task)].clone(), source_task
    if init == "nearest":
        others = [i for i, t in enumerate(cfg.tasks) if t != task]
        src = nearest_task(task, [cfg.tasks[i] for i in others], [cfg.obs_dims[i] for i in others],
                           [cfg.action_dims[i] for i in others], obs_dim, action_dim)
        if src is not None:
            return emb[cfg.tasks.index(src)].clone(), src
    return emb.mean(0), None


def _finish(new: MBDPODiffusionPolicy, source: MBDPODiffusionPolicy) -> MBDPODiffusionPolicy:
    new.to(source.device)
    new.train(source.training)
    if hasattr(source, "finetune_source"):
        new.finetune_source = dict(source.finetune_source)
    return new


def apply_model_overrides(policy: MBDPODiffusionPolicy, overrides: dict[str, Any]) -> MBDPODiffusionPolicy:
    """Apply run-level MBDPOConfig overrides (planner, losses, learning rates...) to a loaded policy in place.

    Structural fields (architecture, task lists: `STRUCTURAL_FIELDS`, and `horizon` when there is a score network)
    must equal the checkpoint's: a different value is a ValueError naming the field."""
    cfg = policy.config
    for key, value in (overrides or {}).items():
        structural = key in STRUCTURAL_FIELDS or (key == "horizon" and cfg.use_score_network)
        if structural:
            if getattr(cfg, key) != value:
                raise ValueError(f"model override {key}={value!r} conflicts with the checkpoint ({key}="
                                 f"{getattr(cfg, key)!r}): fine-tuning cannot change the architecture")
            continue
    if overrides:
        fresh = cfg.replace(**{k: v for k, v in overrides.items() if k not in STRUCTURAL_FIELDS})
        for key in overrides:
            if key not in STRUCTURAL_FIELDS:
                setattr(cfg, key, getattr(fresh, key))  # validated by building `fresh`
        if any(k.startswith("discount_") for k in overrides):
            policy.refresh_discounts()  # the learner and planner read the buffer, not the config
        policy._planner = None
    return policy


# ---------------------------------------------------------------------------------------------------------------------
# offline data
# ---------------------------------------------------------------------------------------------------------------------


def pretraining_dataset_of(policy: MBDPODiffusionPolicy) -> str | None:
    """The dataset the checkpoint's config names as its pretraining data, or None. A relative folder that does not
    exist from the working directory is looked up in the project checkout this package lives in (the embedded
    default names `datasets/dmc8-expert`, a folder of the repository); a Hub dataset id is returned as it is."""
    for attr in PRETRAINING_DATASET_ATTRS:
        value = getattr(policy.config, attr, None)
        if isinstance(value, str) and value:
            here = Path(value)
            in_checkout = Path(__file__).resolve().parents[1] / value
            if not here.exists() and not here.is_absolute() and in_checkout.is_dir():
                return str(in_checkout)
            return value
    return None


def resolve_mode(cfg, policy: MBDPODiffusionPolicy) -> tuple[str, str | None, str]:
    """(mode, offline dataset or None, why) of a fine-tuning run. `mode=auto` rehearses the pretraining data when
    there is some to read: `offline_dataset` if given, else the dataset the checkpoint names when it is a local
    folder that exists or a Hub dataset id; otherwise (an official or user checkpoint that names none, a folder that
    is gone) it fine-tunes online, and `why` says so."""
    if cfg.mode == "online":
        return "online", None, "mode=online"
    dataset = cfg.offline_dataset or pretraining_dataset_of(policy)
    if cfg.mode == "offline-to-online":
        if not dataset:
            raise ValueError("mode=offline-to-online needs offline_dataset=<dataset folder or Hub dataset id> (the "
                             "checkpoint's config names no pretraining dataset)")
        return cfg.mode, dataset, "mode=offline-to-online"
    from .utils import is_hub_repo_id

    if cfg.offline_dataset:
        return "offline-to-online", dataset, f"mode=auto: offline_dataset={dataset} is given"
    if dataset and (Path(dataset).is_dir() or is_hub_repo_id(dataset)):
        return "offline-to-online", dataset, f"mode=auto: rehearsing the checkpoint's pretraining data {dataset}"
    if dataset:
        return "online", None, (f"mode=auto: the checkpoint's pretraining data {dataset!r} is not here, so online "
                                "only (pass offline_dataset=<folder or Hub id> to rehearse it)")
    return "online", None, "mode=auto: the checkpoint names no pretraining data, so online only"


def load_offline_buffer(dataset: str, policy: MBDPODiffusionPolicy, task: str, *, batch_size: int,
                        capacity: int | None = None, revision: str | None = None, seed: int | None = None):
    """A ReplayBuffer of `dataset`'s episodes, task indices remapped to `policy`'s ids, obs/actions zero-padded to the
    policy's dims (a local dataset folder or Hub dataset id).

    If the dataset has `task`, its episodes of `task`; else (a held-out task: the usual case for the pretraining data)
    the episodes of every dataset task the checkpoint knows, each under its own task id, so that the updates keep
    rehearsing the pretraining tasks beside the new one (offline-to-online with the pretraining data mixed in)."""
    from .buffer import ReplayBuffer
    from .data import fill_buffer, load_dataset_folder, read_tasks

    cfg = policy.config
    try:
        meta = read_tasks(dataset, revision=revision)
    except Exception as e:  # noqa: BLE001
        raise OSError(f"cannot read offline dataset {dataset!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      "pass offline_dataset=<dataset folder or Hub dataset id>, or mode=online") from e
    entries = {t["name"]: t for t in meta["tasks"]}
    names = list(entries)
    keep = [task] if task in entries else [t for t in names if t in cfg.tasks]
    if not keep:
        raise ValueError(f"offline dataset {dataset!r} has tasks {names}: neither the fine-tuning task {task!r} nor "
                         f"any task of the checkpoint ({cfg.tasks}); pass an offline_dataset with one of them")
    for name in keep:
        entry = entries[name]
        tid = cfg.task_id(name)
        want = (cfg.obs_dims[tid], cfg.action_dims[tid])
        if (int(entry["obs_dim"]), int(entry["action_dim"])) != want:
            raise ValueError(f"offline dataset {dataset!r}: task {name!r} has (obs, action) dims "
                             f"({entry['obs_dim']}, {entry['action_dim']}) but the model/environment has {want}")
    if int(meta["obs_dim"]) > cfg.obs_dim or int(meta["action_dim"]) > cfg.action_dim:
        raise ValueError(f"offline dataset {dataset!r} is padded to (obs, action) dims ({meta['obs_dim']}, "
                         f"{meta['action_dim']}), larger than the model's ({cfg.obs_dim}, {cfg.action_dim})")
    ds = load_dataset_folder(dataset, revision=revision)
    rows = len(ds) + 1
    buf = ReplayBuffer(max(2, min(rows, capacity or rows)), cfg.obs_dim, cfg.action_dim, cfg.horizon, batch_size,
                       seed=seed)
    added = fill_buffer(buf, ds, tasks=keep, task_map={t: cfg.task_id(t) for t in keep}, dataset_tasks=meta, pad=True)
    buf.offline_tasks = keep
    if buf.num_windows == 0:
        raise ValueError(f"offline dataset {dataset!r}: its {added['num_episodes']} episodes of {keep} are all "
                         f"shorter than horizon + 1 = {cfg.horizon + 1} steps: nothing to sample")
    return buf


# ---------------------------------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------------------------------


def effective_task_init(cfg, source: MBDPODiffusionPolicy) -> str:
    """`cfg.task_init`, with `auto` meaning `fit` for a new task of a multi-task checkpoint without a source_task."""
    if (cfg.task_init == "auto" and not cfg.source_task and cfg.task not in source.config.tasks
            and source.config.task_dim > 0):
        return "fit"
    return cfg.task_init


def fit_candidates(task: str, tasks: list[str]) -> tuple[list[str], bool]:
    """The checkpoint tasks whose rows `fit_task_row` may start `task` from, and whether the mean row is one too.

    Rows of the same domain (the same embodiment, e.g. ``cartpole-``) when the checkpoint has any: a row of another
    embodiment can fit a new task's rewards and values better by accident (a row that expects little reward fits a
    sparse-reward task's first episodes; cartpole-balance-sparse chose reacher-easy's row that way) while its
    dynamics and its policy belong to another body. Else every row and their mean."""
    same = [t for t in tasks if t != task and _domain(t) == _domain(task)]
    return (same, False) if same else ([t for t in tasks if t != task], True)


def fit_task_row(learner, batches: list[dict], task_id: int, steps: int, lr: float,
                 candidates: list[str] | None = None, with_mean: bool = True) -> dict[str, Any]:
    """Choose and fit one task's embedding row on that task's own data, the rest of the model fixed.

    The row that starts the task is chosen among the rows of `candidates` (default: every other task), the mean of
    the other rows (`with_mean`) and the current row, by the world-model loss (consistency + reward + value, as in
    training) summed over `batches`; then the row alone takes `steps` Adam steps (`lr`) on that loss. Returns the
    candidates' losses, the choice and the loss after. Evaluation-mode networks (no dropout), so the comparison is
    deterministic given the batches."""
    policy = learner.policy
    emb = policy.world_model.task_embedding.weight
    tasks = policy.config.tasks
    if candidates is None:
        candidates = [t for i, t in enumerate(tasks) if i != task_id]
    unknown = [t for t in candidates if t not in tasks or tasks.index(t) == task_id]
    if unknown:
        raise ValueError(f"fit candidates {unknown} are not other tasks of the checkpoint ({tasks})")
    was_training, needs_grad = policy.training, emb.requires_grad
    policy.eval()

    def loss(grad: bool = False) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            return sum(learner.world_model_losses(b)[0] for b in batches) / len(batches)

    with torch.no_grad():
        others = [i for i in range(len(tasks)) if i != task_id]
        rows = {t: emb[tasks.index(t)].clone() for t in candidates}
        if with_mean:
            rows["mean"] = emb[others].mean(0)
        rows["start"] = emb[task_id].clone()
        losses = {}
        for name, row in rows.items():
            emb[task_id] = row
            losses[name] = float(loss())
        chosen = min(losses, key=losses.get)
        emb[task_id] = rows[chosen]
    emb.requires_grad_(True)
    optim = torch.optim.Adam([emb], lr=lr)
    this_row = torch.arange(emb.shape[0], device=emb.device) == task_id
    for step in range(steps):
        batch = batches[step % len(batches)]
        total = learner.world_model_losses(batch)[0]
        (grad,) = torch.autograd.grad(total, [emb])
        emb.grad = grad * this_row.unsqueeze(1).to(grad.dtype)  # only this task's row moves
        optim.step()
        optim.zero_grad(set_to_none=True)
    emb.requires_grad_(needs_grad)
    after = float(loss())
    policy.train(was_training)
    learner.set_reference()  # the trust regions (if any) hold the fitted model, where the updates start
    return dict(candidates=losses, chosen=chosen, loss_chosen=losses[chosen], loss_after_fit=after, steps=steps,
                lr=lr, batches=len(batches))


def prepare_finetune_policy(cfg) -> tuple[MBDPODiffusionPolicy, dict[str, Any]]:
    """Load `cfg.checkpoint` @ `cfg.revision`, adapt it to `cfg.task` and apply `cfg.model` overrides."""
    source = load_source_policy(cfg.checkpoint, cfg.revision)
    task_init = effective_task_init(cfg, source)
    policy, info = adapt_policy_to_task(source, cfg.task, source_task=cfg.source_task or None, init=task_init)
    if task_init == "fit":
        info["init"] = "fit"
    apply_model_overrides(policy, cfg.model)
    if cfg.episode_length is not None and policy.config.horizon >= cfg.episode_length:
        raise ValueError(f"horizon={policy.config.horizon} is not shorter than episode_length={cfg.episode_length}")
    unknown = [t for t in cfg.eval_old_tasks if t not in policy.config.tasks]
    if unknown:
        raise ValueError(f"eval_old_tasks {unknown} are not in the checkpoint; its tasks are {policy.config.tasks}")
    policy.config.finetuned_from = dict(checkpoint=source.finetune_source["checkpoint"], revision=cfg.revision,
                                        commit=source.finetune_source["commit"], mode=cfg.mode,
                                        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in info.items()})
    del source
    return policy, info


def make_finetune_trainer(cfg, command: str | None = None):
    """The `OnlineTrainer` of a fine-tuning run (`cfg.mode` online or offline-to-online, auto: `resolve_mode`).

    The checkpoint is loaded and adapted here (so bad inputs fail before any environment starts); the trainer's
    `policy_factory` hands that policy over (and rebuilds it for a later call). `cfg.freeze` / `cfg.lr_scales` go
    to the learner through the trainer. In offline-to-online mode the offline buffer comes from
    `cfg.offline_dataset`, or the pretraining dataset named in the checkpoint's config.
    """
    if not getattr(cfg, "is_finetune", False):
        raise TypeError(f"make_finetune_trainer needs a FinetuneConfig (load_finetune_config), got "
                        f"{type(cfg).__name__}")
    policy, info = prepare_finetune_policy(cfg)
    mode, dataset, why = resolve_mode(cfg, policy)
    policy.config.finetuned_from["mode"] = mode
    print(f"fine-tuning {mode} ({why})", flush=True)
    offline = None
    if dataset is not None:
        offline = load_offline_buffer(dataset, policy, cfg.task, batch_size=cfg.batch_size,
                                      capacity=cfg.buffer_size, seed=cfg.seed + 12345)
    cache = {"policy": policy}

    def policy_factory(run_cfg):
        p = cache.pop("policy", None)
        return p if p is not None else prepare_finetune_policy(run_cfg)[0]

    src = policy.finetune_source
    base_model = src["checkpoint"] if src["kind"] == "hub" else None
    base_revision = (src["commit"] or src["revision"]) if base_model else None
    start = ("chosen and fitted on its seed-phase data (task_init=fit)" if info.get("init") == "fit" else
             f"from {info['source_task'] or 'the mean of all rows'}")
    what = (f"added as task {info['task_id']} (embedding {start})" if info["added"] else
            f"replacing {info['replaced']}" if info["replaced"] else "already in the checkpoint")
    if src["kind"] == "default":  # not a Hub repo: named by its package version and weights digest
        from .hub.cards import _library_version
        from .utils import file_sha256

        digest = file_sha256(DEFAULT_CHECKPOINT_DIR / "model.safetensors")[:12]
        origin = f"the embedded default checkpoint of mbdpo-hub {_library_version() or ''} (weights sha256 {digest})"
    else:
        origin = f"{src['checkpoint']}{'@' + str(src['revision']) if src['revision'] else ''}"
    notes = f"Fine-tuned ({mode}) from {origin} on {cfg.task} ({what})."
    if info["extended_obs"] or info["extended_action"]:
        notes += f" Input dims extended: obs {info['extended_obs']}, action {info['extended_action']}."
    if offline is not None:
        notes += (f" Offline data: {dataset}, tasks {', '.join(offline.offline_tasks)} (ratio {cfg.offline_ratio})"
                  + ("." if offline.offline_tasks == [cfg.task] else ", rehearsed under their own task ids."))
    from .utils import is_hub_repo_id

    card_extra = dict(base_model=base_model, base_revision=base_revision, notes=notes, usage_task=cfg.task,
                      datasets=dataset if dataset and is_hub_repo_id(dataset) else None)
    from .training import OnlineTrainer

    first_update_hook = None
    if info.get("init") == "fit":
        def first_update_hook(tr):
            batches = [tr.device_batch(tr.buffer.sample()) for _ in range(cfg.fit_batches)]  # the task's own data
            names, with_mean = fit_candidates(cfg.task, tr.policy.config.tasks)
            res = fit_task_row(tr.learner, batches, tr.task_id, cfg.fit_steps, cfg.fit_lr, names, with_mean)
            res.update(step=tr.step, episodes=tr.episode,
                       rule="rows of the same domain" if not with_mean else "every row and their mean")
            if tr.accelerator.is_main_process:
                import json

                from .utils import atomic_write_text

                atomic_write_text(tr.out / "task_fit.json", json.dumps(res, indent=2))
                tr.accelerator.print(f"task_init=fit: row of {cfg.task} from {res['chosen']} (world-model loss "
                                     f"{res['loss_chosen']:.3f}), fitted for {res['steps']} steps -> "
                                     f"{res['loss_after_fit']:.3f}")
    trainer = OnlineTrainer(cfg, policy_factory=policy_factory, offline_buffer=offline, card_extra=card_extra,
                            command=command, first_update_hook=first_update_hook)
    trainer.adapt_info = dict(info, mode=mode, mode_reason=why)
    return trainer
