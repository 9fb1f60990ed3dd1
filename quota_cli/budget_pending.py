"""`quota budget pending | approve ID | reject ID`: changes a guard rule held for a second person."""

from __future__ import annotations

import click
from rich.table import Table

from quota_admin.client import AdminClient
from quota_admin.documents import pending_document
from quota_center.v1 import quota_center_pb2 as pb
from quota_cli import budget_view as view
from quota_cli.budget import json_flag, request_id_option


@click.command()
@json_flag
@click.pass_obj
def pending(center: AdminClient, as_json: bool) -> None:
    """Changes held by a guard rule: who asked, why they were held, until when, and what became of them."""
    changes = [
        pending_document(change)
        for answer in center.fan_out(lambda admin: admin.ListPending, pb.ListPendingRequest())
        for change in answer.changes
    ]
    if as_json:
        view.print_json({"changes": changes})
        return
    if not changes:
        click.echo("no change is waiting for approval")
        return
    table = Table("id", "state", "call", "promotion", "asked by", "expires (UTC)", "why held", "request")
    for change in changes:
        table.add_row(
            change["id"],
            change["state"],
            change["call"],
            change["promotion_id"],
            change["requested_by"],
            change["expires_at"],
            "\n".join(change["findings"]),
            change["request"],
        )
    view.print_table(table)


def _decision(name: str, approve: bool, description: str) -> click.Command:
    @click.command(name, help=description)
    @click.argument("pending_id", metavar="ID")
    @click.option("--reason", default="", help="Why, kept with the decision and in the audit trail.")
    @request_id_option
    @json_flag
    @click.pass_obj
    def command(center: AdminClient, pending_id: str, reason: str, request_id: str, as_json: bool) -> None:
        request = pb.DecidePendingRequest(pending_id=pending_id, reason=reason, request_id=request_id)
        method = "ApprovePending" if approve else "RejectPending"
        decided = center.call(lambda admin: getattr(admin, method), request, idempotent=False)
        if as_json:
            view.print_json(pending_document(decided))
        else:
            what = f"{decided.call} of {decided.promotion_id}"
            click.echo(f"{decided.id} {decided.state}: {what} asked by {decided.requested_by}")

    return command


approve = _decision(
    "approve",
    True,
    "Apply held change ID as it was asked (approvers only; never the person who asked).",
)
reject = _decision("reject", False, "Refuse held change ID: nothing of it ever applies.")
