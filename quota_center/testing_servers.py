"""Real etcd and Redis servers for tests: started on free loopback ports, stopped by PID.

Debian's `etcd-server` and `redis-server` packages install the binaries without starting
anything; `make test` installs them when missing. Each server gets its own data directory
and is gone (process and data) when its context ends.
"""

from __future__ import annotations

import contextlib
import shutil
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
    with log.open("w") as output:
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


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RunningServer]:
    """A durable Redis (append-only file, fsync on every write), as production runs it."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="quota-redis-") as workdir:
        args = [
            _binary("redis-server"),
            "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir, "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", *extra,
        ]  # fmt: skip
        with _serve(args, port, lambda: _answers(port, b"PING\r\n", b"+PONG"), Path(workdir) / "log") as server:
            yield server


def _etcd_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as answer:
            return b'"health":"true"' in answer.read()
    except OSError:
        return False


@contextlib.contextmanager
def etcd_server() -> Iterator[RunningServer]:
    """A single-member etcd cluster on loopback."""
    client, peer = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="quota-etcd-") as workdir:
        args = [
            _binary("etcd"),
            "--name", "test", "--data-dir", f"{workdir}/data",
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer}",
        ]  # fmt: skip
        with _serve(args, client, lambda: _etcd_healthy(client), Path(workdir) / "log") as server:
            yield server
