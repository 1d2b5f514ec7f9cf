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
import ctypes
import logging
import queue
import signal
import sys
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional

import torch
import torch.multiprocessing as mp

from torchbeast.core import flags as flags_lib
from torchbeast.core.cli import children_ignore_sigint, run_command, setup_logging
from torchbeast.core.device import select_device, set_cpu_threads
from torchbeast.core.environment import Environment, create_env
from torchbeast.core.evaluate import test
from torchbeast.core.rollout import agent_step, step_spec
from torchbeast.core.supervisor import StopReason, exited_processes, run_learner
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


def _die_with_parent() -> None:
    """Ask Linux to end this actor if the learner process dies (no orphans after a kill -9)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def act(
    flags: argparse.Namespace,
    actor_index: int,
    free_queue: Any,
    full_queue: Any,
    model: torch.nn.Module,
    buffers: Buffers,
    initial_agent_state_buffers: List[List[torch.Tensor]],
) -> None:
    """Actor process: fills free buffers with rollouts until it is sent None."""
    _die_with_parent()  # SIGINT is ignored (children_ignore_sigint): the learner stops us
    torch.set_num_threads(1)
    logging.basicConfig(format="[%(levelname)s %(asctime)s actor] %(message)s", level=logging.INFO)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dm_control's per-reset "Cannot set velocity"
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    seed = None if flags.seed is None else flags.seed * 1000 + actor_index
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
            if isinstance(item, ActorError):
                if item.is_config_error:
                    raise ConfigError(item.message.split(": ", 1)[1])
                raise RuntimeError(f"actor {item.actor_index} failed: {item.message}")
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
    free_queue, full_queue = ctx.SimpleQueue(), ctx.Queue()
    actors = []
    with children_ignore_sigint():
        for i in range(flags.num_actors):
            actor = ctx.Process(target=act, name=f"actor-{i}", daemon=True, args=(
                flags, i, free_queue, full_queue, actor_model, buffers, initial_agent_state_buffers))
            actor.start()
            actors.append(actor)
    for m in range(flags.num_buffers):
        free_queue.put(m)

    batch_lock = threading.Lock()

    def learn(stop: threading.Event) -> None:
        while not stop.is_set() and not state.done:
            got = get_batch(flags, free_queue, full_queue, buffers, initial_agent_state_buffers,
                            state.device, batch_lock, stop)
            if got is None:
                return
            state.learn(*got, after_update=copy_weights_to_actors)

    # A failed actor reports why through the full queue; its exit is reported after a second.
    actors_alive = exited_processes([(f"actor {i} (pid {a.pid})", a) for i, a in enumerate(actors)], grace_s=1.0)
    try:
        return run_learner(state, Reporter(state, flags.log_interval, flags.checkpoint_interval), learn,
                           flags.num_learner_threads, health_checks=[actors_alive])
    finally:
        _stop_actors(actors, free_queue)


def _stop_actors(actors: List[Any], free_queue: Any) -> None:
    for _ in actors:
        free_queue.put(None)
    deadline = time.monotonic() + 10
    for actor in actors:
        actor.join(timeout=max(0.0, deadline - time.monotonic()))
    for actor in actors:
        if actor.is_alive():
            actor.terminate()
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
    sys.exit(main())
