"""Real etcd and Redis servers for tests: started on free loopback ports, stopped by PID.

Debian's `etcd-server` and `redis-server` packages install the binaries without starting
anything; `make test` installs them when missing. Each server gets its own data directory
and is gone (process and data) when its context ends.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 10.0


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


def _answers(port: int, probe: bytes, expected: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as connection:
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
def redis_process(*extra: str) -> Iterator[RestartableServer]:
    """A durable Redis (append-only file, fsync on every write), as production runs it, started;
    the test may kill it and start it again from what it wrote to disk."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="quota-redis-") as workdir:
        args = [
            _binary("redis-server"),
            "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir, "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", *extra,
        ]  # fmt: skip
        ready = functools.partial(_answers, port, b"PING\r\n", b"+PONG")
        server = RestartableServer("redis", args, port, ready, Path(workdir) / "log")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RunningServer]:
    """A durable Redis that runs until the context ends."""
    with redis_process(*extra) as server:
        yield RunningServer(server.host, server.port, server.pid)


def _etcd_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as answer:
            return b'"health":"true"' in answer.read()
    except OSError:
        return False


@contextlib.contextmanager
def etcd_cluster(size: int = 3) -> Iterator[list[RestartableServer]]:
    """An etcd cluster of `size` members on loopback. A single member is ready when healthy;
    a larger cluster when a quorum has formed, which needs its members started together."""
    ports = [(free_port(), free_port()) for _ in range(size)]
    initial = ",".join(f"m{n}=http://127.0.0.1:{peer}" for n, (_, peer) in enumerate(ports))
    with tempfile.TemporaryDirectory(prefix="quota-etcd-") as workdir:
        members = []
        for n, (client, peer) in enumerate(ports):
            args = [
                _binary("etcd"),
                "--name", f"m{n}", "--data-dir", f"{workdir}/m{n}",
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
            ]  # fmt: skip
            ready = functools.partial(_etcd_healthy, client)
            members.append(RestartableServer(f"m{n}", args, client, ready, Path(workdir) / f"m{n}.log"))
        try:
            for member in members:
                member.start(wait=False)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not all(_etcd_healthy(member.port) for member in members):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd cluster did not form; see {workdir}")
                time.sleep(0.05)
            yield members
        finally:
            for member in members:
                member.stop()


@contextlib.contextmanager
def etcd_server() -> Iterator[RunningServer]:
    """A single-member etcd cluster on loopback."""
    with etcd_cluster(1) as (member,):
        yield RunningServer("127.0.0.1", member.port, member.pid)
