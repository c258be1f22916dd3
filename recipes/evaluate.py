"""Evaluate a checkpoint (local folder, Hub id with --revision, or an official .pt) on one or many tasks.

    python recipes/evaluate.py runs/demo --tasks cartpole-balance --episodes 10 --planner mppi
    python recipes/evaluate.py org/name --revision v1 --update-card runs/demo/README.md

Prints a table and the normalised score (DMC return / 10, Meta-World success x 100, mean over tasks), writes
eval_results.json, and optionally updates a card's model-index. Same as `mbdpo-hub evaluate`.
"""

import sys

from mbdpo_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
