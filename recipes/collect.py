"""Collect a multi-task episode dataset with online MBDPO agents (one task at a time, the whole replay kept).

    python recipes/collect.py --config recipes/configs/collect.yaml tasks=[cartpole-balance,pendulum-swingup] \
        steps_per_task=5000 output_dir=runs/collect dataset_dir=datasets/dmc-small

Any CollectConfig field (tasks, steps_per_task, dataset_dir, output_dir, push_to_hub, hub_repo_id), RunConfig field
(seed, utd, batch_size, seed_steps, episode_length, ...) or MBDPOConfig field (planner, num_samples, ...) can be
given as key=value. Killed, the same command resumes: tasks already in the dataset are skipped, and a task killed
half-way resumes from its run's last checkpoint.
"""

import argparse
import sys
from pathlib import Path

from mbdpo_hub.collect import collect, load_collect_config
from mbdpo_hub.utils import configure_threads, report_errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/configs/collect.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value")
    args = parser.parse_args(argv)
    configure_threads()
    cfg = load_collect_config(args.config, args.overrides)
    argv = sys.argv[1:] if argv is None else list(argv)
    collect(cfg, command=" ".join(["python", "recipes/" + Path(__file__).name, *argv]))


if __name__ == "__main__":
    sys.exit(report_errors(main))
