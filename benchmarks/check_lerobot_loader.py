"""Open an `mbdpo-hub export-lerobot` folder with LeRobot's own `LeRobotDataset` and check what it reads.

Run it with a separate venv that has lerobot (0.4.x reads codebase v3.0; it pins torch<2.11, so that venv is set up
by hand, see the README's LeRobot section), not with the project's venv; it does not import mbdpo_hub:

    /work/lerobot-venv/bin/python benchmarks/check_lerobot_loader.py /tmp/lerobot-export [--source datasets/dmc8-expert]

Everything is read from the local folder (HF_HUB_OFFLINE=1, a fresh HF_HOME; LeRobot's Hub download paths are
replaced by ones that fail the "no_hub_calls" check). The checks compare what LeRobot returns with the export's own
files read by pyarrow: lengths, episode count, frame keys and shapes, exact values, each episode's task name, stats,
`delta_timestamps` windows, an episode subset and a DataLoader batch. Writes
benchmarks/results/lerobot_loader_check.json (or --out) and exits 1 if any check failed.

PyPI's torchvision wheels for Linux x86_64 are CUDA builds whose C++ ops do not load against the CPU torch 2.13 wheel,
and torchvision then fails to import (its meta registration of ``torchvision::nms`` needs the op). lerobot's dataset
modules import torchvision (transforms, video decoding) but a state-only dataset uses none of its ops, so where the
ops do not load this script declares the two op schemas (no kernels) before importing lerobot, and records that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="lerobot-check-hf-home-"))

REQUIRED_KEYS = ("observation.state", "action", "next.reward", "timestamp", "index", "episode_index", "frame_index",
                 "task_index", "task")


def _torchvision_without_ops() -> bool:
    """Make torchvision importable when its C++ ops cannot load; True if that was needed."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        return False
    lib = next(Path(spec.origin).parent.glob("_C*.so"), None)
    try:
        if lib is None:
            raise OSError("no _C library")
        torch.ops.load_library(str(lib))
        return False
    except OSError:
        defs = torch.library.Library("torchvision", "DEF")  # kept alive below, or the definitions go with it
        defs.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        defs.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _torchvision_without_ops.lib = defs
        return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export", type=Path, help="a folder written by `mbdpo-hub export-lerobot`")
    p.add_argument("--source", type=Path, default=None,
                   help="the mbdpo_hub dataset it was exported from (its meta/info.json counts are compared too)")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parent / "results" / "lerobot_loader_check.json")
    args = p.parse_args(argv)
    root = args.export.resolve()

    stubbed = _torchvision_without_ops()  # before lerobot imports torchvision
    import lerobot
    import numpy as np
    import pandas as pd
    import pyarrow
    import pyarrow.parquet as pq
    import torch
    from lerobot.datasets import lerobot_dataset as lrd
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    hub_calls = []

    def _no_hub(name):
        def f(*a, **k):
            hub_calls.append(name)
            raise RuntimeError(f"LeRobot tried the Hub ({name}): the local folder was not enough")
        return f

    lrd.LeRobotDatasetMetadata.pull_from_repo = _no_hub("LeRobotDatasetMetadata.pull_from_repo")
    lrd.LeRobotDataset.pull_from_repo = _no_hub("LeRobotDataset.pull_from_repo")
    lrd.LeRobotDataset.download = _no_hub("LeRobotDataset.download")

    # the export's own files, read without LeRobot
    info = json.loads((root / "meta" / "info.json").read_text())
    raw = pq.read_table(sorted((root / "data").glob("*/*.parquet"))).to_pydict()
    eps = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    tasks_pq = pd.read_parquet(root / "meta" / "tasks.parquet")
    stats_json = json.loads((root / "meta" / "stats.json").read_text())
    fps = info["fps"]
    feats = info["features"]

    checks: dict[str, dict] = {}
    frames_read = 0
    ds = None

    def check(name, fn):
        t0 = time.perf_counter()
        try:
            detail = fn()
            checks[name] = {"pass": True, "detail": detail}
        except Exception as e:  # noqa: BLE001
            checks[name] = {"pass": False, "detail": f"{type(e).__name__}: {e}",
                            "where": traceback.format_exc(limit=-2).strip().splitlines()[-3:]}
        checks[name]["seconds"] = round(time.perf_counter() - t0, 3)
        mark = "PASS" if checks[name]["pass"] else "FAIL"
        print(f"[{mark}] {name}: {checks[name]['detail']}", flush=True)

    def _open():
        nonlocal ds
        ds = LeRobotDataset(repo_id="local/mbdpo-export", root=root)
        return (f"LeRobotDataset(repo_id='local/mbdpo-export', root={str(root)!r}); "
                f"codebase {ds.meta.info['codebase_version']}")

    check("open_local_root", _open)
    check("no_hub_calls", lambda: _ok(not hub_calls, f"calls: {hub_calls}") or "none")
    if ds is None:
        return _finish(args, root, checks, None, 0, stubbed, lerobot, torch, np, pd, pyarrow)

    def _len():
        n = len(ds)
        parts = {"len(ds)": n, "info.total_frames": info["total_frames"],
                 "sum(episodes.length)": int(sum(eps["length"])), "data rows": len(raw["index"]),
                 "ds.num_frames": ds.num_frames}
        if args.source:
            src_info = json.loads((args.source / "meta" / "info.json").read_text())
            parts["source num_transitions"] = src_info["num_transitions"]
        _ok(len(set(parts.values())) == 1, parts)
        return parts

    def _episodes():
        ours = info.get("mbdpo_hub", {}).get("tasks", [])
        parts = {"ds.num_episodes": ds.num_episodes, "info.total_episodes": info["total_episodes"],
                 "len(ds.meta.episodes)": len(ds.meta.episodes),
                 "unique episode_index": len(set(raw["episode_index"])),
                 "sum(mbdpo_hub tasks num_episodes)": int(sum(t.get("num_episodes", 0) for t in ours))}
        if args.source:
            parts["source num_episodes"] = json.loads((args.source / "meta" / "info.json").read_text())["num_episodes"]
        _ok(len(set(parts.values())) == 1, parts)
        _ok(ds.fps == fps, f"fps {ds.fps} != {fps}")
        return {**parts, "fps": ds.fps}

    check("len_matches_metadata", _len)
    check("num_episodes_matches_metadata", _episodes)

    n = len(ds)
    sample = sorted({0, 1, n // 3, n // 2, n - 2, n - 1})

    def _frame(i):
        nonlocal frames_read
        frames_read += 1
        return ds[i]

    def _keys_and_values():
        for i in sample:
            f = _frame(i)
            missing = [k for k in REQUIRED_KEYS if k not in f]
            _ok(not missing, f"frame {i}: missing {missing}")
            for k, spec in feats.items():
                _ok(k in f, f"frame {i}: feature {k} not returned")
                want = tuple(spec["shape"]) if spec["shape"] != [1] else ()
                _ok(tuple(f[k].shape) == want, f"frame {i}: {k} shape {tuple(f[k].shape)} != {want}")
                got = f[k].numpy()
                ref = np.asarray(raw[k][i], dtype=got.dtype)
                _ok(np.array_equal(got, ref), f"frame {i}: {k} differs from the parquet row")
            _ok(int(f["index"]) == i, f"frame {i}: index {int(f['index'])}")
            _ok(abs(float(f["timestamp"]) - int(f["frame_index"]) / fps) < 1e-6, f"frame {i}: timestamp")
            ep = int(f["episode_index"])
            _ok(f["task"] == eps["tasks"][eps["episode_index"].index(ep)][0], f"frame {i}: task {f['task']!r}")
        return {"frames": sample, "keys": sorted(f.keys()), "dtypes": {k: str(v.dtype) for k, v in f.items()
                                                                         if hasattr(v, "dtype")}}

    def _every_episode():
        names = set()
        for e, a, b, ln, t in zip(eps["episode_index"], eps["dataset_from_index"], eps["dataset_to_index"],
                                  eps["length"], eps["tasks"]):
            first, last = _frame(a), _frame(b - 1)
            _ok(int(first["episode_index"]) == e and int(last["episode_index"]) == e, f"episode {e}: bounds")
            _ok(int(first["frame_index"]) == 0 and int(last["frame_index"]) == ln - 1, f"episode {e}: frame_index")
            _ok(first["task"] == t[0] == last["task"], f"episode {e}: task {first['task']!r} != {t[0]!r}")
            _ok(bool(last["next.done"]), f"episode {e}: last frame not next.done")
            names.add(first["task"])
        return {"episodes": len(eps["episode_index"]), "frames_read": 2 * len(eps["episode_index"]),
                "tasks": sorted(names), "tasks.parquet": list(tasks_pq.index)}

    def _stats():
        st = ds.meta.stats
        _ok(st is not None, "meta.stats is None")
        out = {}
        for k in ("observation.state", "action", "next.reward"):
            _ok(k in st, f"no stats for {k}")
            shape = tuple(feats[k]["shape"])
            for s in ("mean", "std", "min", "max"):
                _ok(tuple(np.shape(st[k][s])) == shape, f"{k}.{s} shape {np.shape(st[k][s])} != {shape}")
            x = np.asarray(raw[k], np.float64).reshape(n, -1)
            _ok(np.allclose(np.asarray(st[k]["mean"]).reshape(-1), x.mean(0), rtol=1e-6, atol=1e-6), f"{k} mean")
            _ok(np.allclose(np.asarray(st[k]["std"]).reshape(-1), x.std(0), rtol=1e-6, atol=1e-6), f"{k} std")
            out[k] = {"shape": list(shape), "count": np.asarray(st[k]["count"]).tolist()}
        _ok(set(st) == set(stats_json), f"stats keys {sorted(st)} != stats.json {sorted(stats_json)}")
        return {"keys": len(st), **out}

    check("frame_keys_shapes_values", _keys_and_values)
    check("every_episode_first_last_frame_and_task", _every_episode)
    check("meta_stats", _stats)

    def _delta():
        d = LeRobotDataset(repo_id="local/mbdpo-export", root=root,
                           delta_timestamps={"observation.state": [-1 / fps, 0.0], "action": [0.0, 1 / fps]})
        a = eps["dataset_from_index"][0]
        f0, f1 = d[a], d[a + 1]
        nonlocal frames_read
        frames_read += 3
        _ok(tuple(f0["observation.state"].shape) == (2, feats["observation.state"]["shape"][0]), "window shape")
        _ok(f0["observation.state_is_pad"].tolist() == [True, False], f"pad {f0['observation.state_is_pad']}")
        _ok(np.array_equal(f1["observation.state"].numpy(), np.asarray(raw["observation.state"][a:a + 2], np.float32)),
            "window values")
        _ok(np.array_equal(f1["action"].numpy(), np.asarray(raw["action"][a + 1:a + 3], np.float32)), "action window")
        last = eps["dataset_to_index"][0] - 1
        _ok(d[last]["action_is_pad"].tolist() == [False, True], "no padding past the episode's end")
        return {"delta_timestamps": {"observation.state": [-1 / fps, 0.0], "action": [0.0, 1 / fps]},
                "frames_read": 3}

    def _subset():
        pick = [eps["episode_index"][1], eps["episode_index"][-1]]
        s = LeRobotDataset(repo_id="local/mbdpo-export", root=root, episodes=pick)
        want = sum(ln for e, ln in zip(eps["episode_index"], eps["length"]) if e in pick)
        _ok(len(s) == want and s.num_episodes == 2, f"len {len(s)} != {want} or num_episodes {s.num_episodes}")
        nonlocal frames_read
        frames_read += 2
        _ok(int(s[0]["episode_index"]) == pick[0] and int(s[len(s) - 1]["episode_index"]) == pick[1], "order")
        return {"episodes": pick, "len": len(s)}

    def _loader():
        dl = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
        b = next(iter(dl))
        nonlocal frames_read
        frames_read += 8
        _ok(tuple(b["observation.state"].shape) == (8, feats["observation.state"]["shape"][0]), "batch state")
        _ok(tuple(b["next.reward"].shape) == (8,) and len(b["task"]) == 8, "batch reward/task")
        return {"batch": {k: list(v.shape) for k, v in b.items() if hasattr(v, "shape")}, "tasks": len(b["task"])}

    check("delta_timestamps_windows", _delta)
    check("episode_subset", _subset)
    check("dataloader_batch", _loader)
    return _finish(args, root, checks, ds, frames_read, stubbed, lerobot, torch, np, pd, pyarrow)


def _ok(cond, msg):
    if not cond:
        raise AssertionError(msg)


def _finish(args, root, checks, ds, frames_read, stubbed, lerobot, torch, np, pd, pyarrow) -> int:
    import datasets
    import huggingface_hub

    try:
        import torchvision

        tv = torchvision.__version__
    except Exception as e:  # noqa: BLE001
        tv = f"import failed: {e}"
    passed = all(c["pass"] for c in checks.values())
    result = {
        "check": "LeRobot's own LeRobotDataset opens an `mbdpo-hub export-lerobot` folder (local root, no Hub)",
        "export": str(root), "source": str(args.source) if args.source else None,
        "versions": {"lerobot": lerobot.__version__, "torch": torch.__version__, "torchvision": tv,
                     "datasets": datasets.__version__, "huggingface_hub": huggingface_hub.__version__,
                     "pandas": pd.__version__, "pyarrow": pyarrow.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "torchvision_ops_stubbed": stubbed,
        "frames": len(ds) if ds is not None else None, "episodes": ds.num_episodes if ds is not None else None,
        "frames_read": frames_read,
        "checks": checks, "passed": sum(c["pass"] for c in checks.values()),
        "failed": sum(not c["pass"] for c in checks.values()), "all_passed": passed,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"lerobot {lerobot.__version__}, torch {torch.__version__}: {result['passed']} passed, "
          f"{result['failed']} failed; {result['frames']} frames, {result['episodes']} episodes, "
          f"{frames_read} frames read -> {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
