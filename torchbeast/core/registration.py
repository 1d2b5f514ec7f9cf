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
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterable, Optional, Set

from torchbeast.core.transport import is_loopback

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
        wanted = self.select(live - self._given)
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

    def _add(self, address: str, lease: Dict[str, Any]) -> None:
        if not self.allow_plaintext_remote and not is_loopback(address):
            if address not in self._refused:
                log.warning("Env server %s (registered by %s) not added: it is on another host and this learner has "
                            "no TLS (--tls_cert, --tls_key, --tls_ca) or --insecure", address, lease["peer"])
                self._refused.add(address)
            self.registry.forget(address)
            return
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
