"""Strict loading of MBDPO checkpoints (what `from_pretrained` adds to transformers'): a clear one-line error for a
path that is neither a folder nor a Hub id, a folder without a usable config.json, corrupt weight files, weights
that do not match the config, missing or unexpected tensors and non-finite values. `strict=False` and
`allow_nonfinite=True` turn the last two off for callers who know what they load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError

from .utils import is_hub_repo_id


def load_checked(load, cls_name: str, path, *args, strict: bool = True, allow_nonfinite: bool = False, **kwargs):
    """`load(path, *args, **kwargs)` (transformers' from_pretrained) with the checks above."""
    where = str(path)
    local = Path(where).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise OSError(f"Cannot load {cls_name} from {where}: it is not a model folder (no config.json in it)")
        try:
            raw = json.loads((local / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise OSError(f"Cannot load {cls_name} from {where}: its config.json is not valid JSON ({e})") from None
        if not raw.get("tasks"):
            raise OSError(f"Cannot load {cls_name} from {where}: its config.json names no tasks (a 'tasks' list is "
                          "required; without it the model would silently become a walker-walk model)")
    elif not is_hub_repo_id(where):
        raise OSError(f"Cannot load {cls_name} from {where!r}: no such local folder, and not a Hub repo id (org/name)")
    want_info = kwargs.pop("output_loading_info", False)
    try:
        model, info = load(path, *args, output_loading_info=True, **kwargs)
    except SafetensorError as e:
        raise OSError(f"Cannot load {cls_name} from {where}: its model.safetensors is corrupt or truncated ({e}). "
                      "Re-download or re-save the checkpoint.") from e
    except RuntimeError as e:
        if "size mismatch" in str(e) or "mismatch" in str(e).lower():
            raise OSError(f"Cannot load {cls_name} from {where}: its weights do not have the shapes its config.json "
                          f"describes ({str(e).splitlines()[0][:300]})") from None
        raise
    problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    # a whole optional module absent from the checkpoint (a world-model checkpoint loaded as a policy: the energy
    # starts at F = 0, as MBDPO loads TD-MPC2 checkpoints) is not a partial, broken checkpoint
    keys = list(model.state_dict())
    for prefix in getattr(model, "_optional_modules", ()):
        own = {k for k in keys if k.startswith(prefix)}
        if own and own <= set(problems["missing_keys"]):
            problems["missing_keys"] = [k for k in problems["missing_keys"] if k not in own]
    if strict and any(problems.values()):
        said = "; ".join(f"{k.replace('_', ' ')}: {v[:6]}{' ...' if len(v) > 6 else ''}"
                         for k, v in problems.items() if v)
        raise OSError(f"Cannot load {cls_name} from {where}: the checkpoint does not match the model ({said}). Pass "
                      "strict=False to load it anyway (missing tensors keep their random initialisation).")
    if not allow_nonfinite:
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise OSError(f"Cannot load {cls_name} from {where}: non-finite (NaN/inf) values in {bad[:6]}. Pass "
                          "allow_nonfinite=True to load it anyway.")
    return (model, info) if want_info else model


__all__ = ["load_checked"]
