"""How many env servers deliver and how fast each host steps, for progress lines and logs.csv.

`ServerRates` reads an actor pool's status() (one entry per actor: address, connected, steps)
and groups the actors by the host part of their address (`local` for unix sockets).
"""
from __future__ import annotations

import collections
import time
from typing import Any, Callable, Dict, List, Tuple

from torchbeast.core.transport import host_of


class ServerRates:
    """Connected env servers and env steps per second per host since the previous sample()."""

    def __init__(self, status: Callable[[], List[Dict[str, Any]]], clock: Callable[[], float] = time.monotonic) -> None:
        self._status = status
        self._clock = clock
        self._last: Tuple[float, Dict[int, int]] = (clock(), {})

    def sample(self) -> Tuple[int, Dict[str, float]]:
        """(servers connected now, {host: steps per second}), the hosts sorted."""
        now = self._clock()
        status = self._status()
        then, steps_then = self._last
        self._last = (now, {s["index"]: s["steps"] for s in status})
        steps: Dict[str, int] = collections.defaultdict(int)
        for s in status:
            steps[host_of(s["address"])] += s["steps"] - steps_then.get(s["index"], 0)
        elapsed = now - then
        rates = {host: (steps[host] / elapsed if elapsed > 0 else 0.0) for host in sorted(steps)}
        return sum(bool(s["connected"]) for s in status), rates

    def row(self) -> Dict[str, Any]:
        """The logs.csv fields: env_servers (connected) and host_sps ('host=rate' pairs, space-separated)."""
        connected, rates = self.sample()
        return dict(env_servers=connected, host_sps=" ".join(f"{host}={rate:.1f}" for host, rate in rates.items()))

    def text(self) -> str:
        """For a progress line: '3 env servers | 10.0.0.2 120.5, 10.0.0.3 98.1 SPS'."""
        connected, rates = self.sample()
        per_host = ", ".join(f"{host} {rate:.1f}" for host, rate in rates.items())
        return f"{connected} env server{'s' if connected != 1 else ''}" + (f" | {per_host} SPS" if per_host else "")
