"""The web console as a real process, with a users file for people of a development set.

    users = write_console_users(workdir, dev, {"alice": "owner-alice", "bob": "approver-bob"})
    console = console_process(workdir, center.address, users, dev).start()
    ... http://127.0.0.1:{console.port}/ ... every user's password is PASSWORD

Shared by the console's tests and `quota bench console`, so both run what an operator runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from quota_console.users import hash_password
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.tls import DevTls

PASSWORD = "correct horse battery staple"


def write_console_users(workdir: Path, dev: DevTls, people: Mapping[str, str]) -> Path:
    """workdir/console-users.toml: each login of `people` with PASSWORD and the certificate of the set named
    by its value ("owner-alice", "approver-bob", ...)."""
    stored = hash_password(PASSWORD)
    tables = []
    for login, name in people.items():
        files = dev.files(name)
        tables.append(f'[users.{login}]\npassword = "{stored}"\ncert = "{files.cert}"\nkey = "{files.key}"\n')
    path = workdir / "console-users.toml"
    path.write_text("\n".join(tables))
    return path


def console_process(workdir: Path, center_address: str, users: Path, dev: DevTls, *extra: str) -> ServerProcess:
    """`quota console` on a free loopback port, calling the center with mutual TLS."""
    args = ["console", "--center", center_address, "--listen", "127.0.0.1:0", "--users", str(users)]
    args += ["--tls-ca", str(dev.files("center").ca), "--trust-domain", dev.trust_domain, *extra]
    return ServerProcess("console", args, workdir / "console.log")


PEOPLE = {"alice": "owner-alice", "dave": "owner-dave", "bob": "approver-bob", "carol": "operator-carol"}
"""The console's users in a secure set (quota_testing.secure_stack.write_secure_set): two owners, an approver
and an operator."""


@dataclass
class ConsoleStack:
    dev: DevTls
    center: ServerProcess
    agents: dict[str, ServerProcess]
    console: ServerProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.console.port}"

    def cli(self, name: str, *args: str) -> list[str]:
        """`quota budget`'s or `quota alerts`' arguments as the person whose certificate is `name`."""
        return [args[0], "--center", self.center.address, *self.dev.flags(name), *args[1:]]


@contextlib.contextmanager
def console_stack(
    workdir: Path,
    dev: DevTls,
    regions: Sequence[str],
    center_flags: Sequence[str] = (),
    agent_flags: Sequence[str] = ("--renew-interval", "0.2"),
) -> Iterator[ConsoleStack]:
    """A center with `center_flags`, an agent of each region with `agent_flags` (reports every 0.2 s unless
    told), and the console with PEOPLE as its users, all with mutual TLS from `dev`; everything stopped at the
    end."""
    processes: list[ServerProcess] = []
    try:
        center = center_process(workdir, *center_flags, tls=dev).start()
        processes.append(center)
        agents = {}
        for region in regions:
            agents[region] = agent_process(workdir, region, center.address, *agent_flags, tls=dev).start()
            processes.append(agents[region])
        users = write_console_users(workdir, dev, {login: PEOPLE[login] for login in PEOPLE})
        console = console_process(workdir, center.address, users, dev).start()
        processes.append(console)
        yield ConsoleStack(dev, center, agents, console)
    finally:
        for process in reversed(processes):
            process.stop()
