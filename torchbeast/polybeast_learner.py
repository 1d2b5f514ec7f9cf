"""PolyBeast learner: the C++ actor pool streams steps from gRPC env servers; this process batches
the actors' inference dynamically on the GPU and learns from batched rollouts.

    python -m torchbeast.polybeast_env --num_servers 4 --pipes_basename unix:/tmp/polybeast &
    python -m torchbeast.polybeast_learner --pipes_basename unix:/tmp/polybeast --num_servers 4

Threads in this process: one runs `ActorPool.run()` (C++ actor threads, one per env server,
without the GIL), `--num_inference_threads` answer the `DynamicBatcher` with the inference
model, `--num_learner_threads` take `[T + 1, B]` batches from the `BatchingQueue` and update the
learner model, whose weights are then copied into the inference model. Arrays cross from C++ to
Python as NumPy arrays without copying, and become tensors with `torch.from_numpy`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import torch

import nest
from torchbeast import polybeast_env
from torchbeast.core import flags as flags_lib
from torchbeast.core.cli import run_command, setup_logging
from torchbeast.core.device import select_device, set_cpu_threads
from torchbeast.core.evaluate import test
from torchbeast.core.training import LearnerState, Reporter
from torchbeast.errors import ConfigError
from torchbeast.models import AgentState, MemoryAgent

log = logging.getLogger("torchbeast")


def add_polybeast_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("polybeast")
    group.add_argument("--env_servers", nargs="+", default=None, metavar="ADDR",
                       help="Env server addresses (unix:/path or host:port), one actor each.")
    group.add_argument("--pipes_basename", default="unix:/tmp/polybeast",
                       help="Without --env_servers: connect to BASENAME.0 ... BASENAME.N-1. (default: %(default)s)")
    group.add_argument("--num_servers", type=int, default=4,
                       help="Without --env_servers: how many BASENAME.i servers. (default: %(default)s)")
    group.add_argument("--num_inference_threads", type=int, default=2,
                       help="Threads answering the dynamic inference batches. (default: %(default)s)")
    group.add_argument("--max_inference_batch_size", type=int, default=512,
                       help="Largest inference batch. (default: %(default)s)")
    group.add_argument("--inference_timeout_ms", type=int, default=10,
                       help="How long an inference batch waits to fill up. (default: %(default)s)")
    group.add_argument("--max_learner_queue_size", type=int, default=None,
                       help="Rollouts queued for the learner before actors wait. (default: --batch_size)")
    group.add_argument("--inference_device", default=None,
                       help="Device of the inference model, e.g. cuda:0 or cpu. (default: the one --gpu_n picks)")
    group.add_argument("--learner_device", default=None,
                       help="Device of the learner model. (default: the one --gpu_n picks)")


def make_parser() -> argparse.ArgumentParser:
    parser = flags_lib.make_parser(prog="python -m torchbeast.polybeast_learner", description=__doc__.split("\n\n")[0])
    add_polybeast_flags(parser)
    return parser


def server_addresses(flags: argparse.Namespace) -> List[str]:
    if flags.env_servers:
        return list(flags.env_servers)
    return polybeast_env.unix_addresses(flags.pipes_basename, flags.num_servers)


def parse_device(name: Optional[str], flag: str, default: torch.device) -> torch.device:
    if name is None:
        return default
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{flag} {name!r}: expected a torch device such as cpu or cuda:0") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def validate_polybeast(flags: argparse.Namespace) -> None:
    problems = []
    for name in ("num_servers", "num_inference_threads", "max_inference_batch_size"):
        if getattr(flags, name) <= 0:
            problems.append(f"--{name} must be positive, got {getattr(flags, name)}")
    if flags.inference_timeout_ms < 0:
        problems.append(f"--inference_timeout_ms must be >= 0, got {flags.inference_timeout_ms}")
    if flags.max_learner_queue_size is not None and flags.max_learner_queue_size < flags.batch_size:
        problems.append(f"--max_learner_queue_size must be at least --batch_size ({flags.batch_size})")
    for address in server_addresses(flags):
        if not (address.startswith("unix:") and len(address) > 5) and not address.rpartition(":")[2].isdigit():
            problems.append(f"env server address {address!r}: expected unix:/path or host:port")
    if problems:
        raise ConfigError("; ".join(problems))


def to_device(arrays: Any, device: torch.device) -> Any:
    """Nest of NumPy arrays -> nest of tensors on `device` (pinned and non-blocking for CUDA)."""
    if device.type == "cuda":
        return nest.map(lambda a: torch.from_numpy(a).pin_memory().to(device, non_blocking=True), arrays)
    return nest.map(torch.from_numpy, arrays)


def model_inputs(step: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """ActorPool's step nest -> the agent's input dict (observation keys lifted to the top)."""
    inputs = dict(step["observation"])
    for key in ("reward", "done", "truncated", "episode_return", "episode_step", "last_action"):
        inputs[key] = step[key]
    return inputs


def inference_loop(batcher: Any, model: MemoryAgent, device: torch.device) -> None:
    """Answers DynamicBatcher batches until the batcher is closed."""
    for batch in batcher:
        step = to_device(batch.get_inputs(), device)
        agent_state = tuple(step["agent_state"])
        with torch.inference_mode():
            outputs, agent_state = model(model_inputs(step), agent_state)
        batch.set_outputs(dict(
            action=outputs["action"].cpu().numpy(),
            policy_logits=outputs["policy_logits"].cpu().numpy(),
            baseline=outputs["baseline"].cpu().numpy(),
            agent_state=tuple(s.cpu().numpy() for s in agent_state),
        ))


ACTOR_OUTPUT_KEYS = ("action", "policy_logits", "baseline")


def learner_batch(item: Dict[str, Any], device: torch.device) -> Tuple[Dict[str, torch.Tensor], AgentState]:
    """A learner-queue item -> the batch layout of core.learner (MonoBeast's).

    The actor pool stores the model's outputs beside the step they were computed on (action t is
    taken at observation t); the learner expects them beside the step they led to (action t at
    index t + 1, with the reward it earned). Index 0 of the shifted outputs is never read.
    """
    item = to_device(item, device)
    rollout = item["rollout"]
    batch = model_inputs(rollout)
    for key in ACTOR_OUTPUT_KEYS:
        batch[key] = torch.cat([rollout[key][:1], rollout[key][:-1]], dim=0)
    batch["truncation_value"] = rollout["truncation_value"]
    return batch, tuple(item["initial_agent_state"])


def train(flags: argparse.Namespace) -> None:
    import libtorchbeast

    default_device = select_device(flags.gpu_n, flags.disable_cuda)
    learner_device = parse_device(flags.learner_device, "--learner_device", default_device)
    inference_device = parse_device(flags.inference_device, "--inference_device", default_device)
    addresses = server_addresses(flags)
    local_servers = sum(a.startswith(("unix:", "127.", "localhost:")) for a in addresses)
    set_cpu_threads(flags.num_threads, env_processes=local_servers)
    state = LearnerState(flags, learner_device, meta=dict(env_servers=addresses, inference_device=str(inference_device)))
    if state.close_if_done():
        return
    # Inference threads share this copy; weights are copied in place after each update (a forward
    # that overlaps a copy mixes two consecutive versions, which V-trace's off-policy correction absorbs).
    inference_model = state.new_model_copy(inference_device)

    def copy_weights_to_inference() -> None:
        with torch.no_grad():
            for target, source in zip(inference_model.parameters(), state.model.parameters()):
                target.copy_(source, non_blocking=True)

    learner_queue = libtorchbeast.BatchingQueue(
        batch_dim=1, minimum_batch_size=flags.batch_size, maximum_batch_size=flags.batch_size, check_inputs=True,
        maximum_queue_size=flags.max_learner_queue_size or flags.batch_size)
    batcher = libtorchbeast.DynamicBatcher(
        batch_dim=1, minimum_batch_size=1, maximum_batch_size=flags.max_inference_batch_size,
        timeout_ms=flags.inference_timeout_ms, check_outputs=True)
    initial_agent_state = tuple(s.numpy() for s in inference_model.initial_state(1))
    pool = libtorchbeast.ActorPool(
        unroll_length=flags.unroll_length, learner_queue=learner_queue, inference_batcher=batcher,
        env_server_addresses=addresses, initial_agent_state=initial_agent_state)

    errors: List[BaseException] = []
    stop = threading.Event()

    def guarded(fn: Any, *args: Any) -> Any:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as e:  # surfaced in the main thread
                if not stop.is_set():
                    errors.append(e)
                stop.set()
        return run

    def learn_loop() -> None:
        for item in learner_queue:
            if state.done or stop.is_set():
                break
            state.learn(*learner_batch(item, learner_device), after_update=copy_weights_to_inference)
        stop.set()

    threads = [threading.Thread(target=guarded(pool.run), name="actor-pool", daemon=True)]
    threads += [threading.Thread(target=guarded(inference_loop, batcher, inference_model, inference_device),
                                 name=f"inference-{i}", daemon=True)
                for i in range(flags.num_inference_threads)]
    learners = [threading.Thread(target=guarded(learn_loop), name=f"learner-{i}", daemon=True)
                for i in range(flags.num_learner_threads)]
    reporter = Reporter(state)
    log.info("Learning from %d env server(s): %s", len(addresses), ", ".join(addresses))
    for thread in threads + learners:
        thread.start()
    try:
        while not stop.is_set():
            time.sleep(0.2)
            reporter.tick()
        if errors:
            raise errors[0]
    except KeyboardInterrupt:
        log.info("Interrupted: saving and stopping.")
    finally:
        stop.set()
        learner_queue.close()
        batcher.close()
        pool.stop()
        for thread in threads + learners:
            thread.join(timeout=30)
        state.save()
        state.close()
    reporter.summary()


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    parser = make_parser()

    def body() -> None:
        flags = flags_lib.parse_flags(parser, argv)
        validate_polybeast(flags)
        (train if flags.mode == "train" else test)(flags)

    return run_command("polybeast_learner", body)


if __name__ == "__main__":
    sys.exit(main())
