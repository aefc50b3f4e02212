"""A free TCP port for a torchrun rendezvous (tests run in parallel workers: a port derived
from the process id can collide with another worker's launch)."""

import socket


def free_port() -> int:
    """A port the OS has just handed out on 127.0.0.1 and released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
