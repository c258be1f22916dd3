"""Side-by-side CPU benchmark against the official MBDPO code (github:Edmond1Cheng/MBDPO): planning and update time,
one thread, same settings, in separate processes run alternately, with the FLOPs each side counts.

    python benchmarks/vs_official.py --official /path/to/MBDPO-checkout [--sizes 1 5] [--rounds 3] [--repeats 7]
    python benchmarks/vs_official.py --official /path/to/MBDPO-checkout --quick --out /tmp/vs_official_quick.json
    python benchmarks/vs_official.py --ours-only --quick            # our side alone (no checkout needed)
    python benchmarks/vs_official.py --official PATH --ours-precision bf16 [--ours-compile]   # our faster modes

Get the official code as a plain work tree OUTSIDE this repository, e.g. from a clone or a bare mirror
(`git --git-dir=<mirror> archive HEAD MBDPO cfgs | tar -x -C /work/official-mbdpo`). Nothing of it is copied
into this project: the child process imports it from `--official PATH` at run time.

Settings (the paper's, single task, walker-walk sized: obs 24, action 6, 500-step episodes so discount 0.99):
planning = 20 diffusion steps (19 reverse steps) x 512 samples, 64 elites, 24 policy trajectories, horizon 3, one
environment, from a cold start (t0=True / `reset()`), exploration noise on (eval_mode=False) on both sides;
update = batch 256, horizon 3: one world-model + energy step, one policy step and the Polyak step, from a ready batch
(no replay-buffer sampling on either side). Model sizes are TD-MPC2's presets 1 and 5 (1M: num_q 2, 5M: num_q 5);
weights are random. `--quick` shrinks everything (3 diffusion steps x 32 samples, batch 16, size 1, 1 round,
2 repeats) to validate the script in well under a minute.

Both children keep freed memory in glibc's malloc (`mbdpo_hub.utils.keep_freed_memory`, which our recipes call;
`--default-malloc` leaves it as it is): a process setting, so the ratio compares code, not allocators.

How it runs: the parent runs `--rounds` rounds; each round launches, for every (size, plan|update), one child per side
(`--side official|ours --what plan|update --size N`), alternating which side goes first (ABBA). Each child pins one
thread (`torch.set_num_threads(1)`, OMP/MKL_NUM_THREADS=1), builds its model, warms up, counts FLOPs with
`torch.utils.flop_counter.FlopCounterMode` around one call, times `--repeats` calls (median and IQR) and prints one
JSON line. The parent aggregates (the median of the per-round medians), prints a table (official s, ours s,
official/ours, GFLOP and GFLOP/s per side) and an "equal work" check: the counted FLOPs per call agree within 1%, or
the components where they differ are listed. FlopCounterMode counts matmul-like ops only (mm/addmm/bmm/baddbmm...),
so elementwise work (LayerNorm, Mish, SimNorm, two-hot softmax, Adam) is in the time but not in the FLOPs.
Per component (encoder, dynamics, reward, termination, pi, Q, F, score) the forward FLOPs are attributed by giving the
counter's module tracker the modules' names; "other" is the rest, i.e. in an update the whole backward pass (the
tracker's own backward attribution overlaps, so its backward hooks are made no-ops). The tracker's weak containers
are also swapped for identity-keyed ones: their lookups compare modules with ==, which tensordict's TensorDictParams
(the official Q ensemble's parameters) refuses, so without this FlopCounterMode fails on the official model at all.
Both are private attributes of torch.utils.module_tracker (torch 2.13); without them only totals are counted
(and those fail on the official model).
Known differences in counted work (1M paper setting, measured: plan 54.4 vs 50.8 GFLOP, update equal at 11.57):
the official planner re-draws and re-scores its 24 policy trajectories at every reverse step (ours draws and scores
them once per call: +5% on reward/F/Q) and rolls the policy with one more dynamics call than it needs (dynamics
+9%, pi +18%); at 5M (num_q 5) its Q ensemble also runs all 5 heads where "avg"/"min" use two, ours only the two
picked (planning Q expected about 2.6x; the update's Q also higher).
It writes `--out` (default benchmarks/results/vs_official.json) with the settings, torch and tensordict versions, the
CPU model, the load average before/after, sha256 of the official files imported, and every child's raw numbers.
Timings under other load (e.g. background data collection) are inflated; the JSON records the load average.

Patching of the official code, at run time in the official child only (its files are never modified):
- The official code hard-codes CUDA (`torch.device("cuda:0")` in `MBDPO.__init__` and `RunningScale`) and builds
  Adam with `capturable=True`, which torch only supports on accelerators. Every imported official module whose source
  mentions `cuda` or `capturable` (at HEAD 5ff5a06: `mbdpo.py`, `common/scale.py`) gets its module-global `torch`
  replaced by a thin proxy that forwards everything to torch, except that `torch.device("cuda...")` gives the CPU
  device and `torch.optim.Adam(..., capturable=True)` is built with `capturable=False`.
- The config object is built here from the checkout's own `cfgs/config.yaml` (read with PyYAML, numeric strings such
  as `3e-4` made numbers) plus the fields TD-MPC2's parser/env factory derive (model-size preset from the checkout's
  `common.MODEL_SIZE`, task_dim 0, obs_shape, action_dim, episode_length, bin_size, seed_steps), as a namespace with
  `.get()`; the official `parse_cfg` is not used because it needs hydra.
- The official `MBDPO/` folder is put first on `sys.path` and `mbdpo` is imported as a top-level module, as its own
  scripts require. Only the plan/update path is imported (`mbdpo`, `diffusion`, `common.{math,scale,layers,init,
  world_model}`); `common.{parser,buffer,logger}`, `envs` and `trainer` (hydra/omegaconf, torchrl, termcolor, pandas,
  dm_control) are never imported, so nothing is stubbed. It does need `tensordict` (its Q ensemble and policy output
  use it): `pip install -c constraints.txt "tensordict==0.8.3" "torch==2.13.0"` (0.8.3: the version TD-MPC2 pins).
- Calls timed: official `agent.act(obs, t0=True, eval_mode=False)` and `agent._update(obs, action, reward,
  terminated)` (what `agent.update(buffer)` calls after sampling); ours `policy.reset(); policy.select_action(obs,
  task=0)` and `MBDPOLearner.update(batch)`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT_TAG = "VS_OFFICIAL_RESULT "

PAPER = dict(diffusion_steps=20, num_samples=512, num_elites=64, num_pi_trajs=24, horizon=3, batch_size=256)
QUICK = dict(diffusion_steps=3, num_samples=32, num_elites=8, num_pi_trajs=4, horizon=3, batch_size=16)
TASK = dict(name="walker-walk", obs_dim=24, action_dim=6, episode_length=500)
COMPONENTS = ("encoder", "dynamics", "reward", "termination", "pi", "Q", "F", "score")
FLOP_TOLERANCE = 0.01  # "equal work": counted FLOPs per call within 1%


# ---------------------------------------------------------------------------------------------------------------------
# child side: build, warm up, count, time, print one JSON line
# ---------------------------------------------------------------------------------------------------------------------
def _count_flops_by_component(fn, components: dict) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one fn() call and the forward FLOPs inside each named component (lists of the modules that get
    called); "other" is the rest: ops outside those modules and, in an update, the whole backward pass. The names are
    given to FlopCounterMode's module tracker (private attributes: if they are missing, only the total is kept)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    tracker, known = getattr(counter, "mod_tracker", None), None
    if tracker is not None and hasattr(tracker, "_known_modules") and hasattr(tracker, "_seen_modules"):
        # The tracker keeps modules in weak containers, whose lookups compare modules with ==; tensordict's
        # TensorDictParams (the official Q ensemble's parameters) refuses that. Identity-keyed containers instead.
        known = tracker._known_modules = _IdDict()
        tracker._seen_modules = _IdSet()
        # Forward attribution only: its backward attribution overlaps (a module whose inputs need no grad is never
        # left in backward), so the backward pass is left to "other" instead of being double counted.
        append, pop = tracker._get_append_fn, tracker._get_pop_fn
        tracker._get_append_fn = lambda name, is_bw: (lambda *a: None) if is_bw else append(name, is_bw)
        tracker._get_pop_fn = lambda name, is_bw: (lambda *a: None) if is_bw else pop(name, is_bw)
        for name, mods in components.items():
            for m in mods:
                known[m] = name
    with counter:
        fn()
    total = counter.get_total_flops()
    by = {}
    if known is not None:
        counts = counter.get_flop_counts()
        for name in components:
            by[name] = int(sum(counts.get(name, {}).values()))
        by["other"] = int(total - sum(by.values()))
    return int(total), by


class _IdDict(dict):
    """module -> name keyed by identity (holds the modules, so ids stay unique while counting)."""

    def __contains__(self, m):
        return dict.__contains__(self, id(m))

    def __getitem__(self, m):
        return dict.__getitem__(self, id(m))[1]

    def __setitem__(self, m, v):
        dict.__setitem__(self, id(m), (m, v))


class _IdSet(set):
    def __contains__(self, m):
        return set.__contains__(self, id(m))

    def add(self, m):
        set.add(self, id(m))


def _num(v):
    """YAML 1.1 reads `3e-4` as a string (OmegaConf does not): make such strings numbers."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    return v


class _Cfg(types.SimpleNamespace):
    def get(self, key, default=None):  # the official code calls cfg.get(...) like on its generated dataclass
        return getattr(self, key, default)


def _cpu_torch_proxy(torch):
    """A stand-in for the `torch` module inside official modules: forwards everything to torch, except CUDA device
    requests (-> CPU) and Adam's capturable=True (CUDA-only in torch -> False)."""

    class _Optim(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torch.optim, name)

        @staticmethod
        def Adam(*args, **kwargs):
            kwargs["capturable"] = False
            return torch.optim.Adam(*args, **kwargs)

    class _Torch(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def device(*args, **kwargs):
            d = torch.device(*args, **kwargs)
            return torch.device("cpu") if d.type == "cuda" else d

    proxy = _Torch("torch")
    proxy.optim = _Optim("torch.optim")
    return proxy


def _build_official(path: Path, size: int, s: dict, what: str):
    import torch
    import yaml

    src = path / "MBDPO"
    if not (src / "mbdpo.py").is_file() or not (path / "cfgs" / "config.yaml").is_file():
        raise SystemExit(f"--official {path}: expected MBDPO/mbdpo.py and cfgs/config.yaml (a checkout of "
                         "github:Edmond1Cheng/MBDPO)")
    sys.path.insert(0, str(src))
    import mbdpo as official  # noqa: E402  (the official top-level module, from the checkout)
    from common import MODEL_SIZE  # noqa: E402

    # patch, in the already imported official modules only, what hard-codes CUDA
    proxy, patched, files = _cpu_torch_proxy(torch), [], {}
    for name, mod in sorted(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if not f or not Path(f).resolve().is_relative_to(src.resolve()):
            continue
        text = Path(f).read_bytes()
        files[str(Path(f).resolve().relative_to(path.resolve()))] = hashlib.sha256(text).hexdigest()
        if getattr(mod, "torch", None) is torch and (b"cuda" in text or b"capturable" in text):
            mod.torch = proxy
            patched.append(name)

    raw = yaml.safe_load((path / "cfgs" / "config.yaml").read_text())
    raw.pop("defaults", None)
    raw = {k: _num(v) for k, v in raw.items()}
    raw.update(MODEL_SIZE[size])
    ep = TASK["episode_length"]
    raw.update(task=TASK["name"], task_title=TASK["name"].replace("-", " ").title(), obs="state", model_size=size,
               multitask=False, task_dim=0, tasks=[TASK["name"]], obs_shape={"state": (TASK["obs_dim"],)},
               action_dim=TASK["action_dim"], episode_length=ep, episode_lengths=[ep], seed_steps=max(1000, 5 * ep),
               bin_size=(raw["vmax"] - raw["vmin"]) / (raw["num_bins"] - 1), work_dir="/nonexistent",
               horizon=s["horizon"], batch_size=s["batch_size"], diffusion_steps=s["diffusion_steps"],
               diffusion_num_samples=s["num_samples"], diffusion_num_elites=s["num_elites"],
               diffusion_num_pi_trajs=s["num_pi_trajs"], compile=False, diffusion_eval_compile=False,
               use_score_network=False)
    cfg = _Cfg(**raw)
    agent = official.MBDPO(cfg)
    wm = agent.model
    components = {"encoder": [wm._encoder, *wm._encoder.values()], "dynamics": [wm._dynamics], "reward": [wm._reward],
                  "termination": [wm._termination] if wm._termination is not None else [], "pi": [wm._pi],
                  "Q": [wm._Qs, wm._detach_Qs, wm._target_Qs], "F": [wm._F], "score": [wm._score]}
    params = sum(p.numel() for p in {id(p): p for p in wm.parameters() if p.requires_grad}.values())
    H, B, O, A = cfg.horizon, cfg.batch_size, TASK["obs_dim"], TASK["action_dim"]
    if what == "plan":
        obs = torch.randn(O)

        def fn():
            agent.act(obs, t0=True, eval_mode=False)
    else:
        obs, action, reward, term = _batch(torch, H, B, O, A)

        def fn():
            agent._update(obs, action, reward, term)

    import tensordict

    info = dict(params=params, num_q=cfg.num_q, patched_modules=patched, official_files_sha256=files,
                tensordict=tensordict.__version__,
                patches=["module-global torch -> proxy: torch.device('cuda*') gives cpu",
                         "torch.optim.Adam(capturable=True) -> capturable=False (capturable Adam is CUDA-only)"])
    return fn, components, info


def _batch(torch, H, B, O, A):
    return (torch.randn(H + 1, B, O), torch.rand(H, B, A) * 2 - 1, torch.rand(H, B, 1), torch.zeros(H, B, 1))


def _build_ours(size: int, s: dict, what: str):
    import torch

    sys.path.insert(0, str(ROOT))
    from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy
    from mbdpo_hub.learner import MBDPOLearner

    cfg = MBDPOConfig.from_preset(size, TASK["name"], planner="diffusion", horizon=s["horizon"],
                                  diffusion_steps=s["diffusion_steps"], num_samples=s["num_samples"],
                                  num_elites=s["num_elites"], num_pi_trajs=s["num_pi_trajs"])
    assert (cfg.obs_dim, cfg.action_dim) == (TASK["obs_dim"], TASK["action_dim"]), (cfg.obs_dim, cfg.action_dim)
    policy = MBDPODiffusionPolicy(cfg).eval()
    wm = policy.world_model
    components = {"encoder": [wm.encoder], "dynamics": [wm.dynamics], "reward": [wm.reward_head],
                  "termination": [wm.termination_head] if wm.termination_head is not None else [],
                  "pi": [wm.pi_head], "Q": [wm.Qs], "F": [policy.energy],
                  "score": [policy.score_net] if policy.score_net is not None else []}
    H, B, O, A = cfg.horizon, s["batch_size"], cfg.obs_dim, cfg.action_dim
    bf16 = s.get("ours_precision") == "bf16"
    if what == "plan":
        obs = torch.randn(O)

        def fn():
            policy.reset()
            # bf16: the planner under CPU autocast, as the online recipe acts with mixed_precision=bf16
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                policy.select_action(obs, task=0)
    else:
        learner = MBDPOLearner(policy, mixed_precision="bf16" if bf16 else "no")
        obs, action, reward, term = _batch(torch, H, B, O, A)
        batch = dict(obs=obs, action=action, reward=reward, terminated=term, task=None)

        def fn():
            learner.update(batch)

    def compile_fn():  # what compile=true does: the planner's imagined returns / the update's forward (+ backward)
        if what == "plan":
            policy.compile_planning()
        else:
            learner.compile_forward()

    info = dict(params=policy.num_parameters(), num_q=cfg.num_q, precision="bf16" if bf16 else "fp32",
                compiled=bool(s.get("ours_compile")))
    if s.get("ours_compile"):
        info["compile_fn"] = compile_fn
    return fn, components, info


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    s = json.loads(args.settings)
    kept = False
    if not args.default_malloc:  # both sides: a process setting our recipes make (configure_threads), not code
        from mbdpo_hub.utils import keep_freed_memory

        kept = keep_freed_memory()
    t0 = time.perf_counter()
    if args.side == "official":
        fn, components, info = _build_official(Path(args.official).resolve(), args.size, s, args.what)
    else:
        fn, components, info = _build_ours(args.size, s, args.what)
    build_s = time.perf_counter() - t0
    compile_fn = info.pop("compile_fn", None)
    for _ in range(args.warmup):
        fn()
    flops, by_component = _count_flops_by_component(fn, components)
    if compile_fn is not None:  # FLOPs counted on the eager code (the same work); then compile, warm up, time
        compile_fn()
        t1 = time.perf_counter()
        for _ in range(max(2, args.warmup)):
            fn()
        info["compile_and_warmup_s"] = time.perf_counter() - t1
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    q1, q3 = (statistics.quantiles(times, n=4, method="inclusive")[::2] if len(times) > 1 else (times[0], times[0]))
    out = dict(side=args.side, what=args.what, size=args.size, threads=torch.get_num_threads(), build_s=build_s,
               times_s=times, median_s=statistics.median(times), q1_s=q1, q3_s=q3, iqr_s=q3 - q1, flops=flops,
               flops_by_component=by_component, keep_freed_memory=kept, **info)
    print(RESULT_TAG + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# parent side: rounds of alternating children, aggregation, table, JSON
# ---------------------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def run_child(side, what, size, settings, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--side", side, "--what", what, "--size",
           str(size), "--settings", json.dumps(settings), "--repeats", str(args.repeats), "--warmup",
           str(args.warmup), "--seed", str(args.seed), *(["--default-malloc"] if args.default_malloc else [])]
    if args.official:
        cmd += ["--official", str(args.official)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        return dict(side=side, what=what, size=size, error=f"timed out after {args.timeout} s")
    lines = [ln[len(RESULT_TAG):] for ln in p.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-15:]
        return dict(side=side, what=what, size=size, error=f"exit {p.returncode}: " + "\n".join(tail))
    res = json.loads(lines[-1])
    res["process_s"] = time.perf_counter() - t
    return res


def compare_flops(off: dict, ours: dict) -> dict:
    """'Equal work' in counted FLOPs: the total ratio and the components that differ by more than the tolerance."""
    ratio = off["flops"] / ours["flops"] if ours["flops"] else float("nan")
    diffs = {}
    for name in sorted(set(off.get("flops_by_component", {})) | set(ours.get("flops_by_component", {}))):
        a, b = off["flops_by_component"].get(name, 0), ours["flops_by_component"].get(name, 0)
        if a == b == 0:
            continue
        if b == 0 or abs(a / b - 1) > FLOP_TOLERANCE:
            diffs[name] = dict(official_gflop=a / 1e9, ours_gflop=b / 1e9, ratio=(a / b if b else None))
    return dict(equal=abs(ratio - 1) <= FLOP_TOLERANCE, official_over_ours=ratio, differing_components=diffs)


def aggregate(raw: list[dict], sides) -> list[dict]:
    rows = []
    keys = sorted({(r["size"], r["what"]) for r in raw}, key=lambda k: (k[0], k[1] != "plan"))
    for size, what in keys:
        row = dict(size=size, what=what)
        ok = {}
        for side in sides:
            runs = [r for r in raw if (r["size"], r["what"], r["side"]) == (size, what, side) and "error" not in r]
            errs = [r["error"] for r in raw if (r["size"], r["what"], r["side"]) == (size, what, side) and "error" in r]
            if errs:
                row[f"{side}_errors"] = errs
            if not runs:
                continue
            pooled = [t for r in runs for t in r["times_s"]]
            q = statistics.quantiles(pooled, n=4, method="inclusive") if len(pooled) > 1 else [pooled[0]] * 3
            med = statistics.median(r["median_s"] for r in runs)
            row[side] = dict(median_s=med, round_medians_s=[r["median_s"] for r in runs], pooled_q1_s=q[0],
                             pooled_q3_s=q[2], gflop=runs[0]["flops"] / 1e9,
                             gflops_per_s=runs[0]["flops"] / med / 1e9, params=runs[0]["params"],
                             num_q=runs[0]["num_q"], flops_by_component_gflop={
                                 k: v / 1e9 for k, v in runs[0]["flops_by_component"].items()})
            ok[side] = runs[0]
        if "official" in row and "ours" in row:
            row["time_ratio_official_over_ours"] = row["official"]["median_s"] / row["ours"]["median_s"]
            row["flop_check"] = compare_flops(ok["official"], ok["ours"])
        rows.append(row)
    return rows


def print_table(rows) -> None:
    f = lambda d, k, fmt: format(d[k], fmt) if d else "-"  # noqa: E731
    print("\n| size | what | official s | ours s | official/ours | GFLOP official | GFLOP ours | GFLOP/s official "
          "| GFLOP/s ours | equal FLOPs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, u = r.get("official"), r.get("ours")
        ratio = format(r["time_ratio_official_over_ours"], ".2f") if "time_ratio_official_over_ours" in r else "-"
        eq = "-"
        if "flop_check" in r:
            eq = ("yes" if r["flop_check"]["equal"] else "no") + f" ({r['flop_check']['official_over_ours']:.3f}x)"
        print(f"| {r['size']}M | {r['what']} | {f(o, 'median_s', '.4f')} | {f(u, 'median_s', '.4f')} | {ratio} | "
              f"{f(o, 'gflop', '.2f')} | {f(u, 'gflop', '.2f')} | {f(o, 'gflops_per_s', '.1f')} | "
              f"{f(u, 'gflops_per_s', '.1f')} | {eq} |")
    for r in rows:
        for side in ("official", "ours"):
            for e in r.get(f"{side}_errors", []):
                print(f"\n{r['size']}M {r['what']} {side} FAILED: {e}")
        diffs = r.get("flop_check", {}).get("differing_components", {})
        if diffs:
            print(f"\n{r['size']}M {r['what']}: counted FLOPs differ in "
                  + ", ".join(f"{k} (official {v['official_gflop']:.3f} vs ours {v['ours_gflop']:.3f} GFLOP"
                              + (f", {v['ratio']:.2f}x)" if v["ratio"] is not None else ")") for k, v in diffs.items()))


def parent(args) -> None:
    sys.path.insert(0, str(HERE))
    import torch
    from _common import machine_info, write_json

    if not args.ours_only:
        if args.official is None:
            raise SystemExit("--official PATH is required (or --ours-only)")
        args.official = Path(args.official).resolve()
        if not (args.official / "MBDPO" / "mbdpo.py").is_file():
            raise SystemExit(f"{args.official} is not an MBDPO checkout (no MBDPO/mbdpo.py)")
    settings = dict(QUICK if args.quick else PAPER)
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    settings["ours_precision"] = args.ours_precision  # the official code has no bf16 path: it always runs fp32
    settings["ours_compile"] = args.ours_compile  # the official side runs as its config ships (compile: false)
    sides = ["ours"] if args.ours_only else ["official", "ours"]
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"settings {settings}, sizes {args.sizes}, {args.rounds} round(s) x {args.repeats} repeats, 1 thread, "
          f"load average {load_before}")
    raw, k = [], 0
    t_start = time.perf_counter()
    for rnd in range(args.rounds):
        for size in args.sizes:
            for what in args.what:
                order = sides if k % 2 == 0 else sides[::-1]  # ABBA: who goes first alternates
                k += 1
                for side in order:
                    res = run_child(side, what, size, settings, args)
                    res["round"] = rnd
                    raw.append(res)
                    msg = res.get("error") or (f"{res['median_s']:.4f} s [IQR {res['iqr_s']:.4f}]  "
                                              f"{res['flops'] / 1e9:.2f} GFLOP")
                    print(f"round {rnd} size {size} {what:6s} {side:8s} {msg.splitlines()[0] if msg else ''}",
                          flush=True)
    rows = aggregate(raw, sides)
    print_table(rows)
    tensordict_version = next((r.get("tensordict") for r in raw if r.get("tensordict")), None)
    official_files = next((r.get("official_files_sha256") for r in raw if r.get("official_files_sha256")), None)
    patches = next((r.get("patches") for r in raw if r.get("patches")), None)
    write_json(args.out, dict(
        benchmark="vs_official", quick=args.quick, settings=settings, task=TASK, sizes=args.sizes, rounds=args.rounds,
        repeats=args.repeats, warmup=args.warmup, threads=1, torch=torch.__version__, tensordict=tensordict_version,
        cpu_model=cpu_model(), machine=machine_info(), loadavg_before=load_before,
        loadavg_after=[round(x, 2) for x in os.getloadavg()], wall_s=time.perf_counter() - t_start,
        official_path=str(args.official) if args.official else None, official_files_sha256=official_files,
        official_runtime_patches=patches, flop_tolerance=FLOP_TOLERANCE,
        note="time = median over rounds of each child's median; FLOPs = matmul-like ops counted by "
             "torch.utils.flop_counter.FlopCounterMode for one call",
        rows=rows, raw=raw))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", help="path to a work tree of github:Edmond1Cheng/MBDPO (holds MBDPO/ and cfgs/)")
    ap.add_argument("--ours-only", action="store_true", help="run our side only (no official checkout)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="TD-MPC2 presets (default 1 5; quick: 1)")
    ap.add_argument("--what", nargs="+", choices=["plan", "update"], default=["plan", "update"])
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (quick: 1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per child (default 7; quick: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2; quick: 1)")
    ap.add_argument("--batch-size", type=int, default=None, help="update batch (default 256; quick: 16)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny settings, to validate the script")
    ap.add_argument("--ours-compile", action="store_true",
                    help="torch.compile our planner's imagined returns (compile_planning) and our update's forward "
                         "(with its AOT-compiled backward), as compile=true does; FLOPs are counted on the eager code")
    ap.add_argument("--ours-precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: our planning under bf16 autocast and our update with mixed_precision=bf16 (the same "
                         "counted FLOPs); the official side stays fp32. Use it only where fast_actor.py --dtypes "
                         "fp32 bf16 shows the returns unchanged")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is in both children (default: both keep freed memory, as our "
                         "recipes do: mbdpo_hub.utils.keep_freed_memory)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/vs_official.json "
                                                "(quick: /tmp/vs_official_quick.json)")
    # child-process options
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["official", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.what = args.what[0] if isinstance(args.what, list) else args.what
        return child(args)
    q = args.quick
    args.sizes = args.sizes or ([1] if q else [1, 5])
    args.rounds = args.rounds or (1 if q else 3)
    args.repeats = args.repeats or (2 if q else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    args.out = args.out or ("/tmp/vs_official_quick.json" if q else str(ROOT / "benchmarks/results/vs_official.json"))
    parent(args)


if __name__ == "__main__":
    main()
