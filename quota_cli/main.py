"""The `quota` command: one entry point for every role (center, agent, demo, simulate, bench)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import click
from click.core import ParameterSource

from loadtest.simulation.scenarios import SCENARIOS
from quota_cli.alerts import alerts
from quota_cli.bench_capacity import capacity
from quota_cli.budget import budget
from quota_cli.budget_audit import audit
from quota_cli.budget_emergency import emergency
from quota_cli.budget_history import history
from quota_cli.budget_lifecycle import end, update
from quota_cli.budget_pending import approve, pending, reject
from quota_cli.budget_statement import archive, statement
from quota_cli.certs import certs
from quota_cli.console import bench_console, console
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
    _print_rows("quota simulate", rows)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=1), default=60.0, show_default=True, help="Of load and faults.")
@click.option("--seed", type=int, default=1, show_default=True, help="Decides the fault schedule and the workload.")
@click.option(
    "--stack",
    type=click.Choice(["embedded", "redis-etcd"]),  # loadtest.chaos.run.STACKS, imported only when run
    default="embedded",
    show_default=True,
    help="embedded: SQLite and in-process ledgers; redis-etcd: 3 etcd members, 2 centers, 2 agents per Redis.",
)
@click.option("--clients", type=click.IntRange(min=1, max=64), default=8, show_default=True, help="Order services.")
@click.option(
    "--schedule",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Replay these faults: the --json summary of an earlier run (or its schedule list).",
)
@click.option("--history", type=click.Path(dir_okay=False, path_type=Path), help="Write the history here (JSON lines).")
@click.pass_context
def chaos(
    context: click.Context,
    as_json: bool,
    seconds: float,
    seed: int,
    stack: str,
    clients: int,
    schedule: Path | None,
    history: Path | None,
) -> None:
    """Real processes under load while a nemesis kills, stops, partitions, freezes and lowers budgets; then the
    whole history is judged against the books. Exits 1 on any violation, saving the summary to replay it.

    With --schedule naming a saved summary, its stack, seconds, seed and clients are replayed too, unless given."""
    from loadtest.chaos.nemesis import load_schedule, recorded_settings
    from loadtest.chaos.report import render
    from loadtest.chaos.run import STACKS, ChaosOptions, run_chaos

    if history is not None:
        try:
            history.touch()  # now, not after minutes of load: a history that cannot be written is lost
        except OSError as error:
            raise click.BadParameter(f"{history}: {error.strerror}", param_hint="--history") from None
    options = ChaosOptions(seconds, seed, clients, history, stack, schedule)
    if schedule is not None:
        try:
            load_schedule(schedule)
            recorded = recorded_settings(schedule)
        except (ValueError, KeyError, TypeError) as error:
            raise click.BadParameter(f"{schedule}: not a chaos schedule ({error})", param_hint="--schedule") from None
        given = {name for name in recorded if context.get_parameter_source(name) is ParameterSource.COMMANDLINE}
        options = replace(options, **{name: value for name, value in recorded.items() if name not in given})
        if options.stack not in STACKS or options.seconds < 1 or options.clients < 1:
            raise click.BadParameter(f"{schedule}: its settings are not a run's ({recorded})", param_hint="--schedule")
    summary = run_chaos(options)
    saved = "" if summary["ok"] else _save_failed_run(summary)
    if as_json:
        _print_json(summary)
    else:
        click.echo(render(summary, saved))
    if not summary["ok"]:
        raise SystemExit(1)


def _save_failed_run(summary: dict[str, Any]) -> str:
    """Where the summary of a failing run was saved, to replay it with --schedule; empty if it could not be."""
    saved = f"quota-chaos-{summary['stack']}-seed{summary['seed']}.json"
    try:
        Path(saved).write_text(json.dumps(summary, indent=2) + "\n")
    except OSError as error:
        click.echo(f"quota: could not save {saved} ({error.strerror}); its schedule is in --json", err=True)
        return ""
    return saved


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=10.0, show_default=True, help="Per measurement.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent order services.")
@click.option(
    "--docs",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs"),
    show_default=True,
    help="Where benchmarks.md (its measured section) and benchmarks.png are written.",
)
@click.pass_context
def bench(context: click.Context, as_json: bool, seconds: float, clients: int, docs: Path) -> None:
    """Benchmarks that print figures (they start what they need on loopback and stop it).

    Without a subcommand: our agents against central deduction and a central Redis script, at a
    WAN round trip of 0 and 80 ms to the center, on the same demand in one run; and each agent with
    mutual TLS on every link beside itself in plaintext (the ratio: what security costs)."""
    if context.invoked_subcommand is not None:
        return
    from loadtest.compare import Options, compare
    from loadtest.report import COLUMNS, SUMMARY, write

    comparison = asyncio.run(compare(Options(seconds, clients)))
    written = write(comparison, docs)
    if as_json:
        _print_json(comparison.figures)
        return
    _print_rows("quota bench", comparison.figures["rows"], COLUMNS)
    for name in SUMMARY:
        click.echo(f"{name}: {comparison.figures[name]}")
    click.echo("wrote " + ", ".join(str(path) for path in written))


def _print_json(figures: dict[str, object]) -> None:
    click.echo(json.dumps(figures))


def _show(title: str, figures: dict[str, object], as_json: bool) -> None:
    if as_json:
        _print_json(figures)
    else:
        _print_table(title, figures)


@bench.command("store")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=3.0, show_default=True, help="Per store.")
def bench_store(as_json: bool, seconds: float) -> None:
    """Grants per second through the center's gRPC API, on SQLite and on etcd."""
    from loadtest.bench import bench_store as run

    _show("quota bench store", asyncio.run(run(seconds)), as_json)


@bench.command("groups")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=5.0, show_default=True, help="Per group count.")
@click.option("--workers", type=click.IntRange(min=1, max=256), default=16, show_default=True, help="Concurrent loops.")
def bench_groups(as_json: bool, seconds: float, workers: int) -> None:
    """Grants per second that 1, 2 and 4 center groups on one etcd serve, and the ratio to one group."""
    from loadtest.bench_groups import bench_groups as run

    figures = asyncio.run(run(seconds, workers))
    if as_json:
        _print_json(figures)
        return
    _print_rows(f"quota bench groups ({workers} workers)", figures["rows"], GROUPS_COLUMNS)


GROUPS_COLUMNS = {"groups": "center groups", "grants_per_s": "grants/s", "ratio_to_one_group": "ratio to one group"}


@bench.command("failover")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_failover(as_json: bool) -> None:
    """Two centers on etcd and two agents under load; SIGKILL the leader; measure the takeover."""
    from loadtest.bench import bench_failover as run

    _show("quota bench failover", asyncio.run(run()), as_json)


@bench.command("ledger")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=5.0, show_default=True, help="Per row.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent clients.")
def bench_ledger(as_json: bool, seconds: float, clients: int) -> None:
    """Deductions per second through one agent on each ledger, and the bare Redis script."""
    from loadtest.bench_ledger import bench_ledger as run

    _show("quota bench ledger", asyncio.run(run(seconds, clients)), as_json)


@bench.command("cells")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=6.0, show_default=True, help="Per configuration.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent clients.")
@click.option("--cells", "counts", default="1,2,4", show_default=True, help="Comma-separated cell counts, from 1.")
def bench_cells(as_json: bool, seconds: float, clients: int, counts: str) -> None:
    """One region's deductions per second as 1, 2 and 4 cells, each an agent on its own Redis."""
    from loadtest.bench_cells import CellsOptions
    from loadtest.bench_cells import bench_cells as run

    try:
        numbers = tuple(int(count) for count in counts.split(","))
    except ValueError:
        numbers = ()
    if not numbers or numbers[0] != 1 or len(set(numbers)) != len(numbers) or not all(1 <= n <= 16 for n in numbers):
        raise click.BadParameter(f"{counts!r}: give distinct counts of 1 to 16 cells, the first 1, such as 1,2,4")
    figures = asyncio.run(run(CellsOptions(numbers, seconds, clients)))
    if as_json:
        _print_json(figures)
        return
    _print_rows(f"quota bench cells ({figures['cores']} cores for every process)", figures["rows"], CELLS_COLUMNS)


CELLS_COLUMNS = {
    "cells": "cells",
    "per_s": "deductions/s",
    "ratio_to_1_cell": "ratio to 1 cell",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "agent_cores": "agent cores",
    "redis_cores": "Redis cores",
    "load_generator_cores": "load gen cores",
    "per_agent_core_s": "per agent core-s",
    "over_issue": "over-issue",
    "errors": "errors",
}


@bench.command("freeze")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--freezes", type=click.IntRange(min=2), default=50, show_default=True, help="Per link.")
def bench_freeze(as_json: bool, freezes: int) -> None:
    """Time from a freeze's answer until every region refuses the promotion: push link, then pull only."""
    from loadtest.bench_freeze import bench_freeze as run

    _show("quota bench freeze", asyncio.run(run(freezes)), as_json)


@bench.command("opening")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--promotions", type=click.IntRange(min=1), default=10_000, show_default=True, help="Starting together.")
def bench_opening(as_json: bool, promotions: int) -> None:
    """Time until three agents hold an opening allotment of every promotion that starts soon."""
    from loadtest.bench_opening import bench_opening as run

    _show("quota bench opening", asyncio.run(run(promotions)), as_json)


@bench.command("renewal")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--promotions", type=click.IntRange(min=1), default=10_000, show_default=True, help="The region knows.")
@click.option(
    "--moving", type=FiniteFloatRange(min=0.0001, max=1.0), default=0.01, show_default=True, help="Share selling."
)
@click.option("--rounds", type=click.IntRange(min=1, max=100), default=5, show_default=True, help="Renewals measured.")
def bench_renewal(as_json: bool, promotions: int, moving: float, rounds: int) -> None:
    """Promotions, bytes and store writes per renewal when few of many promotions sell: every promotion
    reported (before the region lease) against only those that moved (after), in one run."""
    from loadtest.bench_renewal import COLUMNS
    from loadtest.bench_renewal import bench_renewal as run

    figures = asyncio.run(run(promotions, moving, rounds))
    if as_json:
        _print_json(figures)
        return
    _print_rows(f"quota bench renewal ({promotions:,} promotions, {moving:.1%} selling)", figures["rows"], COLUMNS)
    for name in ("entries_ratio", "bytes_ratio", "store_writes_ratio"):
        click.echo(f"{name}: {figures[name]}")


@bench.command("recovery")
@click.option("--json", "as_json", is_flag=True, help='Print {"target_s": ..., "outages": [...]}, one row per outage.')
@click.option(
    "--outages",
    default="5,30,120",
    show_default=True,
    help="Comma-separated seconds the center stays away, one outage each.",
)
@click.option(
    "--renew-interval",
    type=FiniteFloatRange(min=0.05),
    default=3.0,
    show_default=True,
    help="The agent's renew interval (the center's lease TTL is three times it).",
)
def bench_recovery(as_json: bool, outages: str, renew_interval: float) -> None:
    """Time from the center's return after an outage (SIGKILL, restart on the same port and store)
    until the agent accepts orders again; the target is one renew interval plus a second."""
    from loadtest.recovery import RecoveryOptions
    from loadtest.recovery import bench_recovery as run

    try:
        lengths = tuple(float(length) for length in outages.split(","))
    except ValueError:
        lengths = ()
    if not lengths or not all(0 <= length <= 3600 for length in lengths):
        raise click.BadParameter(f"{outages!r}: give seconds from 0 to 3600, such as 5,30,120", param_hint="--outages")
    figures = asyncio.run(run(RecoveryOptions(lengths, renew_interval)))
    if as_json:
        _print_json(figures)
        return
    rows = [
        {
            **row,
            "back_to_serving_s": "never" if row["back_to_serving_s"] is None else row["back_to_serving_s"],
            "within_target": "yes" if row["within_target"] else "NO",
        }
        for row in figures["outages"]
    ]
    _print_rows(f"quota bench recovery (target: {figures['target_s']} s)", rows, RECOVERY_COLUMNS)


RECOVERY_COLUMNS = {
    "outage_s": "outage s",
    "back_to_serving_s": "back to serving s",
    "renew_interval_s": "renew interval s",
    "within_target": "within target",
    "orders_refused": "orders refused",
}


@bench.command("cost")
@click.option("--json", "as_json", is_flag=True, help='Print {"servers": [...]}, one row per server.')
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=5.0, show_default=True, help="Per server and round.")
@click.option("--rounds", type=click.IntRange(1, 10), default=2, show_default=True, help="Times over the servers.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent order services.")
@click.option(
    "--wait-ms",
    type=FiniteFloatRange(min=0.01),
    default=0.7,
    show_default=True,
    help="How long echo_waiting waits per call (a Redis round trip under load).",
)
def bench_cost(as_json: bool, seconds: float, rounds: int, clients: int, wait_ms: float) -> None:
    """Where the agent's calls per second go: echo servers that add, step by step, what the agent's
    Redis round trip adds (its latency alone, a Redis without disk, one that fsyncs), then the agent."""
    from loadtest.cost import CostOptions, cost

    figures = asyncio.run(cost(CostOptions(seconds, rounds, clients, wait_ms)))
    if as_json:
        _print_json(figures)
        return
    rows = [{**row, "per_s": " / ".join(f"{rate:,}" for rate in row["per_s"])} for row in figures["servers"]]
    _print_rows("quota bench cost", rows, COST_COLUMNS)


@bench.command("embedded")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...], "offered_rows": [...], ratios}.')
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=5.0, show_default=True, help="Per row.")
@click.option(
    "--rounds", type=click.IntRange(1, 10), default=2, show_default=True, help="Stretches rows take turns in."
)
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent order services.")
def bench_embedded(as_json: bool, seconds: float, rounds: int, clients: int) -> None:
    """The agent embedded in the order service against the bare EVALSHA it runs, the agent over gRPC against
    an echo server making the same Redis write, and both agents' latency at the same offered load."""
    from loadtest.bench_embedded import EmbeddedOptions, bench_embedded

    figures = asyncio.run(bench_embedded(EmbeddedOptions(seconds, clients, rounds)))
    if as_json:
        _print_json(figures)
        return
    _print_rows("quota bench embedded (closed loop)", figures["rows"], EMBEDDED_COLUMNS)
    offered = f"quota bench embedded (open loop, {figures['offered_per_s']:,} orders/s offered)"
    _print_rows(offered, figures["offered_rows"], EMBEDDED_COLUMNS)
    for name, value in figures.items():
        if name.endswith(("_ratio", "_deduction")):
            click.echo(f"{name}: {value}")


EMBEDDED_COLUMNS = {
    "strategy": "strategy",
    "deductions": "deductions",
    "throughput_per_s": "per s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "p999_ms": "p999 ms",
    "refused": "refused (exhausted)",
    "errors": "errors",
}

COST_COLUMNS = {
    "server": "server",
    "mean_per_s": "calls/s",
    "per_s": "per round",
    "vs_echo": "vs echo",
    "cpu_us_per_call": "server CPU µs/call",
}

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


def _print_rows(title: str, rows: list[dict[str, object]], columns: dict[str, str] = SIMULATE_COLUMNS) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key, header in columns.items():
        table.add_column(header, justify="left" if key in ("scenario", "strategy", "server") else "right")
    for row in rows:
        cells = []
        for key in columns:
            value = row[key]
            if isinstance(value, float) and key in ("sell_through", "waited_share"):
                cells.append(f"{value:.2%}")
            else:
                cells.append(f"{value:,}" if isinstance(value, int) else str(value))
        table.add_row(*cells)
    Console(width=max(120, Console().width)).print(table)


def _print_table(title: str, figures: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, str(value))
    Console().print(table)


bench.add_command(capacity)
main.add_command(budget)
main.add_command(alerts)
main.add_command(certs)
main.add_command(console)
bench.add_command(bench_console)
main.add_command(reconcile)
