"""Planning latency per action, and the achieved FLOP rate as a fraction of this machine's own matmul rate.

Default: the paper's planner setting (MBDPO diffusion: 20 steps -> 19 reverse steps x 512 samples, 64 elites,
24 policy trajectories, horizon 3) on walker-walk-sized models of presets 1 and 5, batched over 1 and 16
environments, fp32 and bf16 autocast.

    python benchmarks/bench_planner.py [--sizes 1 5] [--batches 1 16] [--dtypes fp32 bf16] [--planner diffusion]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import autocast, count_flops, machine_info, matmul_rate, median_time, write_json  # noqa: E402

from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--planner", default="diffusion", choices=["diffusion", "mppi", "score", "policy"])
    ap.add_argument("--task", default="walker-walk")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overrides", nargs="*", default=[], help="config overrides key=value (e.g. num_samples=256)")
    ap.add_argument("--out", default="benchmarks/results/bench_planner.json")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    overrides = {k: type(getattr(MBDPOConfig(), k))(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    # the reference is the machine's own fp32 matmul rate (bf16 rows too: "how much of the fp32 peak do we get")
    rates = {d: matmul_rate(d) for d in sorted(set(args.dtypes) | {"fp32"})}
    print("matmul reference rate: " + ", ".join(f"{d} {r / 1e9:.0f} GFLOP/s" for d, r in rates.items()))
    rows = []
    for size in args.sizes:
        config = MBDPOConfig.from_preset(size, args.task, planner=args.planner,
                                         use_score_network=args.planner == "score", **overrides)
        policy = MBDPODiffusionPolicy(config).to(device).eval()
        for B in args.batches:
            obs = torch.randn(B, config.obs_dim, device=device)
            for dtype in args.dtypes:
                def plan():
                    policy.reset()
                    with autocast(dtype):
                        policy.select_action(obs, task=0)

                flops = count_flops(plan)
                med, lo, hi = median_time(plan, args.repeats)
                row = dict(size=size, params=policy.num_parameters(), planner=args.planner, envs=B, dtype=dtype,
                           s_per_call=med, s_per_call_min=lo, s_per_call_max=hi, s_per_action=med / B,
                           gflop_per_call=flops / 1e9, achieved_gflops=flops / med / 1e9,
                           fraction_of_fp32_matmul_rate=flops / med / rates["fp32"])
                rows.append(row)
                print(f"size {size:>3} envs {B:>2} {dtype}: {med:.3f} s/call [{lo:.3f},{hi:.3f}] "
                      f"{med / B:.3f} s/action  {flops / 1e9:.1f} GFLOP  {flops / med / 1e9:.0f} GFLOP/s "
                      f"= {100 * flops / med / rates['fp32']:.0f}% of the fp32 matmul rate")
    write_json(args.out, dict(benchmark="planner", device=device, machine=machine_info(),
                              matmul_rate_gflops={d: r / 1e9 for d, r in rates.items()},
                              planner_settings={k: getattr(config, k) for k in (
                                  "horizon", "diffusion_steps", "num_samples", "num_elites", "num_pi_trajs",
                                  "mppi_iterations")}, overrides=overrides, rows=rows))


if __name__ == "__main__":
    main()
