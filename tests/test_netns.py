"""The multi-host test harness itself: namespaces reach each other, a partition cuts them off."""
import subprocess
import sys

import pytest
from netns import netns_unavailable_reason, network_hosts

pytestmark = pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason()))

ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 5555)); s.listen(); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(c.recv(16)); c.close()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], 5555), timeout=1.0); c.sendall(b"hi"); print(c.recv(16).decode())
except OSError as e:
    print(type(e).__name__)
"""


def _ask(hosts, name, address):
    return subprocess.run(hosts[name].command([sys.executable, "-c", CLIENT, address]), capture_output=True,
                          text=True, timeout=20).stdout.strip()


def test_hosts_reach_each_other_and_a_partition_cuts_one_off():
    with network_hosts(["a", "b"]) as hosts:
        server = subprocess.Popen(hosts["a"].command([sys.executable, "-c", ECHO_SERVER, hosts["a"].address]),
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            assert hosts["a"].address != hosts["b"].address
            assert _ask(hosts, "b", hosts["a"].address) == "hi"
            hosts.disconnect("a")
            assert _ask(hosts, "b", hosts["a"].address) in ("TimeoutError", "OSError")
            hosts.reconnect("a")
            assert _ask(hosts, "b", hosts["a"].address) == "hi"
        finally:
            server.kill()
            server.communicate()
        namespaces = [host.namespace for host in hosts]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(namespace in listed for namespace in namespaces)
