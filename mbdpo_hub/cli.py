"""`mbdpo-hub` command line: demo, train, evaluate, convert, convert-dataset, export-lerobot, import-lerobot, card, push.

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
import warnings
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
    """The one checkpoint resolver (folder | Hub id | official .pt/.pt.xz), shared with fine-tuning."""
    from .finetune import load_source_policy

    return load_source_policy(checkpoint, revision)


def cmd_evaluate(args) -> int:
    from .envs import normalized_score
    from .training import evaluate

    from .envs import task_score
    from .utils import atomic_write_text

    if args.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {args.episodes}")
    if args.episode_length is not None and args.episode_length < 1:
        raise ValueError(f"--episode-length must be at least 1, got {args.episode_length}")
    policy = load_policy(args.checkpoint, args.revision).eval()
    tasks = args.tasks.split(",") if args.tasks else list(policy.config.tasks)
    for task in tasks:
        policy.config.task_id(task)  # every task checked before the first evaluation starts
    rows = {}
    for task in tasks:
        video = Path(args.video_dir) / f"{task}.mp4" if args.video_dir else None
        r = evaluate(policy, task, args.episodes, seed=args.seed, planner=args.planner, video_path=video,
                     episode_length=args.episode_length, progress=not args.quiet)
        r["normalized_score"] = task_score(task, r["mean_success"] if task.startswith("mw-") else r["mean_return"])
        rows[task] = r
        print(f"{task:28s} {r['mean_return']:8.1f} +/- {r['std_return']:6.1f}  ({r['episodes']} episodes, "
              f"{r['planner']}, {r['seconds']:.0f} s)")
    score = normalized_score({t: r["mean_return"] for t, r in rows.items()})
    print(f"normalized score: {score:.2f}")
    payload = dict(checkpoint=args.checkpoint, revision=args.revision, planner=args.planner or policy.config.planner,
                   results=rows, normalized_score=score)
    out = Path(args.output)
    atomic_write_text(out, json.dumps(payload, indent=2))
    print(f"wrote {out}")
    if args.update_card:
        from .hub.card_update import update_model_index

        update_model_index(args.update_card, {t: dict(mean_return=r["mean_return"], std_return=r["std_return"],
                                                      episodes=r["episodes"], normalized_score=r["normalized_score"])
                                              for t, r in rows.items()})
        print(f"updated model-index of {args.update_card}")
    return 0




def _parse_tasks(value: str | None):
    if value is None:
        return None
    value = value.strip()
    if value in ("mt30", "mt80"):
        return value
    names = [t.strip() for t in value.split(",") if t.strip()]
    if not names:
        raise ValueError("--tasks is empty")
    return names


def add_convert_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `convert` arguments to a parser (for wiring into the `mbdpo-hub` CLI)."""
    parser.add_argument("src", help="official TD-MPC2 / MBDPO checkpoint (.pt or .pt.xz)")
    parser.add_argument("dst", help="output folder (save_pretrained layout: config.json + model.safetensors)")
    parser.add_argument("--tasks", default=None,
                        help="task set (mt30, mt80) or comma-separated task names in task-id order; needed for "
                             "single-task checkpoints (e.g. --tasks walker-walk)")
    parser.add_argument("--keep-score-network", action="store_true",
                        help="keep MBDPO's _score network (dropped by default: upstream saves it even untrained)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty dst")
    return parser


def run_convert(args: argparse.Namespace) -> int:
    """Run a parsed `convert` command; returns the exit code (0 ok, 1 error)."""
    try:
        tasks = _parse_tasks(args.tasks)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from .convert import convert_official_checkpoint

            model = convert_official_checkpoint(args.src, args.dst, tasks=tasks,
                                                keep_score_network=args.keep_score_network,
                                                overwrite=args.overwrite)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except (ValueError, OSError) as e:
        print(f"mbdpo-hub convert: error: {e}", file=sys.stderr)
        return 1
    cfg = model.config
    print(model.conversion_report.summary())
    shown = cfg.tasks if cfg.num_tasks <= 3 else f"{cfg.num_tasks} ({cfg.task_set or 'custom list'})"
    print(f"tasks: {shown}, "
          f"model_size={cfg.model_size}, params={model.num_parameters():,}")
    print(f"saved to {args.dst}")
    return 0


def convert_main(argv: list[str] | None = None) -> int:
    """``mbdpo-hub convert SRC DST [--tasks mt30|name,...] [--keep-score-network] [--overwrite]``."""
    parser = add_convert_arguments(argparse.ArgumentParser(
        prog="mbdpo-hub convert",
        description="Convert an official TD-MPC2 / MBDPO checkpoint into a Hugging Face (save_pretrained) folder."))
    return run_convert(parser.parse_args(argv))


def cmd_export_lerobot(args) -> int:
    from .data.lerobot import export_lerobot

    out = export_lerobot(args.dataset, args.out, fps=args.fps, overwrite=args.overwrite)
    print(f"wrote the LeRobotDataset v3 folder {out}")
    return 0


def cmd_import_lerobot(args) -> int:
    from .data import read_info
    from .data.lerobot import import_lerobot

    out = import_lerobot(args.src, args.out, overwrite=args.overwrite)
    info = read_info(out)
    print(f"wrote {out}: {info['num_episodes']} episodes, {info['num_frames']} rows")
    return 0


def cmd_card(args) -> int:
    from .hub.cards import build_model_card
    from .modeling_mbdpo import MBDPODiffusionPolicy
    from .utils import local_repo_id

    run = Path(args.run_dir)
    results = json.loads((run / "eval_results.json").read_text())
    policy_config = MBDPODiffusionPolicy.config_class.from_pretrained(run)
    card = build_model_card(repo_id=args.repo_id or local_repo_id(run.name), config_dict=policy_config.to_dict(),
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
    """`mbdpo-hub ...`: bad input ends in one line on stderr (exit code 2); MBDPO_DEBUG=1 shows the traceback."""
    from .utils import configure_threads, report_errors

    configure_threads()
    return report_errors(_main, argv)


def _main(argv=None) -> int:
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
    p.add_argument("--episode-length", type=int, default=None, help="cut episodes to this many steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_evaluate)
    # convert / convert-dataset have their own full parsers (options anywhere, their own --help): routed first
    sub.add_parser("convert", help="official TD-MPC2/MBDPO .pt -> our format (see mbdpo-hub convert --help)")
    sub.add_parser("convert-dataset", help="TD-MPC2 .pt data chunks -> parquet (see mbdpo-hub convert-dataset --help)")
    p = sub.add_parser("export-lerobot", help="our dataset -> a LeRobotDataset v3 folder")
    p.add_argument("dataset", help="a dataset folder or Hub dataset id")
    p.add_argument("out")
    p.add_argument("--fps", type=int, default=30, help="nominal frames per second (timestamps)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_export_lerobot)
    p = sub.add_parser("import-lerobot", help="a LeRobotDataset v3 folder -> our dataset")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_import_lerobot)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":
        return convert_main(argv[1:])
    if argv and argv[0] == "convert-dataset":
        from .data import convert_dataset_main

        return convert_dataset_main(argv[1:]) or 0
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
