"""GPU timing helper behind `benchmarks/gpu_check.sh` (one process per section, so a compile that fails or hangs only
costs its own section).

    python benchmarks/bench_gpu.py --what plan --size 5 --section-out /tmp/x/plan_5.json
    python benchmarks/bench_gpu.py --what update --size 48 --section-out /tmp/x/update_48.json
    python benchmarks/bench_gpu.py --what throughput --sizes 1 5 48 --batch-size 1024 --section-out /tmp/x/thr.json
    python benchmarks/bench_gpu.py --what online --section-out /tmp/x/online.json -- <recipes/train.py arguments>
    python benchmarks/bench_gpu.py --what merge --work /tmp/x --out benchmarks/results/gpu_check.json

plan / update: our callables at the paper's setting (diffusion 20 steps -> 19 reverse steps x 512 samples, 64 elites,
24 policy trajectories, horizon 3; update batch 256), walker-walk sized (obs 24, action 6), random weights, fp32 with
TF32 matmuls on (`torch.backends.cuda.matmul.allow_tf32`, cuDNN too). Timed eager first, then the same callable
wrapped in `torch.compile(fn, mode=--compile-mode)` (default mode "default"; "max-autotune-no-cudagraphs" is what
the official code recommends, but its autotuning does not fit an 8-minute check; "none" skips compiling): the first
compiled call is reported as `first_call_s` (compile time included), then warm-up calls and timed calls. Times come
from CUDA events around each call (`gpu_s`) plus the host wall clock after `torch.cuda.synchronize()` (`wall_s`);
medians and IQR. FLOPs per call are counted with torch.utils.flop_counter on one eager call. A compile error is
caught and recorded in the JSON (type, message, traceback tail) instead of ending the process. The section JSON is
rewritten after every phase, so a section killed by its timeout still leaves what it measured (and its last phase).
  plan callable:   policy.reset(); policy.select_action(obs, task=0)     (cold start, one environment)
  update callable: MBDPOLearner.update(batch)                           (world model + energy, policy, Polyak)
throughput: eager updates/s and samples/s at --batch-size (1024) for each size.
online: TF32 on, then runs recipes/train.py in this process with the arguments after `--` (the shell script wraps
it in `timeout`); `merge` reads the run's train.csv (one row per finished episode: step, elapsed_s = training time)
and reports steps/s overall and in the planning phase (rows after the seed phase and its update burst).
merge: device info and the device's own matmul rates (TF32 and bf16), the section JSONs and the shell's per-section
exit codes (124 = hit its timeout) into one JSON, and prints a summary.
--smoke: tiny model (enc/mlp 32, latent 16) and planner (3 steps x 16 samples), batch 32, few repeats, so the whole
check runs on a CPU in a couple of minutes; with it, --compile-backend defaults to "eager" (dynamo tracing without inductor code
generation, which takes minutes on a small CPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from _common import count_flops, machine_info, matmul_rate, write_json  # noqa: E402

TASK = "walker-walk"
PAPER = dict(diffusion_steps=20, num_samples=512, num_elites=64, num_pi_trajs=24, horizon=3)
SMOKE_PLANNER = dict(diffusion_steps=3, num_samples=16, num_elites=4, num_pi_trajs=2, horizon=3)
SMOKE_MODEL = dict(enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2)
CUDA = torch.cuda.is_available()


def setup_precision() -> dict:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    return dict(tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                float32_matmul_precision=torch.get_float32_matmul_precision())


def sync():
    if CUDA:
        torch.cuda.synchronize()


def time_calls(fn, repeats: int, warmup: int) -> dict:
    """Median / IQR of per-call times: CUDA-event time (GPU) and host wall time after a synchronize."""
    for _ in range(warmup):
        fn()
    sync()
    gpu, wall = [], []
    for _ in range(repeats):
        if CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t = time.perf_counter()
            start.record()
            fn()
            end.record()
            end.synchronize()
            wall.append(time.perf_counter() - t)
            gpu.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            wall.append(time.perf_counter() - t)
    out = dict(repeats=repeats, warmup=warmup, wall_s=_stats(wall))
    if gpu:
        out["gpu_s"] = _stats(gpu)
    out["median_s"] = out.get("gpu_s", out["wall_s"])["median"]
    return out


def _stats(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return dict(median=statistics.median(xs), q1=q[0], q3=q[2], iqr=q[2] - q[0], min=min(xs), max=max(xs),
                times=xs)


def build(size: int, smoke: bool):
    from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy

    overrides = dict(SMOKE_PLANNER if smoke else PAPER)
    if smoke:
        overrides.update(SMOKE_MODEL)
    cfg = MBDPOConfig.from_preset(size, TASK, planner="diffusion", **overrides)
    device = "cuda" if CUDA else "cpu"
    policy = MBDPODiffusionPolicy(cfg).to(device).eval()
    settings = {k: getattr(cfg, k) for k in ("horizon", "diffusion_steps", "num_samples", "num_elites",
                                             "num_pi_trajs", "num_q", "enc_dim", "mlp_dim", "latent_dim",
                                             "obs_dim", "action_dim")}
    return policy, settings, device


def make_batch(cfg, B: int, device):
    H = cfg.horizon
    return dict(obs=torch.randn(H + 1, B, cfg.obs_dim, device=device),
                action=torch.rand(H, B, cfg.action_dim, device=device) * 2 - 1,
                reward=torch.rand(H, B, 1, device=device), terminated=torch.zeros(H, B, 1, device=device), task=None)


def try_compile(target, call, args, section: dict, save) -> dict:
    """torch.compile(target) and time call(compiled); any failure is recorded, not raised."""
    res = dict(mode=args.compile_mode, backend=args.compile_backend)
    if args.compile_mode == "none":
        return dict(res, skipped=True)
    section["compiled"] = dict(res, status="compiling")
    save()
    try:
        mode = None if (args.compile_mode == "default" or args.compile_backend != "inductor") else args.compile_mode
        compiled = torch.compile(target, mode=mode, backend=args.compile_backend)
        t = time.perf_counter()
        call(compiled)
        sync()
        res["first_call_s"] = time.perf_counter() - t
        section["compiled"] = dict(res, status="timing")
        save()
        res.update(time_calls(lambda: call(compiled), args.repeats, args.warmup))
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a compile failure is a result here
        res.update(status="failed", error=f"{type(e).__name__}: {str(e)[:3000]}",
                   traceback_tail=traceback.format_exc().splitlines()[-25:])
    try:
        import torch._dynamo as dynamo

        # graph-break reasons by their first line (the full text is a page of hints each)
        res["dynamo_counters"] = {k: {str(r).splitlines()[0][:200]: n for r, n in v.items()}
                                  for k, v in dynamo.utils.counters.items() if k in ("stats", "graph_break")}
    except Exception as e:  # noqa: BLE001 - the counters are a nice-to-have
        res["dynamo_counters_error"] = repr(e)
    return res


def run_plan_or_update(args) -> None:
    section = dict(what=args.what, size=args.size, smoke=args.smoke, precision=setup_precision(), status="building",
                   device=torch.cuda.get_device_name(0) if CUDA else "cpu", torch=torch.__version__)
    save = lambda: write_json(args.section_out, section)  # noqa: E731
    save()
    torch.manual_seed(0)
    policy, settings, device = build(args.size, args.smoke)
    section.update(settings=settings, params=policy.num_parameters())
    if args.what == "plan":
        obs = torch.randn(1, policy.config.obs_dim, device=device)

        def target():
            policy.reset()
            return policy.select_action(obs, task=0)

        call = lambda f: f()  # noqa: E731
    else:
        from mbdpo_hub.learner import MBDPOLearner

        B = args.batch_size or (32 if args.smoke else 256)
        learner = MBDPOLearner(policy)
        batch = make_batch(policy.config, B, device)
        section["batch_size"] = B
        target = learner.update
        call = lambda f: f(batch)  # noqa: E731
    section["status"] = "eager"
    save()
    section["eager"] = time_calls(lambda: call(target), args.repeats, args.warmup)
    flops = count_flops(lambda: call(target))
    section["gflop_per_call"] = flops / 1e9
    section["eager"]["gflops_per_s"] = flops / section["eager"]["median_s"] / 1e9
    section["status"] = "compiling"
    save()
    section["compiled"] = try_compile(target, call, args, section, save)
    if section["compiled"].get("status") == "ok":
        section["compiled"]["gflops_per_s"] = flops / section["compiled"]["median_s"] / 1e9
        section["compiled_speedup"] = section["eager"]["median_s"] / section["compiled"]["median_s"]
    section["status"] = "done"
    save()


def run_throughput(args) -> None:
    from mbdpo_hub.learner import MBDPOLearner

    B = args.batch_size or (64 if args.smoke else 1024)
    section = dict(what="throughput", batch_size=B, smoke=args.smoke, precision=setup_precision(), rows=[],
                   status="running", device=torch.cuda.get_device_name(0) if CUDA else "cpu")
    save = lambda: write_json(args.section_out, section)  # noqa: E731
    def one(size: int) -> dict:
        torch.manual_seed(0)
        policy, settings, device = build(size, args.smoke)
        learner = MBDPOLearner(policy)
        batch = make_batch(policy.config, B, device)
        t = time_calls(lambda: learner.update(batch), args.repeats, args.warmup)
        flops = count_flops(lambda: learner.update(batch))
        return dict(size=size, params=policy.num_parameters(), settings=settings, **t,
                    updates_per_s=1 / t["median_s"], samples_per_s=B / t["median_s"], gflop_per_update=flops / 1e9,
                    gflops_per_s=flops / t["median_s"] / 1e9)

    for size in args.sizes:
        section["rows"].append(one(size))
        save()
        if CUDA:
            torch.cuda.empty_cache()
    section["status"] = "done"
    save()


def run_online(args, train_argv: list[str]) -> None:
    """recipes/train.py in this process, TF32 on (the trainer itself does not set it)."""
    import runpy

    section = dict(what="online", argv=train_argv, precision=setup_precision(), started_unix=time.time())
    write_json(args.section_out, section)
    sys.argv = [str(ROOT / "recipes" / "train.py"), *train_argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


def online_stats(run_dir: Path, seed_steps: int) -> dict:
    path = run_dir / "train.csv"
    if not path.is_file():
        return dict(error=f"no {path}: the run finished no episode")
    rows = [dict(step=int(float(r["step"])), elapsed_s=float(r["elapsed_s"]), episode=int(float(r["episode"])),
                 episode_return=float(r["episode_return"])) for r in csv.DictReader(path.open())]
    out = dict(episodes=len(rows), last_step=rows[-1]["step"] if rows else 0, rows=rows, seed_steps=seed_steps)
    if rows and rows[-1]["elapsed_s"] > 0:
        out["steps_per_s_overall"] = rows[-1]["step"] / rows[-1]["elapsed_s"]
    # planning phase: from the first episode that ended after the seed phase (it holds the update burst) onwards
    post = [r for r in rows if r["step"] > seed_steps]
    if len(post) >= 2 and post[-1]["elapsed_s"] > post[0]["elapsed_s"]:
        out["steps_per_s_planning"] = (post[-1]["step"] - post[0]["step"]) / (post[-1]["elapsed_s"] -
                                                                            post[0]["elapsed_s"])
        out["planning_window_steps"] = post[-1]["step"] - post[0]["step"]
    else:
        out["steps_per_s_planning"] = None
        out["note"] = "fewer than 2 episodes finished after the seed phase: no planning-phase rate"
    return out


def merge(args) -> None:
    work = Path(args.work)
    status = {}
    sp = work / "status.jsonl"
    if sp.is_file():
        for line in sp.read_text().splitlines():
            if line.strip():
                s = json.loads(line)
                status[s["section"]] = s
    sections = {}
    for name, st in status.items():
        f = work / f"{name}.json"
        sec = json.loads(f.read_text()) if f.is_file() else {}
        sec["exit_code"] = st.get("rc")
        sec["timeout_s"] = st.get("timeout_s")
        sec["section_wall_s"] = st.get("wall_s")
        if st.get("rc") in (124, 137):
            sec["timed_out"] = True
        if st.get("skipped"):
            sec["skipped"] = st["skipped"]
        log = work / f"{name}.log"
        if st.get("rc") not in (0, None) and log.is_file():
            sec["log_tail"] = log.read_text(errors="replace").splitlines()[-30:]
        sections[name] = sec
    if "online" in sections:
        run_dir = Path(sections["online"].get("run_dir") or work / "online")
        sections["online"].update(online_stats(run_dir, int(args.seed_steps)))
        sections["online"]["note_timeout"] = "the run is stopped by its timeout; steps/s come from train.csv rows"
    setup_precision()
    meta = dict(machine=machine_info(), precision=setup_precision(), smoke=args.smoke)
    smi = work / "nvidia-smi.txt"
    if smi.is_file():
        meta["nvidia_smi"] = smi.read_text().strip()
    if CUDA:
        p = torch.cuda.get_device_properties(0)
        meta.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda)
    try:
        meta["matmul_rate_gflops"] = {d: matmul_rate(d) / 1e9 for d in ("fp32", "bf16")}
        meta["matmul_rate_note"] = "fp32 = TF32 tensor cores (allow_tf32 on)" if CUDA else "CPU"
    except Exception as e:  # noqa: BLE001
        meta["matmul_rate_error"] = str(e)
    payload = dict(benchmark="gpu_check", task=TASK, settings=dict(planner=SMOKE_PLANNER if args.smoke else PAPER,
                                                                   update_batch=32 if args.smoke else 256),
                   total_wall_s=args.total_wall_s, budget_s=args.budget_s, **meta, sections=sections)
    write_json(args.out, payload)
    print_summary(sections)


def print_summary(sections: dict) -> None:
    def fmt(sec, key):
        d = sec.get(key) or {}
        if d.get("status") == "failed":
            return "failed"
        if "median_s" not in d:
            return d.get("status", "-") if d else "-"
        return f"{1000 * d['median_s']:.1f} ms"

    print("\n| section | status | eager | compiled | first compiled call | GFLOP |")
    print("|---|---|---|---|---|---|")
    for name, sec in sections.items():
        if sec.get("what") in ("plan", "update"):
            st = "timed out" if sec.get("timed_out") else sec.get("status", "?")
            first = sec.get("compiled", {}).get("first_call_s")
            print(f"| {name} | {st} | {fmt(sec, 'eager')} | {fmt(sec, 'compiled')} | "
                  f"{'-' if first is None else f'{first:.1f} s'} | {sec.get('gflop_per_call', float('nan')):.2f} |")
    thr = sections.get("throughput", {})
    for r in thr.get("rows", []):
        print(f"throughput batch {thr['batch_size']} size {r['size']}: {r['updates_per_s']:.1f} updates/s, "
              f"{r['samples_per_s']:.0f} samples/s, {r['gflops_per_s']:.0f} GFLOP/s")
    on = sections.get("online")
    if on:
        print(f"online: {on.get('last_step', 0)} steps in {on.get('episodes', 0)} episodes, "
              f"overall {on.get('steps_per_s_overall') or 0:.2f} steps/s, planning phase "
              f"{on.get('steps_per_s_planning') or 0:.2f} steps/s" + (" (timed out as planned)" if on.get("timed_out")
                                                                      else ""))
    for name, sec in sections.items():
        if sec.get("exit_code") not in (0, None) and not (name == "online" and sec.get("timed_out")):
            print(f"section {name}: exit code {sec['exit_code']}" + (" (its timeout)" if sec.get("timed_out") else ""))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    train_argv = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_argv = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", required=True, choices=["plan", "update", "throughput", "online", "merge"])
    ap.add_argument("--size", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 48])
    ap.add_argument("--batch-size", type=int, default=None, help="update: 256 (smoke 32); throughput: 1024 (64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls (default 20; smoke 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; smoke 1)")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode: default | max-autotune-no-cudagraphs | reduce-overhead | none")
    ap.add_argument("--compile-backend", default=None, help="inductor (default) | eager | aot_eager (smoke: eager)")
    ap.add_argument("--smoke", action="store_true", help="tiny model and planner (CPU validation)")
    ap.add_argument("--section-out", help="this section's JSON")
    ap.add_argument("--work", help="merge: the folder holding the sections, status.jsonl and online/")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_check.json"))
    ap.add_argument("--seed-steps", type=int, default=0, help="merge: the online run's seed_steps")
    ap.add_argument("--total-wall-s", type=float, default=None)
    ap.add_argument("--budget-s", type=float, default=None)
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (3 if args.smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    if args.what in ("plan", "update"):
        run_plan_or_update(args)
    elif args.what == "throughput":
        run_throughput(args)
    elif args.what == "online":
        run_online(args, train_argv)
    else:
        merge(args)


if __name__ == "__main__":
    main()
