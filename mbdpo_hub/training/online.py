"""Online MBDPO on one task: the loop shared by the train, finetune and collect recipes.

    cfg = load_run_config("recipes/configs/online.yaml", ["task=cartpole-balance", "steps=600"])
    OnlineTrainer(cfg).run()

From scratch: random actions for `seed_steps`, a burst of `seed_updates`, then plan and update `utd` times per
environment step. A fine-tuning run (`FinetuneConfig`) has the same schedule; its seed phase is acted at random
(`seed_actions=random`, the default) or by the adapted checkpoint, untouched (`seed_actions=checkpoint`); see
benchmarks/README "Fine-tuning collapse" for what each keeps and loses. Offline-to-online, the offline buffer is
mixed into every batch.
Evaluations and checkpoints happen at episode boundaries; killed at any moment,
the same command resumes from the last checkpoint (a finished run checkpoints its last step, so a larger `steps`
extends it).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..configuration_mbdpo import MBDPOConfig
from ..learner import MBDPOLearner, mean_metrics
from ..modeling_mbdpo import MBDPODiffusionPolicy
from ..utils import pad_to, rng_state, set_rng_state, set_seed
from .checkpoint import CheckpointError
from .config import RunConfig
from .evaluation import evaluate, plot_learning_curve, record_video
from .run_folder import TRAIN_METRICS, RunFolder

#: counters saved in (and restored from) every checkpoint
_COUNTERS = ("step", "episode", "update_debt", "burst_done", "next_eval", "next_ckpt", "elapsed", "last_return")


class OnlineTrainer(RunFolder):
    """Online MBDPO on one task with `num_envs` vectorised environments.

    `policy_factory(cfg) -> MBDPODiffusionPolicy` builds the initial model (default: a fresh `model_size` preset);
    `offline_buffer` (a ReplayBuffer) is mixed into every batch at `offline_ratio` in offline-to-online mode;
    `card_extra` (base_model, base_revision, notes) goes to the model card; `first_update_hook(trainer)` runs once
    when the first update is due and the task's first episode is stored (fine-tuning's task_init=fit).
    """

    csv_files = ("train.csv", "eval.csv", "eval_old_tasks.csv")

    def __init__(self, cfg: RunConfig, policy_factory: Callable[[RunConfig], MBDPODiffusionPolicy] | None = None,
                 offline_buffer=None, card_extra: dict | None = None, command: str | None = None,
                 first_update_hook: Callable[["OnlineTrainer"], None] | None = None):
        super().__init__(cfg, command)
        self.first_update_hook = first_update_hook  # runs once, on the task's own first episode, before any update
        self.policy_factory = policy_factory or (
            lambda c: MBDPODiffusionPolicy(MBDPOConfig.from_preset(c.model_size, c.task, **c.model)))
        self.offline_buffer = offline_buffer
        self.card_extra = card_extra or {}

    def setup(self) -> None:
        from ..buffer import ReplayBuffer
        from ..envs import make_vec_env, task_spec

        cfg, acc = self.cfg, self.init_accelerator()
        self.check_folder()  # before anything is built or written
        set_seed(cfg.seed + acc.process_index)
        self.policy = self.policy_factory(cfg).to(acc.device)
        if cfg.compile:
            self.policy.compile_planning()
        pcfg = self.policy.config
        self.task_id = pcfg.task_id(cfg.task)
        self.learner = MBDPOLearner(self.policy, freeze=cfg.freeze, lr_scales=cfg.lr_scales,
                                    mixed_precision=cfg.mixed_precision, compile=cfg.compile,
                                    l2_to_pretrained=getattr(cfg, "l2_to_pretrained", 0.0),
                                    anchor_to_pretrained=getattr(cfg, "anchor_to_pretrained", 0.0),
                                    reduce_fn=(lambda x: acc.reduce(x, "mean")) if acc.num_processes > 1 else None)
        self.episode_length = cfg.episode_length or task_spec(cfg.task).episode_length
        # a whole run fits: every episode stores one entry more than its steps (the reset observation)
        capacity = cfg.steps + (cfg.steps // self.episode_length + 2) * cfg.num_envs + 1
        capacity = min(cfg.buffer_size, capacity)
        self.buffer = ReplayBuffer(capacity, pcfg.obs_dim, pcfg.action_dim, pcfg.horizon, cfg.batch_size,
                                   seed=cfg.seed + acc.process_index,
                                   device=self.replay_device(capacity, pcfg.obs_dim, pcfg.action_dim))
        self.seed_steps = cfg.seed_steps if cfg.seed_steps is not None else max(1000, 5 * self.episode_length)
        # fine-tuning: the adapted checkpoint acts from the first step (its seed phase collects the new task's
        # data with the pretrained planner) unless seed_actions=random; from scratch (a RunConfig has no
        # seed_actions) the seed phase acts at random
        self.random_steps = 0 if getattr(cfg, "seed_actions", "random") == "checkpoint" else self.seed_steps
        self.seed_updates = cfg.seed_updates if cfg.seed_updates is not None else self.seed_steps
        env_kw = {} if cfg.episode_length is None else dict(episode_length=cfg.episode_length)
        self.envs = make_vec_env(cfg.task, cfg.num_envs, seed=cfg.seed + 1000 * acc.process_index, **env_kw)
        self.A_env = self.envs.single_action_space.shape[0]
        self.step, self.episode, self.update_debt, self.burst_done = 0, 0, 0.0, False
        self.next_eval, self.next_ckpt = 0, cfg.checkpoint_freq if cfg.checkpoint_freq > 0 else math.inf
        self.elapsed, self.last_return = 0.0, float("nan")
        self.metrics_acc: dict[str, list[float]] = {}
        # load_best_model_at_end: step, mean/std return and a CPU copy of the weights of the best evaluation so far
        self.best: dict | None = None
        self.final_eval: tuple[int, dict] | None = None  # (step, result) of the evaluation at the last step
        self.start_folder()

    # --- checkpoints -------------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        best = None if self.best is None else {k: v for k, v in self.best.items() if k != "weights"}
        return dict({k: getattr(self, k) for k in _COUNTERS}, rng=rng_state(), best=best)

    def restore_state(self, state: dict, path: Path) -> None:
        try:
            self.buffer.load(path / "replay_buffer.safetensors")
        except Exception as e:  # noqa: BLE001 - a damaged buffer file: the caller falls back to an older checkpoint
            raise CheckpointError(f"checkpoint file {path / 'replay_buffer.safetensors'} cannot be read "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
        if state.get("best") is not None:  # the best evaluation's weights travel with the checkpoint
            from safetensors.torch import load_file

            try:
                weights = load_file(str(path / "best_model.safetensors"))
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"checkpoint file {path / 'best_model.safetensors'} cannot be read "
                                      f"({type(e).__name__})") from None
            self.best = dict(state["best"], weights=weights)
        for key in _COUNTERS:
            setattr(self, key, state[key])
        self.next_ckpt = math.inf if state.get("next_ckpt") is None else self.next_ckpt
        set_rng_state(state["rng"])
        self.policy.reset()

    def save_checkpoint(self, extra=None) -> Path:
        def extra(tmp: Path) -> None:
            self.buffer.save(tmp / "replay_buffer.safetensors")
            if self.best is not None:
                from safetensors.torch import save_file

                save_file(self.best["weights"], str(tmp / "best_model.safetensors"))

        return super().save_checkpoint(extra=extra)

    # --- acting and learning -----------------------------------------------------------------------------------------
    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.step < self.random_steps:
            return np.random.uniform(-1, 1, size=(obs.shape[0], self.A_env)).astype(np.float32)
        with self.learner.autocast():
            a = self.policy.select_action(pad_to(obs.astype(np.float32), self.policy.config.obs_dim), task=self.task_id)
        return a[:, : self.A_env].float().cpu().numpy()

    @property
    def mixing_offline(self) -> bool:
        return self.offline_buffer is not None and getattr(self.cfg, "mode", None) == "offline-to-online"

    def sample_batch(self) -> dict:
        if self.mixing_offline:
            from ..buffer import sample_mixed

            if self.buffer.num_windows == 0:  # before the first online episode ends: offline data only
                return self.offline_buffer.sample(self.cfg.batch_size)
            ratio = self.cfg.offline_ratio
            return sample_mixed([self.offline_buffer, self.buffer], [ratio, 1 - ratio], self.cfg.batch_size)
        return self.buffer.sample()

    def train_step(self) -> None:
        """The updates due after this environment step: TD-MPC2's burst at the end of the seed phase, then `utd`."""
        if self.step < self.seed_steps or not (self.buffer.num_windows > 0 or self.mixing_offline):
            return
        if not self.burst_done and self.first_update_hook is not None:
            if self.buffer.num_windows == 0:  # the hook needs this task's own data: no update before it
                return
            self.first_update_hook(self)
        if not self.burst_done:
            self.burst_done = True
            n = self.seed_updates if self.seed_steps > 0 else 0
        else:
            self.update_debt += self.cfg.utd * self.cfg.num_envs
            n = int(self.update_debt)
            self.update_debt -= n
        for _ in range(n):
            for k, v in self.learner.update(self.device_batch(self.sample_batch())).items():
                self.metrics_acc.setdefault(k, []).append(v)

    def end_episode(self, episode: dict, env: int) -> None:
        self.buffer.add_episode(**episode, task=self.task_id)
        self.last_return = float(episode["reward"][1:].sum())
        self.episode += 1
        row = dict(step=self.step, episode=self.episode, episode_return=self.last_return,
                   length=len(episode["reward"]) - 1, elapsed_s=round(self.elapsed, 1))
        means = mean_metrics(self.metrics_acc)
        row.update({k: means.get(k, "") for k in TRAIN_METRICS})
        self.append_csv("train.csv", row)
        self.log({"train/episode_return": self.last_return, **{f"train/{k}": v for k, v in means.items()}})
        self.metrics_acc = {}
        self.policy.reset([env])

    def at_boundary(self) -> None:
        """All envs are between episodes: the place for periodic evaluations and checkpoints."""
        cfg, last = self.cfg, self.step >= self.cfg.steps
        if last:  # the final evaluation, before the last checkpoint so that a resumed run knows it (best model)
            self.final_eval = (self.step, self.run_eval())
        elif cfg.eval_freq > 0 and self.step >= self.next_eval:
            # a fine-tuning run's model does not change before its first update: its step-0 evaluation stands
            if self.learner.num_updates > 0 or not cfg.is_finetune:
                self.run_eval()
        if cfg.eval_freq > 0 and self.step >= self.next_eval:
            self.next_eval = (self.step // cfg.eval_freq + 1) * cfg.eval_freq
        # a checkpoint at the last step too: the same command with a larger `steps` extends a finished run
        if cfg.checkpoint_freq > 0 and (self.step >= self.next_ckpt or last):
            self.next_ckpt = (self.step // cfg.checkpoint_freq + 1) * cfg.checkpoint_freq
            self.save_checkpoint()

    def run_eval(self) -> dict:
        cfg = self.cfg
        show = cfg.progress and self.accelerator.is_main_process
        res = evaluate(self.policy, cfg.task, cfg.eval_episodes, seed=cfg.seed + 777,
                       episode_length=cfg.episode_length, progress=show)
        self.append_csv("eval.csv", dict(step=self.step, episode=self.episode, task=cfg.task,
                                         mean_return=res["mean_return"], std_return=res["std_return"],
                                         episodes=cfg.eval_episodes, elapsed_s=round(self.elapsed, 1),
                                         eval_s=round(res["seconds"], 1)),
                        replace_step=True)
        for old in getattr(cfg, "eval_old_tasks", ()):
            r = evaluate(self.policy, old, cfg.eval_episodes, seed=cfg.seed + 777, episode_length=cfg.episode_length)
            self.append_csv("eval_old_tasks.csv", dict(step=self.step, task=old, mean_return=r["mean_return"],
                                                       std_return=r["std_return"]), replace_step=True)
        self.log({"eval/mean_return": res["mean_return"]})
        if cfg.load_best_model_at_end and (self.best is None or res["mean_return"] > self.best["mean_return"]):
            # strictly better, as transformers: on a tie the earlier (less moved) model stays
            self.best = dict(step=self.step, mean_return=res["mean_return"], std_return=res["std_return"],
                             weights={k: v.detach().to("cpu", copy=True).contiguous()
                                      for k, v in self.policy.state_dict().items()})
        return res

    def select_best_model(self, last_eval: dict) -> tuple[dict, dict | None]:
        """load_best_model_at_end: put the best evaluation's weights back when they are not the last ones, and
        evaluate them again on fresh episodes (the best of several evaluations is biased upwards; the new one is
        not). Returns (the final model's evaluation, what was selected or None)."""
        cfg = self.cfg
        if not cfg.load_best_model_at_end or self.best is None or self.best["step"] == self.step:
            return last_eval, None
        self.policy.load_state_dict({k: v.to(self.accelerator.device) for k, v in self.best["weights"].items()})
        self.policy.reset()
        res = evaluate(self.policy, cfg.task, cfg.eval_episodes, seed=cfg.seed + 7770,
                       episode_length=cfg.episode_length, progress=cfg.progress and self.accelerator.is_main_process)
        selected = dict(step=self.best["step"], selection_return=self.best["mean_return"],
                        reevaluated_return=res["mean_return"], reevaluated_std=res["std_return"],
                        last_step=self.step, last_return=last_eval["mean_return"], last_std=last_eval["std_return"])
        return res, selected

    # --- the loop ------------------------------------------------------------------------------------------------------
    def _run(self) -> dict:
        from ..recorder import EpisodeRecorder

        self.setup()
        self.resume()
        cfg, N, O, A = self.cfg, self.cfg.num_envs, self.policy.config.obs_dim, self.policy.config.action_dim
        obs, _ = self.envs.reset(seed=cfg.seed + 7919 * (self.episode + 1) + 1000 * self.accelerator.process_index)
        episodes = [EpisodeRecorder(O, A) for _ in range(N)]
        for i, rec in enumerate(episodes):
            rec.start(pad_to(obs[i].astype(np.float32), O))
        if cfg.is_finetune and self.step == 0 and cfg.eval_freq > 0:
            self.run_eval()  # the adapted checkpoint's return: what fine-tuning must improve on
            self.next_eval = cfg.eval_freq
        bar = self.progress_bar(unit="step", desc=cfg.task)
        t_last = time.perf_counter()
        while self.step < cfg.steps:
            action = self.act(obs)
            next_obs, reward, term, trunc, info = self.envs.step(action)
            done = term | trunc
            for i, rec in enumerate(episodes):
                reached = info["final_obs"][i] if done[i] else next_obs[i]  # autoreset: the true last observation
                rec.add(pad_to(action[i], A), reward[i], pad_to(np.asarray(reached, np.float32), O), term[i])
            obs = next_obs
            self.step += N
            if done.any():  # elapsed_s counts training time only (evaluations are excluded)
                self.elapsed, t_last = self.elapsed + time.perf_counter() - t_last, time.perf_counter()
                for i in np.flatnonzero(done):
                    self.end_episode(episodes[i].finish(), int(i))
                    episodes[i].start(pad_to(next_obs[i].astype(np.float32), O))
            self.train_step()
            if done.all():
                self.at_boundary()
                t_last = time.perf_counter()
            if bar is not None:
                bar.update(self.step - bar.n)
                bar.set_postfix(ret=f"{self.last_return:.1f}", buf=self.buffer.num_steps, refresh=False)
        self.elapsed += time.perf_counter() - t_last
        if bar is not None:
            bar.close()
        self.envs.close()
        final = self.final_eval[1] if self.final_eval is not None and self.final_eval[0] == self.step else None
        results = self.write_outputs(*self.select_best_model(final or self.run_eval()))
        self.accelerator.end_training()
        return results

    # --- outputs -------------------------------------------------------------------------------------------------------
    def write_outputs(self, final_eval: dict, selected: dict | None = None) -> dict:
        from ..envs import normalized_score

        cfg = self.cfg
        results = {cfg.task: dict(mean_return=final_eval["mean_return"], std_return=final_eval["std_return"],
                                  episodes=final_eval["episodes"], planner=final_eval["planner"], steps=self.step,
                                  model_step=self.step if selected is None else selected["step"])}
        if not self.accelerator.is_main_process:
            return results
        video = None
        (self.out / "eval_video.mp4").unlink(missing_ok=True)  # never a stale video from an earlier run
        if cfg.save_video:
            try:
                video = record_video(self.policy, cfg.task, self.out / "eval_video.mp4", seed=cfg.seed + 4242,
                                     size=cfg.video_size, episode_length=cfg.episode_length)
            except Exception as e:  # rendering needs a GL backend; a run's results must not depend on it
                self.accelerator.print(f"video skipped: {type(e).__name__}: {e}")
        curve = plot_learning_curve(self.out / "eval.csv", self.out / "learning_curve.png", title=cfg.task)
        score = normalized_score({cfg.task: final_eval["mean_return"]})
        card = self.model_card({t: dict(r) for t, r in results.items()}, score, curve, video,
                               base_model=self.card_extra.get("base_model"),
                               base_revision=self.card_extra.get("base_revision"), notes=self.card_extra.get("notes"),
                               usage_task=self.card_extra.get("usage_task") or cfg.task,
                               datasets=self.card_extra.get("datasets"))
        zero = self.first_eval(step=0)
        self.write_final(dict(results=results, normalized_score=score, env_steps=self.step, elapsed_s=self.elapsed,
                              updates=self.learner.num_updates,
                              zero_shot_return=None if zero is None else dict(mean_return=zero[0], std_return=zero[1]),
                              selected_model=selected), card)
        if cfg.push_to_hub:
            self.push(card, [self.out / n for n in ("train_config.yaml", "eval_results.json", "eval.csv",
                                                    "train.csv")] + [curve, video],
                      message=f"{getattr(cfg, 'mode', 'scratch')} {cfg.task} {self.step} steps")
        if selected is not None:
            print(f"load_best_model_at_end: the model of step {selected['step']} (evaluated {selected['selection_return']:.1f}"
                  f", on fresh episodes {selected['reevaluated_return']:.1f}) replaces the last one of step "
                  f"{selected['last_step']} ({selected['last_return']:.1f}); the last weights stay in checkpoints/")
        if zero is not None:
            print(f"zero-shot return {zero[0]:.1f} +/- {zero[1]:.1f} -> final return {final_eval['mean_return']:.1f} "
                  f"+/- {final_eval['std_return']:.1f} ({final_eval['episodes']} episodes each)")
        print(f"done: {cfg.task} mean return {final_eval['mean_return']:.1f} +/- {final_eval['std_return']:.1f} "
              f"after {self.step} env steps ({self.elapsed / 60:.1f} min)\n"
              f"  model: {self.out}/model.safetensors (MBDPODiffusionPolicy.from_pretrained('{self.out}'))\n"
              f"  curve: {curve}\n  video: {video}\n  card:  {self.out}/README.md\n"
              f"  logs:  {self.out}/train.csv, {self.out}/eval.csv")
        return results


__all__ = ["OnlineTrainer"]
