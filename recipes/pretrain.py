"""Multi-task offline pretraining of an MBDPO policy from an episode dataset (local folder or Hub dataset).

    accelerate launch recipes/pretrain.py --config recipes/configs/pretrain_1m.yaml dataset=datasets/dmc-small
    accelerate launch --num_processes 2 --cpu recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml \
        dataset=org/my-data dataset_revision=v1 push_to_hub=true hub_repo_id=org/mbdpo-pretrained

Every PretrainConfig field (dataset, dataset_revision, steps, batch_size, eval_freq, checkpoint_freq, output_dir,
mixed_precision, push_to_hub, hub_repo_id, ...) and every MBDPOConfig field can be given as key=value.
Killed, the same command resumes from the last checkpoint.
"""

import argparse
import sys
from pathlib import Path

from mbdpo_hub.training import OfflinePretrainer, load_pretrain_config
from mbdpo_hub.utils import configure_threads, report_errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/configs/pretrain_1m.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value")
    args = parser.parse_args(argv)
    configure_threads()
    cfg = load_pretrain_config(args.config, args.overrides)
    argv = sys.argv[1:] if argv is None else list(argv)
    OfflinePretrainer(cfg, command=" ".join(["accelerate launch", "recipes/" + Path(__file__).name, *argv])).run()


if __name__ == "__main__":
    sys.exit(report_errors(main))
