"""`quota budget statement ID | archive ID`: where a promotion's budget went, and putting a settled one away."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click
from rich.table import Table

from quota_admin.client import AdminClient
from quota_center.settlement import SETTLED, RegionStatement, Statement
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.wire import promotion_from_pb
from quota_cli import budget_view as view
from quota_cli.budget import json_flag, report_change, request_id_option
from quota_common.clock import iso

COLUMNS = ("granted", "returned", "issued", "refunded", "written_off", "stranded")


def statement_from_pb(message: pb.Statement) -> Statement:
    regions = tuple(
        RegionStatement(region.region, *(getattr(region, column) for column in COLUMNS)) for region in message.regions
    )
    ended = message.ended_at.ToMilliseconds() if message.HasField("ended_at") else 0
    settled = message.settled_at.ToMilliseconds() if message.HasField("settled_at") else 0
    return Statement(message.promotion_id, message.state, message.budget, regions, ended, settled)


def statement_json(statement: Statement) -> dict[str, Any]:
    totals = {column: getattr(statement, column) for column in COLUMNS[2:]}
    return {**asdict(statement), **totals, "unspent": statement.unspent}


def _standing(statement: Statement) -> str:
    if statement.state == SETTLED:
        return f"settled {iso(statement.settled_at_ms)}: final, late refunds no longer change it"
    if statement.ended_at_ms:
        return (
            f"ended {iso(statement.ended_at_ms)}, not settled yet: regions give back what they hold and refunds "
            "are honoured until it settles, so these figures may still move"
        )
    return "open: regions are still spending, so these figures move"


def statement_table(statement: Statement) -> Table:
    """One row per region with totals; the caption carries the sum a reader checks: where the budget went."""
    spent = statement.issued - statement.refunded
    held = "stranded" if statement.state == SETTLED else "held"
    table = Table(
        title=f"statement of {statement.promotion_id} ({statement.state})",
        caption=(
            f"{_standing(statement)}\nbudget {statement.budget:,} = spent {spent:,} (issued {statement.issued:,} - "
            f"refunded {statement.refunded:,}) + written off {statement.written_off:,} + {held} "
            f"{statement.stranded:,} + unspent {statement.unspent:,}"
        ),
        show_footer=True,
    )
    # Before settlement what regions hold is not stranded yet: they are giving it back.
    headers = ("granted", "returned", "issued", "refunded", "written off", held)
    table.add_column("region", footer="total")
    for header, column in zip(headers, COLUMNS, strict=True):
        total = sum(getattr(region, column) for region in statement.regions)
        table.add_column(header, footer=f"{total:,}", justify="right")
    table.add_column("spent of budget", footer=view.bar(spent, statement.budget))
    for region in statement.regions:
        figures = (f"{getattr(region, column):,}" for column in COLUMNS)
        table.add_row(region.region, *figures, view.bar(region.issued - region.refunded, statement.budget))
    return table


@click.command()
@click.argument("promotion_id", metavar="ID")
@json_flag
@click.pass_obj
def statement(center: AdminClient, promotion_id: str, as_json: bool) -> None:
    """Where the budget of promotion ID went, by region: issued, refunded, written off (lost with a
    region's ledger), stranded (held by a region when it settled) and unspent. Final once settled: the
    grace period after its end (quota center serve --settle-grace) has passed."""
    answer = statement_from_pb(
        center.call(lambda admin: admin.GetStatement, pb.GetStatementRequest(promotion_id=promotion_id))
    )
    if as_json:
        view.print_json(statement_json(answer))
    else:
        view.print_table(statement_table(answer))


@click.command()
@click.argument("promotion_id", metavar="ID")
@request_id_option
@json_flag
@click.pass_obj
def archive(center: AdminClient, promotion_id: str, request_id: str, as_json: bool) -> None:
    """Put settled promotion ID away: regions drop it, `list` shows it only with --archived; its
    statement, usage and settings still answer."""
    request = pb.ArchivePromotionRequest(promotion_id=promotion_id, request_id=request_id)
    archived = promotion_from_pb(center.call(lambda admin: admin.ArchivePromotion, request))
    report_change(archived, as_json, "archived: regions drop it; quota budget list --archived still shows it")
