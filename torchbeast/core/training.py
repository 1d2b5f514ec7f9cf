"""The learner's state and its reporting, shared by MonoBeast and PolyBeast.

`LearnerState` owns the learner model, the optimiser and LR schedule, the step count and the
run's outputs (logs.csv, TensorBoard, meta.json, checkpoints, learning curve). It resumes from
SAVEDIR/XPID/model.tar (or model.prev.tar when that is unreadable) when one exists: model,
optimiser, schedule, step and the learner process's RNG states, with logs.csv (and so the learning
curve and TensorBoard) cut back to the checkpoint's step. An update with a non-finite loss or
gradient norm is skipped; --max_nonfinite_updates of them in a row stop the run, keeping the last
checkpoint as it is. `learn()` is safe to call from several learner threads:
updates are serialised, and `after_update` runs under the same lock (e.g. to copy the new
weights to the actors' model). `Reporter` prints the progress lines, redraws the learning curve
and writes the periodic checkpoints, from the supervising loop (`torchbeast.core.supervisor`).
In a group of data-parallel learners (`torchbeast.core.distributed`) rank 0 opens the run and
sends its start state to the others, the gradients are averaged over the group, the step counts
every learner's batches, and only rank 0 writes outputs.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np
import torch

from torchbeast.core.checkpoint import load_latest_checkpoint, remove_temporary_files, save_checkpoint
from torchbeast.core.distributed import differing_flags, state_digest
from torchbeast.core.learner import UpdateConfig, learn_step, make_optimizer
from torchbeast.core.run_outputs import RunLogger, plot_learning_curve, read_curve, trim_log, write_meta
from torchbeast.core.runs import (
    MODEL_KEYS,
    build_model,
    check_resume_compatible,
    check_trained_env,
    default_xpid,
    model_config,
    train_run_dir,
)
from torchbeast.core.supervisor import RunFailure
from torchbeast.errors import ConfigError
from torchbeast.models import AgentState, MemoryAgent

if TYPE_CHECKING:
    from torchbeast.core.distributed import LearnerGroup

log = logging.getLogger("torchbeast")


class NonFiniteUpdates(RunFailure):
    """--max_nonfinite_updates updates in a row had a non-finite loss or gradient norm."""


def rng_states() -> Dict[str, Any]:
    """This process's random number generators (torch, CUDA, NumPy, Python), in a form a
    `weights_only` checkpoint load accepts (tensors, numbers, lists)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                   has_gauss=int(has_gauss), cached_gaussian=float(cached_gaussian)),
        python=[version, list(internal), gauss_next],
    )


def set_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def same_update_flags() -> Tuple[str, ...]:
    """The flags every data-parallel learner must share: they decide the model and its updates."""
    return (*MODEL_KEYS, *UpdateConfig.flag_names(), "env", "batch_size", "unroll_length")


class LearnerState:
    """The learner side of a run. It keeps `flags` only to record them (meta.json, checkpoints).
    `server_stats`, when set, adds fields to each logs.csv row (PolyBeast's env servers).
    `group`: this learner's data-parallel group (None: it learns alone)."""

    server_stats: Optional[Callable[[], Dict[str, Any]]] = None

    def __init__(self, flags: argparse.Namespace, device: torch.device, meta: Optional[Dict[str, Any]] = None,
                 group: Optional["LearnerGroup"] = None) -> None:
        self.group = group
        self.writes_outputs = group is None or group.rank == 0  # logs, TensorBoard, checkpoints, curve
        if flags.xpid is None and self.writes_outputs:
            flags.xpid = default_xpid()  # recorded with the flags (the other ranks get rank 0's)
        self.flags = flags
        self.device = device
        self.total_steps: int = flags.total_steps
        if flags.seed is not None:
            torch.manual_seed(flags.seed)
        self.model_config = model_config(flags)
        self.model = build_model(self.model_config).to(device)
        self.update_config = UpdateConfig.from_flags(flags)
        self.optimizer, self.scheduler = make_optimizer(self.update_config, self.model)
        self.step = 0
        self.recent_returns: Deque[float] = collections.deque(maxlen=100)
        self.last_stats: Dict[str, Any] = {}
        self.lock = threading.Lock()
        self.max_nonfinite_updates: int = getattr(flags, "max_nonfinite_updates", 10)
        self.nonfinite_in_a_row = 0
        self.diverged = False  # stopped by non-finite updates: the checkpoint on disk is kept
        self.saved_step: Optional[int] = None  # the step of the checkpoint on disk
        self.logger: Optional[RunLogger] = None
        # (step, mean episode return) of each update where an episode ended: the learning curve.
        self.curve: List[Tuple[int, float]] = []
        if group is None:
            self._open_run(meta)
        else:
            self._start_in_group(group, meta)
        self._sps_clock = (time.monotonic(), self.step)

    def _set_paths(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.checkpoint_path = os.path.join(run_dir, "model.tar")
        self.curve_path = os.path.join(run_dir, "learning_curve.png")
        self.curve_title = f"{self.flags.xpid}: {self.flags.env}"

    def _open_run(self, meta: Optional[Dict[str, Any]]) -> None:
        """Creates or resumes SAVEDIR/XPID and opens its outputs."""
        flags = self.flags
        self._set_paths(train_run_dir(flags.savedir, flags.xpid))
        remove_temporary_files(self.run_dir)
        self._resume()
        write_meta(self.run_dir, vars(flags),
                   extra=dict(resumed_from_step=self.step, device=str(self.device), **(meta or {})))
        csv_path = os.path.join(self.run_dir, "logs.csv")
        removed = trim_log(csv_path, self.step)  # rows after the checkpoint are logged again
        if removed:
            log.info("Removed %d row(s) after step %d from %s: they are learned again", removed, self.step, csv_path)
        # TensorBoard hides the events after the checkpoint's step the same way.
        self.logger = RunLogger(self.run_dir, purge_step=self.step + 1 if removed else None)
        self.curve = read_curve(self.logger.csv_path)

    def _start_in_group(self, group: "LearnerGroup", meta: Optional[Dict[str, Any]]) -> None:
        """Rank 0 opens (or resumes) the run as a lone learner does and sends the model,
        optimiser, schedule, step and flags to every rank: the replicas start identical and stay
        so, as they all apply the same averaged gradients. The others write nothing."""

        def open_on_rank_0() -> Dict[str, Any]:
            self._open_run(dict(meta or {}, learners=group.world_size))
            return dict(flags=vars(self.flags), model_state_dict=self.model.state_dict(),
                        optimizer_state_dict=self.optimizer.state_dict(),
                        scheduler_state_dict=self.scheduler.state_dict(), step=self.step,
                        recent_returns=list(self.recent_returns))

        start = group.share(open_on_rank_0 if group.rank == 0 else None)
        if group.rank == 0:
            log.info("Learner rank 0 starts at step %d (weights digest %s)", self.step,
                     state_digest(self.model.state_dict()))
            return
        differ = differing_flags(start["flags"], vars(self.flags), same_update_flags())
        if differ:
            raise ConfigError(f"learner rank {group.rank} was started with other flags than rank 0: "
                              f"{'; '.join(differ)}")
        self.flags.xpid = start["flags"]["xpid"]
        self._set_paths(os.path.join(os.path.expanduser(self.flags.savedir), self.flags.xpid))
        self.model.load_state_dict(start["model_state_dict"])
        self.optimizer.load_state_dict(start["optimizer_state_dict"])
        self.scheduler.load_state_dict(start["scheduler_state_dict"])
        self.step = int(start["step"])
        self.recent_returns.extend(start["recent_returns"])
        if self.flags.seed is not None:  # its own action sampling, still repeatable
            torch.manual_seed(self.flags.seed * 1000 + group.rank)
        log.info("Learner rank %d starts at step %d from rank 0's weights (digest %s)", group.rank, self.step,
                 state_digest(self.model.state_dict()))

    def _resume(self) -> None:
        latest = load_latest_checkpoint(self.checkpoint_path)
        if latest is None:
            return
        path, state = latest
        check_resume_compatible(state["model_config"], self.model_config, path)
        check_trained_env(state, self.flags.env, path, self.flags.allow_env_mismatch)
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self.step = self.saved_step = int(state["step"])
        self.recent_returns.extend(state.get("recent_returns", []))
        if "rng_states" in state:  # checkpoints before RNG states were saved resume without them
            set_rng_states(state["rng_states"])
        log.info("Resuming %s from step %d", path, self.step)

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def close_if_done(self) -> bool:
        """True (and closes the outputs) when a resumed run already has --total_steps steps."""
        if not self.done:
            return False
        log.info("Run %s already has %d >= --total_steps %d steps; nothing to do.",
                 self.flags.xpid, self.step, self.total_steps)
        self.close()
        return True

    def new_model_copy(self, device: torch.device) -> MemoryAgent:
        """A copy of the learner model for acting (inference), in eval mode."""
        model = build_model(self.model_config).to(device)
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
            group = self.group
            stats = learn_step(self.update_config, self.model, batch, initial_agent_state, self.optimizer,
                               self.scheduler, gradient_hook=group.average_gradients if group else None)
            if stats.get("skipped"):  # in a group, every learner skips the same update
                self._skipped(stats)
                return stats
            self.nonfinite_in_a_row = 0
            if after_update is not None:
                after_update()
            T, B = batch["done"].shape
            if group is None:
                self.step += (T - 1) * B
            else:  # each learner learned a [T, B] batch (same flags): the step is their sum
                self.step += (T - 1) * B * group.world_size
                stats["episode_returns"] = group.gather_floats(stats["episode_returns"])
                stats["episode_steps"] = group.gather_floats(stats["episode_steps"])
            self._record(stats)
        return stats

    def _skipped(self, stats: Dict[str, Any]) -> None:
        self.nonfinite_in_a_row += 1
        log.warning("Update at step %d skipped: non-finite loss (%s) or gradient norm (%s); %d in a row, the "
                    "run stops at --max_nonfinite_updates %d", self.step, stats["total_loss"], stats["grad_norm"],
                    self.nonfinite_in_a_row, self.max_nonfinite_updates)
        if self.nonfinite_in_a_row >= self.max_nonfinite_updates:
            self.diverged = True
            kept = (f"the checkpoint of step {self.saved_step} is kept" if self.saved_step is not None
                    else "no checkpoint was saved")
            raise NonFiniteUpdates(f"{self.nonfinite_in_a_row} updates in a row had a non-finite loss or gradient "
                                   f"norm (at step {self.step}); {kept}")

    def _record(self, stats: Dict[str, Any]) -> None:
        returns = stats["episode_returns"]
        self.recent_returns.extend(returns)
        now = time.monotonic()
        t0, s0 = self._sps_clock
        self._sps_clock = (now, self.step)
        row = {key: stats[key] for key in ("total_loss", "pg_loss", "baseline_loss", "entropy_loss",
                                           "learning_rate", "grad_norm")}
        # sps: this update's steps over the time since the previous update (logs.csv, TensorBoard).
        row.update(step=self.step, time=time.time(), sps=(self.step - s0) / (now - t0) if now > t0 else None,
                   episodes=len(returns),
                   mean_episode_return=sum(returns) / len(returns) if returns else None,
                   mean_episode_step=sum(stats["episode_steps"]) / len(returns) if returns else None)
        if self.server_stats is not None:  # PolyBeast: env servers connected, steps/s per host
            row.update(self.server_stats())
        if self.logger is not None:
            self.logger.log(row)
        self.last_stats = row
        if returns:
            self.curve.append((self.step, row["mean_episode_return"]))

    def save(self) -> Optional[bool]:
        """Writes the checkpoint, then redraws the learning curve; False (saying why) when the
        model diverged, which leaves the last good checkpoint in place. None on a data-parallel
        learner other than rank 0 (rank 0 saves)."""
        if not self.writes_outputs:
            return None
        with self.lock:
            if self.diverged or not all(torch.isfinite(p).all() for p in self.model.parameters()):
                self.diverged = True
                log.error("Not saving a checkpoint: the model diverged (non-finite updates or weights); %s",
                          f"{self.checkpoint_path} keeps step {self.saved_step}" if self.saved_step is not None
                          else "no checkpoint was saved")
                return False
            started = time.monotonic()
            save_checkpoint(self.checkpoint_path, dict(
                model_state_dict=self.model.state_dict(),
                optimizer_state_dict=self.optimizer.state_dict(),
                scheduler_state_dict=self.scheduler.state_dict(),
                model_config=self.model_config,
                step=self.step,
                flags=vars(self.flags),
                recent_returns=list(self.recent_returns),
                rng_states=rng_states(),
            ))
            self.saved_step = self.step
            seconds = time.monotonic() - started
        log.info("Saved checkpoint %s at step %d in %.2f s", self.checkpoint_path, self.step, seconds)
        self.draw_learning_curve()
        return True

    def draw_learning_curve(self) -> None:
        """Redraws learning_curve.png (outside the lock: the learner threads go on meanwhile)."""
        if not self.writes_outputs:
            return
        with self.lock:
            points = list(self.curve)
        plot_learning_curve(points, self.curve_path, title=self.curve_title)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        if self.group is not None:  # the replicas' weights, to compare across ranks and with the checkpoint
            log.info("Learner rank %d stops at step %d (weights digest %s)", self.group.rank, self.step,
                     state_digest(self.model.state_dict()))


class StepRate:
    """Env steps per second over the updates of the last `window_s` seconds (since the start when
    the run is younger).

    It is measured between update times, not over a fixed stretch of wall time: an update adds
    batch_size * unroll_length steps at once (3200 every ~25 s on Memory Maze with the seed's
    flags), so a count over a fixed window would jump by a whole update. Once the next update is
    later than the mean interval between updates, the wait counts too, so a stalled run's rate
    falls towards 0.
    """

    def __init__(self, window_s: float, now: float, step: int) -> None:
        self.window_s = window_s
        self._samples: Deque[Tuple[float, int]] = collections.deque([(now, step)])  # start, then each update

    def observe(self, now: float, step: int) -> None:
        if step != self._samples[-1][1]:
            self._samples.append((now, step))
        last_update = self._samples[-1][0]
        # Keep one sample at or before the window's start as its base.
        while len(self._samples) >= 2 and self._samples[1][0] <= last_update - self.window_s:
            self._samples.popleft()

    def per_second(self, now: float) -> float:
        (t0, s0), (t1, s1) = self._samples[0], self._samples[-1]
        if t1 == t0:
            return 0.0
        mean_interval = (t1 - t0) / (len(self._samples) - 1)
        overdue = max(0.0, now - t1 - mean_interval)
        return (s1 - s0) / (t1 - t0 + overdue)


class Reporter:
    """Called from the supervising loop: a progress line every `log_interval` seconds, the learning
    curve every `curve_interval` seconds, a checkpoint (with the curve) every `checkpoint_interval`.
    `servers`: text appended to each progress line (PolyBeast: env servers and steps/s per host)."""

    def __init__(self, state: LearnerState, log_interval: float, checkpoint_interval: float,
                 curve_interval: float = 60.0, sps_window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, servers: Optional[Callable[[], str]] = None) -> None:
        self.state = state
        self.servers = servers
        self.log_interval = log_interval
        self.checkpoint_interval = checkpoint_interval
        self.curve_interval = curve_interval
        self.clock = clock
        now = clock()
        self.rate = StepRate(sps_window, now, state.step)
        self._last_log = self._last_checkpoint = self._last_curve = now
        self._curve_points_drawn = len(state.curve)

    def tick(self) -> None:
        if not getattr(self.state, "writes_outputs", True):  # a data-parallel learner other than rank 0
            return
        now = self.clock()
        self.rate.observe(now, self.state.step)
        if now - self._last_log >= self.log_interval:
            self.print_progress(self.rate.per_second(now))
            self._last_log = now
        if now - self._last_checkpoint >= self.checkpoint_interval:
            self.state.save()
            self._last_checkpoint = self._last_curve = now
            self._curve_points_drawn = len(self.state.curve)
        elif now - self._last_curve >= self.curve_interval:
            if len(self.state.curve) != self._curve_points_drawn:  # nothing new, nothing to draw
                self._curve_points_drawn = len(self.state.curve)
                self.state.draw_learning_curve()
            self._last_curve = now

    def print_progress(self, sps: float) -> None:
        returns = self.state.recent_returns
        mean_return = (f"{sum(returns) / len(returns):.2f} over {len(returns)} episodes" if returns
                       else "no episode yet")
        loss = self.state.last_stats.get("total_loss")
        loss_text = f"{loss:.3f}" if loss is not None else "-"
        servers = f" | {self.servers()}" if self.servers is not None else ""
        print(f"step {self.state.step:>10d} | {sps:7.1f} SPS | return {mean_return} | loss {loss_text}{servers}",
              flush=True)
