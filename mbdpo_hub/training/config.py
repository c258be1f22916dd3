"""Run configurations: online training (`RunConfig`), fine-tuning (`FinetuneConfig`), offline pretraining
(`PretrainConfig`), and the one YAML + `key=value` loader they share.

    cfg = load_run_config("recipes/configs/online.yaml", ["task=cartpole-balance", "steps=600"])

Keys that are fields of the config class go to it; `MBDPOConfig` fields (at top level or under `model:`) go to its
`model` dict; anything else is an error naming the key. Every value is checked against the field's type before
anything runs (`steps=true`, `seed=abc`, `freeze=encoder` -> `[encoder]`, `lr=3e-5` as a number).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configuration_mbdpo import MBDPOConfig

MODEL_FIELDS = {f.name for f in dataclasses.fields(MBDPOConfig)}


# ---------------------------------------------------------------------------------------------------------------------
# the configs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything about an online run that is not the model: the loop, evaluation, checkpointing and outputs.

    Model fields (any `MBDPOConfig` field, e.g. `planner=mppi num_samples=256`) go to `model`.
    """

    task: str = "cartpole-balance"  # a built-in task, gym:ENV_ID, or a name given to envs.register_task
    env_module: str | None = None  # a package to import first (it registers the user's gymnasium ids)
    steps: int = 20_000  # environment steps (summed over num_envs)
    seed: int = 1
    num_envs: int = 1
    episode_length: int | None = None  # override the task's episode length (smoke tests); default: the task's
    model_size: int = 1
    # the seed phase: steps collected before the first update (random actions from scratch; the adapted
    # checkpoint's planner when fine-tuning), default max(1000, 5 x episode length); then a burst of updates
    seed_steps: int | None = None
    seed_updates: int | None = None  # burst of updates at the end of the seed phase; default seed_steps
    utd: float = 1.0  # updates per environment step
    batch_size: int = 256
    buffer_size: int = 1_000_000
    eval_freq: int = 5_000
    eval_episodes: int = 10
    # as transformers' TrainingArguments: the final model is the best-evaluated one (every evaluation counts, a
    # fine-tuning run's step-0 evaluation of the adapted checkpoint included), re-evaluated on fresh episodes when it
    # is not the last; the last weights stay in the last checkpoint (a larger `steps` continues from them)
    load_best_model_at_end: bool = False
    checkpoint_freq: int = 5_000
    keep_checkpoints: int = 2
    output_dir: str = "runs/online"
    save_video: bool = True
    video_size: int = 240
    mixed_precision: str = "no"  # "no" | "bf16"
    compile: bool = False  # torch.compile the update's forward passes and the planners' imagined returns
    replay_on_device: bool = True  # on CUDA, keep the replay buffer on the GPU when it fits in a quarter of it
    log_with: str | None = "tensorboard"
    resume: bool = True
    overwrite: bool = False  # a used output_dir holding another run (or resume=false): move it aside, start fresh
    progress: bool = True
    push_to_hub: bool = False
    hub_repo_id: str | None = None
    freeze: list[str] = field(default_factory=list)  # parameter groups not trained (e.g. [encoder])
    lr_scales: dict[str, float] = field(default_factory=dict)  # per-group lr multipliers of config.lr
    model: dict[str, Any] = field(default_factory=dict)

    #: a fine-tuning run plans from its first step (no random seed phase)
    is_finetune = False
    #: what a run folder is a run of: the same output_dir refuses a command that differs in these
    identity_fields = ("task", "model_size")

    def validate(self) -> None:
        from ..envs.tasks import check_task_name, task_spec

        check_types(self)
        from ..envs.user import import_env_module

        import_env_module(self.env_module)
        check_task_name(self.task)
        for name in ("steps", "num_envs", "batch_size", "buffer_size", "eval_episodes", "keep_checkpoints",
                     "video_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_freq", "checkpoint_freq", "seed_steps", "seed_updates"):  # the seed ones may be null
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.utd < 0:
            raise ValueError(f"utd must be >= 0, got {self.utd}")
        check_mixed_precision(self)
        if not self.output_dir:
            raise ValueError("output_dir is empty: give a folder, e.g. output_dir=runs/my-run")
        horizon = int(self.model.get("horizon", MBDPOConfig().horizon))
        if self.episode_length is not None and self.episode_length <= 0:
            raise ValueError(f"episode_length must be positive, got {self.episode_length}")
        ep_len = self.episode_length or task_spec(self.task).episode_length
        if horizon >= ep_len:
            raise ValueError(f"horizon={horizon} is not shorter than {self.task}'s episodes ({ep_len} steps)")
        bad_model = set(self.model) - MODEL_FIELDS
        if bad_model:
            raise ValueError(f"unknown model fields {sorted(bad_model)}")
        if not self.is_finetune:  # the model this run would build must be valid before anything runs
            build_model_config(self.model_size, self.task, self.model)
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("push_to_hub=true needs hub_repo_id=org/name")
        from ..learner import PARAM_GROUPS

        unknown = (set(self.freeze) | set(self.lr_scales)) - set(PARAM_GROUPS)
        if unknown:
            raise ValueError(f"freeze / lr_scales: unknown parameter groups {sorted(unknown)}; known: "
                             f"{list(PARAM_GROUPS)}")


@dataclass
class FinetuneConfig(RunConfig):
    """A `RunConfig` that starts from a pretrained checkpoint (recipes/finetune.py)."""

    # auto: offline-to-online when offline_dataset is given or the checkpoint names pretraining data that can be read
    # (its tasks are rehearsed beside the new one: updating on the new task's data alone collapsed, benchmarks/README
    # "Fine-tuning collapse"), else online | online | offline-to-online
    mode: str = "auto"
    checkpoint: str | None = None  # folder | Hub id | official .pt/.pt.xz | None: the embedded default
    revision: str | None = None
    task_init: str = "auto"  # auto | fit | own | source | nearest | mean (mbdpo_hub.finetune.TASK_INITS)
    source_task: str | None = None  # the checkpoint task whose embedding row starts the task (task_init=source)
    offline_dataset: str | None = None  # offline-to-online: folder or Hub dataset id (default: the pretraining set)
    offline_ratio: float = 0.5
    eval_old_tasks: list[str] = field(default_factory=list)  # checkpoint tasks evaluated beside the new one
    fit_steps: int = 200  # task_init=fit: Adam steps on the task's embedding row alone
    fit_lr: float = 3e-3
    fit_batches: int = 8  # batches of the first episode(s) the row is chosen and fitted on
    # who acts in the seed phase: uniform random actions as from scratch (wider data: every state the random walk
    # reaches; on cartpole-balance-sparse 7 of 7 runs learned from it), or the adapted checkpoint as it is (its
    # zero-shot behaviour: a few episodes of one narrow behaviour, from which the burst learned little)
    seed_actions: str = "random"
    # trust region: after every update each trained weight is pulled towards the adapted checkpoint's,
    # w <- w - lr * l2_to_pretrained * (w - w_0) (MBDPOLearner); weights stay within about 1 / l2_to_pretrained
    l2_to_pretrained: float = 0.0
    # trust region in function space: the reward and Q distributions along random actions from the batch's states
    # pulled towards the adapted checkpoint's by anchor_to_pretrained * KL (MBDPOLearner); 0 = off
    anchor_to_pretrained: float = 0.0
    # on for fine-tuning: a run never hands back a model that evaluated worse than the checkpoint it started from
    load_best_model_at_end: bool = True

    is_finetune = True
    identity_fields = ("task", "mode", "checkpoint", "revision", "task_init", "source_task")

    def validate(self) -> None:
        super().validate()
        from ..finetune import TASK_INITS

        if self.mode not in ("auto", "online", "offline-to-online"):
            raise ValueError(f"mode must be auto, online or offline-to-online, got {self.mode!r} "
                             "(use recipes/train.py to train from scratch)")
        if self.task_init not in TASK_INITS:
            raise ValueError(f"task_init must be one of {TASK_INITS}, got {self.task_init!r}")
        if self.seed_actions not in ("checkpoint", "random"):
            raise ValueError(f"seed_actions must be checkpoint or random, got {self.seed_actions!r}")
        if not 0.0 <= self.offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must be in [0, 1], got {self.offline_ratio}")
        if self.l2_to_pretrained < 0:
            raise ValueError(f"l2_to_pretrained must be >= 0 (0 = off), got {self.l2_to_pretrained}")
        if not self.anchor_to_pretrained >= 0:
            raise ValueError(f"anchor_to_pretrained must be >= 0 (0 = off), got {self.anchor_to_pretrained}")
        if self.fit_steps < 0 or self.fit_batches < 1 or self.fit_lr <= 0:
            raise ValueError(f"need fit_steps >= 0, fit_batches >= 1 and fit_lr > 0, got {self.fit_steps}, "
                             f"{self.fit_batches}, {self.fit_lr}")


@dataclass
class PretrainConfig:
    """Everything about an offline pretraining run that is not the model (model fields go to `model`)."""

    dataset: str | None = None  # local dataset folder or Hub dataset repo id
    dataset_revision: str | None = None
    tasks: list[str] | None = None  # subset of the dataset's tasks (default: every task with episodes)
    model_size: int = 1
    model_config: str | None = None  # a config.json (or a folder holding one) to use instead of the preset
    steps: int = 100_000  # gradient updates
    batch_size: int = 256  # global batch, split over processes
    seed: int = 1
    eval_freq: int = 10_000  # updates between evaluations (0: only at the end)
    eval_episodes: int = 2  # per task (0: no evaluation)
    eval_tasks: list[str] | None = None  # default: all the model's tasks
    eval_planner: str | None = None  # default: the model's planner
    episode_length: int | None = None  # evaluation episode length override (smoke tests)
    checkpoint_freq: int = 5_000
    keep_checkpoints: int = 2
    log_freq: int = 100
    output_dir: str = "runs/pretrain"
    mixed_precision: str = "no"  # "no" | "bf16"
    compile: bool = False  # torch.compile the update's forward passes and the planners' imagined returns
    replay_on_device: bool = True  # on CUDA, keep the replay buffer on the GPU when it fits in a quarter of it
    log_with: str | None = None  # an accelerate tracker (tensorboard, wandb, ...), or none
    resume: bool = True
    overwrite: bool = False  # a used output_dir holding another run (or resume=false): move it aside, start fresh
    progress: bool = True
    push_to_hub: bool = False
    hub_repo_id: str | None = None
    hub_tag: str | None = "final"
    held_out_tasks: list[str] = field(default_factory=list)  # recorded in the model config and the card
    notes: str | None = None
    write_state_hash: bool = False  # every process writes state_hash_rank{i}.txt at the end (consistency tests)
    model: dict[str, Any] = field(default_factory=dict)

    identity_fields = ("dataset", "dataset_revision", "tasks", "model_size", "model_config")

    def validate(self) -> None:
        if self.notes is not None and not isinstance(self.notes, str):
            raise ValueError(f"notes must be text (a key=value override is parsed as YAML: avoid ': '), got "
                             f"{type(self.notes).__name__}")
        check_types(self)
        if not self.dataset:
            raise ValueError("dataset= is required: a local dataset folder or a Hub dataset repo id (org/name)")
        for name in ("steps", "batch_size", "keep_checkpoints", "log_freq"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_freq", "checkpoint_freq", "eval_episodes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_mixed_precision(self)
        if not self.output_dir:
            raise ValueError("output_dir is empty: give a folder, e.g. output_dir=runs/pretrain")
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("push_to_hub=true needs hub_repo_id=org/name")
        if self.episode_length is not None and self.episode_length <= 0:
            raise ValueError(f"episode_length must be positive, got {self.episode_length}")
        bad_model = set(self.model) - MODEL_FIELDS
        if bad_model:
            raise ValueError(f"unknown model fields {sorted(bad_model)}")


def build_model_config(model_size: int, task: str, model: dict) -> MBDPOConfig:
    """The preset config with `model` overrides, its validation errors as one-line ValueErrors."""
    try:
        return MBDPOConfig.from_preset(model_size, task, **model)
    except (ValueError, TypeError) as e:
        raise ValueError(f"model config: {e}") from e
    except Exception as e:  # noqa: BLE001 - huggingface_hub's strict-dataclass validation errors
        if type(e).__name__.startswith("StrictDataclass"):
            cause = e.__cause__ or e
            raise ValueError(f"model config: {cause}") from e
        raise


def check_mixed_precision(cfg) -> None:
    if cfg.mixed_precision is False:  # YAML reads a bare `no` as false
        cfg.mixed_precision = "no"
    if cfg.mixed_precision not in ("no", "bf16"):
        raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {cfg.mixed_precision!r}")


# ---------------------------------------------------------------------------------------------------------------------
# type checks (values come from YAML and the command line)
# ---------------------------------------------------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp` (a resolved annotation), or a ValueError naming `key` and the expected type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None and not (origin in (typing.Union, types.UnionType) and type(None) in args) and tp is not Any:
        raise ValueError(f"{key} is empty: give it a value")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{key}: no value allowed")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}={value!r} is not a boolean: use {key}=true or {key}=false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # YAML 1.1 reads 1e5 (no dot) as a string
            try:
                number = float(value)
                if number.is_integer() and abs(number) < 2**53:
                    return int(number)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise ValueError(f"{key}={value!r} is not an integer: give a whole number, e.g. {key}=1000")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{key}={value!r} is not a number: give one, e.g. {key}=0.5")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a numeric run name
        raise ValueError(f"{key}={value!r} is not text")
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # freeze=encoder -> [encoder]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}={value!r} is not a list: use {key}=[a,b]")
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}={value!r} is not a mapping: use {key}={{name: value}}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, f"{key} key"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    return value


def _model_field_types() -> dict[str, Any]:
    """The annotations of MBDPOConfig's own fields (not the inherited PreTrainedConfig ones), resolved."""
    import sys

    ns = vars(sys.modules[MBDPOConfig.__module__])
    return {k: (eval(v, ns) if isinstance(v, str) else v) for k, v in MBDPOConfig.__annotations__.items()}


def check_types(cfg) -> None:
    """Check (and normalise) every field of dataclass `cfg` against its annotation, in place; the `model` dict's
    MBDPOConfig fields too (so that `lr=3e-5` from the command line is a number)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        setattr(cfg, f.name, _coerce(getattr(cfg, f.name), hints[f.name], f.name))
    model_types = _model_field_types()
    for k, v in list(cfg.model.items()):
        if k in model_types:
            cfg.model[k] = _coerce(v, model_types[k], k)


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`key=value` strings -> dict, values parsed as YAML (numbers, bools, lists: `freeze=[encoder,dynamics]`)."""
    out = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        try:
            out[key] = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from e
    return out


def read_config_layers(path: str | os.PathLike | None, overrides: list[str] | dict | None
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """YAML file + `key=value` overrides -> (merged top-level keys, merged `model:` section)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a YAML mapping")
    over = dict(overrides) if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    model: dict[str, Any] = {}
    for layer in (data.pop("model", None), over.pop("model", None)):
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise ValueError(f"model must be a mapping of MBDPOConfig fields (model: {{planner: mppi}}), got {layer!r}")
        model.update(layer)
    return {**data, **over}, model


def load_dataclass_config(cls, path: str | os.PathLike | None, overrides: list[str] | dict | None, kind: str,
                          routes: dict[str, set[str]] | None = None, refused: dict[str, str] | None = None):
    """A config dataclass `cls` (with a `model` dict field and `validate()`) from a YAML file plus overrides.

    Keys that are `cls` fields go to it; MBDPOConfig fields go to `model`; `routes` sends other keys to other dict
    fields of `cls` ({field: keys}, e.g. collect's per-task run fields); `refused` maps keys to the reason they are
    not allowed here; anything else is an unknown key."""
    routes = {**(routes or {}), "model": MODEL_FIELDS}  # earlier routes win (model_size is a run field too)
    fields = {f.name for f in dataclasses.fields(cls)} - set(routes)
    merged, model = read_config_layers(path, overrides)
    nested: dict[str, dict[str, Any]] = {name: dict(merged.pop(name, None) or {}) for name in routes
                                        if name != "model"}
    nested["model"] = model
    kwargs = {}
    for key, value in merged.items():
        if key in fields:
            kwargs[key] = value
        elif key in (refused or {}):
            raise ValueError(f"{key!r} {refused[key]}")
        elif (target := next((name for name, keys in routes.items() if key in keys), None)) is not None:
            nested[target][key] = value
        else:
            raise ValueError(f"unknown config key {key!r}: not a {kind} field ({sorted(fields)}) nor an "
                             f"MBDPOConfig field")
    cfg = cls(**kwargs, **nested)
    cfg.validate()
    return cfg


def load_run_config(path=None, overrides=None) -> RunConfig:
    """A `RunConfig` (online training from scratch) from a YAML file plus `key=value` overrides."""
    return load_dataclass_config(RunConfig, path, overrides, "run")


def load_finetune_config(path=None, overrides=None) -> FinetuneConfig:
    """A `FinetuneConfig` from a YAML file plus `key=value` overrides."""
    return load_dataclass_config(FinetuneConfig, path, overrides, "fine-tuning")


def load_pretrain_config(path=None, overrides=None) -> PretrainConfig:
    """A `PretrainConfig` from a YAML file plus `key=value` overrides."""
    return load_dataclass_config(PretrainConfig, path, overrides, "pretrain")


def dump_config(cfg) -> str:
    """A config dataclass as YAML (what run folders keep as train_config.yaml / pretrain_config.yaml)."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}

__all__ = ["RunConfig", "FinetuneConfig", "PretrainConfig", "load_run_config", "load_finetune_config",
           "load_pretrain_config", "load_dataclass_config", "read_config_layers", "parse_overrides", "dump_config",
           "check_types", "MODEL_FIELDS", "RUN_FIELDS"]
