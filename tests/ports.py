"""Free TCP ports on loopback for tests that start servers."""
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may take it before the test does)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def consecutive_free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (a server started with --num_servers binds them)."""
    for _ in range(50):
        port = free_port(host)
        try:
            for i in range(1, count):
                with socket.socket() as s:
                    s.bind((host, port + i))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports on {host}")
