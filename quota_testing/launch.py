"""Start the center and agents as real processes on free loopback ports, and stop them.

Used by `quota demo` and by the end-to-end tests, so both exercise exactly what an
operator runs. With `tls` (a development set, quota_testing.tls) each process holds its
role's certificate and every link is mutual TLS; without, plaintext (`--insecure`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from quota_testing.tls import DevTls

READY_TIMEOUT_S = 20.0


@dataclass
class ServerProcess:
    name: str
    args: list[str]
    log_path: Path
    port: int = 0
    metrics_port: int = 0
    """Where GET /metrics answers, when started with --metrics-listen; 0: not served."""
    module: str = "quota_cli"
    """The Python module run with `-m`: it prints {"port": N} on stdout once it serves."""
    popen: subprocess.Popen[str] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None, "started"
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> ServerProcess:
        log = self.log_path.open("a")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self.port = self._await_ready()
        return self

    def _await_ready(self) -> int:
        assert self.popen is not None
        assert self.popen.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.popen.stdout], [], [], 0.1)
            if readable:
                line = self.popen.stdout.readline()
                if line.startswith("{"):
                    ready = json.loads(line)
                    self.metrics_port = int(ready.get("metrics_port", 0))
                    return int(ready["port"])
            if self.popen.poll() is not None:
                break
        self.kill()
        raise RuntimeError(f"{self.name} did not start; see {self.log_path}:\n{self.log_path.read_text()[-2000:]}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (graceful: in-flight calls finish, unspent quota goes back), then SIGKILL."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_pipe()

    def wait(self, timeout_s: float = 30.0) -> int:
        """Waits for the process to end by itself; returns its exit status."""
        assert self.popen is not None, "started"
        status = self.popen.wait(timeout_s)
        self._close_pipe()
        return status

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.popen is not None and self.popen.stdout is not None:
            self.popen.stdout.close()


def run_quota(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `quota ARGS` in `cwd` until it ends by itself (a command, or a server refused at start)."""
    return subprocess.run(
        [sys.executable, "-m", "quota_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=READY_TIMEOUT_S,
        check=False,
    )


def _security(tls: DevTls | None, name: str) -> list[str]:
    return ["--insecure"] if tls is None else tls.flags(name)


def center_process(
    workdir: Path, *extra: str, port: int = 0, store: str | None = None, tls: DevTls | None = None
) -> ServerProcess:
    store = store or f"sqlite:///{workdir / 'center.db'}"
    args = ["center", "serve", "--listen", f"127.0.0.1:{port}", "--store", store, *_security(tls, "center")]
    return ServerProcess("center", [*args, *extra], workdir / "center.log")


def kill_all(processes: list[ServerProcess]) -> None:
    """Kills every process of the list as it stands when called (started ones may still be added)."""
    for process in processes:
        process.kill()


def agent_process(
    workdir: Path, region: str, center_address: str, *extra: str, port: int = 0, tls: DevTls | None = None
) -> ServerProcess:
    args = ["agent", "serve", "--region", region, "--listen", f"127.0.0.1:{port}", "--center", center_address]
    args += _security(tls, f"agent-{region}")
    return ServerProcess(f"agent-{region}", [*args, *extra], workdir / f"agent-{region}.log")
