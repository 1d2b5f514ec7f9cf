"""Data-parallel PolyBeast learners under torchrun (gloo on CPUs): two ranks on one host keep
identical weights, resume together and take env servers that register (rank 0 spreads them), a
killed rank stops the other with a line naming it, two torchrun invocations across network
namespaces (root only) train one model until one host is cut off; the pure parts (placement,
spread) in process."""
import importlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from netns import netns_unavailable_reason, network_hosts
from ports import consecutive_free_ports, free_port

from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.core.distributed import Placement, placement_from_env, spread, state_digest
from torchbeast.core.run_outputs import read_log
from torchbeast.errors import ConfigError

CUE = "torchbeast:CueMemory-v0"
T, B = 10, 4
FAST = ["--env", CUE, "--encoder", "small", "--hidden_size", "32", "--unroll_length", str(T), "--batch_size", str(B),
        "--log_interval", "1", "--num_learner_threads", "1", "--num_inference_threads", "1", "--num_threads", "1"]
DIGEST = re.compile(r"Learner rank (\d+) (?:stops|starts) at step (\d+).*digest (\w+)")
ENV = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"), PYTHONUNBUFFERED="1")


# --- the pure parts ---------------------------------------------------------------------------

def test_spread_gives_every_rank_an_even_share_of_every_host():
    addresses = [f"{host}:{port}" for host in ("a", "b") for port in (1, 2, 3)]
    shares = spread(addresses, 4)
    assert shares == [["a:1", "b:2"], ["a:2", "b:3"], ["a:3"], ["b:1"]]
    assert sorted(sum(shares, [])) == sorted(addresses)
    assert spread(addresses, 1) == [addresses]
    with pytest.raises(ConfigError, match=r"--env_servers: 1 env server\(s\) for 2 learners"):
        spread(["a:1"], 2)


def test_spread_is_stable_as_servers_join_and_leave():
    shares = spread(["g:1", "g:2"], 3, allow_empty=True)  # given ones; registered ones fill rank 2
    assert shares == [["g:1"], ["g:2"], []]
    shares = spread(["g:1", "g:2", "r:1", "r:2", "r:3", "r:4"], 3, previous=shares)
    assert shares == [["g:1", "r:2"], ["g:2", "r:3"], ["r:1", "r:4"]]
    # r:1 and r:2 leave: the others stay where they were; then a rank 2 servers ahead gives one away.
    assert spread(["g:1", "g:2", "r:3", "r:4"], 3, previous=shares) == [["g:1"], ["g:2", "r:3"], ["r:4"]]
    shares = spread(["g:1", "g:2", "r:4"], 3, previous=[["g:1"], ["g:2", "r:3", "r:4"], []])
    assert shares == [["g:1"], ["g:2"], ["r:4"]]  # the last listed moved; the given g:2 stays
    assert spread(["g:1", "r:4"], 3, previous=shares, allow_empty=True) == [["g:1"], [], ["r:4"]]


def test_placement_comes_from_torchruns_environment():
    assert placement_from_env({}) is None
    assert placement_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None  # a group of one: alone, as before
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "9"}
    assert placement_from_env(env) == Placement(rank=3, world_size=4, local_rank=1, node=1, master_addr="h",
                                                master_port=9)
    with pytest.raises(ConfigError, match="MASTER_ADDR is not"):
        placement_from_env({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "9"})
    with pytest.raises(ConfigError, match="RANK 2 is not in"):
        placement_from_env(dict(env, RANK="2", WORLD_SIZE="2"))


def test_fewer_env_servers_than_learners_is_one_line_exit_2(tmp_path):
    # The check comes before the learners meet, so torchrun's variables alone show it.
    env = dict(ENV, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    proc = subprocess.run([sys.executable, "-m", "torchbeast.polybeast_learner", *FAST, "--env_servers",
                           "127.0.0.1:5000", "--savedir", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "polybeast_learner: error: --env_servers: 1 env server(s) for 2 learners (WORLD_SIZE 2); every learner "
        "needs at least one")


# --- runs under torchrun ----------------------------------------------------------------------

def wait_for_port(host, port, command_prefix=(), timeout=60):
    """Until something accepts on host:port (from inside a namespace with `command_prefix`)."""
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run([*command_prefix, sys.executable, "-c", probe], capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError(f"nothing serves on {host}:{port} after {timeout} s")


class EnvServers:
    """`python -m torchbeast.polybeast_env --bind HOST:PORT --num_servers N`, stopped by SIGTERM."""

    def __init__(self, host, count, command_prefix=(), extra=()):
        self.port = consecutive_free_ports(count) if not command_prefix else 4431
        self.addresses = [f"{host}:{self.port + i}" for i in range(count)]
        self.proc = subprocess.Popen([*command_prefix, sys.executable, "-m", "torchbeast.polybeast_env", "--env", CUE,
                                      "--num_servers", str(count), "--bind", f"{host}:{self.port}", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        for i in range(count):
            wait_for_port(host, self.port + i, command_prefix)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[0]


@pytest.fixture
def env_servers():
    made = []

    def start(*args, **kwargs):
        made.append(EnvServers(*args, **kwargs))
        return made[-1]

    yield start
    for servers in made:
        servers.stop()


def torchrun(nnodes, nproc, *learner_args, node_rank=None, master=None, local_addr=None):
    """The torchrun command line of data-parallel learners (static rendezvous when several nodes)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc_per_node", str(nproc)]
    if nnodes > 1:
        host, port = master
        command += ["--node_rank", str(node_rank), "--master_addr", host, "--master_port", str(port)]
    if local_addr:
        command += ["--local_addr", local_addr]
    return [*command, "-m", "torchbeast.polybeast_learner", *map(str, learner_args)]


def run(command, timeout=150, env=ENV):
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def digests(output, verb):
    """{rank: (step, digest)} of the 'Learner rank R starts|stops at step S (... digest D)' lines."""
    found = {}
    for line in output.splitlines():
        match = DIGEST.search(line)
        if match and f" {verb} " in line:
            found[int(match.group(1))] = (int(match.group(2)), match.group(3))
    return found


def checkpoint_digest(run_dir):
    state = load_checkpoint(str(run_dir / "model.tar"))
    return int(state["step"]), state_digest(state["model_state_dict"])


def test_two_learners_on_one_host_stay_identical_resume_together_and_take_registered_servers(tmp_path, env_servers):
    registry = f"127.0.0.1:{free_port()}"
    # The servers also register (retrying while nothing serves registration): the resumed run finds them so.
    servers = env_servers("127.0.0.1", 2, extra=["--learner", registry])
    args = [*FAST, "--savedir", tmp_path, "--xpid", "dp", "--seed", 3]
    output = run(torchrun(1, 2, *args, "--env_servers", *servers.addresses, "--total_steps", 800))
    assert "Learning from 1 env server(s): " + servers.addresses[0] in output  # rank 0's share
    assert "Learning from 1 env server(s): " + servers.addresses[1] in output  # rank 1's
    stops = digests(output, "stops")
    assert set(stops) == {0, 1} and stops[0] == stops[1], output  # same step, same weights
    assert checkpoint_digest(tmp_path / "dp") == stops[0]  # rank 0's checkpoint holds them
    rows = read_log(str(tmp_path / "dp" / "logs.csv"))
    steps = [int(r["step"]) for r in rows]
    # One writer (rank 0), and each update learned both ranks' [T, B] batches.
    assert steps == list(range(2 * T * B, steps[-1] + 1, 2 * T * B)), steps
    assert len(os.listdir(tmp_path / "dp" / "tensorboard")) == 1

    # Resumed with registration instead of --env_servers: rank 0 alone serves it and spreads the
    # servers over the ranks (none trains before each has one); a third server joining mid-run
    # goes to rank 0 (the lowest rank of the smallest shares), whose progress lines then count 2.
    total = 800 + 8000
    node = subprocess.Popen(torchrun(1, 2, *args, "--registry_bind", registry, "--total_steps", total),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)
    try:
        output = Output(node)
        output.until(lambda line: line.startswith("step") and int(line.split()[1]) > 800, "progress past step 800")
        third = env_servers("127.0.0.1", 1, extra=["--learner", registry])
        output.until(lambda line: line.startswith("step") and "| 2 env servers" in line, "progress line with 2 servers")
        resumed = output.rest()
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.communicate()
    assert node.returncode == 0, resumed
    assert resumed.count("Serving env server registration on " + registry) == 1, resumed  # rank 0 alone
    assert resumed.count("Every learner has env servers (1, 1 per rank): training starts") == 2, resumed
    assert f"Env server {third.addresses[0]} joined (registered by " in resumed
    starts = digests(resumed, "starts")
    assert starts[0] == starts[1] == stops[0], resumed  # both ranks start from the checkpoint
    stops = digests(resumed, "stops")
    assert stops[0] == stops[1] and stops[0][0] >= total, resumed
    assert checkpoint_digest(tmp_path / "dp") == stops[0]
    rows = read_log(str(tmp_path / "dp" / "logs.csv"))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == stops[0][0]
    assert max(int(r["env_servers"] or 0) for r in rows) == 2


class Output:
    """Reads a process's output lines in a thread, so a test can wait for one with a timeout."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = queue.Queue()
        self.read = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in iter(self.proc.stdout.readline, ""):
            self.lines.put(line)
        self.lines.put(None)

    def _next(self, deadline):
        line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if line is not None:
            self.read.append(line)
        return line

    def until(self, predicate, what, timeout=90):
        """Up to the first line for which predicate(line) holds; AssertionError after `timeout` s without one."""
        deadline = time.monotonic() + timeout
        try:
            while (line := self._next(deadline)) is not None:
                if predicate(line):
                    return line
        except queue.Empty:
            pass
        raise AssertionError(f"no {what} within {timeout} s:\n{''.join(self.read)}")

    def until_learning(self, timeout=90):
        """Up to the first progress line past step 0."""
        return self.until(lambda line: line.startswith("step") and line.split()[1] != "0", "progress line", timeout)

    def rest(self, timeout=120):
        """All the output once the process has ended (within `timeout` seconds)."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        self.proc.stdout.close()
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                self.read.append(line)
        return "".join(self.read)


def test_a_killed_learner_stops_the_other_naming_its_rank(tmp_path, env_servers):
    # Two torchrun invocations (two "nodes" on loopback): torchrun's agent stops only its own node.
    servers = env_servers("127.0.0.1", 2)
    master = ("127.0.0.1", free_port())
    args = [*FAST, "--env_servers", *servers.addresses, "--savedir", tmp_path, "--xpid", "kill",
            "--total_steps", 100_000_000]
    nodes = [subprocess.Popen(torchrun(2, 1, *args, node_rank=rank, master=master), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
             for rank in (0, 1)]
    try:
        output = Output(nodes[0])
        output.until_learning()
        victims = [p for p in psutil.Process(nodes[1].pid).children(recursive=True)
                   if "polybeast_learner" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1"]
        assert len(victims) == 1, "".join(output.read)
        killed_at = time.monotonic()
        victims[0].kill()
        output = output.rest()
        stopped_within = time.monotonic() - killed_at
        nodes[1].communicate(timeout=60)
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    errors = [line for line in output.splitlines() if line.startswith("polybeast_learner: error:")]
    assert len(errors) == 1, output
    assert re.match(rf"polybeast_learner: error: learner-0: learner rank 1 \(pid {victims[0].pid} on \S+, node 1, "
                    r"local rank 0\) stopped; the learner group cannot go on "
                    r"\((gradient all-reduce|episode statistics) failed: ",  # whichever collective it was in
                    errors[0]), output
    assert nodes[0].returncode != 0 and nodes[1].returncode != 0
    assert stopped_within < 60, stopped_within
    assert load_checkpoint(str(tmp_path / "kill" / "model.tar"))["step"] > 0  # rank 0 saved on its way out


def interface_with_address(namespace, address):
    """The network interface that holds `address` inside `namespace`."""
    listing = subprocess.run(["ip", "netns", "exec", namespace, "ip", "-o", "-4", "addr", "show"], capture_output=True,
                             text=True, check=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        if fields[3].split("/")[0] == address:
            return fields[1].split("@")[0]
    raise AssertionError(f"no interface with {address} in {namespace}:\n{listing}")


def plaintext_flag(module):
    """`--insecure` when `module` takes it (plaintext between hosts then has to be asked for)."""
    return ["--insecure"] if "--insecure" in importlib.import_module(module).make_parser().format_help() else []


@pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason()))
def test_two_learners_in_two_network_namespaces_learn_together_until_one_is_cut_off(tmp_path, env_servers):
    # One run for both: the learners meet across namespaces, start from the same weights and learn
    # (each progress line past step 0 is an all-reduce between them); then learner1's host is cut
    # off, with no connection reset: the survivor learns it from the silent heartbeat and the
    # all-reduce timeout. (That replicas stay identical to the end is shown on one host above.)
    with network_hosts(["learner0", "learner1", "envs"]) as hosts:
        envs = hosts["envs"]
        servers = env_servers(envs.address, 2, command_prefix=envs.command([])[:4],
                              extra=plaintext_flag("torchbeast.polybeast_env"))
        master = (hosts["learner0"].address, 29400)
        args = [*FAST, "--env_servers", *servers.addresses, "--savedir", tmp_path, "--xpid", "cut",
                "--total_steps", 100_000_000, "--dist_timeout_s", 20, *plaintext_flag("torchbeast.polybeast_learner")]
        nodes = []
        for rank in (0, 1):
            host = hosts[f"learner{rank}"]
            # gloo would otherwise pick the interface of the machine's hostname, which is not in the namespace.
            env = dict(ENV, GLOO_SOCKET_IFNAME=interface_with_address(host.namespace, host.address))
            nodes.append(subprocess.Popen(
                host.command(torchrun(2, 1, *args, node_rank=rank, master=master, local_addr=host.address)),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
        other = Output(nodes[1])
        try:
            output = Output(nodes[0])
            other.until(lambda line: "Learning from 1 env server(s)" in line, "line naming rank 1's env server")
            output.until_learning()
            hosts.disconnect("learner1")
            cut_at = time.monotonic()
            output = output.rest()
            stopped_within = time.monotonic() - cut_at
        finally:
            for node in nodes:
                if node.poll() is None:
                    node.kill()
                    node.wait()
            other.rest()
    started = {**digests(output, "starts"), **digests("".join(other.read), "starts")}
    assert set(started) == {0, 1} and started[0] == started[1], output  # rank 0's weights reached rank 1
    assert f"Learning from 1 env server(s): {servers.addresses[1]}" in "".join(other.read)  # in its namespace
    errors = [line for line in output.splitlines() if line.startswith("polybeast_learner: error:")]
    assert len(errors) == 1, output
    assert re.match(r"polybeast_learner: error: learner rank 1 \(pid \d+ on \S+, node 1, local rank 0\) stopped: "
                    r"no heartbeat for 15 s", errors[0]), output
    assert nodes[0].returncode != 0
    assert stopped_within < 60, stopped_within
    assert load_checkpoint(str(tmp_path / "cut" / "model.tar"))["step"] > 0
