"""Separate hosts on one machine for multi-host tests: Linux network namespaces on one bridge.

Each host is a network namespace with its own stack and address, joined to a bridge in the root
namespace by a veth pair; the root namespace gets the bridge's address, so a test process can
reach every host. Names and the subnet derive from the test process's pid, so two test processes
never collide; everything made is removed on exit, also after a failure.

    with network_hosts(["learner", "env1"]) as hosts:
        server = subprocess.Popen(hosts["env1"].command([sys.executable, "-m", ...]))
        hosts["env1"].address            # "10.213.N.3"
        hosts.disconnect("env1")         # a partition: the host's link goes down
        hosts.reconnect("env1")
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
from typing import Dict, Iterator, List, Optional


def netns_unavailable_reason() -> Optional[str]:
    """Why this process cannot make network namespaces, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip`"
    return None


def _ip(*args: str, namespace: Optional[str] = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    cmd = prefix + ["ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    namespace: str
    address: str
    link: str  # the veth end on the bridge, in the root namespace

    def command(self, argv: List[str]) -> List[str]:
        """`argv` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.namespace, *map(str, argv)]


class Hosts:
    def __init__(self, hosts: Dict[str, Host], gateway: str) -> None:
        self._hosts = hosts
        self.gateway = gateway  # the root namespace's address on the bridge

    def __getitem__(self, name: str) -> Host:
        return self._hosts[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(self._hosts.values())

    def disconnect(self, name: str) -> None:
        """Cuts the host off the network (its link to the bridge goes down); its processes live on."""
        _ip("link", "set", self._hosts[name].link, "down")

    def reconnect(self, name: str) -> None:
        _ip("link", "set", self._hosts[name].link, "up")


@contextlib.contextmanager
def network_hosts(names: List[str]) -> Iterator[Hosts]:
    """Namespaces named after `names` on one bridge, removed on exit (needs root)."""
    reason = netns_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    if len(names) > 250:
        raise ValueError("at most 250 hosts")
    tag = f"{os.getpid() % 100000}"
    subnet = f"10.213.{os.getpid() % 250}"
    bridge = f"tbbr{tag}"
    made_namespaces: List[str] = []
    made_links: List[str] = [bridge]
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        hosts = {}
        for index, name in enumerate(names):
            namespace, link, peer = f"tb{tag}-{index}", f"tbv{tag}-{index}", f"tbp{tag}-{index}"
            _ip("netns", "add", namespace)
            made_namespaces.append(namespace)
            _ip("link", "add", link, "type", "veth", "peer", "name", peer)
            made_links.append(link)
            _ip("link", "set", peer, "netns", namespace)
            _ip("link", "set", link, "master", bridge, "up")
            address = f"{subnet}.{index + 2}"
            _ip("addr", "add", f"{address}/24", "dev", peer, namespace=namespace)
            _ip("link", "set", peer, "up", namespace=namespace)
            _ip("link", "set", "lo", "up", namespace=namespace)
            hosts[name] = Host(name, namespace, address, link)
        yield Hosts(hosts, f"{subnet}.1")
    finally:
        for namespace in made_namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        for link in reversed(made_links):  # the veths die with their namespace; the bridge stays
            subprocess.run(["ip", "link", "del", link], capture_output=True)
