"""Addresses and transport security of PolyBeast's gRPC endpoints (env servers, actors, the
learner's registry), as the command-line flags give them.

Policy: unix sockets and loopback TCP are plaintext by default. Any other address (binding
0.0.0.0, serving or dialling another host) needs mutual TLS (`--tls_cert --tls_key --tls_ca`:
each side presents a certificate signed by the CA and checks the other's) or an explicit
`--insecure`, which prints a warning. With TLS flags every TCP endpoint of the command uses TLS,
loopback included; unix sockets stay plaintext. `scripts/make_certs.sh` makes the CA and
certificates; a certificate must name the address its peers dial (an IP SAN for an IP address).
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import socket
import ssl
from typing import Any, List, Optional, Sequence, Tuple

from torchbeast.errors import ConfigError

log = logging.getLogger("torchbeast")


def address_problem(address: str, what: str = "env server address") -> Optional[str]:
    """Why `address` is not unix:/path or host:port with 0 < port < 65536, or None."""
    if address.startswith("unix:"):
        return None if len(address) > len("unix:") else f"{what} {address!r}: expected unix:/path"
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or any(c.isspace() for c in address):
        return f"{what} {address!r}: expected unix:/path or host:port"
    if not 0 < int(port) < 65536:
        return f"{what} {address!r}: port {port} is not between 1 and 65535"
    return None


def split_host_port(address: str) -> Tuple[str, int]:
    """('10.0.0.2', 4431) for '10.0.0.2:4431', ('::1', 80) for '[::1]:80' (a checked address)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_of(address: str) -> str:
    """The host part of an address, for grouping servers by host: 'local' for unix sockets."""
    if address.startswith("unix:"):
        return "local"
    return split_host_port(address)[0]


def is_loopback(address: str) -> bool:
    """True for unix sockets and TCP addresses on a loopback host (127.0.0.0/8, ::1, localhost).
    A wildcard host (0.0.0.0, ::) is not loopback: it serves every interface."""
    if address.startswith("unix:"):
        return True
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: another machine as far as we can tell


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "*")


@dataclasses.dataclass(frozen=True)
class TlsPem:
    """The PEM texts of mutual TLS (picklable, for server processes)."""

    cert: str
    key: str
    ca: str

    def config(self) -> Any:
        """The libtorchbeast.TlsConfig the C++ endpoints take."""
        from libtorchbeast import TlsConfig

        return TlsConfig(cert_chain=self.cert, private_key=self.key, root_certs=self.ca)


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "transport security",
        "Unix sockets and loopback are plaintext. Any other address needs mutual TLS (all three --tls_ files, "
        "e.g. from scripts/make_certs.sh; then every TCP connection uses TLS) or --insecure.")
    group.add_argument("--tls_cert", default=None, metavar="FILE",
                       help="This host's certificate (PEM), signed by --tls_ca; it must name the address peers "
                            "dial.")
    group.add_argument("--tls_key", default=None, metavar="FILE", help="The certificate's private key (PEM).")
    group.add_argument("--tls_ca", default=None, metavar="FILE",
                       help="The CA certificate (PEM) that peers' certificates must be signed by.")
    group.add_argument("--insecure", action="store_true", default=False,
                       help="Allow plaintext, unauthenticated gRPC to and from other hosts (prints a warning).")


def load_tls(flags: argparse.Namespace) -> Optional[TlsPem]:
    """The TLS files of the flags, read and checked (raises ConfigError naming the flag), or None."""
    given = {name: getattr(flags, name, None) for name in ("tls_cert", "tls_key", "tls_ca")}
    if not any(given.values()):
        return None
    missing = [f"--{name}" for name, value in given.items() if not value]
    if missing:
        raise ConfigError(f"{', '.join(missing)} missing: mutual TLS needs --tls_cert, --tls_key and --tls_ca")
    if getattr(flags, "insecure", False):
        raise ConfigError("--insecure with --tls_cert/--tls_key/--tls_ca: choose one")
    texts = {}
    for name, path in given.items():
        try:
            with open(path) as f:
                texts[name] = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--{name} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        if "-----BEGIN " not in texts[name]:
            raise ConfigError(f"--{name} {path}: not a PEM file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=given["tls_ca"])
    except ssl.SSLError as e:
        raise ConfigError(f"--tls_ca {given['tls_ca']}: not a PEM CA certificate ({e.reason})") from None
    try:
        context.load_cert_chain(given["tls_cert"], given["tls_key"])
    except ssl.SSLError as e:
        raise ConfigError(f"--tls_cert {given['tls_cert']} / --tls_key {given['tls_key']}: not a certificate and "
                          f"its private key ({e.reason})") from None
    return TlsPem(cert=texts["tls_cert"], key=texts["tls_key"], ca=texts["tls_ca"])


def tls_problems(flags: argparse.Namespace) -> List[str]:
    try:
        load_tls(flags)
    except ConfigError as e:
        return [str(e)]
    return []


def plaintext_problem(flag: str, address: str, flags: argparse.Namespace) -> Optional[str]:
    """Why plaintext to or from `address` (given with `flag`) is not allowed, or None."""
    if is_loopback(address) or getattr(flags, "insecure", False) or getattr(flags, "tls_cert", None):
        return None
    return (f"{flag} {address}: not a loopback address; traffic between hosts needs mutual TLS (--tls_cert, "
            "--tls_key, --tls_ca; see scripts/make_certs.sh) or --insecure")


def warn_if_insecure(flags: argparse.Namespace, addresses: Sequence[str]) -> None:
    """One warning when --insecure lets plaintext reach other hosts."""
    remote = [a for a in addresses if not is_loopback(a)]
    if getattr(flags, "insecure", False) and remote:
        log.warning("--insecure: gRPC to and from %s is plaintext and unauthenticated: anyone on the network can "
                    "read it, inject steps or register servers", ", ".join(remote))


def host_towards(address: str) -> str:
    """This host's IP address on the route to `address` (host:port): a UDP socket connect()ed
    there (no packet is sent) takes the source address the kernel would use. Raises ConfigError
    when there is no route."""
    host, port = split_host_port(address)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(sockaddr)
            return probe.getsockname()[0]
    except OSError as e:
        raise ConfigError(f"--learner {address}: cannot find this host's address towards it "
                          f"({getattr(e, 'strerror', None) or e}); give --advertise HOST") from None


def read_servers_file(path: str, flag: str = "--env_servers_file") -> List[str]:
    """The addresses of a file with one per line; blank lines and # comments are skipped.
    Raises ConfigError naming the file and line of a bad address."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{flag} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    addresses = []
    for number, line in enumerate(lines, 1):
        address = line.split("#", 1)[0].strip()
        if not address:
            continue
        problem = address_problem(address)
        if problem:
            raise ConfigError(f"{flag} {path} line {number}: {problem}")
        addresses.append(address)
    return addresses

