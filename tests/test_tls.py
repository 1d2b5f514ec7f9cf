"""Mutual TLS between env servers, actors and the learner's registry: certificates from
scripts/make_certs.sh, refusal of peers without a valid certificate, an end-to-end run over TLS,
and the TLS flags' bad input."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli import run_module
from ports import free_port

from libtorchbeast import Client, Registrar, Registry, RpcError, Server, TlsConfig
from torchbeast.core.checkpoint import load_checkpoint

CUE = "torchbeast:CueMemory-v0"
MAKE_CERTS = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_certs.sh")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """Two CAs: `run` (the run's) and `other`, each with a certificate for 127.0.0.1 named host."""
    folder = tmp_path_factory.mktemp("certs")
    for ca in ("run", "other"):
        subprocess.run(["bash", MAKE_CERTS, folder / ca, "host=127.0.0.1,localhost"], check=True,
                       capture_output=True)
    return folder


def pem(path):
    return path.read_text()


def tls(certs, ca="run", trust="run", with_cert=True):
    """A TlsConfig with `ca`'s host certificate (none without `with_cert`), trusting `trust`."""
    cert = pem(certs / ca / "host.crt") if with_cert else ""
    key = pem(certs / ca / "host.key") if with_cert else ""
    return TlsConfig(cert_chain=cert, private_key=key, root_certs=pem(certs / trust / "ca.crt"))


class ConstantEnv:
    def reset(self, seed=None):
        return {"frame": np.zeros((2, 3), np.uint8)}, {}

    def step(self, action):
        return {"frame": np.ones((2, 3), np.uint8)}, 1.0, False, False, {}


def test_make_certs_makes_a_ca_and_host_certificates_with_their_addresses(certs):
    text = subprocess.run(["openssl", "x509", "-in", certs / "run" / "host.crt", "-noout", "-text"], check=True,
                          capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    verify = ["openssl", "verify", "-CAfile"]
    assert subprocess.run([*verify, certs / "run" / "ca.crt", certs / "run" / "host.crt"]).returncode == 0
    assert subprocess.run([*verify, certs / "other" / "ca.crt", certs / "run" / "host.crt"],
                          capture_output=True).returncode != 0
    assert oct((certs / "run" / "host.key").stat().st_mode & 0o777) == "0o600"
    bad = subprocess.run(["bash", MAKE_CERTS, certs / "x", "=1.2.3.4"], capture_output=True, text=True)
    assert bad.returncode == 2 and "bad host argument" in bad.stderr


def test_an_env_server_over_tls_serves_only_clients_with_a_certificate_of_its_ca(certs):
    server = Server(ConstantEnv, "127.0.0.1:0", tls=tls(certs))
    server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        good = Client(address, tls=tls(certs))
        assert good.connect()["done"] and good.step(np.int64(0))["reward"] == 1.0
        good.close()
        refused = {
            "a certificate of another CA": tls(certs, ca="other", trust="run"),
            "no certificate": tls(certs, with_cert=False),
            "plaintext": None,
            "a server it does not trust": tls(certs, ca="other", trust="other"),
        }
        for case, config in refused.items():
            with pytest.raises(RpcError):
                Client(address, tls=config).connect()
                pytest.fail(f"connected with {case}")
    finally:
        server.stop()


def test_the_registry_over_tls_refuses_registrars_without_a_certificate_of_its_ca(certs):
    registry = Registry("127.0.0.1:0", heartbeat_s=0.1, tls=tls(certs))
    registry.start()
    learner = f"127.0.0.1:{registry.port}"
    registrars = [Registrar(learner, [f"127.0.0.1:{5000 + i}"], tls=config)
                  for i, config in enumerate([tls(certs, ca="other", trust="run"), tls(certs, with_cert=False), None,
                                              tls(certs)])]
    try:
        for registrar in registrars:
            registrar.start()
        deadline = time.monotonic() + 20
        while registrars[-1].state()["registrations"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [lease["address"] for lease in registry.leases()] == ["127.0.0.1:5003"]
        for refused in registrars[:-1]:
            state = refused.state()
            assert not state["registered"] and state["registrations"] == 0 and state["last_error"], state
    finally:
        for registrar in registrars:
            registrar.stop()
        registry.stop()


def test_training_over_tls_on_loopback(tmp_path, certs):
    run_tls = ["--tls_cert", certs / "run" / "host.crt", "--tls_key", certs / "run" / "host.key",
               "--tls_ca", certs / "run" / "ca.crt"]
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"))
    server = subprocess.Popen([sys.executable, "-m", "torchbeast.polybeast_env", "--env", CUE, "--num_servers", "1",
                               "--bind", f"127.0.0.1:{port}", *map(str, run_tls)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        run_module("torchbeast.polybeast_learner", "--env", CUE, "--env_servers", f"127.0.0.1:{port}", *run_tls,
                   "--savedir", tmp_path, "--xpid", "tls", "--total_steps", 800, "--encoder", "small",
                   "--hidden_size", 32, "--unroll_length", 10, "--batch_size", 4)
        # A learner without a certificate reaches no server (exit 2 naming the address).
        plain = run_module("torchbeast.polybeast_learner", "--env", CUE, "--env_servers", f"127.0.0.1:{port}",
                           "--connect_timeout_s", 3, "--savedir", tmp_path, "--xpid", "plain", check=False)
        assert plain.returncode == 2, plain.stderr
        assert f"no env server reachable for 3 s (--connect_timeout_s 3); tried 127.0.0.1:{port}" in plain.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert load_checkpoint(str(tmp_path / "tls" / "model.tar"))["step"] >= 800
    assert f"Serving {CUE} on 127.0.0.1:{port} (mutual TLS)" in output


@pytest.mark.parametrize("args, message", [
    (["--tls_cert", "{host}.crt"], "--tls_key, --tls_ca missing: mutual TLS needs --tls_cert, --tls_key and --tls_ca"),
    (["--tls_cert", "{host}.crt", "--tls_key", "{host}.key", "--tls_ca", "/nonexistent/ca.crt"],
     "--tls_ca /nonexistent/ca.crt: cannot read it (No such file or directory)"),
    (["--tls_cert", "{host}.key", "--tls_key", "{host}.key", "--tls_ca", "{ca}"],
     "--tls_cert {host}.key / --tls_key {host}.key: not a certificate and its private key"),
    (["--tls_cert", "{host}.crt", "--tls_key", "{host}.key", "--tls_ca", "{ca}", "--insecure"],
     "--insecure with --tls_cert/--tls_key/--tls_ca: choose one"),
    (["--bind", "0.0.0.0:4431"], "--bind 0.0.0.0:4431: not a loopback address; traffic between hosts needs mutual "
                                 "TLS (--tls_cert, --tls_key, --tls_ca; see scripts/make_certs.sh) or --insecure"),
])
def test_bad_tls_flags_are_one_line(certs, args, message):
    fill = dict(host=certs / "run" / "host", ca=certs / "run" / "ca.crt")
    proc = run_module("torchbeast.polybeast_env", *(a.format(**fill) for a in args), check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("polybeast_env: error: " + message.format(**fill)), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_insecure_warns_and_a_remote_env_server_needs_tls(tmp_path):
    proc = run_module("torchbeast.polybeast_learner", "--env", CUE, "--env_servers", "10.9.9.9:4431",
                      "--savedir", tmp_path, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("polybeast_learner: error: env server address 10.9.9.9:4431: not a loopback "
                                   "address; traffic between hosts needs mutual TLS (--tls_cert, --tls_key, --tls_ca; "
                                   "see scripts/make_certs.sh) or --insecure")
    proc = run_module("torchbeast.polybeast_learner", "--env", CUE, "--env_servers", "10.9.9.9:4431", "--insecure",
                      "--connect_timeout_s", 1, "--savedir", tmp_path, check=False, timeout=120)
    assert "--insecure: gRPC to and from 10.9.9.9:4431 is plaintext and unauthenticated" in proc.stderr, proc.stderr
    assert proc.returncode == 2 and "no env server reachable" in proc.stderr, proc.stderr
