"""Can we serve on this host and port? Asked before any slow work (indexing, loading a
model), so a typo in --host or a busy port fails at once with a message that says so."""

from __future__ import annotations

import errno
import socket

from .errors import ConfigError


def check_port(host: str, port: int, env: str = "RAG_UI") -> int:
    """A busy port or an address this machine cannot bind is a ConfigError naming both (Gradio
    would retry, then raise a bare OSError; uvicorn would log and exit). `env` is the settings
    prefix the hint names (RAG_UI or RAG_API)."""
    try:
        infos = socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot serve on host '{host}': the address cannot be resolved ({exc})",
                          f"Pass a local address with --host or {env}_HOST, e.g. 127.0.0.1 (this machine only) "
                          "or 0.0.0.0 (every interface).") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use",
                                  "Stop the program using it, or choose another port with --port N or "
                                  f"{env}_PORT=N (0 = any free port).") from None
            raise ConfigError(f"cannot serve on {host}:{port} ({exc.strerror or exc})",
                              f"Choose another address or port with --host/--port ({env}_HOST/{env}_PORT).") from None
    return port
