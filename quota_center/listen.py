"""The host:port a server listens on, as the gRPC and the metrics listeners both take it."""

from __future__ import annotations

from quota_center.errors import ConfigError

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
