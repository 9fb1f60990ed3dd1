"""`quota alerts [--all] [--promotion ID]` and `quota alerts ack ID --cause ...`: alerts someone must answer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click
from rich.table import Table

from quota_admin.client import AdminClient
from quota_admin.documents import CAUSE_NAMES, CAUSES, alert_document
from quota_center.v1 import quota_center_pb2 as pb
from quota_cli import budget_view as view
from quota_cli.budget import budget, json_flag, request_id_option


@click.group(invoke_without_command=True, params=list(budget.params))
@click.option("--all", "show_all", is_flag=True, help="Acknowledged alerts too (the newest the center keeps).")
@click.option("--promotion", "promotion_id", default="", help="Only this promotion's alerts.")
@json_flag
@click.pass_context
def alerts(context: click.Context, /, show_all: bool, promotion_id: str, as_json: bool, **connection: Any) -> None:
    """Alerts the center raised from what regions report, newest first: open ones, unless --all. Each must be
    acknowledged with its cause (`quota alerts ack`); until then it is re-sent to the webhooks.

    Connects as `quota budget` does (--center, --timeout, --tls-*); exit codes are the same."""
    budget.callback(**connection)  # type: ignore[misc]  # the same connection as `quota budget`, made the same way
    if context.invoked_subcommand is not None:
        return
    center: AdminClient = context.obj
    request = pb.ListAlertsRequest(include_acknowledged=show_all, promotion_id=promotion_id)
    answers = center.fan_out(lambda admin: admin.ListAlerts, request)
    listed = [alert_document(alert) for answer in answers for alert in answer.alerts]
    if as_json:
        view.print_json({"alerts": listed})
        return
    if not listed:
        click.echo("no alert" if show_all else "no open alert")
        return
    table = Table("id", "rule", "promotion", "region", "raised (UTC)", "what was seen", "action", "answer")
    for alert in listed:
        answer = f"{alert['cause']} by {alert['acknowledged_by']}: {alert['note']}" if alert["acknowledged"] else ""
        table.add_row(
            alert["id"],
            alert["rule"],
            alert["promotion_id"],
            alert["region"] or "(all)",
            alert["raised_at"],
            alert["message"],
            alert["action"],
            answer,
        )
    view.print_table(table)


@alerts.command()
@click.argument("alert_id", metavar="ID")
@click.option("--cause", type=click.Choice(list(CAUSES)), required=True, help="What the alert turned out to be.")
@click.option("--note", default="", help="What was done, or why it is accepted; kept with the answer.")
@request_id_option
@json_flag
@click.pass_obj
def ack(center: AdminClient, alert_id: str, cause: str, note: str, request_id: str, as_json: bool) -> None:
    """Answer alert ID with its cause; it stops being re-sent. The answer is recorded in the audit trail."""
    request = pb.AcknowledgeAlertRequest(alert_id=alert_id, cause=CAUSES[cause], note=note, request_id=request_id)
    answered = alert_document(center.call(lambda admin: admin.AcknowledgeAlert, request))
    if as_json:
        view.print_json(answered)
    else:
        click.echo(f"{answered['id']} acknowledged as {answered['cause']} by {answered['acknowledged_by']}")


@alerts.command()
@json_flag
@click.pass_obj
def rules(center: AdminClient, as_json: bool) -> None:
    """How each rule's alerts were answered (of those the center keeps): a rule whose alerts are mostly
    false alarms needs a higher threshold or a narrower condition; one never answered, someone to answer it."""
    request = pb.ListAlertsRequest(include_acknowledged=True)
    answers = center.fan_out(lambda admin: admin.ListAlerts, request)
    tally = answers_by_rule([alert for answer in answers for alert in answer.alerts])
    if as_json:
        view.print_json({"rules": tally})
        return
    if not tally:
        click.echo("no alert yet")
        return
    table = Table("rule", "kind", "raised", "open", *CAUSES, "false alarms")
    for row in tally:
        answered = row["raised"] - row["open"]
        share = f"{row['false-alarm'] * 100 // answered} %" if answered else "-"
        table.add_row(
            row["rule_name"], row["rule"], str(row["raised"]), str(row["open"]), *(str(row[c]) for c in CAUSES), share
        )
    view.print_table(table)


def answers_by_rule(listed: Iterable[pb.Alert]) -> list[dict[str, Any]]:
    """Per rule (by name, in name order): alerts raised, still open, and answered with each cause."""
    rows: dict[str, dict[str, Any]] = {}
    for alert in listed:
        row = rows.setdefault(
            alert.rule_name,
            {"rule_name": alert.rule_name, "rule": alert.rule, "raised": 0, "open": 0, **dict.fromkeys(CAUSES, 0)},
        )
        row["raised"] += 1
        if alert.acknowledged:
            row[CAUSE_NAMES[alert.cause]] += 1
        else:
            row["open"] += 1
    return [rows[name] for name in sorted(rows)]
