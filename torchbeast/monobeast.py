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
from torchbeast.core.environment import Environment, create_env, env_has_positions, frame_shape
from torchbeast.core.evaluate import test
from torchbeast.core.training import LearnerState, Reporter
from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")

Buffers = Dict[str, List[torch.Tensor]]


def buffer_specs(flags: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """Shape and dtype of each rollout field, per step; rollouts hold unroll_length + 1 steps."""
    specs: Dict[str, Dict[str, Any]] = dict(
        frame=dict(size=frame_shape(flags.env), dtype=torch.uint8),
        reward=dict(size=(), dtype=torch.float32),
        done=dict(size=(), dtype=torch.bool),
        truncated=dict(size=(), dtype=torch.bool),
        truncation_value=dict(size=(), dtype=torch.float32),
        episode_return=dict(size=(), dtype=torch.float32),
        episode_step=dict(size=(), dtype=torch.int32),
        last_action=dict(size=(), dtype=torch.int64),
        policy_logits=dict(size=(6,), dtype=torch.float32),
        baseline=dict(size=(), dtype=torch.float32),
        action=dict(size=(), dtype=torch.int64),
    )
    if env_has_positions(flags.env):
        for key in ("position", "noisy_position", "heading"):
            specs[key] = dict(size=(2,), dtype=torch.float32)
    return specs


def create_buffers(flags: argparse.Namespace) -> Buffers:
    T = flags.unroll_length
    specs = buffer_specs(flags)
    buffers: Buffers = {key: [] for key in specs}
    for _ in range(flags.num_buffers):
        for key, spec in specs.items():
            buffers[key].append(torch.empty((T + 1, *spec["size"]), dtype=spec["dtype"]).share_memory_())
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
        step = env.initial()
        agent_state = model.initial_state(1)
        with torch.inference_mode():
            agent_output, _ = model(step, agent_state)
        while True:
            index = free_queue.get()
            if index is None:
                break
            _write_step(buffers, index, 0, step, agent_output, truncation_value=0.0)
            for i, tensor in enumerate(agent_state):
                initial_agent_state_buffers[index][i][...] = tensor

            for t in range(flags.unroll_length):
                with torch.inference_mode():
                    agent_output, agent_state = model(step, agent_state)
                action = int(agent_output["action"].item())
                step, final_obs = env.step(action)
                truncation_value = 0.0
                if final_obs is not None:
                    truncation_value = _value_of(model, final_obs, step, agent_state)
                _write_step(buffers, index, t + 1, step, agent_output, truncation_value)
            full_queue.put(index)
        env.close()
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - reported to the learner, which stops the run
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        full_queue.put(ActorError(actor_index, f"{type(e).__name__}: {message}", isinstance(e, ConfigError)))
        if not isinstance(e, ConfigError):
            raise  # the traceback helps with bugs; bad input was said in one line already


def _write_step(buffers: Buffers, index: int, t: int, step: Dict[str, torch.Tensor],
                agent_output: Dict[str, torch.Tensor], truncation_value: float) -> None:
    """Writes one step of a rollout: the env's step t and the agent's output that led to it."""
    for key in step:
        if key in buffers:
            buffers[key][index][t, ...] = step[key]
    for key in agent_output:
        buffers[key][index][t, ...] = agent_output[key]
    buffers["truncation_value"][index][t] = truncation_value


class ActorError(NamedTuple):
    """Sent through the full queue when an actor fails, so the learner can say why and stop."""

    actor_index: int
    message: str
    is_config_error: bool


def _value_of(model: torch.nn.Module, final_obs: Dict[str, Any], step: Dict[str, torch.Tensor], agent_state: Any) -> float:
    """The baseline's value of an episode's true final observation (for time-limit bootstrapping)."""
    inputs = {key: torch.from_numpy(value).unsqueeze(0).unsqueeze(0) for key, value in final_obs.items()}
    inputs.update(reward=step["reward"], last_action=step["last_action"], done=torch.zeros(1, 1, dtype=torch.bool))
    with torch.inference_mode():
        outputs, _ = model(inputs, agent_state)
    return float(outputs["baseline"].item())


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


def train(flags: argparse.Namespace) -> None:
    """Trains until --total_steps (resuming SAVEDIR/XPID when it has a checkpoint)."""
    set_cpu_threads(flags.num_threads, env_processes=flags.num_actors)
    state = LearnerState(flags, select_device(flags.gpu_n, flags.disable_cuda))
    if state.close_if_done():
        return
    actor_model = state.new_model_copy(torch.device("cpu"))
    actor_model.share_memory()

    def copy_weights_to_actors() -> None:
        actor_model.load_state_dict(state.model.state_dict())

    ctx = mp.get_context("spawn")
    buffers = create_buffers(flags)
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

    stop = threading.Event()
    batch_lock = threading.Lock()
    errors: List[BaseException] = []

    def learner_thread() -> None:
        try:
            while not stop.is_set() and not state.done:
                got = get_batch(flags, free_queue, full_queue, buffers, initial_agent_state_buffers,
                                state.device, batch_lock, stop)
                if got is None:
                    return
                state.learn(*got, after_update=copy_weights_to_actors)
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=learner_thread, name=f"learner-{i}", daemon=True)
               for i in range(flags.num_learner_threads)]
    reporter = Reporter(state)
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            dead = [a for a in actors if not a.is_alive() and a.exitcode not in (0, None)]
            if dead and not errors:
                time.sleep(1.0)  # let the actor's own report arrive first
                if not errors:
                    raise RuntimeError(f"{dead[0].name} died with exit code {dead[0].exitcode}")
            reporter.tick()
        if errors:
            raise errors[0]
    except KeyboardInterrupt:
        log.info("Interrupted: saving and stopping.")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        state.save()
        _stop_actors(actors, free_queue)
        state.close()
    reporter.summary()


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
    parser = flags_lib.make_parser(prog="python -m torchbeast.monobeast", description=__doc__.split("\n\n")[0])

    def body() -> None:
        flags = flags_lib.parse_flags(parser, argv)
        (train if flags.mode == "train" else test)(flags)

    return run_command("monobeast", body)


if __name__ == "__main__":
    sys.exit(main())
