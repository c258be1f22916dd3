"""`mbdpo-hub` command line: demo, train, evaluate, convert, convert-dataset, card, push.

    mbdpo-hub demo [key=value ...]          # the main job: fine-tune the embedded default (CPU, minutes)
    mbdpo-hub train --config recipes/configs/online.yaml task=walker-walk
    mbdpo-hub evaluate CHECKPOINT --tasks cartpole-balance --episodes 10 [--planner mppi]
    mbdpo-hub convert official.pt out_dir [--tasks mt30]
    mbdpo-hub convert-dataset chunk_0.pt ... out_dataset [--task-set mt30]
    mbdpo-hub card RUN_DIR                  # (re)write the run's model card from eval_results.json
    mbdpo-hub push RUN_DIR org/name [--revision BRANCH] [--tag TAG]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The main job, as `make demo` runs it. The file ships in the package (recipes/configs/finetune.yaml links to it), so
# `mbdpo-hub demo` works from an installed wheel.
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune.yaml"


def cmd_demo(args) -> int:
    """The main job: fine-tune the embedded default checkpoint on a held-out task (CPU, minutes)."""
    from .finetune import make_finetune_trainer
    from .training import load_finetune_config

    cfg = load_finetune_config(DEMO_CONFIG, list(args.overrides))
    print(f"mbdpo-hub demo: fine-tune {cfg.checkpoint or 'the embedded default checkpoint'} on {cfg.task} "
          f"({cfg.mode}, {cfg.steps} env steps, planner {cfg.model.get('diffusion_steps')} steps x "
          f"{cfg.model.get('num_samples')} samples) -> {cfg.output_dir}")
    make_finetune_trainer(cfg, command="mbdpo-hub demo " + " ".join(args.overrides)).run()
    out = Path(cfg.output_dir)
    print(f"model: {out}/model.safetensors  curve: {out}/learning_curve.png  video: {out}/eval_video.mp4  "
          f"card: {out}/README.md")
    return 0


def cmd_train(args) -> int:
    from .training import OnlineTrainer, load_run_config

    OnlineTrainer(load_run_config(args.config, args.overrides)).run()
    return 0


def load_policy(checkpoint: str, revision: str | None = None):
    from .modeling_mbdpo import MBDPODiffusionPolicy

    path = Path(checkpoint)
    if path.suffix in (".pt", ".xz") and path.is_file():
        from .convert import convert_official_checkpoint

        return convert_official_checkpoint(path)
    return MBDPODiffusionPolicy.from_pretrained(checkpoint, revision=revision)


def cmd_evaluate(args) -> int:
    from .envs import normalized_score
    from .training import evaluate

    policy = load_policy(args.checkpoint, args.revision).eval()
    tasks = args.tasks.split(",") if args.tasks else list(policy.config.tasks)
    rows = {}
    for task in tasks:
        video = Path(args.video_dir) / f"{task}.mp4" if args.video_dir else None
        r = evaluate(policy, task, args.episodes, seed=args.seed, planner=args.planner, video_path=video)
        rows[task] = r
        print(f"{task:28s} {r['mean_return']:8.1f} +/- {r['std_return']:6.1f}  ({r['episodes']} episodes, "
              f"{r['planner']})")
    score = normalized_score({t: r["mean_return"] for t, r in rows.items()})
    print(f"normalized score: {score:.2f}")
    payload = dict(checkpoint=args.checkpoint, revision=args.revision, planner=args.planner or policy.config.planner,
                   results=rows, normalized_score=score)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    if args.update_card:
        from .hub.cards import update_model_index

        update_model_index(args.update_card, {t: dict(mean_return=r["mean_return"], std_return=r["std_return"],
                                                      episodes=r["episodes"]) for t, r in rows.items()})
        print(f"updated model-index of {args.update_card}")
    return 0


def cmd_convert(args) -> int:
    from .convert import convert_main

    return convert_main(args.rest) or 0


def cmd_convert_dataset(args) -> int:
    from .data import convert_dataset_main

    return convert_dataset_main(args.rest) or 0


def cmd_card(args) -> int:
    from .hub.cards import build_model_card
    from .modeling_mbdpo import MBDPODiffusionPolicy

    run = Path(args.run_dir)
    results = json.loads((run / "eval_results.json").read_text())
    policy_config = MBDPODiffusionPolicy.config_class.from_pretrained(run)
    card = build_model_card(repo_id=args.repo_id or f"local/{run.name}", config_dict=policy_config.to_dict(),
                            eval_results=results["results"], normalized_score=results.get("normalized_score"),
                            train_config_yaml=(run / "train_config.yaml").read_text()
                            if (run / "train_config.yaml").exists() else None,
                            curve_path="learning_curve.png" if (run / "learning_curve.png").exists() else None,
                            video_path="eval_video.mp4" if (run / "eval_video.mp4").exists() else None)
    (run / "README.md").write_text(str(card))
    print(f"wrote {run / 'README.md'}")
    return 0


def cmd_push(args) -> int:
    from huggingface_hub import ModelCard

    from .hub.publish import push_pretrained
    from .modeling_mbdpo import MBDPODiffusionPolicy

    run = Path(args.run_dir)
    policy = MBDPODiffusionPolicy.from_pretrained(run)
    card = ModelCard.load(run / "README.md")
    extra = {p.name: str(p) for p in run.iterdir() if p.is_file() and p.name not in (
        "README.md", "config.json", "model.safetensors")}
    info = push_pretrained(policy, args.repo_id, card=card, extra_files=extra, revision=args.revision, tag=args.tag,
                           commit_message=f"Upload {run.name}")
    print(f"pushed {run} to {args.repo_id}: {info}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mbdpo-hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the main job: fine-tune the embedded default on a held-out task")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("train", help="online training (same as recipes/train.py)")
    p.add_argument("--config", default=None)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("evaluate", help="evaluate a checkpoint (folder, Hub id or official .pt)")
    p.add_argument("checkpoint")
    p.add_argument("--revision", default=None)
    p.add_argument("--tasks", default=None, help="comma-separated; default: the checkpoint's tasks")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--planner", default=None, choices=["diffusion", "mppi", "score", "policy"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--video-dir", default=None)
    p.add_argument("--output", default="eval_results.json")
    p.add_argument("--update-card", default=None, help="a README.md whose model-index gets these results")
    p.set_defaults(fn=cmd_evaluate)
    for name, fn, help_ in (("convert", cmd_convert, "official TD-MPC2/MBDPO .pt -> our format"),
                            ("convert-dataset", cmd_convert_dataset, "TD-MPC2 .pt data chunks -> parquet")):
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(fn=fn)
    p = sub.add_parser("card", help="(re)write a run folder's model card")
    p.add_argument("run_dir")
    p.add_argument("--repo-id", default=None)
    p.set_defaults(fn=cmd_card)
    p = sub.add_parser("push", help="push a run folder to the Hub with its card")
    p.add_argument("run_dir")
    p.add_argument("repo_id")
    p.add_argument("--revision", default=None)
    p.add_argument("--tag", default=None)
    p.set_defaults(fn=cmd_push)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
