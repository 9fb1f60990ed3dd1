"""The host:port a server listens on, as the gRPC and the metrics listeners both take it."""

from __future__ import annotations

import errno

from quota_common.errors import ConfigError

MAX_PORT = 65535


def host_and_port(listen: str, option: str) -> tuple[str, int]:
    """`listen` split into its host (empty: every interface; an IPv6 one without its brackets) and
    port; ConfigError naming `option` when it is not one. A port above MAX_PORT is refused here: gRPC
    would take it modulo 65536 (99999 serves on 34463) and asyncio would pick a free one for 65536."""
    host, _, port = listen.rpartition(":")
    if not (port.isascii() and port.isdigit()):
        raise ConfigError(f"{option} {listen!r}: give host:port, e.g. 127.0.0.1:50051 (port 0 picks a free one)")
    if int(port) > MAX_PORT:
        raise ConfigError(f"{option} {listen!r}: port {int(port)} does not exist; give one within 0..{MAX_PORT}")
    return host.strip("[]"), int(port)


def cannot_bind(doing: str, listen: str, option: str, error: OSError | None = None) -> ConfigError:
    """The one line for a listener that could not bind to `listen` (`doing`: "listen on", "serve metrics on");
    no `error`, or EADDRINUSE, means another process holds the port."""
    if error is None or error.errno == errno.EADDRINUSE:
        why = f"the port is in use by another process; stop it, or choose another {option}"
    else:
        why = f"{error.strerror}; give an address of this machine"
    return ConfigError(f"cannot {doing} {listen}: {why}")
