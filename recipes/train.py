"""Online MBDPO from scratch on one task.

    accelerate launch recipes/train.py --config recipes/configs/online.yaml task=cartpole-balance steps=20000
    python recipes/train.py --config recipes/configs/online.yaml task=walker-walk planner=mppi seed=2

Every RunConfig field (steps, seed, num_envs, utd, eval_freq, output_dir, ...) and every MBDPOConfig field
(planner, num_samples, horizon, ...) can be overridden as key=value. Killed, the same command resumes.
"""

import argparse
import sys

from mbdpo_hub.training import OnlineTrainer, load_run_config
from mbdpo_hub.utils import configure_threads, report_errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/configs/online.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value")
    args = parser.parse_args(argv)
    configure_threads()
    cfg = load_run_config(args.config, args.overrides)
    OnlineTrainer(cfg).run()


if __name__ == "__main__":
    sys.exit(report_errors(main))
