"""MonoBeast: IMPALA in pure Python + PyTorch, on one machine.

Actors are processes (spawned, so no torch state is forked) that step their own env with a
shared-memory copy of the model and write rollouts into shared-memory buffers; learner threads
in the main process take batches of full buffers, compute V-trace updates and copy the new
weights back into the actors' model.

    python -m torchbeast.monobeast --env memory_maze:MemoryMaze-9x9-ExtraObs-v0 --posemb noisygt
    python -m torchbeast.monobeast --mode test --record True --env ... --xpid RUN
"""
from __future__ import annotations

import argparse
import collections
import logging
import multiprocessing.connection as mp_connection
import queue
import signal
import threading
import time
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Set, Tuple

import numpy as np
import torch
import torch.multiprocessing as mp

from torchbeast.core import flags as flags_lib
from torchbeast.core.child_processes import die_with_parent
from torchbeast.core.cli import children_ignore_sigint, exit_now, quiet_env_logging, run_command, setup_logging
from torchbeast.core.device import select_device, set_cpu_threads
from torchbeast.core.environment import Environment, create_env
from torchbeast.core.evaluate import test
from torchbeast.core.rollout import agent_step, step_spec
from torchbeast.core.supervisor import StopReason, exit_code_text, run_learner
from torchbeast.core.training import LearnerState, Reporter
from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")

Buffers = Dict[str, List[torch.Tensor]]


def create_buffers(env_id: str, unroll_length: int, num_buffers: int) -> Buffers:
    """Shared-memory rollouts of unroll_length + 1 rows each, laid out as `rollout.step_spec` says."""
    buffers: Buffers = {}
    for key, (shape, dtype) in step_spec(env_id).items():
        buffers[key] = [torch.empty((unroll_length + 1, *shape), dtype=dtype).share_memory_()
                        for _ in range(num_buffers)]
    return buffers


def act(
    flags: argparse.Namespace,
    actor_index: int,
    free_queue: Any,
    full_queue: Any,
    model: torch.nn.Module,
    buffers: Buffers,
    initial_agent_state_buffers: List[List[torch.Tensor]],
    seed: Optional[int] = None,
) -> None:
    """Actor process: fills free buffers with rollouts until it is sent None."""
    # SIGINT is ignored (children_ignore_sigint): the learner stops us, and if it dies (even by
    # SIGKILL) so do we, at once: an actor has nothing to save.
    die_with_parent(signal.SIGKILL)
    torch.set_num_threads(1)
    logging.basicConfig(format="[%(levelname)s %(asctime)s actor] %(message)s", level=logging.INFO)
    quiet_env_logging()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        env = Environment(create_env(flags.env, seed=seed, pos_noise=flags.pos_noise, impl=flags.env_impl))
        try:
            fill_rollouts(env, model, flags.unroll_length, free_queue, full_queue, buffers,
                          initial_agent_state_buffers)
        finally:
            env.close()
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - reported to the learner, which stops the run
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        full_queue.put(ActorError(actor_index, f"{type(e).__name__}: {message}", isinstance(e, ConfigError)))
        if not isinstance(e, ConfigError):
            raise  # the traceback helps with bugs; bad input was said in one line already


def fill_rollouts(
    env: Environment,
    model: torch.nn.Module,
    unroll_length: int,
    free_queue: Any,
    full_queue: Any,
    buffers: Buffers,
    initial_agent_state_buffers: List[List[torch.Tensor]],
) -> None:
    """Steps `env` and writes rollouts (the layout of `torchbeast.core.rollout`) into the buffers
    `free_queue` hands out, putting each full one on `full_queue`, until `free_queue` gives None."""
    step = env.initial()
    state_before = model.initial_state(1)  # the agent state before `step`
    with torch.inference_mode():
        outputs, state_after = agent_step(model, step, state_before)
    while True:
        index = free_queue.get()
        if index is None:
            return
        _write_row(buffers, index, 0, step, outputs)  # the previous rollout's last row
        for i, tensor in enumerate(state_before):
            initial_agent_state_buffers[index][i][...] = tensor
        for t in range(1, unroll_length + 1):
            step = env.step(int(outputs["action"].item()))
            state_before = state_after
            with torch.inference_mode():
                outputs, state_after = agent_step(model, step, state_before)
            _write_row(buffers, index, t, step, outputs)
        full_queue.put(index)


def _write_row(buffers: Buffers, index: int, t: int, step: Dict[str, Any], outputs: Dict[str, torch.Tensor]) -> None:
    """Row t of rollout `index`: the step and the agent's outputs computed on it."""
    for source in (step, outputs):
        for key, value in source.items():
            if key in buffers:
                buffers[key][index][t, ...] = value


def actor_seed(seed: Optional[int], actor_index: int, start: int, start_step: int) -> Optional[int]:
    """The seed of an actor's mazes, noise and actions: a restarted actor (`start` > 0) or a resumed
    run (`start_step` > 0) does not replay the mazes of an earlier start."""
    if seed is None:
        return None
    if start == 0 and start_step == 0:
        return seed * 1000 + actor_index
    return int(np.random.SeedSequence([seed, actor_index, start, start_step]).generate_state(1)[0])


class ActorError(NamedTuple):
    """Sent through the full queue when an actor fails, so the learner can say why and stop."""

    actor_index: int
    message: str
    is_config_error: bool


def get_batch(
    flags: argparse.Namespace,
    free_queue: Any,
    full_queue: Any,
    buffers: Buffers,
    initial_agent_state_buffers: List[List[torch.Tensor]],
    device: torch.device,
    lock: threading.Lock,
    stop: threading.Event,
) -> Optional[tuple]:
    """Takes batch_size full buffers, stacks them on `device`, frees the buffers."""
    with lock:
        indices = []
        while len(indices) < flags.batch_size:
            if stop.is_set():
                for index in indices:
                    free_queue.put(index)
                return None
            try:
                item = full_queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(item, ActorError):  # only bad input reaches here (ActorChannels.get)
                raise ConfigError(item.message.split(": ", 1)[1])
            indices.append(item)
    batch = {key: torch.stack([buffers[key][m] for m in indices], dim=1) for key in buffers}
    initial_agent_state = tuple(
        torch.cat(ts, dim=1) for ts in zip(*[initial_agent_state_buffers[m] for m in indices])
    )
    for m in indices:
        free_queue.put(m)
    non_blocking = device.type == "cuda"
    batch = {k: t.to(device=device, non_blocking=non_blocking) for k, t in batch.items()}
    initial_agent_state = tuple(t.to(device=device, non_blocking=non_blocking) for t in initial_agent_state)
    return batch, initial_agent_state


class ActorChannels:
    """How buffer indices travel between the learner and the actors: one free queue and one pipe
    back per actor, never shared, so an actor killed mid-read or mid-write (holding a queue's
    lock, or leaving half a message) hurts no other actor. The learner knows which buffers each
    actor holds (handed out, not yet back full), and gives them to the others when it dies.

    `put` and `get` are the free queue and full queue `get_batch` takes (called from the learner
    threads); `open` and `reclaim` are called by `ActorRestarts`, in the main thread.
    """

    def __init__(self, ctx: Any, num_actors: int) -> None:
        self.ctx = ctx
        self.lock = threading.Lock()
        self.free: List[Any] = [None] * num_actors  # GUARDED_BY(lock), as the fields below
        self.full: List[Any] = [None] * num_actors  # the learner's end of each actor's pipe
        self.held: List[Set[int]] = [set() for _ in range(num_actors)]
        self.unassigned: List[int] = []  # freed while no actor was running

    def open(self, actor_index: int) -> Tuple[Any, "FullQueueEnd"]:
        """New channels for (a new process of) actor `actor_index`: (its free queue, its full
        queue end); give it buffers with `put` once its process has started."""
        free, (reader, writer) = self.ctx.SimpleQueue(), self.ctx.Pipe(duplex=False)
        with self.lock:
            self.free[actor_index], self.full[actor_index] = free, reader
            self.held[actor_index] = set()
            waiting, self.unassigned = self.unassigned, []
        for index in waiting:
            self.put(index)
        return free, FullQueueEnd(writer)

    def put(self, index: int) -> None:
        """Hands free buffer `index` to the running actor holding the fewest."""
        with self.lock:
            running = [i for i, free in enumerate(self.free) if free is not None]
            if not running:
                self.unassigned.append(index)
                return
            actor_index = min(running, key=lambda i: len(self.held[i]))
            self.held[actor_index].add(index)
            self.free[actor_index].put(index)

    def get(self, timeout: float) -> Any:
        """The next full buffer index (or an actor's ConfigError); queue.Empty after `timeout`."""
        with self.lock:
            readers = {reader: i for i, reader in enumerate(self.full) if reader is not None}
        for reader in mp_connection.wait(list(readers), timeout):
            actor_index = readers[reader]
            with self.lock:
                if self.full[actor_index] is not reader:
                    continue  # the actor died and was restarted meanwhile
                try:
                    item = reader.recv()
                except (EOFError, OSError):  # the actor died (perhaps mid-message): ActorRestarts sees it
                    reader.close()
                    self.full[actor_index] = None
                    continue
                if isinstance(item, ActorError) and not item.is_config_error:
                    log.warning("actor %d failed: %s", item.actor_index, item.message)  # it is restarted
                    continue
                if not isinstance(item, ActorError):
                    self.held[actor_index].discard(item)
                return item
        raise queue.Empty

    def reclaim(self, actor_index: int) -> List[int]:
        """Actor `actor_index` died: closes its channels; returns the buffers it held."""
        with self.lock:
            if self.full[actor_index] is not None:
                self.full[actor_index].close()
            if self.free[actor_index] is not None:
                self.free[actor_index].close()
            self.free[actor_index] = self.full[actor_index] = None
            held, self.held[actor_index] = sorted(self.held[actor_index]), set()
        return held


class FullQueueEnd:
    """An actor's end of its pipe to the learner, with the `put` that `fill_rollouts` calls."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def put(self, item: Any) -> None:
        self.connection.send(item)

    def close(self) -> None:
        self.connection.close()


class ActorRestarts:
    """A health check that restarts a dead actor process (saying which, and its exit code) and
    gives its buffers to the others; it stops the run when actors die `max_deaths` times within
    `window_s` seconds (a fault that restarting does not cure). An actor that ended with code 0
    stopped after reporting bad input (a ConfigError the learner raises); after `grace_s` without
    that report, the run fails naming it."""

    def __init__(self, start: Callable[[int, Any, FullQueueEnd], Any], channels: ActorChannels, num_actors: int,
                 max_deaths: int = 5, window_s: float = 60.0, grace_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.start, self.channels, self.clock = start, channels, clock
        self.max_deaths, self.window_s, self.grace_s = max_deaths, window_s, grace_s
        self.deaths: Deque[float] = collections.deque()
        self.actors = [self._start(i) for i in range(num_actors)]
        self._ended_since: Dict[int, float] = {}

    def _start(self, actor_index: int) -> Any:
        free, full = self.channels.open(actor_index)
        process = self.start(actor_index, free, full)
        full.close()  # the actor's copy is the only one: its death then ends the pipe
        return process

    def __call__(self) -> Optional[StopReason]:
        now = self.clock()
        for i, actor in enumerate(self.actors):
            if actor.is_alive():
                continue
            what = f"actor {i} (pid {actor.pid}) exited with code {exit_code_text(actor.exitcode)}"
            if actor.exitcode == 0:
                if now - self._ended_since.setdefault(i, now) >= self.grace_s:
                    return StopReason.failed(what)
                continue
            self.deaths.append(now)
            while self.deaths and self.deaths[0] <= now - self.window_s:
                self.deaths.popleft()
            if len(self.deaths) >= self.max_deaths:
                return StopReason.failed(f"{what}; {len(self.deaths)} actor deaths within {self.window_s:.0f} s")
            held = self.channels.reclaim(i)
            self.actors[i] = self._start(i)
            log.warning("%s; restarted it as pid %s (%d actor death(s) in the last %.0f s)", what,
                        self.actors[i].pid, len(self.deaths), self.window_s)
            for index in held:
                self.channels.put(index)
        return None


def train(flags: argparse.Namespace) -> StopReason:
    """Trains until --total_steps (resuming SAVEDIR/XPID when it has a checkpoint); returns why it stopped."""
    set_cpu_threads(flags.num_threads, env_processes=flags.num_actors)
    state = LearnerState(flags, select_device(flags.gpu_n, flags.disable_cuda))
    if state.close_if_done():
        return StopReason.finished(f"already at step {state.step} >= --total_steps {state.total_steps}")
    actor_model = state.new_model_copy(torch.device("cpu"))
    actor_model.share_memory()

    def copy_weights_to_actors() -> None:
        actor_model.load_state_dict(state.model.state_dict())

    ctx = mp.get_context("spawn")
    buffers = create_buffers(flags.env, flags.unroll_length, flags.num_buffers)
    initial_agent_state_buffers = [[t.share_memory_() for t in actor_model.initial_state(1)]
                                   for _ in range(flags.num_buffers)]
    channels = ActorChannels(ctx, flags.num_actors)

    starts = collections.Counter()

    def start_actor(i: int, free_queue: Any, full_queue: FullQueueEnd) -> Any:
        seed = actor_seed(flags.seed, i, starts[i], state.step)
        starts[i] += 1
        with children_ignore_sigint():
            actor = ctx.Process(target=act, name=f"actor-{i}", daemon=True, args=(
                flags, i, free_queue, full_queue, actor_model, buffers, initial_agent_state_buffers, seed))
            actor.start()
        return actor

    actors = ActorRestarts(start_actor, channels, flags.num_actors)
    for m in range(flags.num_buffers):
        channels.put(m)

    batch_lock = threading.Lock()

    def learn(stop: threading.Event) -> None:
        while not stop.is_set() and not state.done:
            got = get_batch(flags, channels, channels, buffers, initial_agent_state_buffers,
                            state.device, batch_lock, stop)
            if got is None:
                return
            state.learn(*got, after_update=copy_weights_to_actors)

    try:
        return run_learner(state, Reporter(state, flags.log_interval, flags.checkpoint_interval), learn,
                           flags.num_learner_threads, health_checks=[actors])
    finally:
        _stop_actors(actors.actors)


def _stop_actors(actors: List[Any]) -> None:
    """Ends the actors at once with SIGTERM: the learner has stopped, so their rollouts in flight
    are of no use, and asking them to stop costs seconds (filling the free buffers first, then
    Python's teardown of torch in each)."""
    for actor in actors:
        if actor.is_alive():
            actor.terminate()
    deadline = time.monotonic() + 5
    for actor in actors:
        actor.join(timeout=max(0.0, deadline - time.monotonic()))
    for actor in actors:
        if actor.is_alive():
            actor.kill()
            actor.join(timeout=5)


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    parser = flags_lib.FlagParser("python -m torchbeast.monobeast", __doc__.split("\n\n")[0], flags_lib.MONOBEAST)

    def body() -> Optional[StopReason]:
        flags = parser.parse_flags(argv)
        if flags.mode == "test":
            test(flags)
            return None
        return train(flags)

    return run_command("monobeast", body)


if __name__ == "__main__":
    exit_now(main())
