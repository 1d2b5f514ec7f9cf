"""The learner's state and bookkeeping, shared by MonoBeast and PolyBeast.

`LearnerState` owns the learner model, the optimiser and LR schedule, the step count and the
run's outputs (logs.csv, TensorBoard, meta.json, checkpoints, learning curve). It resumes from
SAVEDIR/XPID/model.tar when one exists. `learn()` is safe to call from several learner threads:
updates are serialised, and `after_update` runs under the same lock (e.g. to copy the new
weights to the actors' model).
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Optional

import torch

from torchbeast.core.checkpoint import load_checkpoint, save_checkpoint
from torchbeast.core.learner import learn_step, make_optimizer
from torchbeast.core.run_outputs import RunLogger, plot_learning_curve, write_meta
from torchbeast.core.runs import build_model, check_resume_compatible, existing_checkpoint, model_config, train_run_dir
from torchbeast.models import AgentState, MemoryAgent

log = logging.getLogger("torchbeast")


class LearnerState:
    def __init__(self, flags: argparse.Namespace, device: torch.device, meta: Optional[Dict[str, Any]] = None) -> None:
        self.flags = flags
        self.device = device
        self.run_dir = train_run_dir(flags)
        self.checkpoint_path = os.path.join(self.run_dir, "model.tar")
        if flags.seed is not None:
            torch.manual_seed(flags.seed)
        self.model = build_model(model_config(flags)).to(device)
        self.optimizer, self.scheduler = make_optimizer(flags, self.model)
        self.step = 0
        self.recent_returns: collections.deque = collections.deque(maxlen=100)
        self.last_stats: Dict[str, Any] = {}
        self.lock = threading.Lock()
        self._resume()
        write_meta(self.run_dir, vars(flags), extra=dict(resumed_from_step=self.step, device=str(device), **(meta or {})))
        self.logger = RunLogger(self.run_dir)
        self._sps_clock = (time.monotonic(), self.step)

    def _resume(self) -> None:
        path = existing_checkpoint(self.run_dir)
        if path is None:
            return
        state = load_checkpoint(path)
        check_resume_compatible(state["model_config"], self.flags, path)
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self.step = int(state["step"])
        self.recent_returns.extend(state.get("recent_returns", []))
        log.info("Resuming %s from step %d", path, self.step)

    @property
    def done(self) -> bool:
        return self.step >= self.flags.total_steps

    def close_if_done(self) -> bool:
        """True (and closes the outputs) when a resumed run already has --total_steps steps."""
        if not self.done:
            return False
        log.info("Run %s already has %d >= --total_steps %d steps; nothing to do.",
                 self.flags.xpid, self.step, self.flags.total_steps)
        self.close()
        return True

    def new_model_copy(self, device: torch.device) -> MemoryAgent:
        """A copy of the learner model for acting (inference), in eval mode."""
        model = build_model(model_config(self.flags)).to(device)
        model.load_state_dict(self.model.state_dict())
        model.eval()
        return model

    def learn(
        self,
        batch: Dict[str, torch.Tensor],
        initial_agent_state: AgentState,
        after_update: Optional[Callable[[], None]] = None,
    ) -> Optional[Dict[str, Any]]:
        """One update, or None when another learner thread already reached --total_steps."""
        with self.lock:
            if self.done:
                return None
            stats = learn_step(self.flags, self.model, batch, initial_agent_state, self.optimizer, self.scheduler)
            if after_update is not None:
                after_update()
            T, B = batch["done"].shape
            self.step += (T - 1) * B
            self._record(stats)
        return stats

    def _record(self, stats: Dict[str, Any]) -> None:
        returns = stats["episode_returns"]
        self.recent_returns.extend(returns)
        now = time.monotonic()
        t0, s0 = self._sps_clock
        self._sps_clock = (now, self.step)
        row = {key: stats[key] for key in ("total_loss", "pg_loss", "baseline_loss", "entropy_loss",
                                           "learning_rate", "grad_norm")}
        row.update(step=self.step, time=time.time(), sps=(self.step - s0) / (now - t0) if now > t0 else None,
                   episodes=len(returns),
                   mean_episode_return=sum(returns) / len(returns) if returns else None,
                   mean_episode_step=sum(stats["episode_steps"]) / len(returns) if returns else None)
        self.logger.log(row)
        self.last_stats = row

    def save(self) -> None:
        with self.lock:
            save_checkpoint(self.checkpoint_path, dict(
                model_state_dict=self.model.state_dict(),
                optimizer_state_dict=self.optimizer.state_dict(),
                scheduler_state_dict=self.scheduler.state_dict(),
                model_config=model_config(self.flags),
                step=self.step,
                flags=vars(self.flags),
                recent_returns=list(self.recent_returns),
            ))
            plot_learning_curve(self.logger.csv_path, os.path.join(self.run_dir, "learning_curve.png"),
                                title=f"{self.flags.xpid}: {self.flags.env}")
        log.info("Saved checkpoint %s at step %d", self.checkpoint_path, self.step)

    def close(self) -> None:
        self.logger.close()


class Reporter:
    """Prints a progress line every --log_interval seconds and checkpoints every --checkpoint_interval."""

    def __init__(self, state: LearnerState) -> None:
        self.state = state
        now = time.monotonic()
        self.start_time, self.start_step = now, state.step
        self._last_log, self._last_log_step = now, state.step
        self._last_checkpoint = now

    def tick(self) -> None:
        now = time.monotonic()
        flags = self.state.flags
        if now - self._last_log >= flags.log_interval:
            self.print_progress((self.state.step - self._last_log_step) / (now - self._last_log))
            self._last_log, self._last_log_step = now, self.state.step
        if now - self._last_checkpoint >= flags.checkpoint_interval:
            self.state.save()
            self._last_checkpoint = now

    def print_progress(self, sps: float) -> None:
        returns = self.state.recent_returns
        mean_return = (f"{sum(returns) / len(returns):.2f} over {len(returns)} episodes" if returns
                       else "no episode yet")
        loss = self.state.last_stats.get("total_loss")
        loss_text = f"{loss:.3f}" if loss is not None else "-"
        print(f"step {self.state.step:>10d} | {sps:7.1f} SPS | return {mean_return} | loss {loss_text}", flush=True)

    def summary(self) -> None:
        elapsed = time.monotonic() - self.start_time
        steps = self.state.step - self.start_step
        log.info("Trained %d steps in %.0f s (%.1f SPS) to step %d.", steps, elapsed, steps / max(elapsed, 1e-9),
                 self.state.step)
