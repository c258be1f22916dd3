"""Learning-update throughput at batch 256 (TD-MPC2 horizon 3), and its FLOP rate as a fraction of this machine's
own matmul rate.

    python benchmarks/bench_update.py [--sizes 1 5] [--dtypes fp32 bf16] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import autocast, count_flops, machine_info, matmul_rate, median_time, write_json  # noqa: E402

from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy  # noqa: E402
from mbdpo_hub.learner import MBDPOLearner  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--task", default="walker-walk")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/bench_update.json")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # the reference is the machine's own fp32 matmul rate (bf16 rows too: "how much of the fp32 peak do we get")
    rates = {d: matmul_rate(d) for d in sorted(set(args.dtypes) | {"fp32"})}
    print("matmul reference rate: " + ", ".join(f"{d} {r / 1e9:.0f} GFLOP/s" for d, r in rates.items()))
    rows = []
    for size in args.sizes:
        config = MBDPOConfig.from_preset(size, args.task)
        policy = MBDPODiffusionPolicy(config).to(device)
        learner = MBDPOLearner(policy)
        H, B = config.horizon, args.batch_size
        batch = dict(obs=torch.randn(H + 1, B, config.obs_dim, device=device),
                     action=torch.rand(H, B, config.action_dim, device=device) * 2 - 1,
                     reward=torch.rand(H, B, 1, device=device), terminated=torch.zeros(H, B, 1, device=device),
                     task=None)
        for dtype in args.dtypes:
            def update():
                with autocast(dtype):
                    learner.update(batch)

            flops = count_flops(update)
            med, lo, hi = median_time(update, args.repeats, warmup=2)
            row = dict(size=size, params=policy.num_parameters(), batch_size=B, dtype=dtype, s_per_update=med,
                       s_per_update_min=lo, s_per_update_max=hi, updates_per_s=1 / med,
                       gflop_per_update=flops / 1e9, achieved_gflops=flops / med / 1e9,
                       fraction_of_fp32_matmul_rate=flops / med / rates["fp32"])
            rows.append(row)
            print(f"size {size:>3} {dtype}: {1000 * med:.0f} ms/update [{1000 * lo:.0f},{1000 * hi:.0f}] "
                  f"{1 / med:.1f} updates/s  {flops / 1e9:.1f} GFLOP  {flops / med / 1e9:.0f} GFLOP/s = "
                  f"{100 * flops / med / rates['fp32']:.0f}% of the fp32 matmul rate")
    write_json(args.out, dict(benchmark="update", device=device, machine=machine_info(),
                              matmul_rate_gflops={d: r / 1e9 for d, r in rates.items()}, rows=rows))


if __name__ == "__main__":
    main()
