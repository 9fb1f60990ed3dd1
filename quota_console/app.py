"""The console's composition root: its settings, the Starlette application, and serving it with uvicorn.

    ConsoleSettings(...)        checked at start (quota_cli.console builds it from the command line)
    build_app(settings, clock)  the ASGI application: pages, actions, static files, session, headers
    serve(settings)             binds --listen, prints {"port": N} once it serves, runs until SIGTERM

Nothing is kept here between requests but the session cookie the browser holds: every page reads the
center anew, so two consoles behind one Service show the same thing (given the same --session-key-file).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quota_common.clock import Clock, SystemClock, iso
from quota_common.errors import ConfigError
from quota_common.listen import host_and_port
from quota_console import actions, pages
from quota_console.figures import share
from quota_console.users import Users

HERE = Path(__file__).parent
VENDORED = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "uPlot.iife.min.js": "uplot/dist/uPlot.iife.min.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
}
"""What the console serves as /vendor/NAME, from the npm packages `make assets` installs (package-lock.json)."""
NODE_MODULES = HERE / "assets" / "node_modules"
SESSION_HOURS = 12
_HEADERS = [
    # Scripts and styles only from the console itself: an id or a message from the center is text, never code.
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


@dataclass(frozen=True)
class ConsoleSettings:
    center: tuple[str, ...]
    """The center's replicas; whichever leads answers."""
    users: Users
    """Who may sign in, and the certificate each calls the center with."""
    session_key: bytes
    """Signs the session cookies; consoles behind one Service need the same."""
    listen: str = "127.0.0.1:8080"
    timeout_s: float = 5.0
    """Per call to the center."""
    web_tls: tuple[Path, Path] | None = None
    """The console's own HTTPS certificate and key; None: plain HTTP (loopback, or behind a TLS proxy)."""
    refresh_s: float = 3.0
    """How often a promotion's page reads its regions again."""


def vendored_files() -> dict[str, Path]:
    """The front-end libraries, installed by `make assets`; ConfigError naming the command when they are not."""
    files = {name: NODE_MODULES / path for name, path in VENDORED.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ConfigError(
            f"the console's front-end libraries are not installed ({missing[0]}): run `make assets` "
            f"(npm ci --prefix {NODE_MODULES.parent}) first"
        )
    return files


class _Headers:
    """Security headers on every answer, and Server-Timing: what the console took, from the request's arrival
    to its answer's first byte (the benchmark reads it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                took = f"app;dur={(time.perf_counter() - started) * 1000:.2f}".encode()
                message["headers"] = [*message.get("headers", []), *_HEADERS, (b"server-timing", took)]
            await send(message)

        await self.app(scope, receive, with_headers)


async def _vendored(request: Request) -> Response:
    path = request.app.state.vendor_files.get(request.path_params["name"])
    if path is None:
        raise HTTPException(404, "no such file")
    return FileResponse(path)


def build_app(settings: ConsoleSettings, clock: Clock | None = None) -> Starlette:
    vendor = vendored_files()
    environment = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape())
    environment.filters |= {"iso": iso, "amount": lambda value: f"{value:,}", "share": share}
    templates = Jinja2Templates(env=environment)
    static = StaticFiles(directory=HERE / "static")
    app = Starlette(
        routes=[
            *pages.ROUTES,
            *actions.ROUTES,
            Mount("/static", static, name="static"),
            Route("/vendor/{name}", _vendored),
        ],
        middleware=[
            Middleware(_Headers),
            Middleware(
                SessionMiddleware,
                secret_key=settings.session_key.hex(),
                session_cookie="quota_console",
                max_age=SESSION_HOURS * 3600,
                same_site="strict",
                https_only=settings.web_tls is not None,
            ),
        ],
    )
    app.state.users = settings.users
    app.state.center = settings.center
    app.state.timeout_s = settings.timeout_s
    app.state.refresh_s = settings.refresh_s
    app.state.templates = templates
    app.state.clock = clock or SystemClock()
    app.state.vendor_files = vendor
    return app


def _bound(listen: str) -> socket.socket:
    host, port = host_and_port(listen, "--listen")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]") or "0.0.0.0", port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"--listen {listen}: cannot listen there ({error.strerror})") from None
    return sock


def serve(settings: ConsoleSettings) -> None:
    """Serves until SIGINT or SIGTERM; prints {"port": N} on stdout once it accepts connections (port 0 in
    --listen picks a free one), as the center and the agents do."""
    app = build_app(settings)
    sock = _bound(settings.listen)
    certfile, keyfile = settings.web_tls or (None, None)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        lifespan="off",
    )
    asyncio.run(_Announcing(config).serve(sockets=[sock]))


class _Announcing(uvicorn.Server):
    """Says on stdout which port it serves, once it does (quota_testing.launch waits for that line)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            sys.stdout.write(json.dumps({"port": sockets[0].getsockname()[1]}) + "\n")
            sys.stdout.flush()
