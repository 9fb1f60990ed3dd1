"""Where the servers' settings come from besides the command line: environment variables and a
TOML file, checked at start against the commands' own options (types, ranges, names).

    [center]                       # quota center serve
    store = "etcd://etcd-0:2379"
    lease-ttl = 10

    [agent]                        # quota agent serve
    region = "eu"
    ledger = "redis://redis-eu:6379/0"

    [budget]                       # quota budget ...
    tls-cert = "alice.pem"

Precedence, highest first: the command line, QUOTA_<OPTION> in the environment, the file, the
default. A setting the file does not know, or a value of the wrong type, stops the process at
start with a message that names it.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import click

ENV_PREFIX = "QUOTA_"
SECTIONS = {"center": ("center", "serve"), "agent": ("agent", "serve"), "budget": ("budget",)}
"""Table in the file -> the command path under `quota` it configures."""


def env_name(option: click.Option) -> str:
    """--lease-ttl -> QUOTA_LEASE_TTL."""
    longest = max(option.opts, key=len)
    return ENV_PREFIX + longest.lstrip("-").replace("-", "_").upper()


def bind_environment(command: click.Command) -> None:
    """Lets every option of `command` be set by its QUOTA_<OPTION> variable (shown in --help)."""
    for param in command.params:
        if isinstance(param, click.Option):
            param.envvar = env_name(param)
            param.show_envvar = True


def load_config(path: Path, root: click.Group) -> dict[str, Any]:
    """The file as click's default_map for `root`; raises click.BadParameter naming what is wrong."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise click.BadParameter(f"{path} cannot be read as TOML: {error}", param_hint="--config") from error
    default_map: dict[str, Any] = {}
    for section, settings in document.items():
        if section not in SECTIONS:
            raise click.BadParameter(
                f"{path}: unknown table [{section}]; the tables are {', '.join(f'[{s}]' for s in SECTIONS)}",
                param_hint="--config",
            )
        if not isinstance(settings, dict):
            raise click.BadParameter(f"{path}: {section} must be a table, [{section}]", param_hint="--config")
        *groups, name = SECTIONS[section]
        command = _command(root, SECTIONS[section])
        values = dict(_setting(f"{path}: [{section}]", command, key, value) for key, value in settings.items())
        within = default_map
        for group in groups:
            within = within.setdefault(group, {})
        within[name] = values
    return default_map


def _command(root: click.Group, names: tuple[str, ...]) -> click.Command:
    command: click.Command = root
    for name in names:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def _setting(where: str, command: click.Command, key: str, value: object) -> tuple[str, object]:
    """The parameter a file key sets (the option's long name, with dashes or underscores) and
    its value, checked here so that a bad one is reported as the file's, not as a flag's."""
    wanted = "--" + key.replace("_", "-")
    options = [param for param in command.params if isinstance(param, click.Option)]
    for option in options:
        if wanted in option.opts and option.name is not None:
            try:
                return option.name, option.type.convert(value, option, None)
            except click.BadParameter as error:
                raise click.BadParameter(f"{where} {key} = {value!r}: {error.message}", param_hint="--config") from None
    known = ", ".join(sorted(max(option.opts, key=len).lstrip("-") for option in options))
    raise click.BadParameter(f"{where} has no setting {key!r}; known: {known}", param_hint="--config")


class FiniteFloatRange(click.FloatRange):
    """A FloatRange without nan and inf, which its bounds let through (nan compares false with
    everything): a lease TTL of nan starts a center whose every Acquire commits a grant and then fails."""

    def convert(self, value: float, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):  # first: "inf is not in the range" would read as a range to fix
            self.fail(f"{number} is not a finite number", param, ctx)
        converted: float = super().convert(number, param, ctx)
        return converted
