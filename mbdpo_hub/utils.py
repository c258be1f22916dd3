"""Small helpers shared across the package: atomic file writes, seeding and RNG state, Hub repo ids, padding."""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

#: a Hub repo id `org/name` (what huggingface_hub accepts; local paths never start with a letter followed by `/x`
#: alone, and `is_hub_repo_id` checks that no local path of that name exists)
HUB_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def local_repo_id(name: str, fallback: str = "model") -> str:
    """`local/<name>` with `name` made a valid Hub repo name (a card needs one; a folder may be called `a+b`)."""
    slug = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "-" for c in str(name))
    slug = re.sub(r"[-.]{2,}", "-", slug).strip("-.") or fallback  # the Hub forbids "--" and ".."
    return f"local/{slug[:96].rstrip('-.')}"


def is_hub_repo_id(name: str | os.PathLike, *, local_first: bool = True) -> bool:
    """True when `name` has the form `org/name` (and, with `local_first`, no local file or folder has that name)."""
    name = str(name)
    if local_first and os.path.exists(name):
        return False
    return bool(HUB_REPO_ID_RE.match(name)) and not name.startswith((".", "/", "~"))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` atomically (os.replace),
    otherwise it is removed and `path` is left as it was. The temporary name keeps the suffix (writers that pick a
    format from it, like imageio, still work)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before it takes the old file's place
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def swap_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `folder`, replacing an existing one. The old folder is first renamed to a
    backup (`.<name>.old-<id>`) and removed only after the swap; a crash in between leaves the backup, which
    `recover_folder` restores."""
    tmp, folder = Path(tmp), Path(folder)
    if folder.exists() or folder.is_symlink():
        backup = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(folder, backup)
        try:
            os.replace(tmp, folder)
        except BaseException:
            os.replace(backup, folder)
            raise
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink(missing_ok=True)
    else:
        os.replace(tmp, folder)


def recover_folder(folder: str | os.PathLike) -> None:
    """Restore `folder` from the backup a crash inside `swap_folder` left behind (no-op when it exists)."""
    folder = Path(folder)
    if folder.exists():
        return
    backups = sorted(folder.parent.glob(f".{folder.name}.old-*"))
    if backups:
        os.replace(backups[-1], folder)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (readers see the old or the new file, never a partial one)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def recommended_threads(num_processes: int | None = None) -> int:
    """Torch threads per process: the cores this process may use, split over the processes sharing them, with
    one core left for the simulator and everything else (at least one). torch slows down 10-40x when its threads
    outnumber the free cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    procs = num_processes or int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    return max(1, cores // max(1, procs) - 1)


def configure_threads(num_processes: int | None = None) -> int:
    """Set torch's thread count: OMP_NUM_THREADS where it is set, else `recommended_threads`. Returns the count.

    `accelerate launch` always sets OMP_NUM_THREADS (to physical cores / processes unless given
    `--num_cpu_threads_per_process`), so launch commands pass the recommended count explicitly (`make demo` does)."""
    if os.environ.get("OMP_NUM_THREADS"):
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        n = recommended_threads(num_processes)
    torch.set_num_threads(n)
    keep_freed_memory()
    return n


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Let glibc's malloc keep freed blocks (up to `limit` bytes each) instead of returning them to the system.

    An update allocates and frees the same activation-sized tensors every step; by default glibc serves blocks over
    its mmap threshold with fresh pages each time, which costs 5-15k page faults per update here (measured: 5.6k at
    1M, 15.6k at 5M, batch 256) and about 10% of a 5M update's CPU time. Returns False where it does not apply
    (not glibc). The process's resident memory then stays at its peak, as PyTorch's GPU caching allocator does."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # mmap's threshold is capped by glibc (32 MiB on 64-bit); larger blocks keep being mapped
    ok = mallopt(M_MMAP_THRESHOLD, min(limit, 32 << 20)) == 1
    return bool(mallopt(M_TRIM_THRESHOLD, limit) == 1 and ok)


def report_errors(main, argv=None) -> int:
    """Run a command's `main(argv)`; a bad input becomes one line on stderr (exit code 2) instead of a traceback
    (MBDPO_DEBUG=1 shows the traceback)."""
    import sys

    try:
        return main(argv) or 0
    except Exception as e:  # noqa: BLE001 - bad input of any library's kind; programming errors keep the traceback
        known = (ValueError, OSError, TypeError, RuntimeError, KeyError)
        if os.environ.get("MBDPO_DEBUG") or not (isinstance(e, known) or type(e).__name__.startswith("StrictDataclass")):
            raise
        if type(e).__name__.startswith("StrictDataclass") and e.__cause__ is not None:
            e = e.__cause__
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg} ({type(e).__name__}; MBDPO_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python / NumPy / torch RNG states as JSON-serialisable lists (checkpoints)."""
    np_state = np.random.get_state()
    return dict(python=random.getstate()[1], python_pos=random.getstate()[2],
                numpy=[np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
                torch=torch.get_rng_state().tolist())


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def pad_to(x: np.ndarray, dim: int) -> np.ndarray:
    """Zero-pad the last axis to `dim` (multi-task models read padded observations / emit padded actions)."""
    if x.shape[-1] == dim:
        return x
    if x.shape[-1] > dim:
        raise ValueError(f"cannot pad an array of dim {x.shape[-1]} to the smaller {dim}")
    return np.concatenate([x, np.zeros((*x.shape[:-1], dim - x.shape[-1]), dtype=x.dtype)], axis=-1)


__all__ = ["HUB_REPO_ID_RE", "is_hub_repo_id", "atomic_path", "atomic_write_text", "swap_folder", "recover_folder", "set_seed", "rng_state",
           "set_rng_state", "pad_to", "recommended_threads", "configure_threads", "keep_freed_memory", "report_errors"]
