"""`quota chaos`: real processes under load and a nemesis, judged against the books afterwards."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from quota_cli.output import print_json
from quota_common.config import FiniteFloatRange


@click.command()
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
        print_json(summary)
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
