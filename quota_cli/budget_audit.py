"""`quota budget audit`: who changed what, read from the center's audit trail and checked here.

The center serves the records exactly as its store holds them; the hash chain is verified by this
command, not by the center, so a center whose store was tampered with cannot vouch for itself.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from quota_admin.audit import changed, every_record, record_fields
from quota_admin.client import AdminClient
from quota_center.audit import verify
from quota_cli import budget_view as view
from quota_cli.budget import instant, json_flag
from quota_common.clock import iso

EXIT_TAMPERED = 5
"""`--verify` found records edited, deleted or moved."""


def _table(records: list[dict[str, Any]]) -> Table:
    table = Table("seq", "when (UTC)", "who", "call", "promotion", "request id", "change")
    for fields in records:
        at_ms = fields.get("at_ms")
        table.add_row(
            str(fields.get("seq")),
            iso(at_ms) if isinstance(at_ms, int) else "?",
            str(fields.get("actor", "?")),
            str(fields.get("call", "?")),
            str(fields.get("promotion_id") or "(emergency switch)"),
            str(fields.get("request_id", "")),
            changed(fields),
        )
    return table


@click.command()
@click.argument("promotion_id", metavar="[ID]", required=False)
@click.option("--since", callback=instant, help="Only records from this ISO 8601 time on (UTC without an offset).")
@click.option(
    "--verify",
    "verify_chain",
    is_flag=True,
    help="Check the whole trail's hash chain; exit 5 when it was tampered with.",
)
@json_flag
@click.pass_obj
def audit(center: AdminClient, promotion_id: str | None, since: int | None, verify_chain: bool, as_json: bool) -> None:
    """Every change to promotion ID (or to any promotion and the emergency switch): who, when, which call,
    the request id, and what changed. --verify checks every record, whatever ID and --since select."""
    records = every_record(center)
    problems = verify(records) if verify_chain else []
    shown = [
        fields
        for fields in map(record_fields, records)
        if (promotion_id is None or fields.get("promotion_id") == promotion_id)
        and (since is None or (isinstance(fields.get("at_ms"), int) and fields["at_ms"] >= since))
    ]
    if as_json:
        document: dict[str, Any] = {"records": shown}
        if verify_chain:
            document["verified"] = {"records": len(records), "problems": problems}
        view.print_json(document)
    elif shown:
        view.print_table(_table(shown))
    else:
        click.echo("no audit records match")
    if not verify_chain:
        return
    if problems:
        for problem in problems:
            click.echo(f"tampered: {problem}", err=True)
        sys.exit(EXIT_TAMPERED)
    head = f", newest {records[-1].seq} with hash {records[-1].hash}" if records else ""
    click.echo(f"verified: {len(records)} records intact and chained{head}", err=True)
