"""A center and one agent per region as real processes on loopback, for the Locust suite to load.

    python -m loadtest.stack --regions eu,us,ap [--ledger memory|redis://HOST:PORT/DB] [--seconds N]
    python -m loadtest.stack --regions eu,us,ap --locust-seconds 60 --users 50

Prints the addresses and the `locust` command that loads them, then runs until Ctrl-C or SIGTERM
(or `--seconds`); with `--locust-seconds` it runs that headless Locust itself, prints its summary
and stops. The center keeps its state in SQLite in a temporary directory, removed on exit.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from quota_testing.launch import ServerProcess, agent_process, center_process

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def _locust_command(
    agents: dict[str, str], center: str, users: int, seconds: int, promotions: int, budget: int
) -> list[str]:
    return [
        "locust",
        "-f",
        os.path.relpath(LOCUSTFILE),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(max(1, users // 5)),
        "-t",
        f"{seconds}s",
        "--agents",
        ",".join(f"{region}={address}" for region, address in agents.items()),
        "--center",
        center,
        "--promotions",
        str(promotions),
        "--budget",
        str(budget),
    ]


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # The same way out as Ctrl-C, so that one `finally` stops the servers either way.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.stack", description="A center and one agent per region, for the Locust suite."
    )
    parser.add_argument("--regions", default="eu,us,ap", help="comma-separated regions, one agent each")
    parser.add_argument("--ledger", default="memory", help="the agents' ledger: memory or redis://HOST:PORT[/DB]")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: at Ctrl-C or SIGTERM)")
    parser.add_argument("--locust-seconds", type=int, default=0, help="run a headless Locust this long, then stop")
    parser.add_argument("--users", type=int, default=50, help="Locust users")
    parser.add_argument("--promotions", type=int, default=4, help="promotions Locust creates and spends")
    parser.add_argument("--budget", type=int, default=10_000, help="budget of each promotion")
    args = parser.parse_args(argv)
    regions = [region.strip() for region in str(args.regions).split(",") if region.strip()]
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    processes: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="quota-stack-") as tmp:
        workdir = Path(tmp)
        try:
            center = center_process(workdir).start()
            processes.append(center)
            agents: dict[str, str] = {}
            for region in regions:
                agent = agent_process(workdir, region, center.address, "--ledger", str(args.ledger)).start()
                processes.append(agent)
                agents[region] = agent.address
            print(f"center {center.address}", flush=True)
            for region, address in agents.items():
                print(f"agent  {region} {address}", flush=True)
            seconds = int(args.locust_seconds) or 60
            command = _locust_command(
                agents, center.address, int(args.users), seconds, int(args.promotions), int(args.budget)
            )
            print(f"logs in {workdir} (removed on exit)\nload it with:\n  {shlex.join(command)}", flush=True)
            if args.locust_seconds:
                return subprocess.run([sys.executable, "-m", *command, "--only-summary"], check=False).returncode
            if args.seconds:
                time.sleep(float(args.seconds))
            else:
                signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            for process in reversed(processes):
                process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
