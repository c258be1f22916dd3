"""`RunFolder`: what online training and offline pretraining share, the output folder and everything written to it.

A run folder holds its config file (`train_config.yaml` / `pretrain_config.yaml`), CSV logs, `checkpoints/`
(`write_checkpoint` folders + `latest`), and at the end the final model (`config.json` + `model.safetensors`),
`eval_results.json`, `learning_curve.png` and a model card `README.md`. After a resume the CSV logs are cut back to
the checkpoint's step, so they always match the model.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import torch

from ..utils import atomic_path, atomic_write_text, local_repo_id
from .checkpoint import CheckpointError, latest_checkpoint, read_checkpoint, write_checkpoint
from .config import dump_config

#: columns of train.csv (a fixed set, so rows before the first update line up with later ones)
TRAIN_METRICS = ("total_loss", "consistency_loss", "reward_loss", "value_loss", "termination_loss", "energy_loss",
                 "energy_accuracy", "score_loss", "pi_loss", "pi_entropy", "pi_scale", "grad_norm", "q_mean",
                 "td_target_mean", "reward_mean", "pi_energy")


class RunFolder:
    """Base of `OnlineTrainer` and `OfflinePretrainer`. Subclasses set `config_file`, `csv_files`, and provide
    `self.policy`, `self.learner`, `self.step`, `checkpoint_state()` and `restore_state(state)`."""

    config_file = "train_config.yaml"
    csv_files: tuple[str, ...] = ("train.csv", "eval.csv")

    def __init__(self, cfg, command: str | None = None):
        self.cfg = cfg
        self.command = command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"

    # --- what the folder holds ------------------------------------------------------------------------------------
    def identity(self) -> dict:
        """What this run is (`run.json`): the config's identity fields and its architecture overrides."""
        from ..configuration_mbdpo import MBDPOConfig

        cfg = self.cfg
        ident = {k: getattr(cfg, k) for k in cfg.identity_fields}
        ident.update({k: v for k, v in sorted(cfg.model.items()) if k in MBDPOConfig.ARCHITECTURE_FIELDS})
        return dict(kind=type(self).__name__, **ident)

    def check_folder(self) -> None:
        """Refuse (before anything is written) a command that does not continue the run already in output_dir: a
        different run (`run.json`, or a legacy folder's config file), or resume=false over existing checkpoints.
        With overwrite=true the old folder is moved aside to `<dir>.old-<time>` (nothing is deleted)."""
        out, cfg = self.out, self.cfg
        if out.exists() and not out.is_dir():
            raise ValueError(f"output_dir {out} is a file, not a folder: choose another output_dir")
        if not out.is_dir() or not any(p.name != ".lock" for p in out.iterdir()):
            return
        problem = None
        ident = self.identity()
        if (out / "run.json").is_file():
            old = json.loads((out / "run.json").read_text())
            diff = {k: (old.get(k), v) for k, v in ident.items() if old.get(k) != v}
            diff.update({k: (v, None) for k, v in old.items() if k not in ident})
            if diff:
                problem = "holds another run (" + ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b)
                                                          in sorted(diff.items())) + ")"
        elif (out / self.config_file).is_file():  # a run folder written before run.json existed
            import yaml

            old = yaml.safe_load((out / self.config_file).read_text()) or {}
            diff = [k for k in ident if k != "kind" and k in old and old[k] != ident[k]]
            if diff:
                problem = "holds another run (" + ", ".join(f"{k}: {old[k]!r} there, {ident[k]!r} now"
                                                          for k in diff) + ")"
        elif self.ckpt_root.exists() or (out / "model.safetensors").exists():
            problem = "holds checkpoints or a model of a run that does not say what it is (no run.json)"
        if problem is None and not cfg.resume and latest_checkpoint(self.ckpt_root) is not None:
            problem = "has checkpoints and resume=false would mix two runs in it"
        if problem is None:
            return
        if not cfg.overwrite:
            raise ValueError(f"output_dir {out} {problem}: use another output_dir, or overwrite=true to move the "
                             f"old folder aside and start fresh")
        import time as _time

        aside = out.with_name(f"{out.name}.old-{_time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        self.accelerator.print(f"overwrite=true: moved the old {out} to {aside}")

    def lock_folder(self) -> None:
        """An exclusive lock on output_dir for the whole run: a second process on the same folder gets an error."""
        from filelock import FileLock, Timeout

        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.out / ".lock"))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RuntimeError(f"another process is running in output_dir {self.out} (it holds {self.out}/.lock): "
                               "wait for it to finish or use another output_dir") from None

    def run(self) -> dict:
        """Run the subclass's `_run`; the folder lock is released however it ends."""
        try:
            return self._run()
        finally:
            self.unlock_folder()

    def unlock_folder(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    # --- set-up ----------------------------------------------------------------------------------------------------
    def init_accelerator(self):
        """The Accelerator (CPU unless CUDA is there) with the run's tracker. bf16 is the learner's own autocast
        (nothing goes through accelerator.prepare), so several runs can share one process (tests, notebooks)."""
        from accelerate import Accelerator

        log_with = getattr(self.cfg, "log_with", None)
        log_with = log_with if log_with not in (None, "none", "") else None
        if log_with == "tensorboard":
            try:
                import tensorboard  # noqa: F401  (accelerate's tracker needs it)
            except ImportError:
                log_with = None
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=log_with,
                                       project_dir=str(self.out))
        self.log_with = log_with
        if self.accelerator.device.type == "cuda":  # TF32 matmuls (as TD-MPC2): fp32 weights, ~2x on Ampere+
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return self.accelerator

    def start_folder(self) -> None:
        """Lock the folder, write run.json and the config file, start trackers (after `check_folder`)."""
        acc = self.accelerator
        if acc.is_main_process:
            self.lock_folder()
            atomic_write_text(self.out / "run.json", json.dumps(self.identity(), indent=2))
            atomic_write_text(self.out / self.config_file, dump_config(self.cfg))
        if self.log_with is not None:
            acc.init_trackers("mbdpo", config={k: v for k, v in dataclasses.asdict(self.cfg).items()
                                               if isinstance(v, (int, float, str, bool))})

    # --- logs --------------------------------------------------------------------------------------------------------
    def append_csv(self, name: str, rows: dict | list[dict], replace_step: bool = False) -> None:
        """Append rows; with `replace_step`, rows already logged at the same step (and task) are replaced, so that
        re-running a finished command does not log its final evaluation twice."""
        rows = [rows] if isinstance(rows, dict) else rows
        if not self.accelerator.is_main_process or not rows:
            return
        path = self.out / name
        if replace_step:
            key = {(str(r["step"]), str(r.get("task", ""))) for r in rows}
            _filter_csv(path, lambda r: (str(int(float(r["step"]))), r.get("task", "") or "") not in key)
        new = not path.exists() or path.stat().st_size == 0
        fields = list(rows[0])
        if not new:  # a run resumed by a newer version keeps its file's columns (a new metric is left out)
            with path.open(newline="") as f:
                fields = next(csv.reader(f), None) or fields
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerows(rows)

    def truncate_csvs(self) -> None:
        """After a resume, drop rows logged after the checkpoint (they will be produced again)."""
        if not self.accelerator.is_main_process:
            return
        for name in self.csv_files:
            _filter_csv(self.out / name, lambda r: int(float(r["step"])) <= self.step)

    def first_eval(self, step: int = 0) -> tuple[float, float] | None:
        """(mean, std) return of eval.csv's first row when it was logged at `step` (a fine-tuning run's zero-shot
        evaluation), else None."""
        path = self.out / "eval.csv"
        if not path.exists():
            return None
        with path.open() as f:
            first = next(iter(csv.DictReader(f)), None)
        if first is None or int(float(first["step"])) != step or first.get("mean_return") in (None, ""):
            return None
        return float(first["mean_return"]), float(first["std_return"])

    def progress_bar(self, unit: str, desc: str):
        """A tqdm bar over `cfg.steps` from the current step (main process, `cfg.progress`), else None."""
        if not (self.cfg.progress and self.accelerator.is_main_process):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.steps, initial=self.step, unit=unit, desc=desc, dynamic_ncols=True)

    def replay_device(self, capacity: int, obs_dim: int, action_dim: int) -> torch.device:
        """Where a replay buffer lives: the accelerator's device when it takes at most a quarter of the device's free
        memory (batches are then sampled there, with no host-to-device copy per update), else the CPU."""
        dev = self.accelerator.device
        if dev.type != "cuda" or not getattr(self.cfg, "replay_on_device", True):
            return torch.device("cpu")
        need = int(capacity) * (int(obs_dim) + int(action_dim) + 2) * 4
        free, _ = torch.cuda.mem_get_info(dev)
        return dev if need <= free / 4 else torch.device("cpu")

    def device_batch(self, batch: dict) -> dict:
        """A sampled batch on the accelerator's device (task ids None for a single-task model)."""
        dev = self.accelerator.device
        batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if self.policy.config.num_tasks == 1:
            batch["task"] = None
        return batch

    def log(self, values: dict) -> None:
        if self.accelerator.trackers:
            self.accelerator.log(values, step=self.step)

    # --- checkpoints -------------------------------------------------------------------------------------------------
    def save_checkpoint(self, extra=None) -> Path:
        acc = self.accelerator
        name = f"step_{self.step:09d}"
        if acc.is_main_process:
            write_checkpoint(self.ckpt_root, name, self.policy, self.learner, self.checkpoint_state(),
                             self.cfg.keep_checkpoints, extra=extra)
        acc.wait_for_everyone()
        return self.ckpt_root / name

    def resume(self) -> Path | None:
        """Load the latest intact checkpoint (when `cfg.resume`) and cut the logs back to it; returns its path or
        None. A damaged checkpoint is reported by name and the previous one is tried. Call after `check_folder`
        (never resume someone else's run)."""
        newest = latest_checkpoint(self.ckpt_root) if self.cfg.resume else None
        if newest is None:
            return None
        candidates = [newest] + sorted((p for p in self.ckpt_root.glob("step_*") if p.is_dir() and p != newest
                                        and (p / "state.json").is_file()), reverse=True)
        for ckpt in candidates:
            try:
                self.restore_state(read_checkpoint(ckpt, self.policy, self.learner), ckpt)
            except CheckpointError as e:
                self.accelerator.print(f"warning: {e}; trying the previous checkpoint")
                continue
            self.truncate_csvs()
            self.accelerator.print(f"resumed from {ckpt} (step {self.step})")
            return ckpt
        raise CheckpointError(f"no intact checkpoint in {self.ckpt_root} (all of {[p.name for p in candidates]} "
                              "are damaged): use another output_dir, or overwrite=true to start over")

    def checkpoint_state(self) -> dict:  # pragma: no cover - subclasses
        raise NotImplementedError

    def restore_state(self, state: dict, path: Path) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    # --- final outputs -----------------------------------------------------------------------------------------------
    def model_card(self, results: dict, score: float | None, curve=None, video=None, **kw):
        """The run's model card (`hub.cards.build_model_card`) with what every run folder knows filled in."""
        from ..hub.cards import build_model_card

        return build_model_card(
            repo_id=self.cfg.hub_repo_id or local_repo_id(self.out.name), config_dict=self.policy.config.to_dict(),
            eval_results=results, normalized_score=score, command=self.command, train_config_yaml=dump_config(self.cfg),
            curve_path=Path(curve).name if curve else None, video_path=Path(video).name if video else None, **kw)

    def write_final(self, eval_payload: dict, card) -> None:
        """The final model, eval_results.json and the card README.md (main process)."""
        self.policy.save_pretrained(self.out)
        atomic_write_text(self.out / "eval_results.json", json.dumps(eval_payload, indent=2))
        atomic_write_text(self.out / "README.md", str(card))

    def push(self, card, files: list, message: str, **kw) -> None:
        from ..hub.publish import push_pretrained

        extra = {Path(p).name: str(p) for p in files if p is not None and Path(p).exists()}
        push_pretrained(self.policy, self.cfg.hub_repo_id, card=card, extra_files=extra, commit_message=message,
                        **kw)


def _filter_csv(path: Path, keep) -> None:
    """Rewrite the CSV at `path` (atomically) with only the rows `keep(row)` accepts; no-op when nothing is dropped."""
    if not path.exists():
        return
    with path.open() as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if keep(r)]
    if len(kept) == len(rows):
        return
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)


__all__ = ["RunFolder", "TRAIN_METRICS"]
