"""`quota reconcile`: the center's books against every region's ledger (对账), read twice some seconds apart
so that what is only on its way is not reported; the comparison is quota_common.reconcile's."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import grpc
from rich.table import Table

from quota_admin.client import AdminClient, CenterRefused
from quota_center.v1 import quota_center_pb2 as pb
from quota_cli import budget_view as view
from quota_cli.agent_status import read_status
from quota_cli.budget import center_option, json_flag, timeout_option
from quota_cli.security import security, security_options
from quota_common.config import FiniteFloatRange
from quota_common.reconcile import CenterBook, Finding, LedgerBook, compare_all, persistent
from quota_common.transport import Transport, open_transport

EXIT_DIFFERENT = 5
Ledgers = dict[str, dict[str, LedgerBook]]
"""promotion -> region -> what the region's ledger says of it."""


def _agents(context: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    agents: dict[str, str] = {}
    for value in values:
        region, _, address = value.partition("=")
        if not region or not address:
            raise click.BadParameter(f"{value!r} is not REGION=HOST:PORT, such as eu=127.0.0.1:50061")
        if region in agents:
            raise click.BadParameter(f"region {region} is given twice; one agent per region reads its ledger")
        agents[region] = address
    return agents


def _read_ledgers(agents: dict[str, str], transport: Transport, timeout_s: float) -> Ledgers:
    ledgers: Ledgers = {}
    for region, address in agents.items():
        status = read_status(transport, address, timeout_s, f"the agent of region {region}")
        if status.region != region:
            raise click.BadParameter(f"{address} serves region {status.region}, not {region}", param_hint="--agent")
        for balance in status.balances:
            ledgers.setdefault(balance.promotion_id, {})[region] = LedgerBook(
                balance.granted, balance.returned, balance.deducted, balance.refunded, balance.held, balance.available
            )
    return ledgers


def _center_books(center: AdminClient, promotion_id: str) -> dict[str, CenterBook]:
    """Empty for a promotion the center does not know: every grant a ledger counts for it is one it never made."""
    try:
        usage = center.call(lambda admin: admin.GetUsage, pb.GetUsageRequest(promotion_id=promotion_id))
    except CenterRefused as refused:
        if refused.code != grpc.StatusCode.NOT_FOUND:
            raise
        return {}
    return {row.region: CenterBook(row.granted, row.returned, row.consumed, row.held) for row in usage.regions}


def _promotions(center: AdminClient, only: str | None, ledgers: Ledgers) -> list[str]:
    if only is not None:
        if only not in ledgers:  # a typo must not read as "the books agree": the center names it (NOT_FOUND)
            center.call(lambda admin: admin.GetPromotion, pb.GetPromotionRequest(promotion_id=only))
        return [only]
    pages = center.every_group_page(
        lambda admin: admin.ListPromotions, lambda token: pb.ListPromotionsRequest(page_token=token)
    )
    return sorted({p.id for page in pages for p in page.promotions} | set(ledgers))


def _reading(
    center: AdminClient, agents: dict[str, str], only: str | None, timeout_s: float
) -> tuple[list[Finding], int]:
    """The differences one reading shows, and how many promotions it compared. The ledgers are read
    before the center (see quota_common.reconcile)."""
    ledgers = _read_ledgers(agents, center.transport, timeout_s)
    promotions = _promotions(center, only, ledgers)
    found: list[Finding] = []
    for promotion_id in promotions:
        # A region whose ledger does not list the promotion holds none of it.
        books = {region: ledgers.get(promotion_id, {}).get(region, LedgerBook()) for region in agents}
        found += compare_all(promotion_id, _center_books(center, promotion_id), books)
    return found, len(promotions)


@click.command()
@center_option
@click.option(
    "--agent",
    "agents",
    multiple=True,
    required=True,
    callback=_agents,
    metavar="REGION=HOST:PORT",
    help="An agent of REGION, whose ledger is read (GetStatus); once per region to compare.",
)
@click.option("--promotion", "only", metavar="ID", help="Only this promotion; default: every one either side knows.")
@click.option(
    "--recheck-after",
    type=FiniteFloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds between the two readings; a difference work in flight explains counts only if it stays.",
)
@timeout_option
@json_flag
@security_options
def reconcile(
    addresses: tuple[str, ...],
    agents: dict[str, str],
    only: str | None,
    recheck_after: float,
    timeout: float,
    as_json: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    trust_domain: str,
    insecure: bool,
) -> None:
    """Compare, per promotion and region, what the center granted, got back and was told was consumed with
    what each region's ledger says (granted, returned, deducted, refunded, held, available), and name every
    difference with its amount and likely cause. Regions without --agent are not compared.

    \b
    Exit codes:
      0  the books agree
      2  bad usage
      3  the center refused a call
      4  the center or an agent did not answer
      5  a difference was found
    """
    secured = security(tls_cert, tls_key, tls_ca, trust_domain, insecure)
    transport = open_transport(secured, None, center=(*addresses, *agents.values()))
    center = AdminClient(list(addresses), timeout, transport)
    first, _ = _reading(center, agents, only, timeout)
    time.sleep(recheck_after)
    second, compared = _reading(center, agents, only, timeout)
    findings = persistent(first, second)
    if as_json:
        checked = {"promotions": compared, "regions": sorted(agents)}
        view.print_json({"agree": not findings, "checked": checked, "findings": [f.document() for f in findings]})
    elif findings:
        table = Table("promotion", "region", "amount", "could be in flight", "likely cause")
        for f in findings:
            table.add_row(f.promotion_id, f.region, str(f.amount), "yes" if f.cause.in_flight else "no", f.cause.text)
        view.print_table(table)
    else:
        click.echo(f"the books agree: {compared} promotion(s) in region(s) {', '.join(sorted(agents))}")
    if findings:
        sys.exit(EXIT_DIFFERENT)
