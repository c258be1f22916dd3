"""Writing rendered episodes to mp4 / gif (for model cards and eval logs)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..utils import atomic_path


def record_episode_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: int = 30) -> str:
    """Write ``frames`` (each (H, W, 3) uint8) to ``path``; the extension picks the format.

    ``.mp4`` uses imageio-ffmpeg (H.264, needs even H and W: odd sizes are padded by
    one pixel); ``.gif`` uses imageio's pillow plugin. The file is written to a
    temporary name in the same directory and moved into place with ``os.replace``,
    so readers never see a half-written video.

    Returns the path as a string.
    """
    import imageio.v2 as imageio

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".mp4", ".gif"):
        raise ValueError(f"Unsupported video extension {ext!r}; use .mp4 or .gif.")
    if len(frames) == 0:
        raise ValueError("No frames to write.")
    arr = [np.asarray(f) for f in frames]
    for f in arr:
        if f.ndim != 3 or f.shape[2] != 3 or f.shape != arr[0].shape:
            raise ValueError(f"Frames must all be (H, W, 3); got {f.shape} (first {arr[0].shape}).")
    arr = [f if f.dtype == np.uint8 else np.clip(f, 0, 255).astype(np.uint8) for f in arr]
    if ext == ".mp4":
        h, w = arr[0].shape[:2]
        if h % 2 or w % 2:  # yuv420p needs even sizes; pad instead of letting ffmpeg rescale
            arr = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in arr]

    with atomic_path(path) as tmp:  # readers never see a half-written video
        if ext == ".mp4":
            # macro_block_size=1: we already made the size even, so no silent resize warning.
            imageio.mimsave(tmp, arr, fps=fps, codec="libx264", macro_block_size=1, format="FFMPEG")
        else:
            imageio.mimsave(tmp, arr, duration=1000.0 / fps, loop=0)
    return path
