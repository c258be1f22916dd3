"""Import official TD-MPC2 / MBDPO checkpoints (``.pt`` or ``.pt.xz``) into an `MBDPODiffusionPolicy`.

    from mbdpo_hub.convert import convert_official_checkpoint
    policy = convert_official_checkpoint("mt30-1M.pt", "converted/mt30-1M")   # writes a save_pretrained folder

or on the command line: ``mbdpo-hub convert mt30-1M.pt converted/mt30-1M [--tasks mt30|name,...]``.

What is handled
---------------
* Files are read with ``torch.load(weights_only=True, map_location="cpu")`` only (never a full unpickle), with
  transparent xz decompression. ``{"model": state_dict}`` is unwrapped; tensordict's non-tensor entries
  (``*.__batch_size``, ``*.__device``) and newer tensordict's meta-device ``*_Qs.module.*`` entries are dropped.
* Both Q-ensemble layouts: the current one (``_Qs.params.{layer}.{weight,bias,ln.weight,ln.bias}`` with a leading
  ``num_q`` dim, plus the duplicate ``_detach_Qs_params.*`` which is checked and deduplicated, and the Polyak target
  ``_target_Qs_params.*``) and the flat Oct-2023 one of the released TD-MPC2 checkpoints (``_Qs.params.N`` /
  ``_target_Qs.params.N``, N = 4 * layer + [weight, bias, ln.weight, ln.bias] index). A checkpoint without a target
  copy gets the online Q as target (reported).
* The config (architecture, task count and dims, horizon of an MBDPO score net) is inferred from tensor names and
  shapes alone (`infer_config`); the task names come from the standard sets (mt30 / mt80) or from the caller.
* Every tensor of the source is mapped (or deliberately dropped and reported), every tensor of our model is filled,
  except the MBDPO energy network F when the source is TD-MPC2 (F then starts with a zero last layer, so its logits,
  hence the planner's shaping bonus, are exactly 0, which is how MBDPO itself loads TD-MPC2 checkpoints) and the
  energy normalisation statistics (never saved by the official code: they start at 0 / 1).
* The official MBDPO checkpoint always holds a score network ``_score``, even when it was never trained (the default
  ``use_score_network=false`` trains nothing into it; upstream's ``evaluate.py`` nevertheless switches to score-only
  inference whenever the keys exist, an upstream bug). We therefore DROP it by default
  and keep it only on request (``keep_score_network=True``, CLI ``--keep-score-network``) for checkpoints whose
  score network you know was trained.
* Provenance is recorded in ``config.converted_from`` (file name, sha256, format, layout, what was initialised or
  dropped) and the full report is attached to the returned model as ``model.conversion_report``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .configuration_mbdpo import MODEL_SIZES, MBDPOConfig
from .official_format import (OfficialCheckpointError, _load, _sha256, canonicalize_official_state_dict,
                              load_official_state_dict, official_to_ours_key)
from .utils import swap_folder

logger = logging.getLogger(__name__)

__all__ = [
    "OfficialCheckpointError",
    "ConversionReport",
    "load_official_state_dict",
    "canonicalize_official_state_dict",
    "infer_config",
    "convert_official_checkpoint",
    "official_to_ours_key",
]

PLACEHOLDER_TASK = "unknown-task"


@dataclass
class ConversionReport:
    """What `convert_official_checkpoint` did. `mapped` is ours -> official key; `initialised` lists our tensors
    not taken from the file (with why), `derived` those computed from the config, `dropped` the official keys not
    kept, `notes` anything else worth knowing."""

    source: str
    format: str
    layout: str
    mapped: dict[str, str] = field(default_factory=dict)
    initialised: dict[str, str] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"converted {self.source} ({self.format}, {self.layout} layout): {len(self.mapped)} tensors mapped"]
        for title, items in (("initialised", self.initialised), ("derived from the config", self.derived),
                             ("dropped", self.dropped)):
            if items:
                lines.append(f"  {title}:")
                lines.extend(f"    {k}: {why}" for k, why in _group(items).items())
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _group(items: dict[str, str]) -> dict[str, str]:
    """Collapse keys with the same module prefix and reason into 'prefix.*' for readable reports."""
    out: dict[str, str] = {}
    for key, why in items.items():
        head = key.rsplit(".", 2)[0] + ".*" if key.count(".") >= 2 else key
        if key.startswith(("energy.", "score_net.", "_score.", "_detach_Qs_params.")):
            head = key.split(".", 1)[0] + ".*"
        out.setdefault(head, why)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------------------------------


def _layers(sd: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    idx = set()
    for k in sd:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                idx.add(int(head))
    return sorted(idx)


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise OfficialCheckpointError(f"The checkpoint has no {key!r}: it is incomplete or not a TD-MPC2 / MBDPO "
                                      "world model (RGB encoders are not supported).")
    return sd[key]


def _task_fields(tasks: str | list[str] | tuple[str, ...]) -> dict[str, Any]:
    from .configuration_mbdpo import task_fields_for

    if isinstance(tasks, tuple):
        tasks = list(tasks)
    return task_fields_for(tasks)


def _infer_tasks(sd: Mapping[str, torch.Tensor], tasks, num_tasks: int, obs_dim: int, action_dim: int
                 ) -> dict[str, Any]:
    masks = sd.get("_action_masks")
    mask_dims = None
    if masks is not None:
        if masks.shape != (num_tasks, action_dim):
            raise OfficialCheckpointError(f"_action_masks has shape {tuple(masks.shape)}, expected "
                                          f"({num_tasks}, {action_dim}) from the task embedding and policy head.")
        mask_dims = [int(r) for r in masks.float().sum(-1).round().tolist()]
    if tasks is None:
        if num_tasks == 30 and obs_dim == 24 and action_dim == 6:
            tasks = "mt30"
        elif num_tasks == 80 and obs_dim == 39 and action_dim == 6:
            tasks = "mt80"
    if tasks is None:
        names = [PLACEHOLDER_TASK] if num_tasks == 1 else [f"task-{i:02d}" for i in range(num_tasks)]
        warnings.warn(
            f"The checkpoint does not say which task(s) it was trained on ({num_tasks} task(s), obs {obs_dim}, "
            f"action {action_dim}); using placeholder name(s) {names[:3]}{'...' if num_tasks > 3 else ''}. Pass "
            "tasks=[...] (CLI: --tasks) to name them.", UserWarning, stacklevel=3)
        return dict(tasks=names, obs_dims=[obs_dim] * num_tasks,
                    action_dims=mask_dims if mask_dims is not None else [action_dim] * num_tasks,
                    episode_lengths=[500] * num_tasks, obs_dim=obs_dim, action_dim=action_dim)
    if isinstance(tasks, str) and tasks not in ("mt30", "mt80"):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    names = tasks if isinstance(tasks, str) else list(tasks)
    count = len(names) if not isinstance(names, str) else None
    from .envs.tasks import TASK_SPECS, list_tasks

    if count is None:
        count = len(list_tasks(names))
    if count != num_tasks:
        raise OfficialCheckpointError(
            f"tasks={tasks!r} names {count} task(s) but the checkpoint has {num_tasks} "
            f"({'task embedding rows' if num_tasks > 1 else 'single-task: no task embedding'}).")
    if not isinstance(names, str) and any(n not in TASK_SPECS for n in names):
        unknown = [n for n in names if n not in TASK_SPECS]
        warnings.warn(f"Unknown task name(s) {unknown}: using the checkpoint's dims for them.", UserWarning,
                      stacklevel=3)
        fields = dict(tasks=list(names), obs_dims=[], action_dims=[], episode_lengths=[])
        for i, n in enumerate(names):
            spec = TASK_SPECS.get(n)
            fields["obs_dims"].append(spec.obs_dim if spec else obs_dim)
            fields["action_dims"].append(spec.action_dim if spec else
                                         (mask_dims[i] if mask_dims is not None else action_dim))
            fields["episode_lengths"].append(spec.episode_length if spec else 500)
    else:
        fields = _task_fields(names)
    fields = dict(fields)
    for i, name in enumerate(fields["tasks"]):
        o, a = fields["obs_dims"][i], fields["action_dims"][i]
        if num_tasks == 1 and (o, a) != (obs_dim, action_dim):
            raise OfficialCheckpointError(
                f"Task {name!r} has obs dim {o} / action dim {a}, but this single-task checkpoint was built for obs "
                f"{obs_dim} / action {action_dim}: it was trained on another task.")
        if o > obs_dim or a > action_dim:
            raise OfficialCheckpointError(
                f"Task {name!r} (obs {o}, action {a}) does not fit the checkpoint's padded dims (obs {obs_dim}, "
                f"action {action_dim}).")
        if mask_dims is not None and mask_dims[i] != a:
            raise OfficialCheckpointError(
                f"Task {i} ({name!r}) has action dim {a}, but the checkpoint's _action_masks row {i} has "
                f"{mask_dims[i]} active entries: the task list or its order does not match the checkpoint.")
    fields["obs_dim"], fields["action_dim"] = obs_dim, action_dim
    return fields


def _match_model_size(arch: dict[str, int], task_set: str | None) -> int | None:
    keys = ("enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "num_q")
    for size, preset in MODEL_SIZES.items():
        want = dict(preset)
        if size == 19 and task_set == "mt30":
            want["latent_dim"] = 512
        if all(arch[k] == want[k] for k in keys):
            return size
    return None


def infer_config(state_dict: Mapping[str, torch.Tensor], tasks: str | list[str] | None = None, *,
                 keep_score_network: bool = False, **overrides: Any) -> MBDPOConfig:
    """An `MBDPOConfig` that fits an official state dict, from tensor names and shapes only.

    Inferred: num_q, mlp_dim, latent_dim, enc_dim, num_enc_layers, task_dim / number of tasks (``_task_emb``),
    action_dim (``_pi`` output / 2), obs_dim (encoder input - task_dim), num_bins, episodic (``_termination``),
    log_std range (``log_std_min`` / ``log_std_dif``), and for MBDPO files with ``_score`` the horizon (score output
    / action_dim) and time-embedding size. ``model_size`` is set when the dims match a TD-MPC2 preset.

    Tasks: 30 tasks with obs 24 / action 6 are mt30, 80 with obs 39 / action 6 are mt80; otherwise pass `tasks` (a
    set name, one name, a comma-separated string or a list, in task-id order). Without it a placeholder name is used
    (with a warning). Per-task action dims are checked against the ``_action_masks`` row sums when present.

    `keep_score_network` keeps an MBDPO ``_score`` network (``use_score_network=True``); off by default because
    upstream MBDPO saves ``_score`` even when it was never trained. `overrides` are
    applied last (e.g. planner settings).
    """
    sd, _ = canonicalize_official_state_dict(state_dict)
    enc_idx = _layers(sd, "_encoder.state.")
    if not enc_idx:
        _need(sd, "_encoder.state.0.weight")
    enc_first, enc_last = _need(sd, "_encoder.state.0.weight"), _need(sd, f"_encoder.state.{enc_idx[-1]}.weight")
    dyn_idx = _layers(sd, "_dynamics.")
    pi_idx, rew_idx = _layers(sd, "_pi."), _layers(sd, "_reward.")
    if not dyn_idx or not pi_idx or not rew_idx:
        missing = [p for p, i in (("_dynamics", dyn_idx), ("_pi", pi_idx), ("_reward", rew_idx)) if not i]
        raise OfficialCheckpointError(f"The checkpoint has no {missing} modules: not a TD-MPC2 / MBDPO world model.")
    emb = sd.get("_task_emb.weight")
    num_tasks, task_dim = (1, 0) if emb is None else (int(emb.shape[0]), int(emb.shape[1]))
    latent_dim = int(enc_last.shape[0])
    mlp_dim = int(_need(sd, "_dynamics.0.weight").shape[0])
    action_dim = int(_need(sd, f"_pi.{pi_idx[-1]}.weight").shape[0]) // 2
    obs_dim = int(enc_first.shape[1]) - task_dim
    q0 = _need(sd, "_Qs.params.0.weight")
    n_enc = len(enc_idx)
    arch = dict(
        enc_dim=int(enc_first.shape[0]) if n_enc > 1 else 256,
        mlp_dim=mlp_dim, latent_dim=latent_dim, num_enc_layers=max(n_enc, 2), num_q=int(q0.shape[0]),
        num_bins=int(_need(sd, f"_reward.{rew_idx[-1]}.weight").shape[0]), task_dim=task_dim,
    )
    if obs_dim <= 0 or action_dim <= 0:
        raise OfficialCheckpointError(f"Inferred obs_dim={obs_dim}, action_dim={action_dim}: inconsistent shapes.")
    dyn_in = int(sd["_dynamics.0.weight"].shape[1])
    if dyn_in > latent_dim + action_dim and "_task_emb.weight" not in sd:
        raise OfficialCheckpointError(
            f"the file has no task embedding (_task_emb.weight), but _dynamics.0.weight takes {dyn_in} inputs "
            f"(latent {latent_dim} + action {action_dim} + {dyn_in - latent_dim - action_dim} task columns): a "
            "multi-task checkpoint with its embedding missing")
    if dyn_in != latent_dim + action_dim + task_dim:
        raise OfficialCheckpointError(
            f"_dynamics.0.weight takes {dyn_in} inputs, expected latent {latent_dim} + task {task_dim} + action "
            f"{action_dim}: the checkpoint's shapes are inconsistent.")
    fields = _infer_tasks(sd, tasks, num_tasks, obs_dim, action_dim)
    fields.update(arch)
    fields["episodic"] = "_termination.0.weight" in sd
    if "log_std_min" in sd and "log_std_dif" in sd:
        lo = float(sd["log_std_min"].float().item())
        fields["log_std_min"], fields["log_std_max"] = lo, lo + float(sd["log_std_dif"].float().item())
    score_idx = _layers(sd, "_score.")
    if score_idx:
        out = int(_need(sd, f"_score.{score_idx[-1]}.weight").shape[0])
        if out % action_dim:
            raise OfficialCheckpointError(f"_score outputs {out} values, not a multiple of action_dim {action_dim}.")
        horizon = out // action_dim
        fields["horizon"] = horizon
        fields["time_embed_dim"] = int(sd["_score.0.weight"].shape[1]) - latent_dim - task_dim - horizon * action_dim
        fields["use_score_network"] = bool(keep_score_network)
    fields["model_size"] = _match_model_size(arch, fields.get("task_set"))
    fields.update(overrides)
    try:
        return MBDPOConfig(**fields)
    except Exception as e:  # noqa: BLE001 - huggingface_hub's strict-dataclass errors wrap the cause
        cause = e.__cause__ or e
        raise OfficialCheckpointError(f"the checkpoint's tensors describe an invalid model: {cause}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------------


def _check_dst(dst: Path, overwrite: bool, src: Path) -> None:
    if dst.resolve() == src.resolve() or src.resolve().is_relative_to(dst.resolve()):
        raise ValueError(f"Destination {dst} is (or contains) the source file {src}: choose another folder.")
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        if not dst.is_dir() or any(dst.iterdir()):
            raise FileExistsError(f"Destination {dst} already exists and is not empty; pass overwrite=True "
                                  "(CLI: --overwrite) to replace it.")


def _atomic_save(model, dst: Path, overwrite: bool, src: Path) -> None:
    """save_pretrained into a temp folder next to dst, then swap it into place; never a half-written dst."""
    _check_dst(dst, overwrite, src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        model.save_pretrained(tmp)
        swap_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_official_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None,
                                config: MBDPOConfig | None = None, tasks: str | list[str] | None = None,
                                keep_score_network: bool = False, overwrite: bool = False):
    """Convert an official TD-MPC2 / MBDPO ``.pt`` (or ``.pt.xz``) checkpoint into an `MBDPODiffusionPolicy`.

    Args:
        src: the official checkpoint. It is only read.
        dst: if given, the converted model is written there with ``save_pretrained`` (atomically: into a temp
            folder next to it, then renamed). An existing non-empty dst is refused unless `overwrite`.
        config: the target config; inferred from the checkpoint when None (see `infer_config`). A config that
            does not fit fails with a ValueError naming the key and both shapes.
        tasks: task names for `infer_config` (a set name, one name, comma-separated, or a list); only without
            `config`.
        keep_score_network: keep MBDPO's ``_score`` network (dropped by default, see the module docstring).

    Returns the model (eval mode) with ``model.conversion_report`` (a `ConversionReport`); provenance is stored in
    ``model.config.converted_from``.
    """
    from .modeling_mbdpo import MBDPODiffusionPolicy, action_masks_from_config

    src = Path(src)
    if dst is not None:
        dst = Path(dst)
        _check_dst(dst, overwrite, src)
    if config is not None and tasks is not None:
        raise ValueError("Pass either config= or tasks=, not both (the config already names its tasks).")
    raw, decompressed_sha = _load(src)
    sd, info = canonicalize_official_state_dict(raw)
    fmt = "mbdpo" if any(k.startswith(("_F.", "_score.")) for k in sd) else "tdmpc2"
    if config is None:
        config = infer_config(sd, tasks=tasks, keep_score_network=keep_score_network)
    else:
        config = copy.deepcopy(config)
    report = ConversionReport(source=src.name, format=fmt, layout=info["layout"])

    # log-std range: scalars in the file, config fields here
    if "log_std_min" in sd and "log_std_dif" in sd:
        lo = float(sd["log_std_min"].float().item())
        hi = lo + float(sd["log_std_dif"].float().item())
        if (lo, hi) != (float(config.log_std_min), float(config.log_std_max)):
            raise OfficialCheckpointError(
                f"log_std_min/log_std_dif in {src.name} give the range [{lo}, {hi}], the config has "
                f"[{config.log_std_min}, {config.log_std_max}].")
        for k in ("log_std_min", "log_std_dif"):
            report.dropped[k] = "stored as config.log_std_min / log_std_max"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # deterministic init of the parts not in the file (F of a TD-MPC2 checkpoint)
        model = MBDPODiffusionPolicy(config)
    model.eval()
    ours = model.state_dict()

    new: dict[str, torch.Tensor] = {}
    unknown, mismatched = [], []
    for key, value in sd.items():
        if key in ("log_std_min", "log_std_dif"):
            continue
        target = official_to_ours_key(key)
        if target is None:
            unknown.append(key)
            continue
        if target.startswith("score_net.") and model.score_net is None:
            report.dropped[key] = ("MBDPO score network not kept (upstream saves it even untrained); "
                                   "use keep_score_network=True to keep it")
            continue
        if target not in ours:
            raise OfficialCheckpointError(
                f"{src.name}: key {key!r} (shape {tuple(value.shape)}) has no place in a model with this config "
                f"(expected {target!r}); e.g. a termination head needs episodic=True.")
        if tuple(ours[target].shape) != tuple(value.shape):
            mismatched.append(f"{key!r} -> {target!r}: checkpoint {tuple(value.shape)} vs model "
                              f"{tuple(ours[target].shape)}")
            continue
        if not value.is_floating_point():
            raise OfficialCheckpointError(f"{src.name}: {key!r} has dtype {value.dtype}, expected a float tensor.")
        new[target] = value.detach().to(dtype=ours[target].dtype).clone()
        report.mapped[target] = key
    if unknown:
        raise OfficialCheckpointError(
            f"{src.name} has keys this converter does not know: {sorted(unknown)[:10]}"
            f"{' ...' if len(unknown) > 10 else ''} (RGB encoders and unknown modules are not supported).")
    if mismatched:
        raise OfficialCheckpointError(
            f"{src.name} does not fit the given config (model_size={config.model_size}, latent_dim="
            f"{config.latent_dim}, mlp_dim={config.mlp_dim}, task_dim={config.task_dim}, num_q={config.num_q}): "
            f"shape mismatch for {len(mismatched)} key(s): " + "; ".join(mismatched[:5])
            + (" ..." if len(mismatched) > 5 else ""))

    if "world_model.action_masks" in new:
        expected = action_masks_from_config(config)
        if not torch.equal(new["world_model.action_masks"], expected):
            bad = [i for i in range(config.num_tasks) if not torch.equal(new["world_model.action_masks"][i],
                                                                          expected[i])]
            raise OfficialCheckpointError(
                f"{src.name}: _action_masks rows {bad[:5]} do not match the config's action_dims for "
                f"{[config.tasks[i] for i in bad[:5]]}: the task list or its order does not fit the checkpoint.")

    missing = [k for k in ours if k not in new]
    unfilled = []
    for k in missing:
        if k.startswith("energy.") and fmt == "tdmpc2":
            report.initialised[k] = ("TD-MPC2 has no energy network F: zero last layer, so F = 0 and the planner's "
                                     "shaping bonus is 0")
        elif k.startswith("score_net."):
            if fmt == "tdmpc2" or not any(x.startswith("_score.") for x in sd):
                report.initialised[k] = "no score network in the checkpoint: fresh (untrained) initialisation"
            else:
                unfilled.append(k)
        elif k in ("energy_mean", "energy_std"):
            report.initialised[k] = "not saved upstream: energy normalisation starts at mean 0 / std 1"
        elif k == "world_model.discounts":
            report.derived[k] = "per-task discount from episode lengths (TD-MPC2's heuristic)"
        elif k == "world_model.action_masks":
            report.derived[k] = "no _action_masks in the checkpoint: built from config.action_dims"
        else:
            unfilled.append(k)
    if unfilled:
        raise OfficialCheckpointError(
            f"{src.name} does not provide {len(unfilled)} tensor(s) the model needs: {unfilled[:10]}"
            f"{' ...' if len(unfilled) > 10 else ''}.")
    if info["target_copied"]:
        report.notes.append("no target Q in the checkpoint: the target Q ensemble is a copy of the online one")
        for k in list(report.mapped):
            if k.startswith("world_model.Qs.target_"):
                report.mapped[k] += " (copied from the online Q)"
    if info["detach"] != "absent":
        report.dropped["_detach_Qs_params.*"] = f"duplicate of _Qs.params ({info['detach']})"
    if fmt == "mbdpo":
        report.notes.append("MBDPO does not save the energy normalisation statistics: F is normalised with 0 / 1 "
                            "until they are re-estimated (e.g. by fine-tuning)")

    state = {**ours, **new}
    with torch.no_grad():
        result = model.load_state_dict(state, strict=True)
        if fmt == "tdmpc2":
            last = model.energy[-1]
            last.weight.zero_()
            last.bias.zero_()
    assert not result.missing_keys and not result.unexpected_keys

    src_sha = _sha256(src)
    provenance = {"file": src.name, "sha256": src_sha, "format": fmt, "layout": info["layout"],
                  "initialised": sorted(_group(report.initialised)), "dropped": sorted(_group(report.dropped))}
    if decompressed_sha is not None:
        provenance["decompressed_sha256"] = decompressed_sha
    model.config.converted_from = provenance
    model.conversion_report = report
    logger.info(report.summary())
    if dst is not None:
        _atomic_save(model, dst, overwrite, src)
    return model
