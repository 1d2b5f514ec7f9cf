"""scripts/ssh_launch.sh end to end with a stand-in `ssh` on PATH that runs the remote command on
this machine (the real ssh needs hosts and keys): servers on two "hosts", the learner here, and
the servers stopped when the learner ends."""
import os
import stat
import subprocess
import sys

import psutil
from test_distributed import FAST, consecutive_free_ports, plaintext_flag

from torchbeast.core.checkpoint import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_SSH = """#!/bin/sh
# ssh [options] HOST COMMAND...: runs COMMAND here, as sshd would run it there (stdin passed on).
while [ $# -gt 0 ]; do
  case "$1" in -o|-i|-p|-l|-F) shift 2 ;; -*) shift ;; *) break ;; esac
done
shift  # the host
exec sh -c "$*"
"""


def servers_on(port):
    """The env server commands still serving on `port`."""
    commands = [(p.pid, p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    return [pid for pid, argv in commands if "torchbeast.polybeast_env" in argv and f"0.0.0.0:{port}" in argv]


def test_ssh_launch_serves_on_every_host_and_stops_the_servers(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "ssh").write_text(FAKE_SSH)
    (fake_bin / "ssh").chmod(stat.S_IRWXU)
    ports = [consecutive_free_ports(1), consecutive_free_ports(1)]
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", SERVERS_PER_HOST="1", PYTHON=sys.executable,
               TLS_ARGS=" ".join(plaintext_flag("torchbeast.polybeast_env")),
               MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([os.path.join(REPO, "scripts", "ssh_launch.sh"), f"127.0.0.1:{ports[0]}",
                           f"localhost:{ports[1]}", "--", *FAST, "--total_steps", "1200", "--savedir", str(tmp_path),
                           "--xpid", "ssh"], capture_output=True, text=True, env=env, timeout=150)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"Learning from 2 env server(s): 127.0.0.1:{ports[0]}, localhost:{ports[1]}" in output
    assert load_checkpoint(str(tmp_path / "ssh" / "model.tar"))["step"] >= 1200
    assert "stopping the env servers" in output
    assert servers_on(ports[0]) == [] and servers_on(ports[1]) == [], output  # none left behind
