"""Reading official TD-MPC2 / MBDPO checkpoint files (`.pt`, `.pt.xz`) safely and bringing their state dicts to one
layout (one Q copy and an explicit target), with the official -> our key map."""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

XZ_MAGIC = b"\xfd7zXZ\x00"
_Q_FIELDS = ("weight", "bias", "ln.weight", "ln.bias")
_OLD_Q_KEY = re.compile(r"^_(target_)?Qs\.params\.(\d+)$")
_META_Q_KEY = re.compile(r"^_(detach_|target_)?Qs\.module\.")
# prefixes of every official module/buffer we know; a file with none of them is not a TD-MPC2/MBDPO checkpoint
_KNOWN_PREFIXES = ("_encoder.", "_dynamics.", "_reward.", "_termination.", "_pi.", "_Qs.", "_target_Qs",
                   "_detach_Qs", "_task_emb.", "_action_masks", "log_std_min", "log_std_dif", "_F.", "_score.")
_MODULE_MAP = {  # official prefix -> our prefix (Sequential indices are the same on both sides)
    "_encoder.state.": "world_model.encoder.",
    "_dynamics.": "world_model.dynamics.",
    "_reward.": "world_model.reward_head.",
    "_termination.": "world_model.termination_head.",
    "_pi.": "world_model.pi_head.",
    "_F.": "energy.",
    "_score.": "score_net.",
}



class OfficialCheckpointError(ValueError):
    """The file cannot be read as an official TD-MPC2 / MBDPO checkpoint, or it does not fit the model."""


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: decompression limits for .pt.xz files: float weights compress at most a few times, so a file that inflates by more
#: than MAX_XZ_RATIO (beyond a small floor) is not a checkpoint; MAX_DECOMPRESSED_BYTES is ~4x the 317M checkpoint
MAX_XZ_RATIO = 50
MIN_RATIO_CHECK_BYTES = 64 << 20
MAX_DECOMPRESSED_BYTES = 6 << 30


def _is_xz(path: Path) -> bool:
    if path.name.endswith(".xz"):
        return True
    with open(path, "rb") as f:
        return f.read(len(XZ_MAGIC)) == XZ_MAGIC


def _open(path: Path) -> tuple[Any, str | None]:
    """A source for torch.load (the path itself, or the decompressed bytes of an xz file) and, for xz files, the
    sha256 of the decompressed bytes."""
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a checkpoint file (.pt or .pt.xz).")
    if not _is_xz(path):
        return path, None
    packed = path.stat().st_size
    limit = min(MAX_DECOMPRESSED_BYTES, max(MIN_RATIO_CHECK_BYTES, MAX_XZ_RATIO * packed))
    chunks, total = [], 0
    try:
        with lzma.open(path, "rb") as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
                if total > limit:  # stream-checked: a decompression bomb never fills memory
                    raise OfficialCheckpointError(
                        f"Refusing {path}: it decompresses to more than {limit / 2**20:.0f} MiB from "
                        f"{packed / 2**10:.0f} KiB ({MAX_XZ_RATIO}x is the most a real checkpoint's float weights "
                        f"compress; the largest official checkpoint, 317M, is about 1.3 GB). Not a checkpoint.")
                chunks.append(chunk)
        data = b"".join(chunks)
    except (lzma.LZMAError, EOFError, OSError) as e:
        raise OfficialCheckpointError(
            f"Cannot decompress {path}: the xz file is corrupt or truncated ({type(e).__name__}: {e}).") from e
    return io.BytesIO(data), hashlib.sha256(data).hexdigest()


def _load(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    source, decompressed_sha = _open(path)
    try:
        obj = torch.load(source, weights_only=True, map_location="cpu")
    except Exception as e:  # zip errors, unpickling errors, forbidden globals, EOF ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OfficialCheckpointError(
            f"Cannot read {path} as a PyTorch checkpoint with weights_only=True: the file is corrupt, truncated, "
            f"not a torch.save file, or holds non-tensor objects ({type(e).__name__}: {msg}).") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict: it is not a TD-MPC2 / MBDPO checkpoint.")
    out: dict[str, torch.Tensor] = {}
    extra, wide = [], []
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            if not (isinstance(key, str) and key.rsplit(".", 1)[-1].startswith("__")):  # tensordict's __batch_size
                extra.append(str(key))
            continue
        if value.device.type == "meta" or _META_Q_KEY.match(key):
            continue
        if value.is_floating_point() and value.dtype != torch.float32:
            wide.append(f"{key} ({value.dtype})")
            value = value.float()
        out[key] = value
    if extra:
        warnings.warn(f"{path}: ignored non-tensor entries {extra[:8]}", stacklevel=3)
    if wide:
        warnings.warn(f"{path}: cast to float32 (the official code saves float32): {wide[:8]}", stacklevel=3)
    bad = [k for k, v in out.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise OfficialCheckpointError(f"{path} holds non-finite (NaN/inf) weights in {bad[:8]}: refusing to import "
                                      "it")
    if not any(k.startswith(_KNOWN_PREFIXES) for k in out) or not any(k.startswith("_encoder.") for k in out):
        shown = sorted(map(str, obj.keys()))[:8]
        raise OfficialCheckpointError(
            f"{path} is not a TD-MPC2 / MBDPO checkpoint: no recognisable keys (expected '_encoder.state.*', "
            f"'_dynamics.*', '_Qs.params.*', ...; found {shown}{' ...' if len(obj) > 8 else ''}).")
    return out, decompressed_sha


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official TD-MPC2 / MBDPO checkpoint (``.pt``, or xz-compressed) into a flat dict of CPU tensors.

    Uses ``torch.load(weights_only=True, map_location="cpu")`` only. Unwraps ``{"model": ...}``, drops non-tensor
    entries (tensordict's ``__batch_size`` / ``__device``) and meta-device entries (newer tensordict's
    ``*Qs.module.*``). Key names are kept as in the file (see `canonicalize_official_state_dict`).

    Raises FileNotFoundError for a missing file and `OfficialCheckpointError` (a ValueError) naming the file for a
    corrupt / truncated file or one that is not a TD-MPC2 / MBDPO checkpoint.
    """
    return _load(Path(path))[0]


# ---------------------------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------------------------


def canonicalize_official_state_dict(state_dict: Mapping[str, torch.Tensor]
                                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Bring an official state dict to the current layout with one Q copy and an explicit target.

    Returns ``(canonical, info)``: canonical keys are ``_Qs.params.{layer}.{field}`` and
    ``_target_Qs_params.{layer}.{field}`` (old flat ``_Qs.params.N`` renamed), no ``_detach_Qs_params`` (checked
    equal to the online Q and dropped), no metadata / meta entries. ``info`` has ``layout`` ("current" / "old"),
    ``detach`` (how the duplicate was handled) and ``target_copied`` (True when the file had no target Q, which is
    then a copy of the online Q).
    """
    out: dict[str, torch.Tensor] = {}
    detach: dict[str, torch.Tensor] = {}
    layout = "current"
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or value.device.type == "meta" or _META_Q_KEY.match(key):
            continue
        m = _OLD_Q_KEY.match(key)
        if m:
            layout = "old"
            n = int(m.group(2))
            layer, pos = divmod(n, 4)
            if layer > 2 or (layer == 2 and pos > 1):
                raise OfficialCheckpointError(f"Old-layout Q key {key!r}: index {n} is out of range (0..9).")
            head = "_target_Qs_params" if m.group(1) else "_Qs.params"
            out[f"{head}.{layer}.{_Q_FIELDS[pos]}"] = value
        elif key.startswith("_detach_Qs_params."):
            detach[key[len("_detach_Qs_params."):]] = value
        elif key.startswith("_target_Qs.params."):  # defensive: dotted target name with nested fields
            out["_target_Qs_params." + key[len("_target_Qs.params."):]] = value
        else:
            out[key] = value
    info: dict[str, Any] = {"layout": layout, "detach": "absent", "target_copied": False}
    if detach:
        info["detach"] = "deduplicated"
        for sub, value in detach.items():
            online = out.get(f"_Qs.params.{sub}")
            if online is None:
                out[f"_Qs.params.{sub}"] = value
                info["detach"] = "used as online Q"
            elif online.shape != value.shape or not torch.equal(online, value):
                warnings.warn(f"_detach_Qs_params.{sub} differs from _Qs.params.{sub}; the online copy "
                              "(_Qs.params) is used (upstream saves them sharing storage).", stacklevel=3)
                info["detach"] = "differed from online Q (online kept)"
    online_keys = [k for k in out if k.startswith("_Qs.params.")]
    if online_keys and not any(k.startswith("_target_Qs_params.") for k in out):
        for k in online_keys:
            out["_target_Qs_params." + k[len("_Qs.params."):]] = out[k].clone()
        info["target_copied"] = True
    return out, info


def official_to_ours_key(key: str) -> str | None:
    """Our state-dict key for a canonical official key (None when it has no counterpart)."""
    if key == "_task_emb.weight":
        return "world_model.task_embedding.weight"
    if key == "_action_masks":
        return "world_model.action_masks"
    for prefix, target in (("_Qs.params.", "world_model.Qs."), ("_target_Qs_params.", "world_model.Qs.target_")):
        if key.startswith(prefix):
            layer, _, name = key[len(prefix):].partition(".")
            if not layer.isdigit() or name not in _Q_FIELDS:
                return None
            return f"{target}{name.replace('.', '_')}_{layer}"
    for prefix, target in _MODULE_MAP.items():
        if key.startswith(prefix):
            return target + key[len(prefix):]
    return None
