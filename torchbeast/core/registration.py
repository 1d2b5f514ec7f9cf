"""The learner's side of env server registration: actors follow the registry.

Env servers started with `polybeast_env --learner HOST:PORT` register their addresses with the
learner's `libtorchbeast.Registry` and repeat it every heartbeat (a lease). `RegisteredServers`
compares the registry's leases with the actor pool about twice a second: a newly registered
address gets an actor at once (at the start or mid-run), and one whose server left (it said so
on the way out, or no heartbeat came for `lease_s` seconds) is dropped once its stream has
stopped too, with a log line either way. A server whose heartbeats stop but whose stream still
delivers steps stays (the pool's own --env_timeout_s drops a stream that stalls). Addresses the
learner was given (--env_servers, --env_servers_file) are never dropped: their actors reconnect
as before.

Under torchrun (data-parallel learners) rank 0 alone serves the registry. Its `SpreadOverLearners`
(the `select` of its RegisteredServers) spreads the given and the registered servers over the
ranks with `distributed.spread` (stable: a server keeps its rank while it stays) and publishes
the shares; on every other rank `FollowedShares` adds and removes actors to match its share.
`LearnersReady` holds the training back until every rank has a server: a rank without one never
reaches the gradient all-reduce the others would wait in.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set

from torchbeast.core.distributed import spread
from torchbeast.core.supervisor import HealthCheck, StopReason
from torchbeast.core.transport import is_loopback
from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")


class RegisteredServers:
    """Keeps `pool`'s actors in step with `registry`'s leases (see the module docstring).

    `allow_plaintext_remote`: whether a registered address on another host may be dialled
    without TLS (--insecure); without it such a registration is refused with a log line.
    `select`: which of the live registered addresses this learner takes (several data-parallel
    learners share them out); by default all. Addresses it stops selecting are handed back
    (their actors removed here)."""

    def __init__(self, registry: Any, pool: Any, lease_s: float, allow_plaintext_remote: bool = True,
                 select: Optional[Callable[[Iterable[str]], Set[str]]] = None) -> None:
        self.registry = registry
        self.pool = pool
        self.lease_s = lease_s
        self.allow_plaintext_remote = allow_plaintext_remote
        self.select = select or set
        self.added: Set[str] = set()  # registered addresses this learner has an actor for
        self._given = {s["address"] for s in pool.status()}  # --env_servers: never dropped here
        self._refused: Set[str] = set()  # said once

    def sync(self) -> None:
        """One comparison of leases and actors: adds, drops and logs."""
        leases = {lease["address"]: lease for lease in self.registry.leases()}
        live = {address for address, lease in leases.items() if not self._ended(lease)}
        for address in sorted(set(leases) - live - self.added):
            self.registry.forget(address)  # ended before it got an actor: nothing to drop
        acceptable = {address for address in live - self._given if self._acceptable(address, leases[address])}
        wanted = self.select(acceptable)
        for address in sorted(wanted - self.added):
            self._add(address, leases[address])
        connected = {s["address"] for s in self.pool.status() if s["connected"]}
        for address in sorted(self.added):
            lease = leases.get(address)
            if lease is not None and address not in wanted and address in live:
                self._remove(address, "handed to another learner", forget=False)
            elif lease is None or (address not in live and address not in connected):
                self._remove(address, self._why_ended(lease), forget=True)

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """sync() every `interval_s` seconds until `stop` is set (a thread of the learner)."""
        while not stop.wait(interval_s):
            self.sync()

    def _ended(self, lease: Dict[str, Any]) -> bool:
        return bool(lease["leaving"]) or lease["seconds_since_heartbeat"] > self.lease_s

    def _why_ended(self, lease: Optional[Dict[str, Any]]) -> str:
        if lease is None:
            return "forgotten"
        if lease["leaving"]:
            return "it said it stops, and its stream ended"
        return f"no heartbeat for {lease['seconds_since_heartbeat']:.0f} s and no stream"

    def _acceptable(self, address: str, lease: Dict[str, Any]) -> bool:
        """False (forgetting it, with a log line the first time) for a server on another host
        when this learner may not dial one in plaintext."""
        if self.allow_plaintext_remote or is_loopback(address):
            return True
        if address not in self._refused:
            log.warning("Env server %s (registered by %s) not added: it is on another host and this learner has "
                        "no TLS (--tls_cert, --tls_key, --tls_ca) or --insecure", address, lease["peer"])
            self._refused.add(address)
        self.registry.forget(address)
        return False

    def _add(self, address: str, lease: Dict[str, Any]) -> None:
        index = self.pool.add_server(address)
        if index < 0:  # an actor streams from it already (given on the command line too)
            self._given.add(address)
            return
        self.added.add(address)
        log.info("Env server %s joined (registered by %s): actor %d; %d env server(s)", address, lease["peer"],
                 index, len(self.pool.status()))

    def _remove(self, address: str, why: str, forget: bool) -> None:
        self.pool.remove_server(address)
        self.added.discard(address)
        if forget:
            self.registry.forget(address)
        log.warning("Env server %s left (%s): dropped; %d env server(s)", address, why, len(self.pool.status()))


Shares = List[List[str]]  # the env server addresses of each rank, rank 0 first


class LearnersReady:
    """Whether every rank of a learner group has at least one env server, as the shares say.

    Training waits for it (`wait`): a rank without servers gathers no batch, so the others would
    wait for it in the gradient all-reduce. `check` stops the run (exit 2) when it has not come
    after `timeout_s` (--connect_timeout_s). Once training runs, a rank left without servers is
    logged; that rank stops after --connect_timeout_s without one (`servers_reachable`)."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.event = threading.Event()
        self.servers = 0  # in the last shares seen
        self._empty: Optional[List[int]] = None  # the ranks without servers in the last shares seen

    def observe(self, shares: Shares) -> None:
        empty = [rank for rank, share in enumerate(shares) if not share]
        self.servers = sum(len(share) for share in shares)
        if empty == self._empty:
            return
        self._empty = empty
        if not empty and not self.event.is_set():
            log.info("Every learner has env servers (%s per rank): training starts",
                     ", ".join(str(len(share)) for share in shares))
            self.event.set()
        elif empty and not self.event.is_set():
            log.info("Waiting for env servers: %d for %d learners, learner rank(s) %s have none yet; no learner "
                     "trains before each has one (--connect_timeout_s)", self.servers, self.world_size,
                     ", ".join(map(str, empty)))
        elif empty:
            log.warning("Learner rank(s) %s have no env server now (%d for %d learners): the others wait for them "
                        "in the gradient all-reduce until a server registers (--dist_timeout_s, "
                        "--connect_timeout_s)", ", ".join(map(str, empty)), self.servers, self.world_size)

    def wait(self, stop: threading.Event, poll_s: float = 0.2) -> bool:
        """Blocks until every rank has a server (True) or `stop` is set (False)."""
        while not self.event.wait(poll_s):
            if stop.is_set():
                return False
        return True

    def check(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> HealthCheck:
        start = clock()

        def check() -> Optional[StopReason]:
            if self.event.is_set() or clock() - start < timeout_s:
                return None
            detail = (f"only {self.servers} env server(s) for {self.world_size} learners after {timeout_s:g} s "
                      f"(--connect_timeout_s): every learner needs one before they train; start more with "
                      f"polybeast_env --learner")
            return StopReason.failed(detail, ConfigError(detail))

        return check


class SpreadOverLearners:
    """Rank 0's `select` for its RegisteredServers: spreads the `given` servers (--env_servers,
    which never move) and the registered ones over the ranks, publishes the shares when they
    change and returns the registered servers of rank 0."""

    def __init__(self, given: Sequence[str], world_size: int, publish: Callable[[Shares], None],
                 ready: LearnersReady) -> None:
        self.given = list(dict.fromkeys(given))
        self.world_size = world_size
        self.publish = publish
        self.ready = ready
        self.shares = spread(self.given, world_size, allow_empty=True)
        self.joined: List[str] = []  # registered servers, in the order they joined: the last one moves first
        self._published: Optional[Shares] = None

    def __call__(self, registered: Iterable[str]) -> Set[str]:
        registered = set(registered) - set(self.given)
        self.joined = [a for a in self.joined if a in registered] + sorted(registered - set(self.joined))
        before = {address: rank for rank, share in enumerate(self.shares) for address in share}
        self.shares = spread(self.given + self.joined, self.world_size, previous=self.shares, allow_empty=True)
        if self.shares != self._published:
            for rank, share in enumerate(self.shares):
                for address in share:
                    if before.get(address) != rank and rank != 0:  # rank 0 logs its own additions
                        log.info("Env server %s: to learner rank %d", address, rank)
            self.publish(self.shares)
            self._published = [list(share) for share in self.shares]
        self.ready.observe(self.shares)
        return set(self.shares[0]) - set(self.given)


class FollowedShares:
    """A rank other than 0 of a learner group: keeps `pool`'s actors in step with its share of
    the env servers, which rank 0 publishes (`read` returns the latest shares, or None before the
    first). Servers of its own --env_servers share are in the pool from the start and stay."""

    def __init__(self, pool: Any, read: Callable[[], Optional[Shares]], rank: int, ready: LearnersReady) -> None:
        self.pool = pool
        self.read = read
        self.rank = rank
        self.ready = ready
        self.added: Set[str] = set()
        self._given = {s["address"] for s in pool.status()}
        self._read_error: Optional[str] = None

    def sync(self) -> None:
        try:
            shares = self.read()
        except RuntimeError as e:  # torchrun's store is gone: the heartbeats stop the run
            if self._read_error is None:
                self._read_error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                log.warning("Cannot read rank 0's env server shares: %s", self._read_error)
            return
        self._read_error = None
        if shares is None:
            return
        self.ready.observe(shares)
        mine = set(shares[self.rank]) - self._given if self.rank < len(shares) else set()
        for address in sorted(mine - self.added):
            index = self.pool.add_server(address)
            if index >= 0:
                self.added.add(address)
                log.info("Env server %s joined (from learner rank 0): actor %d; %d env server(s)", address, index,
                         len(self.pool.status()))
        elsewhere = {address for share in shares for address in share}
        for address in sorted(self.added - mine):
            self.pool.remove_server(address)
            self.added.discard(address)
            log.warning("Env server %s left (%s): dropped; %d env server(s)", address,
                        "handed to another learner" if address in elsewhere else "rank 0 dropped it",
                        len(self.pool.status()))

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """sync() every `interval_s` seconds until `stop` is set (a thread of the learner)."""
        while not stop.wait(interval_s):
            self.sync()
