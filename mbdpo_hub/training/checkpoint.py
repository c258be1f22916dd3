"""Checkpoint folders shared by online training and offline pretraining.

`root/step_XXXXXXXXX/` holds the model (`model/`, safetensors), the learner state (`learner.pt`, read back with
`weights_only=True`), `state.json` (counters, RNG states) and whatever the trainer adds (the replay buffer);
`root/latest` is a one-line pointer replaced atomically. We write these ourselves rather than through
`accelerator.save_state`, which re-loads custom objects with `torch.load(weights_only=False)` (arbitrary unpickling).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..utils import atomic_write_text


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be read back (damaged, truncated, or of another model); names the file."""


def latest_checkpoint(root: Path) -> Path | None:
    """The folder named by `root/latest`, if it is complete (has `state.json`)."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def write_checkpoint(root: Path, name: str, policy, learner, state: dict, keep: int,
                     extra: Callable[[Path], None] | None = None) -> Path:
    """Write `root/name` atomically: everything goes to a temp folder renamed into place; then `latest` is replaced
    atomically and all but the newest `keep` step folders are removed. A crash at any point leaves the previous
    `latest` intact."""
    root = Path(root)
    final = root / name
    for stale in root.glob(".tmp-*"):  # left by a killed or disk-full write (one process per run folder: the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp / "model")
    torch.save(learner.state_dict(), tmp / "learner.pt")
    if extra is not None:
        extra(tmp)
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path, policy, learner) -> dict:
    """Load a `write_checkpoint` folder into policy and learner (strictly: every tensor must match); returns the
    saved state dict."""
    from safetensors.torch import load_file

    def fail(file: str, e: Exception):
        # one line, the file named; torch's own message suggests weights_only=False, which we never do
        return CheckpointError(f"checkpoint file {path / file} cannot be read ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else ''})")

    try:
        weights = load_file(str(path / "model" / "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - safetensors / OS errors
        raise fail("model/model.safetensors", e) from None
    try:
        missing, unexpected = policy.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        raise fail("model/model.safetensors", e) from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    try:
        learner.load_state_dict(torch.load(path / "learner.pt", weights_only=True, map_location="cpu"))
    except Exception as e:  # noqa: BLE001 - truncated / foreign pickle, refused by weights_only, shape errors
        raise fail("learner.pt", e) from None
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise fail("state.json", e) from None


__all__ = ["CheckpointError", "latest_checkpoint", "write_checkpoint", "read_checkpoint"]
