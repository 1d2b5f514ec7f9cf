"""Env servers that register with the learner (polybeast_env --learner, polybeast_learner
--registry_bind): joining mid-run adds an actor, leaving (said, or silent) drops it with a log
line; across network namespaces with mutual TLS; the flags' bad input; the learner's side of
registration against fakes."""
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from cli import run_module
from netns import netns_unavailable_reason, network_hosts
from ports import consecutive_free_ports

from torchbeast.core.registration import FollowedShares, LearnersReady, RegisteredServers, SpreadOverLearners
from torchbeast.core.run_outputs import read_log
from torchbeast.polybeast_learner import server_addresses

CUE = "torchbeast:CueMemory-v0"
FAST = ["--encoder", "small", "--hidden_size", "32", "--unroll_length", "10", "--batch_size", "4",
        "--log_interval", "1"]
MAKE_CERTS = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_certs.sh")


class Command:
    """A command in its own session whose output lines are read in the background."""

    def __init__(self, argv):
        env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        self.lines = []
        self._queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, predicate, timeout=60):
        """The first line (from now on) for which predicate(line) holds; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no such line within {timeout} s (exit {self.proc.poll()}); output:\n"
                                     + "".join(self.lines))
            self.lines.append(line)
            if predicate(line):
                return line

    def stop(self, signum=signal.SIGTERM, timeout=60):
        """Sends `signum` to the command's process group; returns its exit status and whole output."""
        if self.proc.stdout.closed:
            return self.proc.returncode, "".join(self.lines)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=10)  # it drains the pipe until every writer has gone
        self.proc.stdout.close()
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return self.proc.returncode, "".join(self.lines)


def module(*args, host=None):
    argv = [sys.executable, "-m", *map(str, args)]
    return host.command(argv) if host is not None else argv


def progress_with(servers):
    """A progress line past step 0 saying that `servers` env servers are connected."""
    return lambda line: line.startswith("step") and line.split()[1] != "0" and f"| {servers} env server" in line


def wait_for_log_row(path, predicate, timeout=60):
    """Until a row of logs.csv (written once per learner step) satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(predicate(row) for row in read_log(str(path))):
            return
        time.sleep(0.2)
    raise AssertionError(f"no row of {path} as expected within {timeout} s")


def test_servers_join_mid_run_and_are_dropped_when_they_leave(tmp_path):
    registry, port_a, port_b = consecutive_free_ports(1), consecutive_free_ports(1), consecutive_free_ports(2)
    learner = Command(module("torchbeast.polybeast_learner", "--env", CUE, "--registry_bind",
                             f"127.0.0.1:{registry}", "--server_lease_s", 2, "--total_steps", 100_000_000,
                             "--savedir", tmp_path, "--xpid", "reg", *FAST))
    env = ["torchbeast.polybeast_env", "--env", CUE, "--learner", f"127.0.0.1:{registry}"]
    a = Command(module(*env, "--num_servers", 1, "--bind", f"127.0.0.1:{port_a}"))
    b = None
    try:
        learner.wait_for(lambda line: f"Env server 127.0.0.1:{port_a} joined" in line)
        learner.wait_for(progress_with(1))
        # Two more join mid-run (a wildcard bind registers this host's address towards the learner).
        b = Command(module(*env, "--num_servers", 2, "--bind", f"0.0.0.0:{port_b}", "--insecure"))
        learner.wait_for(progress_with(3), timeout=90)
        wait_for_log_row(tmp_path / "reg" / "logs.csv", lambda row: row["env_servers"] == "3")
        # B vanishes without a word (SIGKILL to all its processes): no heartbeat, no stream.
        b.stop(signal.SIGKILL)
        dropped = learner.wait_for(lambda line: f"Env server 127.0.0.1:{port_b}" in line and " left " in line)
        assert "no heartbeat for" in dropped and "and no stream): dropped" in dropped, dropped
        learner.wait_for(progress_with(1))
        # A stops normally: it tells the learner, which drops it once its stream has ended.
        status_a, output_a = a.stop()
        assert status_a == 128 + signal.SIGTERM, output_a
        said = learner.wait_for(lambda line: f"Env server 127.0.0.1:{port_a} left" in line)
        assert "(it said it stops, and its stream ended): dropped; 0 env server(s)" in said, said
    finally:
        for command in (a, b):
            if command is not None:
                command.stop()
        status, output = learner.stop()
    assert status == 128 + signal.SIGTERM, output
    assert "Traceback" not in output
    rows = read_log(str(tmp_path / "reg" / "logs.csv"))
    assert max(int(r["env_servers"]) for r in rows) == 3
    assert any("127.0.0.1=" in r["host_sps"] for r in rows)


@pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason()))
def test_hosts_register_across_namespaces_over_mutual_tls(tmp_path):
    with network_hosts(["learner", "env1", "env2"]) as hosts:
        names = {h.name: h.address for h in hosts}
        certs = tmp_path / "certs"
        subprocess.run(["bash", MAKE_CERTS, certs, *(f"{name}={address}" for name, address in names.items())],
                       check=True, capture_output=True)

        def tls(name):
            return ["--tls_cert", certs / f"{name}.crt", "--tls_key", certs / f"{name}.key", "--tls_ca",
                    certs / "ca.crt"]

        learner_address = f"{names['learner']}:4400"
        learner = Command(module("torchbeast.polybeast_learner", "--env", CUE, "--registry_bind", "0.0.0.0:4400",
                                 "--server_lease_s", 3, "--total_steps", 100_000_000, "--savedir", tmp_path,
                                 "--xpid", "ns", *tls("learner"), *FAST, host=hosts["learner"]))
        env = ["torchbeast.polybeast_env", "--env", CUE, "--bind", "0.0.0.0:4431", "--learner", learner_address]
        servers = [Command(module(*env, "--num_servers", 1, *tls("env1"), host=hosts["env1"]))]
        try:
            learner.wait_for(lambda line: f"Env server {names['env1']}:4431 joined" in line)
            learner.wait_for(progress_with(1))
            # A second host joins mid-run; its server adds an actor, and its steps show per host. At
            # the same time, a host whose certificate is signed by another CA is refused (its
            # registration never lands).
            other = tmp_path / "other"
            subprocess.run(["bash", MAKE_CERTS, other, f"env2={names['env2']}"], check=True, capture_output=True)
            servers.append(Command(module(*env, "--num_servers", 1, *tls("env2"), host=hosts["env2"])))
            rogue = Command(module(*env[:-4], "--bind", "0.0.0.0:4441", "--learner", learner_address,
                                   "--num_servers", 1, "--tls_cert", other / "env2.crt", "--tls_key",
                                   other / "env2.key", "--tls_ca", certs / "ca.crt", host=hosts["env2"]))
            servers.append(rogue)
            line = learner.wait_for(progress_with(2), timeout=90)
            assert f"{names['env1']} " in line and f"{names['env2']} " in line, line
            rogue.wait_for(lambda line: "cannot register with the learner" in line)
            learner.wait_for(progress_with(2))
        finally:
            for server in servers:
                server.stop()
            status, output = learner.stop()
    assert status == 128 + signal.SIGTERM, output
    assert "Traceback" not in output and f"{names['env2']}:4441" not in output
    rows = read_log(str(tmp_path / "ns" / "logs.csv"))
    hosts_seen = {pair.split("=")[0] for r in rows for pair in r["host_sps"].split()}
    assert hosts_seen == {names["env1"], names["env2"]}, hosts_seen


def test_bad_registration_flags_are_one_line(tmp_path):
    listed = tmp_path / "servers.txt"
    listed.write_text("# comment\nunix:/tmp/a\n\nnot-an-address\n")
    proc = run_module("torchbeast.polybeast_learner", "--env", CUE, "--env_servers_file", listed,
                      "--registry_bind", "0.0.0.0:4400", "--savedir", tmp_path, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"polybeast_learner: error: --env_servers_file {listed} line 4: env server address "
                                   "'not-an-address': expected unix:/path or host:port; --registry_bind 0.0.0.0:4400: "
                                   "not a loopback address; traffic between hosts needs mutual TLS (--tls_cert, "
                                   "--tls_key, --tls_ca; see scripts/make_certs.sh) or --insecure"), proc.stderr
    proc = run_module("torchbeast.polybeast_env", "--learner", "learner", "--advertise", "10.0.0.2", check=False,
                      timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("polybeast_env: error: --learner 'learner': expected unix:/path or host:port; "
                                   "--advertise needs --learner and --bind (unix sockets are reached by their path)")
    with socket.socket() as taken:  # a registry port that is served already
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run_module("torchbeast.polybeast_learner", "--env", CUE, "--registry_bind",
                          f"127.0.0.1:{taken.getsockname()[1]}", "--savedir", tmp_path, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("cannot listen there (the port is in use, or the host is "
                                                         "not an address of this machine)"), proc.stderr


def test_env_servers_file_adds_to_env_servers(tmp_path):
    listed = tmp_path / "servers.txt"
    listed.write_text("10.0.0.2:4431  # host A\n10.0.0.3:4431\n\n# 10.0.0.4:4431\nunix:/tmp/a\n")
    assert server_addresses(["unix:/tmp/a"], "unix:/tmp/pb", 4, str(listed)) == [
        "unix:/tmp/a", "10.0.0.2:4431", "10.0.0.3:4431"]
    assert server_addresses(None, "unix:/tmp/pb", 2) == ["unix:/tmp/pb.0", "unix:/tmp/pb.1"]
    assert server_addresses(None, "unix:/tmp/pb", 2, registry_bind="127.0.0.1:4400") == []


class FakeRegistry:
    def __init__(self):
        self.entries = {}

    def leases(self):
        return [dict(address=a, peer="ipv4:10.0.0.2:5000", seconds_since_heartbeat=s, leaving=left)
                for a, (s, left) in sorted(self.entries.items())]

    def forget(self, address):
        return self.entries.pop(address, None) is not None


class FakePool:
    def __init__(self, given=()):
        self.actors = {address: False for address in given}  # address -> connected

    def status(self):
        return [dict(address=a, connected=c) for a, c in self.actors.items()]

    def add_server(self, address):
        if address in self.actors:
            return -1
        self.actors[address] = True
        return len(self.actors) - 1

    def remove_server(self, address):
        return self.actors.pop(address, None) is not None


def test_registered_servers_follow_the_leases(caplog):
    registry, pool = FakeRegistry(), FakePool(given=["127.0.0.1:9000"])
    servers = RegisteredServers(registry, pool, lease_s=10, allow_plaintext_remote=False)
    registry.entries = {"127.0.0.1:9001": (0.5, False), "127.0.0.1:9000": (0.5, False), "10.0.0.2:9002": (0.5, False)}
    servers.sync()
    assert set(pool.actors) == {"127.0.0.1:9000", "127.0.0.1:9001"}  # a given one is not added twice
    assert "10.0.0.2:9002" not in registry.entries  # another host without TLS: refused, said once
    assert sum("not added" in r.message for r in caplog.records) == 1
    registry.entries["127.0.0.1:9001"] = (11.0, False)  # no heartbeat for longer than the lease ...
    servers.sync()
    assert "127.0.0.1:9001" in pool.actors  # ... but its stream still delivers: kept
    pool.actors["127.0.0.1:9001"] = False
    servers.sync()
    assert "127.0.0.1:9001" not in pool.actors and "127.0.0.1:9001" not in registry.entries
    registry.entries["127.0.0.1:9000"] = (20.0, True)
    servers.sync()
    assert "127.0.0.1:9000" in pool.actors  # given on the command line: never dropped
    registry.entries["127.0.0.1:9001"] = (0.1, False)  # back again: a new actor
    servers.sync()
    assert pool.actors.get("127.0.0.1:9001") is True
    assert any("Env server 127.0.0.1:9001 left (no heartbeat for 11 s and no stream)" in r.message
               for r in caplog.records)


def test_rank_0_spreads_registered_servers_over_the_learners_and_the_others_follow(caplog):
    # Two learners: rank 0 serves the registry and publishes the shares; rank 1 follows them.
    caplog.set_level(logging.INFO, logger="torchbeast")
    registry, pools = FakeRegistry(), [FakePool(given=["127.0.0.1:9000"]), FakePool()]
    published = []
    readies = [LearnersReady(world_size=2), LearnersReady(world_size=2)]
    rank0 = RegisteredServers(registry, pools[0], lease_s=10, select=SpreadOverLearners(
        ["127.0.0.1:9000"], 2, publish=published.append, ready=readies[0]))
    rank1 = FollowedShares(pools[1], read=lambda: published[-1] if published else None, rank=1, ready=readies[1])
    rank1.sync()  # nothing published yet: nothing to do
    rank0.sync()
    rank1.sync()
    assert published[-1] == [["127.0.0.1:9000"], []] and not pools[1].actors
    assert not readies[0].event.is_set() and not readies[1].event.is_set()  # rank 1 has none: nobody trains
    assert readies[0].check(timeout_s=0.0)().detail == (
        "only 1 env server(s) for 2 learners after 0 s (--connect_timeout_s): every learner needs one before they "
        "train; start more with polybeast_env --learner")
    registry.entries = {"127.0.0.1:9001": (0.1, False)}
    rank0.sync()
    rank1.sync()
    assert set(pools[0].actors) == {"127.0.0.1:9000"} and set(pools[1].actors) == {"127.0.0.1:9001"}
    assert readies[0].event.is_set() and readies[1].event.is_set()
    assert readies[1].check(timeout_s=0.0)() is None
    registry.entries.update({"127.0.0.1:9002": (0.1, False), "127.0.0.1:9003": (0.1, False)})
    rank0.sync()
    rank1.sync()
    assert published[-1] == [["127.0.0.1:9000", "127.0.0.1:9002"], ["127.0.0.1:9001", "127.0.0.1:9003"]]
    assert set(pools[0].actors) == {"127.0.0.1:9000", "127.0.0.1:9002"}
    assert set(pools[1].actors) == {"127.0.0.1:9001", "127.0.0.1:9003"}
    # 9001 leaves (said so, its stream has ended): rank 1 drops it; the shares stay even, nothing moves.
    registry.entries["127.0.0.1:9001"] = (0.1, True)
    rank0.sync()
    rank1.sync()
    assert published[-1] == [["127.0.0.1:9000", "127.0.0.1:9002"], ["127.0.0.1:9003"]]
    assert set(pools[1].actors) == {"127.0.0.1:9003"}
    # 9003 goes silent too: rank 0 hands 9002 over, so that rank 1 is not left without a server.
    registry.entries["127.0.0.1:9003"] = (11.0, False)
    rank0.sync()
    rank1.sync()
    assert published[-1] == [["127.0.0.1:9000"], ["127.0.0.1:9002"]]
    assert set(pools[0].actors) == {"127.0.0.1:9000"} and set(pools[1].actors) == {"127.0.0.1:9002"}
    messages = [r.message for r in caplog.records]
    assert "Env server 127.0.0.1:9002 left (handed to another learner): dropped; 1 env server(s)" in messages
    assert "Env server 127.0.0.1:9003 left (rank 0 dropped it): dropped; 1 env server(s)" in messages
    assert sum(m.startswith("Waiting for env servers: 1 for 2 learners, learner rank(s) 1 have none yet")
               for m in messages) == 2  # once on each rank
    assert sum(m.startswith("Every learner has env servers") for m in messages) == 2


def test_a_logs_csv_from_before_the_server_columns_gains_them_when_resumed(tmp_path):
    from torchbeast.core.run_outputs import LOG_FIELDS, RunLogger

    old = LOG_FIELDS[:LOG_FIELDS.index("env_servers")]
    (tmp_path / "logs.csv").write_text(",".join(old) + "\n" + ",".join(["40"] + ["1"] * (len(old) - 1)) + "\n")
    logger = RunLogger(str(tmp_path), tensorboard=False)
    logger.log(dict(step=80, env_servers=2, host_sps="10.0.0.2=12.5"))
    logger.close()
    rows = read_log(str(tmp_path / "logs.csv"))
    assert [(r["step"], r["env_servers"], r["host_sps"]) for r in rows] == [
        ("40", "", ""), ("80", "2", "10.0.0.2=12.5")]
