"""The `quota` command: one entry point for every role (center, agent, demo, simulate, bench)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from loadtest.simulation.scenarios import SCENARIOS
from quota_cli.agent_status import agent_status
from quota_cli.alerts import alerts
from quota_cli.bench import bench
from quota_cli.budget import budget
from quota_cli.budget_audit import audit
from quota_cli.budget_emergency import emergency
from quota_cli.budget_history import history
from quota_cli.budget_lifecycle import end, update
from quota_cli.budget_pending import approve, pending, reject
from quota_cli.budget_statement import archive, statement
from quota_cli.certs import certs
from quota_cli.chaos import chaos
from quota_cli.console import console
from quota_cli.output import print_rows
from quota_cli.reconcile import reconcile
from quota_cli.rules import check_rules
from quota_cli.serve import agent, center
from quota_cli.shards import shards
from quota_common.config import FiniteFloatRange, load_config
from quota_common.errors import ConfigError
from quota_common.logs import configure_logging

EXIT_SETTINGS = 2
"""Exit status of a process that cannot start as configured (click's own for a bad flag)."""


class _CannotStart(click.ClickException):
    exit_code = EXIT_SETTINGS

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"quota: error: {self.message}", err=True)


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """A bad flag, variable or file key, or a ConfigError raised while starting, becomes one line
    on stderr and exit 2: what supervisors and people read first, with no traceback to dig through."""
    try:
        yield
    except ConfigError as error:
        raise _CannotStart(error.message) from None
    except click.exceptions.NoArgsIsHelpError:
        raise  # `quota` or `quota center` alone: the help is the answer
    except click.UsageError as error:
        where = f" (see {error.ctx.command_path} --help)" if error.ctx is not None else ""
        raise _CannotStart(error.format_message() + where) from None


class _Quota(click.Group):
    """`quota` itself: its own options and every subcommand's are parsed, and run, under _one_line."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with _one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line():
            return super().invoke(ctx)


@click.group(cls=_Quota)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    default="WARNING",
    show_default=True,
    envvar="QUOTA_LOG_LEVEL",
    show_envvar=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    envvar="QUOTA_LOG_FORMAT",
    show_envvar=True,
    help="auto: readable lines on a terminal, JSON lines otherwise (production).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="QUOTA_CONFIG",
    show_envvar=True,
    help="TOML file with [center], [agent] and [budget] tables of settings (below the command line and QUOTA_*).",
)
@click.pass_context
def main(context: click.Context, log_level: str, log_format: str, config_file: Path | None) -> None:
    """Quota: a distributed quota center for marketing budgets."""
    configure_logging(log_level, log_format)
    if config_file is not None:
        context.default_map = load_config(config_file, main)


main.add_command(center)
center.add_command(check_rules)
main.add_command(agent)
agent.add_command(agent_status)
main.add_command(shards)
budget.add_command(audit)
budget.add_command(emergency)
budget.add_command(history)
for command in (pending, approve, reject, update, end, statement, archive):
    budget.add_command(command)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--budget", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--demand-factor", type=FiniteFloatRange(min=0.1), default=1.2, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Concurrent clients.")
@click.option("--seed", type=int, default=7, show_default=True)
def demo(as_json: bool, budget: int, demand_factor: float, concurrency: int, seed: int) -> None:
    """A center and three regions sell a budget out on embedded defaults."""
    from loadtest.demo import DemoOptions, run_demo

    run_demo(DemoOptions(budget, demand_factor, concurrency, seed), as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the incidents and their figures as JSON.")
def incidents(as_json: bool) -> None:
    """Replay the configuration mistakes quota exists to catch, against real processes, with the loss each
    would have cost and what stopped it."""
    from loadtest.incidents import run_incidents

    run_incidents(as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...]}, one row per scenario and strategy.')
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(list(SCENARIOS)),
    help="Run only these (repeatable) [default: all].",
)
def simulate(as_json: bool, seed: int, scenarios: tuple[str, ...]) -> None:
    """The distribution model against central deduction, pre-allocation and local deduction with
    asynchronous reporting, on the same simulated demand (virtual clock, seeded)."""
    from loadtest.simulation.run import simulate_all

    rows = simulate_all(seed, scenarios or tuple(SCENARIOS))
    if as_json:
        click.echo(json.dumps({"rows": rows}))
        return
    print_rows("quota simulate", rows, SIMULATE_COLUMNS)


SIMULATE_COLUMNS = {
    "scenario": "scenario",
    "strategy": "strategy",
    "issued": "issued",
    "over_issue": "over",
    "stranded": "stranded",
    "sell_through": "sold",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "p999_ms": "p999 ms",
    "center_calls_per_1k": "calls/1k",
    "renewal_entries_per_1k": "reports/1k",
    "waited_share": "waited",
}


main.add_command(chaos)
main.add_command(bench)
main.add_command(budget)
main.add_command(alerts)
main.add_command(certs)
main.add_command(console)
main.add_command(reconcile)
