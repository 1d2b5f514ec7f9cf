"""Data-parallel learners under torchrun: M x G learner processes train one model.

    torchrun --nnodes M --nproc_per_node G -m torchbeast.polybeast_learner --env_servers ... [flags]

torchrun starts every learner with RANK, WORLD_SIZE, LOCAL_RANK, GROUP_RANK (the node), MASTER_ADDR
and MASTER_PORT in its environment; without them (or with WORLD_SIZE 1) a learner runs alone,
exactly as it did before this module. In a group of N learners:

- each has its own actor pool and inference batcher over its share of the env servers (`spread`);
  with --registry_bind, rank 0 alone serves the registration, spreads the registered servers over
  the ranks and publishes the shares in torchrun's store, where the others read them
  (`torchbeast.core.registration`);
- each learns from its own batches, and the gradients are averaged over the group (one
  all-reduce per update, NCCL between GPUs, gloo between CPUs) before clipping and the optimiser
  step, so the replicas, which start from rank 0's parameters, stay identical;
- rank 0 opens (or resumes) the run and sends its model, optimiser, schedule and step to the
  others at the start; it alone writes logs, TensorBoard, checkpoints and the learning curve;
- the step is the sum over the group: every update learns N batches.

A learner that stops (crash, kill, lost host) stops the others: each learner bumps a counter in
torchrun's rendezvous store twice a second, a collective that fails names the learners whose
counter stopped, and a counter that stays still for `HEARTBEAT_TIMEOUT_S` stops the run even when
no collective is waiting. A collective that never completes (a host cut off the network) fails
after --dist_timeout_s.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import math
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from torchbeast.core import flags as flags_lib
from torchbeast.core.supervisor import RunFailure, StopReason
from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")

HEARTBEAT_PERIOD_S = 0.5
HEARTBEAT_TIMEOUT_S = 15.0  # a learner silent this long has stopped (or its host is cut off)
SHARES_KEY = "torchbeast/env_server_shares"  # rank 0's spread of the registered env servers, as JSON


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where this learner sits in its group, as torchrun's environment says."""

    rank: int
    world_size: int
    local_rank: int
    node: int  # torchrun's GROUP_RANK: which of the --nnodes this learner runs on
    master_addr: str
    master_port: int


def placement_from_env(environ: Mapping[str, str] = os.environ) -> Optional[Placement]:
    """This learner's place in a torchrun group, or None when it runs alone (no torchrun, or a
    group of one)."""
    if "WORLD_SIZE" not in environ:
        return None
    try:
        world_size = int(environ["WORLD_SIZE"])
        if world_size <= 1:
            return None
        rank, local_rank = int(environ["RANK"]), int(environ.get("LOCAL_RANK", "0"))
        node = int(environ.get("GROUP_RANK", "0"))
        master_addr, master_port = environ["MASTER_ADDR"], int(environ["MASTER_PORT"])
    except KeyError as e:
        raise ConfigError(f"WORLD_SIZE is set but {e.args[0]} is not: start data-parallel learners with "
                          "torchrun") from None
    except ValueError as e:
        raise ConfigError(f"torchrun's environment (RANK, WORLD_SIZE, ...) is malformed: {e}") from None
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK {rank} is not in [0, WORLD_SIZE {world_size})")
    return Placement(rank, world_size, local_rank, node, master_addr, master_port)


def spread(addresses: Sequence[str], world_size: int, previous: Optional[Sequence[Sequence[str]]] = None,
           allow_empty: bool = False) -> List[List[str]]:
    """The env servers of each rank. Without `previous`, rank r takes addresses r, r + N, r + 2N,
    ... of N ranks, so the shares differ by at most one server and each takes servers from every
    host of a list grouped by host.

    With `previous` (the shares of the last call) the spread is stable: an address still listed
    keeps its rank, a new one goes to a rank with the fewest (the lowest such rank), and only when
    two shares then differ by more than one does the last-listed address of the largest share move
    to the smallest. Listing the fixed addresses (--env_servers) first keeps them where they are.

    ConfigError when there are fewer servers than ranks, unless `allow_empty` (servers that
    register later fill the empty shares)."""
    if len(addresses) < world_size and not allow_empty:
        raise ConfigError(f"--env_servers: {len(addresses)} env server(s) for {world_size} learners "
                          f"(WORLD_SIZE {world_size}); every learner needs at least one")
    order = {address: i for i, address in enumerate(dict.fromkeys(addresses))}
    kept = {address: rank for rank, share in enumerate(previous or []) for address in share if address in order}
    shares: List[List[str]] = [[] for _ in range(world_size)]
    for address, rank in kept.items():
        if rank < world_size:
            shares[rank].append(address)
    placed = {address for share in shares for address in share}
    for address in order:
        if address not in placed:
            min(shares, key=len).append(address)
    while True:
        largest, smallest = max(shares, key=len), min(shares, key=len)
        if len(largest) - len(smallest) <= 1:
            break
        smallest.append(largest.pop(max(range(len(largest)), key=lambda i: order[largest[i]])))
    return [sorted(share, key=order.__getitem__) for share in shares]


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data-parallel learners (under torchrun)")
    group.add_argument("--dist_backend", default="auto", choices=["auto", "nccl", "gloo"],
                       help="Gradient all-reduce between learners: 'auto' is NCCL when the learner model is on a "
                            "GPU, gloo otherwise. (default: %(default)s)")
    group.add_argument("--dist_timeout_s", type=float, default=300.0,
                       help="Seconds a learner waits in an all-reduce for the others before the run stops (exit "
                            "1): longer than a learner takes to gather one batch. (default: %(default)s)")


def distributed_problems(flags: argparse.Namespace) -> List[str]:
    if not (math.isfinite(flags.dist_timeout_s) and flags.dist_timeout_s > 0):
        return [f"--dist_timeout_s must be a positive number of seconds, got {flags.dist_timeout_s}"]
    return []


DISTRIBUTED = flags_lib.FlagGroup(add_distributed_flags, distributed_problems)


def learner_gpu(placement: Optional[Placement], gpu_n: int) -> int:
    """The GPU index for --gpu_n: a torchrun learner takes the GPU of its LOCAL_RANK."""
    if placement is None:
        return gpu_n
    if torch.cuda.is_available() and placement.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"torchrun --nproc_per_node: local rank {placement.local_rank} has no GPU (this machine "
                          f"has {torch.cuda.device_count()}); start one learner per GPU, or pass --disable_cuda")
    return placement.local_rank


def differing_flags(reference: Mapping[str, Any], mine: Mapping[str, Any], names: Sequence[str]) -> List[str]:
    """The flags among `names` whose values differ between rank 0 (`reference`) and this learner."""
    return [f"--{name} {mine.get(name)!r} (rank 0: {reference.get(name)!r})" for name in names
            if mine.get(name) != reference.get(name)]


def state_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short hash of a model's weights: equal on every learner of a group (the replicas are
    identical), and equal to that of rank 0's checkpoint of the same step."""
    digest = hashlib.sha1()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LearnerLost(RunFailure):
    """Another learner of the group stopped or cannot be reached: this one cannot go on."""


class LearnerGroup:
    """This learner's membership of a data-parallel group: collectives, and the heartbeats that
    tell which learner stopped. `join` it once per run and `close` it at the end."""

    def __init__(self, placement: Placement, backend: str, timeout_s: float) -> None:
        import torch.distributed as dist

        self.placement = placement
        self.rank, self.world_size = placement.rank, placement.world_size
        self.backend = backend
        self.timeout_s = timeout_s
        self._dist = dist
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        # Small CPU-side messages (the start state, episode returns) go over gloo whatever the backend.
        self._cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else None
        # A connection of our own to torchrun's rendezvous store for the heartbeats.
        self._store = dist.TCPStore(placement.master_addr, placement.master_port, is_master=False,
                                    timeout=datetime.timedelta(seconds=5), wait_for_workers=False)
        self._store.set(f"torchbeast/who/{self.rank}",
                        f"pid {os.getpid()} on {socket.gethostname()}, node {placement.node}, "
                        f"local rank {placement.local_rank}")
        if self.rank == 0:  # shares an earlier attempt (torchrun --max_restarts) published are stale
            self._store.delete_key(SHARES_KEY)
        self._last_count = [-1] * self.world_size
        self._last_change = [time.monotonic()] * self.world_size
        self._store_error: Optional[str] = None
        self._store_error_since: Optional[float] = None
        self._stop = threading.Event()
        self._beat()
        self._heartbeats = threading.Thread(target=self._beat_until_stopped, name="learner heartbeats", daemon=True)
        self._heartbeats.start()
        self.barrier()  # every learner has said who it is
        self._who = [self._store.get(f"torchbeast/who/{r}").decode() for r in range(self.world_size)]
        log.info("Learner rank %d of %d (%s backend, %s)", self.rank, self.world_size, backend, self._who[self.rank])

    @classmethod
    def join(cls, placement: Placement, flags: argparse.Namespace, device: torch.device) -> "LearnerGroup":
        # polybeast.py (which starts its own servers) under torchrun has no such flags: the defaults.
        backend = getattr(flags, "dist_backend", "auto")
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError(f"--dist_backend nccl needs the learner model on a GPU, not {device}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return cls(placement, backend, getattr(flags, "dist_timeout_s", 300.0))

    # --- collectives -------------------------------------------------------------------------

    def _collective(self, what: str, op: Callable[[], Any]) -> Any:
        """Runs one collective; its failure becomes a LearnerLost naming the learners that stopped."""
        try:
            return op()
        except RuntimeError as e:
            raise self.lost(what, e) from None

    def barrier(self) -> None:
        self._collective("barrier", lambda: self._dist.barrier(group=self._cpu_group))

    def share(self, make: Optional[Callable[[], Dict[str, Any]]]) -> Dict[str, Any]:
        """Rank 0 calls `make()` (others pass None) and every rank returns its result: tensors,
        numbers, strings and containers, sent as a `torch.save` and read back with
        `weights_only=True` (no pickled code runs). A ConfigError of `make` on rank 0 is raised on
        every rank, so all of them exit 2 with the same line."""
        error: Optional[ConfigError] = None
        if self.rank == 0:
            assert make is not None
            try:
                buffer = io.BytesIO()
                torch.save(make(), buffer)
                data, kind = buffer.getvalue(), 0
            except ConfigError as e:
                error, data, kind = e, str(e).encode(), 1
            header = torch.tensor([kind, len(data)], dtype=torch.int64)
        else:
            header = torch.zeros(2, dtype=torch.int64)
        self._collective("start state", lambda: self._dist.broadcast(header, 0, group=self._cpu_group))
        kind, size = int(header[0]), int(header[1])
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == 0 else torch.empty(
            size, dtype=torch.uint8)
        self._collective("start state", lambda: self._dist.broadcast(payload, 0, group=self._cpu_group))
        if kind == 1:
            if error is not None:
                raise error
            raise ConfigError(payload.numpy().tobytes().decode())
        return torch.load(io.BytesIO(payload.numpy().tobytes()), map_location="cpu", weights_only=True)

    def average_gradients(self, model: nn.Module, loss: torch.Tensor) -> None:
        """The gradient hook of `learn_step`: every parameter's gradient becomes the mean over the
        group (one all-reduce of all of them). A learner whose loss is not finite sends NaNs, so
        every learner sees a non-finite gradient norm and skips the same update."""
        grads = []
        for parameter in model.parameters():
            if parameter.grad is None:  # all learners must send tensors of the same sizes
                parameter.grad = torch.zeros_like(parameter)
            grads.append(parameter.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        if not bool(torch.isfinite(loss)):
            flat.fill_(float("nan"))
        self._collective("gradient all-reduce", lambda: self._dist.all_reduce(flat))
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather_floats(self, values: Sequence[float]) -> List[float]:
        """Every learner's `values`, concatenated in rank order (e.g. the episode returns of an update)."""
        dist, group = self._dist, self._cpu_group
        count = torch.tensor([len(values)], dtype=torch.int64)
        counts = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        self._collective("episode statistics", lambda: dist.all_gather(counts, count, group=group))
        longest = max(int(c) for c in counts)
        if longest == 0:
            return []
        padded = torch.zeros(longest, dtype=torch.float64)
        padded[:len(values)] = torch.tensor(list(values), dtype=torch.float64)
        gathered = [torch.zeros(longest, dtype=torch.float64) for _ in range(self.world_size)]
        self._collective("episode statistics", lambda: dist.all_gather(gathered, padded, group=group))
        return [float(v) for g, c in zip(gathered, counts) for v in g[:int(c)].tolist()]

    # --- env server shares (registration) ------------------------------------------------------

    def publish_shares(self, shares: Sequence[Sequence[str]]) -> None:
        """Rank 0: the env servers of every rank (`spread`), for the others to follow. It goes
        through torchrun's rendezvous store rather than a collective: a rank without env servers
        never reaches the next all-reduce, and must still learn of the servers given to it."""
        self._store.set(SHARES_KEY, json.dumps([list(share) for share in shares]))

    def published_shares(self) -> Optional[List[List[str]]]:
        """The shares rank 0 published last, or None before it published any."""
        if not self._store.check([SHARES_KEY]):
            return None
        return [list(share) for share in json.loads(self._store.get(SHARES_KEY))]

    # --- heartbeats ----------------------------------------------------------------------------

    def _beat(self) -> None:
        now = time.monotonic()
        try:
            self._store.add(f"torchbeast/heartbeat/{self.rank}", 1)
            counts = [self._store.add(f"torchbeast/heartbeat/{r}", 0) for r in range(self.world_size)]
        except RuntimeError as e:  # the store's host (torchrun on node 0) is gone or cut off
            if self._store_error_since is None:
                self._store_error_since = now
            self._store_error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return
        self._store_error = self._store_error_since = None
        for r, count in enumerate(counts):
            if count != self._last_count[r]:
                self._last_count[r], self._last_change[r] = count, now

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(HEARTBEAT_PERIOD_S):
            self._beat()

    def _name(self, rank: int) -> str:
        return f"learner rank {rank} ({self._who[rank]})" if hasattr(self, "_who") else f"learner rank {rank}"

    def silent_ranks(self, silent_s: float) -> List[int]:
        """The other learners whose heartbeat has not moved for `silent_s` seconds."""
        now = time.monotonic()
        return [r for r in range(self.world_size) if r != self.rank and now - self._last_change[r] >= silent_s]

    def lost(self, what: str, error: BaseException, wait_s: float = 5.0) -> LearnerLost:
        """The failure of a collective, naming the learners that stopped: those whose heartbeat
        stays still for a few periods after it (waiting at most `wait_s`)."""
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        deadline = time.monotonic() + wait_s
        silent: List[int] = []
        while time.monotonic() < deadline and not self._stop.is_set():
            silent = self.silent_ranks(4 * HEARTBEAT_PERIOD_S)
            if silent or self._store_error_since is not None:
                break
            time.sleep(HEARTBEAT_PERIOD_S)
        if silent:
            names = ", ".join(self._name(r) for r in silent)
            return LearnerLost(f"{names} stopped; the learner group cannot go on ({what} failed: {detail})")
        if self._store_error_since is not None:
            return LearnerLost(f"lost torchrun's rendezvous store at {self.placement.master_addr}:"
                               f"{self.placement.master_port} (the torchrun hosting it has stopped); "
                               f"{what} failed: {detail}")
        return LearnerLost(f"a learner of the group stopped or is unreachable ({what} failed: {detail})")

    def peers_alive(self) -> Optional[StopReason]:
        """A health check for the supervising loop: fails when another learner's heartbeat has
        been still for HEARTBEAT_TIMEOUT_S (even while no collective is waiting for it)."""
        silent = self.silent_ranks(HEARTBEAT_TIMEOUT_S)
        if silent:
            names = ", ".join(self._name(r) for r in silent)
            return StopReason.failed(f"{names} stopped: no heartbeat for {HEARTBEAT_TIMEOUT_S:g} s")
        since = self._store_error_since
        if since is not None and time.monotonic() - since >= HEARTBEAT_TIMEOUT_S:
            return StopReason.failed(f"lost torchrun's rendezvous store at {self.placement.master_addr}:"
                                     f"{self.placement.master_port} for {HEARTBEAT_TIMEOUT_S:g} s (the torchrun "
                                     f"hosting it has stopped): {self._store_error}")
        return None

    def close(self) -> None:
        """Stops the heartbeats and leaves the process group (without waiting for the others)."""
        self._stop.set()
        self._heartbeats.join(timeout=2 * HEARTBEAT_PERIOD_S + 5)
        try:
            self._dist.destroy_process_group()
        except RuntimeError:  # a group broken by a lost learner
            pass
