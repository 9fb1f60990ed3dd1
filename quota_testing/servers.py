"""Real etcd and Redis servers for tests: started on free loopback ports, stopped by PID.

Debian's `etcd-server` and `redis-server` packages install the binaries without starting
anything; `make test` installs them when missing. Each server gets its own data directory
and is gone (process and data) when its context ends.

Either can run as production should: TLS only, with client certificates required (`ServerTls`),
and users with passwords (Redis: an ACL user per region, `agent_acl`; etcd: RBAC, `EtcdUser`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The region's ACL user is defined beside the ledger (production sets Redis up from it); the tests' use it here.
from region_agent.ledger.redis_acl import LEDGER_COMMANDS as LEDGER_COMMANDS
from region_agent.ledger.redis_acl import agent_acl as agent_acl

READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisUser:
    name: str
    password: str = field(repr=False)
    rules: tuple[str, ...]
    """What it may do, in ACL SETUSER's words (`agent_acl(region)`; everything: ~* &* +@all)."""

    def acl_line(self) -> str:
        return " ".join(("user", self.name, "on", f">{self.password}", *self.rules))


@dataclass(frozen=True)
class ServerTls:
    """How a server is reached over TLS: its certificate and key (certs.write_server_pair) and the CA that
    signed its clients' certificates, which it requires. The readiness probe presents the server's own
    certificate, which serves as a client's too."""

    cert: Path
    key: Path
    ca: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.cert, self.key)
        return context


@dataclass(frozen=True)
class RunningServer:
    host: str
    port: int
    pid: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed; `make test` installs it (Debian: apt-get install {name})")
    return found


@contextlib.contextmanager
def _serve(args: list[str], port: int, ready: Callable[[], bool], log: Path) -> Iterator[RunningServer]:
    with log.open("a") as output:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} did not start on port {port}:\n{log.read_text()[-2000:]}")
            time.sleep(0.02)
        yield RunningServer("127.0.0.1", port, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(port: int, probe: bytes, expected: bytes | tuple[bytes, ...], tls: ssl.SSLContext | None = None) -> bool:
    try:
        with contextlib.ExitStack() as stack:
            connection = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=0.2))
            if tls is not None:
                connection = stack.enter_context(tls.wrap_socket(connection, server_hostname="127.0.0.1"))
            connection.sendall(probe)
            return connection.recv(64).startswith(expected)
    except OSError:
        return False


@dataclass
class RestartableServer:
    """A server a test can stop or kill -9 and start again, on the same port and data directory."""

    name: str
    args: list[str]
    port: int
    ready: Callable[[], bool]
    log: Path
    pid: int = 0
    _stack: contextlib.ExitStack | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, wait: bool = True) -> None:
        self._stack = contextlib.ExitStack()
        ready = self.ready if wait else (lambda: True)
        self.pid = self._stack.enter_context(_serve(self.args, self.port, ready, self.log)).pid

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def kill(self) -> None:
        """SIGKILL: no shutdown work, as a crash or an OOM kill would leave it."""
        os.kill(self.pid, signal.SIGKILL)
        self.stop()


@contextlib.contextmanager
def redis_process(
    *extra: str, tls: ServerTls | None = None, users: Sequence[RedisUser] = ()
) -> Iterator[RestartableServer]:
    """A durable Redis (append-only file, fsync on every write), as production runs it, started;
    the test may kill it and start it again from what it wrote to disk. With `tls` it serves TLS only
    and requires a client certificate from `tls.ca`; with `users` only they may log in (the default
    user is off)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="quota-redis-") as workdir:
        listen = ["--port", str(port)]
        if tls is not None:
            listen = [
                "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.cert),
                "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "yes",
            ]  # fmt: skip
        if users:
            acl = Path(workdir) / "users.acl"
            acl.write_text("".join(f"{line}\n" for line in ["user default off", *(u.acl_line() for u in users)]))
            listen += ["--aclfile", str(acl)]
        args = [
            _binary("redis-server"),
            "--bind", "127.0.0.1", *listen, "--dir", workdir, "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", *extra,
        ]  # fmt: skip
        context = None if tls is None else tls.client_context()
        ready = functools.partial(_answers, port, b"PING\r\n", (b"+PONG", b"-NOAUTH"), context)
        server = RestartableServer("redis", args, port, ready, Path(workdir) / "log")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def redis_server(*extra: str, tls: ServerTls | None = None, users: Sequence[RedisUser] = ()) -> Iterator[RunningServer]:
    """A durable Redis that runs until the context ends."""
    with redis_process(*extra, tls=tls, users=users) as server:
        yield RunningServer(server.host, server.port, server.pid)


@contextlib.contextmanager
def redis_cluster(
    masters: int = 3, replicas: int = 0, node_timeout_ms: int = 5000
) -> Iterator[list[RestartableServer]]:
    """A Redis Cluster on loopback of `masters` masters with `replicas` replicas each, every node a durable
    Redis (`redis_process`) with cluster mode on, the slots spread evenly by `redis-cli --cluster create`
    (the first `masters` nodes are the masters); ready when every node says the cluster is ok. A replica
    takes over from a master that has not answered for `node_timeout_ms`."""
    with contextlib.ExitStack() as stack:
        nodes = [
            # Its own bus port: the default (port + 10000) is out of range for most free ports.
            stack.enter_context(
                redis_process(
                    "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", str(node_timeout_ms),
                )
            )
            for _ in range(masters * (1 + replicas))
        ]  # fmt: skip
        create = [_binary("redis-cli"), "--cluster", "create", *(node.address for node in nodes)]
        subprocess.run(
            [*create, "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=READY_TIMEOUT_S,
        )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S * (1 + replicas)
        while not all(_cluster_ok(node) for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster on {[node.port for node in nodes]} did not become ok")
            time.sleep(0.05)
        yield nodes


def _cluster_ok(node: RestartableServer) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=0.2) as connection:
            connection.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in connection.recv(4096)
    except OSError:
        return False


@dataclass(frozen=True)
class EtcdUser:
    """An etcd user that may read and write every key under `prefix`, and nothing else."""

    name: str
    password: str = field(repr=False)
    prefix: str


def _etcd_url(port: int, tls: ssl.SSLContext | None, path: str) -> str:
    return f"{'http' if tls is None else 'https'}://127.0.0.1:{port}{path}"


def _etcd_healthy(port: int, tls: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(_etcd_url(port, tls, "/health"), timeout=0.5, context=tls) as answer:
            return b'"health":"true"' in answer.read()
    except OSError:
        return False


def _etcd_call(port: int, tls: ssl.SSLContext | None, path: str, body: dict[str, object]) -> None:
    """One call of etcd's JSON gateway (etcdctl is not packaged with the server)."""
    request = urllib.request.Request(_etcd_url(port, tls, f"/v3/{path}"), json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=READY_TIMEOUT_S, context=tls) as answer:
        answer.read()


def _etcd_enable_auth(port: int, tls: ssl.SSLContext | None, users: Sequence[EtcdUser]) -> None:
    """Adds `users` (each with a role of its own) and root, then turns authentication on, as
    `etcdctl user add`, `role add`, `role grant-permission --prefix`, `user grant-role`, `auth enable` do."""

    def b64(text: str | bytes) -> str:
        return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()

    _etcd_call(port, tls, "auth/user/add", {"name": "root", "password": base64.b32encode(os.urandom(20)).decode()})
    _etcd_call(port, tls, "auth/user/grant", {"user": "root", "role": "root"})
    for user in users:
        role, start = f"{user.name}-role", user.prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])
        _etcd_call(port, tls, "auth/role/add", {"name": role})
        permission = {"permType": "READWRITE", "key": b64(start), "range_end": b64(end)}
        _etcd_call(port, tls, "auth/role/grant", {"name": role, "perm": permission})
        _etcd_call(port, tls, "auth/user/add", {"name": user.name, "password": user.password})
        _etcd_call(port, tls, "auth/user/grant", {"user": user.name, "role": role})
    _etcd_call(port, tls, "auth/enable", {})


@contextlib.contextmanager
def etcd_cluster(
    size: int = 3, *, tls: ServerTls | None = None, users: Sequence[EtcdUser] = (), extra: Sequence[str] = ()
) -> Iterator[list[RestartableServer]]:
    """An etcd cluster of `size` members on loopback. A single member is ready when healthy;
    a larger cluster when a quorum has formed, which needs its members started together.
    With `tls` clients reach it over TLS only and must present a certificate from `tls.ca`
    (--client-cert-auth); with `users` authentication is on and only they (and root) may log in."""
    ports = [(free_port(), free_port()) for _ in range(size)]
    initial = ",".join(f"m{n}=http://127.0.0.1:{peer}" for n, (_, peer) in enumerate(ports))
    context = None if tls is None else tls.client_context()
    secured = [] if tls is None else [
        "--client-cert-auth", "--trusted-ca-file", str(tls.ca),
        "--cert-file", str(tls.cert), "--key-file", str(tls.key),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="quota-etcd-") as workdir:
        members = []
        for n, (client, peer) in enumerate(ports):
            args = [
                _binary("etcd"),
                "--name", f"m{n}", "--data-dir", f"{workdir}/m{n}",
                "--listen-client-urls", _etcd_url(client, context, ""),
                "--advertise-client-urls", _etcd_url(client, context, ""),
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                *secured, *extra,
            ]  # fmt: skip
            ready = functools.partial(_etcd_healthy, client, context)
            members.append(RestartableServer(f"m{n}", args, client, ready, Path(workdir) / f"m{n}.log"))
        try:
            for member in members:
                member.start(wait=False)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not all(_etcd_healthy(member.port, context) for member in members):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd cluster did not form; see {workdir}")
                time.sleep(0.05)
            if users:
                _etcd_enable_auth(members[0].port, context, users)
            yield members
        finally:
            for member in members:
                member.stop()


@contextlib.contextmanager
def etcd_server(
    *, tls: ServerTls | None = None, users: Sequence[EtcdUser] = (), extra: Sequence[str] = ()
) -> Iterator[RunningServer]:
    """A single-member etcd cluster on loopback; `extra` are more of etcd's flags."""
    with etcd_cluster(1, tls=tls, users=users, extra=extra) as (member,):
        yield RunningServer("127.0.0.1", member.port, member.pid)
