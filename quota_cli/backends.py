"""The settings with which a command reaches a secured backend: etcd for `center serve` and `quota shards`,
Redis for `agent serve`. What they mean is quota_center.app's (`StoreAccess`, `etcd_access`) and
region_agent.app's (`LedgerAccess`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from quota_center.app import StoreAccess
from quota_common.errors import ConfigError

F = TypeVar("F", bound=Callable[..., object])
FILE = click.Path(dir_okay=False, path_type=Path)


def backend_tls_options(option: str, backend: str, scheme: str, who: str) -> Callable[[F], F]:
    """--OPTION-ca, --OPTION-cert and --OPTION-key: how the `who` reaches `backend` over TLS (`scheme`),
    each defaulting to the process's own --tls-* file."""
    return _all(
        click.option(
            f"--{option}-ca", type=FILE, help=f"CA that signed {backend}'s certificate ({scheme}) [default: --tls-ca]."
        ),
        click.option(
            f"--{option}-cert",
            type=FILE,
            help=f"Certificate the {who} presents to {backend} ({scheme}) [default: --tls-cert].",
        ),
        click.option(f"--{option}-key", type=FILE, help=f"Its private key ({scheme}) [default: --tls-key]."),
    )


def etcd_options(who: str) -> Callable[[F], F]:
    """--etcd-ca, --etcd-cert, --etcd-key, --etcd-user and --etcd-password-file; `store_access(...)` makes them
    one setting."""
    return _all(
        backend_tls_options("etcd", "etcd", "etcds://", who),
        click.option(
            "--etcd-user", default="", help="The etcd user to log in as (etcd's RBAC); with --etcd-password-file."
        ),
        click.option("--etcd-password-file", type=FILE, help="File holding --etcd-user's password."),
    )


def store_access(
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_user: str,
    etcd_password_file: Path | None,
) -> StoreAccess:
    """ConfigError when the password file cannot be read; the rest is checked with --store (`etcd_access`)."""
    return StoreAccess(
        etcd_ca, etcd_cert, etcd_key, etcd_user, read_password(etcd_password_file, "--etcd-password-file")
    )


def read_password(path: Path | None, option: str) -> str:
    """The password in the file `option` names (one trailing newline dropped); "" without the option.
    Passwords come from files only: a command line or an environment is visible to others."""
    if path is None:
        return ""
    try:
        password = path.read_text().removesuffix("\n").removesuffix("\r")
    except OSError as error:
        raise ConfigError(f"{option} {path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{option} {path}: not text; write the password in it, in UTF-8") from None
    if not password:
        raise ConfigError(f"{option} {path} is empty; write the password in it")
    return password


def _all(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """The decorators as one, their options in the order given."""

    def decorate(command: F) -> F:
        for add in reversed(decorators):
            command = add(command)
        return command

    return decorate
