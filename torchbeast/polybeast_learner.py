"""PolyBeast learner: the C++ actor pool streams steps from gRPC env servers; this process batches
the actors' inference dynamically on the GPU and learns from batched rollouts.

    python -m torchbeast.polybeast_env --num_servers 4 --pipes_basename unix:/tmp/polybeast &
    python -m torchbeast.polybeast_learner --pipes_basename unix:/tmp/polybeast --num_servers 4

or with env servers on other hosts that register themselves (`polybeast_env --learner`), over
mutual TLS (see torchbeast/core/transport.py and scripts/make_certs.sh):

    python -m torchbeast.polybeast_learner --registry_bind 0.0.0.0:4400 \
        --tls_cert learner.crt --tls_key learner.key --tls_ca ca.crt

Threads in this process: one runs `ActorPool.run()` (C++ actor threads, one per env server,
without the GIL), `--num_inference_threads` answer the `DynamicBatcher` with the inference
model, `--num_learner_threads` take `[T + 1, B]` batches from the `BatchingQueue` and update the
learner model, whose weights are then copied into the inference model. Arrays cross from C++ to
Python as NumPy arrays without copying, and become tensors with `torch.from_numpy`. The main
thread runs the supervising loop (`torchbeast.core.supervisor`), which also watches the actor
pool and inference threads.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import nest
from torchbeast import polybeast_env
from torchbeast.core import distributed
from torchbeast.core import flags as flags_lib
from torchbeast.core.cli import exit_now, run_command, setup_logging
from torchbeast.core.device import select_device, set_cpu_threads
from torchbeast.core.environment import observation_shapes
from torchbeast.core.evaluate import test
from torchbeast.core.registration import FollowedShares, LearnersReady, RegisteredServers, SpreadOverLearners
from torchbeast.core.rollout import agent_step, flatten_step
from torchbeast.core.server_stats import ServerRates
from torchbeast.core.supervisor import HealthCheck, StopReason, WatchedThread, run_learner
from torchbeast.core.training import LearnerState, Reporter
from torchbeast.core.transport import address_problem, load_tls, plaintext_problem, read_servers_file, warn_if_insecure
from torchbeast.errors import ConfigError
from torchbeast.models import AgentState, MemoryAgent

log = logging.getLogger("torchbeast")


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("env servers")
    group.add_argument("--env_servers", nargs="+", default=None, metavar="ADDR",
                       help="Env server addresses (unix:/path or host:port), one actor each.")
    group.add_argument("--env_servers_file", default=None, metavar="FILE",
                       help="More env server addresses, one per line (# starts a comment).")
    group.add_argument("--registry_bind", default=None, metavar="HOST:PORT",
                       help="Serve env server registration there (e.g. 0.0.0.0:4400): servers started with "
                            "polybeast_env --learner HOST:PORT join the run, at its start or later, each with an "
                            "actor of its own. Combines with --env_servers and --env_servers_file.")
    group.add_argument("--server_lease_s", type=float, default=30.0,
                       help="A registered env server repeats its registration every third of this; one not heard "
                            "of for this long (or that said it stops) is dropped once its stream has stopped too. "
                            "(default: %(default)s)")
    group.add_argument("--pipes_basename", default="unix:/tmp/polybeast",
                       help="Without the three flags above: connect to BASENAME.0 ... BASENAME.N-1. "
                            "(default: %(default)s)")
    group.add_argument("--num_servers", type=int, default=4,
                       help="Without the three flags above: how many BASENAME.i servers. (default: %(default)s)")


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("actor pool, inference and learner queue")
    group.add_argument("--env_timeout_s", type=float, default=60.0,
                       help="Seconds a connected env server may take to send its next (or first) step before "
                            "it is dropped and retried. (default: %(default)s)")
    group.add_argument("--connect_timeout_s", type=float, default=300.0,
                       help="Stop (exit 2) when no env server has delivered a step for this many seconds, from "
                            "the start or since the last one went away. (default: %(default)s)")
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


def server_addresses(env_servers: Optional[List[str]], pipes_basename: str, num_servers: int,
                     env_servers_file: Optional[str] = None, registry_bind: Optional[str] = None) -> List[str]:
    """--env_servers and those of --env_servers_file (in that order, without repeats); without
    them and without --registry_bind, the unix sockets BASENAME.i of --pipes_basename and
    --num_servers. Raises ConfigError for an unreadable file or a bad line in it."""
    addresses = list(env_servers or []) + (read_servers_file(env_servers_file) if env_servers_file else [])
    if addresses or registry_bind:
        return list(dict.fromkeys(addresses))
    return polybeast_env.unix_addresses(pipes_basename, num_servers)


def given_addresses(flags: argparse.Namespace) -> List[str]:
    """The env server addresses the flags name (server_addresses() of the learner's flags)."""
    return server_addresses(flags.env_servers, flags.pipes_basename, flags.num_servers, flags.env_servers_file,
                            flags.registry_bind)


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


def connection_problems(flags: argparse.Namespace) -> List[str]:
    if not (flags.env_servers or flags.env_servers_file or flags.registry_bind) and flags.num_servers <= 0:
        return [f"--num_servers must be positive, got {flags.num_servers}"]
    if not (math.isfinite(flags.server_lease_s) and flags.server_lease_s > 0):
        return [f"--server_lease_s must be a positive number of seconds, got {flags.server_lease_s}"]
    problems: List[Optional[str]] = []
    try:
        addresses = given_addresses(flags)
    except ConfigError as e:
        addresses, problems = [], [str(e)]
    problems += [address_problem(a) or plaintext_problem("env server address", a, flags) for a in addresses]
    if flags.registry_bind is not None:
        problems.append(address_problem(flags.registry_bind, "--registry_bind")
                        or plaintext_problem("--registry_bind", flags.registry_bind, flags))
    return [problem for problem in problems if problem]


def inference_problems(flags: argparse.Namespace) -> List[str]:
    problems = []
    for name in ("env_timeout_s", "connect_timeout_s"):
        value = getattr(flags, name)
        if not (math.isfinite(value) and value > 0):
            problems.append(f"--{name} must be a positive number of seconds, got {value}")
    for name in ("num_inference_threads", "max_inference_batch_size"):
        if getattr(flags, name) <= 0:
            problems.append(f"--{name} must be positive, got {getattr(flags, name)}")
    if flags.inference_timeout_ms < 0:
        problems.append(f"--inference_timeout_ms must be >= 0, got {flags.inference_timeout_ms}")
    if flags.max_learner_queue_size is not None and flags.max_learner_queue_size < flags.batch_size:
        problems.append(f"--max_learner_queue_size must be at least --batch_size ({flags.batch_size})")
    for flag, name in (("--inference_device", flags.inference_device), ("--learner_device", flags.learner_device)):
        try:
            parse_device(name, flag, default=torch.device("cpu"))
        except ConfigError as e:
            problems.append(str(e))
    return problems


CONNECTION = flags_lib.FlagGroup(add_connection_flags, connection_problems)
INFERENCE = flags_lib.FlagGroup(add_inference_flags, inference_problems)
# What a MonoBeast flag given to PolyBeast says instead of only "unrecognized arguments".
MONOBEAST_ONLY = {
    "--num_actors": "a MonoBeast flag; PolyBeast runs one actor per env server (--num_servers)",
    "--num_buffers": "a MonoBeast flag; PolyBeast queues rollouts for the learner (--max_learner_queue_size)",
}


def make_parser() -> flags_lib.FlagParser:
    return flags_lib.FlagParser(
        "python -m torchbeast.polybeast_learner", __doc__.split("\n\n")[0],
        (flags_lib.ENV, flags_lib.AGENT, flags_lib.TRAINING, CONNECTION, polybeast_env.TLS, INFERENCE, flags_lib.SYSTEM,
         distributed.DISTRIBUTED),
        hints=MONOBEAST_ONLY)


def to_device(arrays: Any, device: torch.device) -> Any:
    """Nest of NumPy arrays -> nest of tensors on `device` (pinned and non-blocking for CUDA)."""
    if device.type == "cuda":
        return nest.map(lambda a: torch.from_numpy(a).pin_memory().to(device, non_blocking=True), arrays)
    return nest.map(torch.from_numpy, arrays)


def inference_loop(batcher: Any, model: MemoryAgent, device: torch.device) -> None:
    """Answers DynamicBatcher batches until the batcher is closed."""
    for batch in batcher:
        inputs = flatten_step(to_device(batch.get_inputs(), device))
        agent_state = tuple(inputs.pop("agent_state"))
        with torch.inference_mode():
            outputs, agent_state = agent_step(model, inputs, agent_state)
        answer = {key: value.cpu().numpy() for key, value in outputs.items()}
        answer["agent_state"] = tuple(s.cpu().numpy() for s in agent_state)
        batch.set_outputs(answer)


def learner_batch(item: Dict[str, Any], device: torch.device) -> Tuple[Dict[str, torch.Tensor], AgentState]:
    """A learner-queue item -> the batch and initial agent state of `torchbeast.core.rollout`."""
    item = to_device(item, device)
    return flatten_step(item["rollout"]), tuple(item["initial_agent_state"])


def observation_spec(env_id: str) -> Dict[str, np.ndarray]:
    """Zeros of each observation of `env_id` (no [T, B] dims): what the actor pool checks steps against."""
    return {key: np.zeros(shape, dtype) for key, (shape, dtype) in observation_shapes(env_id).items()}


def servers_reachable(pool: Any, addresses: Sequence[str], timeout_s: float,
                      clock: Callable[[], float] = time.monotonic) -> HealthCheck:
    """A health check failing (exit 2) when no env server has delivered a step for `timeout_s`
    seconds, counted from its creation or from the last step any server delivered (or, when the
    actors of the servers that delivered are gone, from when the check last saw one connected)."""
    last_connected = [clock()]

    def check() -> Optional[StopReason]:
        status = pool.status()
        if any(s["connected"] for s in status):
            last_connected[0] = clock()
            return None
        since_steps = [s["seconds_since_last_step"] for s in status if s["seconds_since_last_step"] is not None]
        waited = min(since_steps) if since_steps else clock() - last_connected[0]
        if waited < timeout_s:
            return None
        problems = sorted({s["last_problem"] for s in status if s["last_problem"]})
        tried = list(addresses) or [s["address"] for s in status]  # registered ones when none was given
        detail = (f"no env server reachable for {waited:.0f} s (--connect_timeout_s {timeout_s:g}); "
                  + (f"tried {', '.join(tried)}" if tried else "none has registered")
                  + (f" (last problem: {problems[0]})" if len(problems) == 1 else ""))
        return StopReason.failed(detail, ConfigError(detail))

    return check


def train(flags: argparse.Namespace, addresses: List[str], health_checks: Sequence[HealthCheck] = ()) -> StopReason:
    """Learns from the env servers at `addresses` until --total_steps; returns why it stopped.

    `health_checks` are watched besides the actor pool and inference threads (polybeast.py adds
    its env server processes). With --registry_bind, servers that register join as well."""
    import libtorchbeast

    tls = load_tls(flags) if hasattr(flags, "tls_cert") else None  # polybeast.py: unix sockets only
    registry_bind = getattr(flags, "registry_bind", None)
    warn_if_insecure(flags, [*addresses, *([registry_bind] if registry_bind else [])])
    placement = distributed.placement_from_env()  # data-parallel learners under torchrun; None: alone
    registry = None
    if registry_bind and (placement is None or placement.rank == 0):  # rank 0 alone serves it
        # before the run's outputs: a port in use is bad input (exit 2)
        registry = libtorchbeast.Registry(registry_bind, heartbeat_s=flags.server_lease_s / 3,
                                          tls=tls.config() if tls else None)
        try:
            registry.start()
        except RuntimeError:
            raise ConfigError(f"--registry_bind {registry_bind}: cannot listen there (the port is in use, or the "
                              "host is not an address of this machine)") from None
        log.info("Serving env server registration on %s%s", registry_bind, " (mutual TLS)" if tls else "")

    default_device = select_device(distributed.learner_gpu(placement, flags.gpu_n), flags.disable_cuda)
    learner_device = parse_device(flags.learner_device, "--learner_device", default_device)
    inference_device = parse_device(flags.inference_device, "--inference_device", default_device)
    local_servers = sum(a.startswith(("unix:", "127.", "localhost:")) for a in addresses)
    set_cpu_threads(flags.num_threads, env_processes=local_servers)
    group = distributed.LearnerGroup.join(placement, flags, learner_device) if placement else None  # rank
    state = LearnerState(flags, learner_device,
                         meta=dict(env_servers=addresses, inference_device=str(inference_device)), group=group)
    if state.close_if_done():
        if group is not None:  # rank
            group.close()
        if registry is not None:
            registry.stop()
        return StopReason.finished(f"already at step {state.step} >= --total_steps {state.total_steps}")
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
        env_server_addresses=addresses, initial_agent_state=initial_agent_state,
        observation_spec=observation_spec(flags.env), env_timeout_s=flags.env_timeout_s,
        tls=tls.config() if tls else None)
    rates_in_log, rates_in_progress = ServerRates(pool.status), ServerRates(pool.status)
    state.server_stats = rates_in_log.row
    stop_following = threading.Event()
    ready = None  # with registration in a group: set once every rank has an env server  # rank
    if registry_bind and group is not None:
        ready = LearnersReady(group.world_size)

    def learn(stop: threading.Event) -> None:
        if ready is not None and not ready.wait(stop):  # rank: every rank has an env server first
            return
        for item in learner_queue:  # ends when the queue is closed
            if state.done or stop.is_set():
                return
            state.learn(*learner_batch(item, learner_device), after_update=copy_weights_to_inference)

    def release() -> None:  # wakes the learner, inference and actor threads (closing twice raises)
        for queue in (learner_queue, batcher):
            if not queue.is_closed():
                queue.close()
        stop_following.set()
        if registry is not None:
            registry.stop()
        pool.stop()

    workers = [WatchedThread("actor pool", pool.run)]
    if registry is not None:
        select = None
        if group is not None:  # rank 0 of a group: shares the servers out  # rank
            select = SpreadOverLearners(given_addresses(flags), group.world_size, group.publish_shares, ready)
        registered = RegisteredServers(registry, pool, flags.server_lease_s,
                                       allow_plaintext_remote=bool(tls) or flags.insecure, select=select)
        workers.append(WatchedThread("env server registration", registered.run, stop_following))
    elif ready is not None:  # another rank: follows the shares of rank 0  # rank
        followed = FollowedShares(pool, group.published_shares, group.rank, ready)
        workers.append(WatchedThread("env server shares", followed.run, stop_following))
    workers += [WatchedThread(f"inference thread {i}", inference_loop, batcher, inference_model, inference_device)
                for i in range(flags.num_inference_threads)]
    if registry is not None:
        joining = f" and those registering on {registry_bind}"
    elif registry_bind:  # rank
        joining = " and those learner rank 0 hands it"
    else:
        joining = ""
    log.info("Learning from %d env server(s)%s%s", len(addresses), ": " + ", ".join(addresses) if addresses else "",
             joining)
    for worker in workers:
        worker.start()
    try:
        reporter = Reporter(state, flags.log_interval, flags.checkpoint_interval, servers=rates_in_progress.text)
        return run_learner(state, reporter, learn,
                           flags.num_learner_threads,
                           health_checks=[*(w.failure for w in workers), *health_checks,
                                          *([ready.check(flags.connect_timeout_s)] if ready else []),  # rank
                                          servers_reachable(pool, addresses, flags.connect_timeout_s),
                                          *([group.peers_alive] if group else [])],  # rank
                           release=release)
    finally:
        for worker in workers:
            worker.join(timeout=30)
        if group is not None:  # rank
            group.close()


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    parser = make_parser()

    def body() -> Optional[StopReason]:
        flags = parser.parse_flags(argv)
        if flags.mode == "test":
            test(flags, num_workers=os.cpu_count() or 1)  # the env servers are elsewhere: this host's cores
            return None
        addresses = given_addresses(flags)
        placement = distributed.placement_from_env()  # rank: a torchrun learner takes its share of the servers
        if placement is not None:  # with registration, servers that register fill the shares left empty
            addresses = distributed.spread(addresses, placement.world_size,
                                           allow_empty=bool(flags.registry_bind))[placement.rank]
        return train(flags, addresses)

    return run_command("polybeast_learner", body)


if __name__ == "__main__":
    exit_now(main())
