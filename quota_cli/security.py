"""The settings that secure a command's gRPC links, shared by `center serve`, `agent serve` and `budget`;
what they mean is quota_common.transport's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from quota_common.identity import require_trust_domain
from quota_common.tls import tls_files
from quota_common.transport import DEFAULT_TRUST_DOMAIN, Security

F = TypeVar("F", bound=Callable[..., object])
_FILE = click.Path(dir_okay=False, path_type=Path)


def check_trust_domain(context: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return require_trust_domain(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


_OPTIONS = (
    click.option("--tls-cert", type=_FILE, help="This process's certificate (PEM), then any intermediates."),
    click.option("--tls-key", type=_FILE, help="Its private key (PEM, unencrypted)."),
    click.option("--tls-ca", type=_FILE, help="The CA certificates peers are verified against (PEM)."),
    click.option(
        "--trust-domain",
        default=DEFAULT_TRUST_DOMAIN,
        show_default=True,
        callback=check_trust_domain,
        help="The SPIFFE trust domain of every identity (spiffe://DOMAIN/...).",
    ),
    click.option(
        "--insecure",
        is_flag=True,
        help="Plaintext, without the TLS files: allowed on loopback addresses only.",
    ),
)


def security_options(command: F) -> F:
    """--tls-cert, --tls-key, --tls-ca, --trust-domain and --insecure; `security(...)` makes them one setting."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def tls_file_options(command: F) -> F:
    """--tls-cert, --tls-key and --tls-ca alone: for a command that calls no gRPC service but whose backend
    settings default to them, as the servers' do (`quota shards`: --etcd-ca and the others)."""
    for option in reversed(_OPTIONS[:3]):
        command = option(command)
    return command


def security(
    tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None, trust_domain: str, insecure: bool
) -> Security:
    """ConfigError (exit 2) when only some of the TLS files are given."""
    return Security(tls_files(tls_cert, tls_key, tls_ca), trust_domain, insecure)
