"""Fine-tune a pretrained MBDPO / TD-MPC2 checkpoint on one task: online or offline-to-online.

    accelerate launch recipes/finetune.py --config recipes/configs/finetune.yaml \
        checkpoint=org/mbdpo-mt30 revision=v1 task=walker-run mode=online steps=40000 output_dir=runs/ft
    python recipes/finetune.py --config recipes/configs/finetune.yaml checkpoint=tdmpc2-mt30-1m.pt.xz \
        task=cartpole-swingup mode=offline-to-online offline_dataset=data/cartpole-swingup

checkpoint: a local model folder, a Hub model id (revision = branch / tag / commit), an official TD-MPC2 / MBDPO
.pt or .pt.xz file, or empty for the embedded default (mbdpo_hub/pretrained/default). A task the checkpoint does
not know gets a new task-embedding row, chosen by task_init: source (source_task's row), nearest (default), mean, or
own (a known task keeps its row; any other task_init re-initialises it);
larger obs/action dims are handled by zero-extending the input layers. freeze=[encoder,...] and lr_scales={qs: 0.5}
go to the learner; eval_old_tasks=[...] keeps measuring old tasks. Every FinetuneConfig / MBDPOConfig field can be
given as key=value (architecture fields must match the checkpoint). Killed, the same command resumes.
"""

import argparse
import sys
from pathlib import Path

from mbdpo_hub.finetune import make_finetune_trainer
from mbdpo_hub.training import load_finetune_config
from mbdpo_hub.utils import configure_threads, report_errors

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune.yaml"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*", help="key=value")
    args = parser.parse_args(argv)
    configure_threads()
    cfg = load_finetune_config(args.config, args.overrides)
    argv = sys.argv[1:] if argv is None else list(argv)
    trainer = make_finetune_trainer(cfg, command=" ".join(["accelerate launch recipes/finetune.py"] + argv))
    trainer.run()


if __name__ == "__main__":
    sys.exit(report_errors(main))
