"""`quota console`: the web console for budget owners (quota_console), and `quota console hash-password` for
the operators who write its users file."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import click

from quota_cli.budget import center_option, timeout_option
from quota_cli.security import check_trust_domain
from quota_common.config import FiniteFloatRange, bind_environment
from quota_common.errors import ConfigError
from quota_common.transport import DEFAULT_TRUST_DOMAIN, Security, is_loopback, open_transport

_FILE = click.Path(dir_okay=False, path_type=Path)
SESSION_KEY_BYTES = 32


def _session_key(path: Path | None) -> bytes:
    """The key that signs session cookies: from the file, or a new one (sessions then end with the process)."""
    if path is None:
        return secrets.token_bytes(SESSION_KEY_BYTES)
    try:
        key = path.read_bytes().strip()
    except OSError as error:
        raise ConfigError(f"--session-key-file {path}: cannot read it ({error.strerror})") from None
    if len(key) < SESSION_KEY_BYTES:
        raise ConfigError(
            f"--session-key-file {path}: {len(key)} bytes; it needs at least {SESSION_KEY_BYTES} random bytes "
            "(head -c 48 /dev/urandom | base64 > FILE)"
        )
    return key


def _check_web(listen: str, web_cert: Path | None, web_key: Path | None, web_plaintext: bool) -> None:
    if (web_cert is None) != (web_key is None):
        raise ConfigError("--web-cert and --web-key go together: the console's HTTPS certificate and its key")
    host = listen.rpartition(":")[0]
    if web_cert is None and not web_plaintext and not is_loopback(host):
        raise ConfigError(
            f"--listen {listen}: passwords would cross the network in plain HTTP; give --web-cert and --web-key, "
            "or --web-plaintext when a proxy in front of the console terminates TLS"
        )


@click.group(invoke_without_command=True)
@center_option
@timeout_option
@click.option(
    "--listen", default="127.0.0.1:8080", show_default=True, help="host:port of the web pages; port 0 picks one."
)
@click.option("--users", type=_FILE, help="TOML file of who may sign in: password hash, certificate and key each.")
@click.option("--tls-ca", type=_FILE, help="The CA the center's and the users' certificates chain to (PEM).")
@click.option(
    "--trust-domain",
    default=DEFAULT_TRUST_DOMAIN,
    show_default=True,
    callback=check_trust_domain,
    help="SPIFFE domain.",
)
@click.option("--insecure", is_flag=True, help="A plaintext center, without --tls-ca: loopback addresses only.")
@click.option("--session-key-file", type=_FILE, help="At least 32 random bytes signing session cookies [default: new].")
@click.option("--web-cert", type=_FILE, help="The console's own HTTPS certificate (PEM).")
@click.option("--web-key", type=_FILE, help="Its private key (PEM).")
@click.option("--web-plaintext", is_flag=True, help="Plain HTTP off loopback: only behind a proxy terminating TLS.")
@click.option(
    "--refresh", type=FiniteFloatRange(min=1), default=3.0, show_default=True, help="Seconds between region reads."
)
@click.pass_context
def console(
    context: click.Context,
    addresses: tuple[str, ...],
    timeout: float,
    listen: str,
    users: Path | None,
    tls_ca: Path | None,
    trust_domain: str,
    insecure: bool,
    session_key_file: Path | None,
    web_cert: Path | None,
    web_key: Path | None,
    web_plaintext: bool,
    refresh: float,
) -> None:
    """The web console: promotions, their burn-down by region, alerts, approvals, freezes and the emergency
    switch, for people who do not live in a terminal.

    Each person signs in with a login from --users, and the console then calls the center with that person's
    own certificate: the center authorizes and audits them, never the console. With mutual TLS (--tls-ca)
    every user needs a cert and key; with --insecure (loopback only) users have only a password."""
    if context.invoked_subcommand is not None:
        return
    try:
        from quota_console.app import ConsoleSettings, serve
    except ModuleNotFoundError as missing:
        raise ConfigError(
            f"the console needs its extra ({missing.name} is not installed): pip install 'quota[console]'"
        ) from None
    from quota_console.users import load_users

    if users is None:
        raise click.UsageError("--users FILE is required: who may sign in (`quota console --help`)")
    if tls_ca is not None and insecure:
        raise ConfigError("--insecure contradicts --tls-ca: give --tls-ca for mutual TLS, or --insecure alone")
    if tls_ca is None and not insecure:
        raise ConfigError("give --tls-ca for a center with mutual TLS, or --insecure for a plaintext one on loopback")
    if tls_ca is None:
        # As on every link of ours, plaintext stays on loopback.
        open_transport(Security(None, trust_domain, insecure=True), None, center=addresses)
    _check_web(listen, web_cert, web_key, web_plaintext)
    web_tls = (web_cert, web_key) if web_cert is not None and web_key is not None else None
    settings = ConsoleSettings(
        center=addresses,
        users=load_users(users, tls_ca, trust_domain),
        session_key=_session_key(session_key_file),
        listen=listen,
        timeout_s=timeout,
        web_tls=web_tls,
        refresh_s=refresh,
    )
    serve(settings)


@console.command("hash-password")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from the first line of stdin.")
def hash_password(from_stdin: bool) -> None:
    """Print the scrypt hash of a password, for a user's `password` in the users file."""
    from quota_console.users import hash_password as scrypt_hash

    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.UsageError("an empty password would let anyone in")
    click.echo(scrypt_hash(password))


bind_environment(console)


@click.command("console")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...], ...}, one row per page.')
@click.option("--viewers", type=click.IntRange(1, 32), default=4, show_default=True, help="People loading pages.")
@click.option("--budget", type=click.IntRange(min=1), default=50_000, show_default=True, help="The demo's budget.")
@click.option(
    "--screenshots",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also save the promotion's page, halfway and sold out, as PNG files here (docs/ for the README).",
)
def bench_console(as_json: bool, viewers: int, budget: int, screenshots: Path | None) -> None:
    """The console's pages under the demo's load: server-side p50/p95 of each (target: p95 < 300 ms)."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from loadtest.bench_console import bench_console as run
    from loadtest.demo import DemoOptions

    figures = asyncio.run(
        run(viewers, DemoOptions(budget=budget), screenshots, lambda line: click.echo(line, err=True))
    )
    if as_json:
        click.echo(json.dumps(figures))
        return
    table = Table(
        title=f"quota bench console: {figures['viewers']} people, the demo's {figures['orders']:,} orders "
        f"in {figures['load_seconds']} s",
        caption=f"worst p95 {figures['worst_p95_ms']} ms; target < {figures['target_p95_ms']:g} ms: "
        f"{'met' if figures['met'] else 'MISSED'}",
    )
    for column in ("page", "samples", "p50 ms", "p95 ms", "max ms"):
        table.add_column(column, justify="left" if column == "page" else "right")
    for row in figures["rows"]:
        table.add_row(
            row["page"], f"{row['samples']:,}", *(f"{row[key]:.1f}" for key in ("p50_ms", "p95_ms", "max_ms"))
        )
    Console().print(table)
