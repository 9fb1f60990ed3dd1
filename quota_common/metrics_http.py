"""The Prometheus endpoint of a server process: GET /metrics, served on the process's event loop; and
GET /healthz (200 while the process serves, 503 once it is stopping), for Kubernetes probes, which
cannot speak mutual TLS to the gRPC health service.

On the loop rather than in prometheus-client's own thread because the gauges are read from
state the loop owns (the center's accounts, the agent's ledger, which may be in Redis and
take an await): `refresh` runs before each scrape, with no other code of the loop in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from quota_common.listen import cannot_bind, host_and_port

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0


class MetricsEndpoint:
    def __init__(
        self, listen: str, registry: CollectorRegistry, refresh: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """`listen` is host:port (port 0 picks a free one); `refresh` runs before each scrape."""
        self._listen = listen
        self._registry = registry
        self._refresh = refresh
        self._server: asyncio.Server | None = None
        self.serving: Callable[[], bool] = lambda: True
        """What /healthz reports; `serve` points it at the process's own state."""

    async def start(self) -> int:
        """Binds and serves in the background; returns the port. ConfigError when it cannot bind."""
        host, port = host_and_port(self._listen, "--metrics-listen")
        try:
            self._server = await asyncio.start_server(self._answer, host or None, port)
        except OSError as error:
            raise cannot_bind("serve metrics on", self._listen, "--metrics-listen", error) from None
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            page = path.split("?")[0]
            if method == "GET" and page == "/healthz":
                serving = self.serving()
                status, body = ("200 OK", b"serving\n") if serving else ("503 Service Unavailable", b"stopping\n")
                await _reply(writer, status, "text/plain", body)
                return
            if method != "GET" or page not in ("/metrics", "/"):
                await _reply(writer, "404 Not Found", "text/plain", b"only GET /metrics and /healthz are served here\n")
                return
            if self._refresh is not None:
                await self._refresh()
            await _reply(writer, "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError, ValueError):
            pass
        except Exception:
            # A failing refresh (Redis down) must not kill the endpoint; the scrape shows up as failed.
            log.exception("metrics scrape failed")
            with contextlib.suppress(ConnectionError):
                await _reply(writer, "500 Internal Server Error", "text/plain", b"scrape failed; see the log\n")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _reply(writer: asyncio.StreamWriter, status: str, content_type: str, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
