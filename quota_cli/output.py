"""How the `quota` commands print figures: one JSON object for machines, rich tables for people."""

from __future__ import annotations

import json

import click


def print_json(figures: dict[str, object]) -> None:
    click.echo(json.dumps(figures))


def show(title: str, figures: dict[str, object], as_json: bool) -> None:
    if as_json:
        print_json(figures)
    else:
        print_table(title, figures)


def print_rows(title: str, rows: list[dict[str, object]], columns: dict[str, str]) -> None:
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


def print_table(title: str, figures: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, str(value))
    Console().print(table)
