"""`quota agent status`: what one agent says of itself (GetStatus), first of all which center group it cannot
reach: per group its catalog stream, revision and last word, the region's lease there and how long renewals
have failed; then its ledger's balances. `read_status` is also how `quota reconcile` reads a region's ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf.message import Message
from rich.table import Table

from quota_admin.client import CenterError
from quota_cli import budget_view as view
from quota_cli.budget import json_flag, timeout_option
from quota_cli.security import security, security_options
from quota_common.config import bind_environment
from quota_common.transport import Transport, open_transport
from region_agent.v1 import region_agent_pb2 as pb
from region_agent.v1 import region_agent_pb2_grpc as pb_grpc

WIDTH = 120
"""Columns the tables are laid out in at least (a pipe has 80): cells are cut, not wrapped, below it."""


class AgentUnreachable(CenterError):
    exit_code = 4


def read_status(transport: Transport, address: str, timeout_s: float, agent: str = "the agent") -> pb.RegionStatus:
    """The agent's GetStatus; AgentUnreachable naming `agent` at `address` when it does not answer."""
    with transport.channel(address) as channel:
        try:
            answer: pb.RegionStatus = pb_grpc.RegionAgentStub(channel).GetStatus(
                pb.GetStatusRequest(), timeout=timeout_s
            )
        except grpc.RpcError as error:
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise AgentUnreachable(
                f"{agent} at {address} did not answer GetStatus: {details}",
                "check that `quota agent serve` runs there and that --agent names it",
            ) from None
    return answer


def troubles(group: pb.CenterGroupStatus) -> list[str]:
    """What an operator must look at in one group; empty when the group answers and leases the region."""
    found = []
    if group.renewals_failing_ms:
        found.append(f"renewals failing for {_seconds(group.renewals_failing_ms)}")
    if group.promotions and not group.lease_remaining_ms:
        found.append(f"region lease expired: orders for its {group.promotions} promotion(s) are refused")
    if not group.HasField("catalog_staleness_ms"):
        found.append("its catalog never answered")
    return found


def describe_groups(status: pb.RegionStatus) -> str:
    """One line per group in trouble, or one saying that none is."""
    if not status.groups:
        return "the agent names no center groups (it is older than this command)"
    lines = [f"center group {g.group}: {'; '.join(found)}" for g in status.groups if (found := troubles(g))]
    return "\n".join(lines) or f"every center group answers ({', '.join(g.group for g in status.groups)})"


def groups_table(status: pb.RegionStatus) -> Table:
    table = Table(
        "group", "stream", "revision", "last heard", "region lease", "renewals", "promotions", title="center groups"
    )
    for group in status.groups:
        heard = f"{_seconds(group.catalog_staleness_ms)} ago" if group.HasField("catalog_staleness_ms") else "never"
        lease = f"{_seconds(group.lease_remaining_ms)} left" if group.lease_remaining_ms else "none"
        failing = f"failing {_seconds(group.renewals_failing_ms)}" if group.renewals_failing_ms else "answered"
        stream = "up" if group.catalog_stream_alive else "down"
        table.add_row(group.group, stream, str(group.catalog_revision), heard, lease, failing, str(group.promotions))
    return table


def balances_table(status: pb.RegionStatus) -> Table:
    table = Table(
        "promotion", "available", "held", "granted", "returned", "deducted", "refunded", "lease", "frozen",
        title="balances",
    )  # fmt: skip
    for b in status.balances:
        amounts = (b.available, b.held, b.granted, b.returned, b.deducted, b.refunded)
        lease = _seconds(b.lease_remaining_ms) if b.lease_remaining_ms else "expired"
        table.add_row(b.promotion_id, *(f"{amount:,}" for amount in amounts), lease, "yes" if b.frozen else "no")
    return table


def plain(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, with its fields' own names and numbers as numbers (protobuf's JSON mapping
    writes int64 as text); an optional field that is not set is None."""
    document: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            value = [plain(item) if field.message_type else item for item in value]
        elif field.message_type is not None:
            value = plain(value)
        elif field.has_presence and not message.HasField(field.name):
            value = None
        document[field.name] = value
    return document


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.1f} s"


@click.command("status")
@click.option("--agent", "address", required=True, metavar="HOST:PORT", help="The agent to ask.")
@timeout_option
@json_flag
@security_options
def agent_status(
    address: str,
    timeout: float,
    as_json: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    trust_domain: str,
    insecure: bool,
) -> None:
    """Print what an agent says of itself: each center group it follows (is its catalog stream up, its
    revision, when it last heard from the group, the region's lease there, how long renewals have failed),
    the groups in trouble first, then the region's balances.

    \b
    Exit codes:
      0  the agent answered (whatever it says of the groups)
      2  bad usage
      4  the agent did not answer
    """
    transport = open_transport(security(tls_cert, tls_key, tls_ca, trust_domain, insecure), None, center=(address,))
    status = read_status(transport, address, timeout)
    if as_json:
        view.print_json(plain(status))
        return
    click.echo(
        f"agent of region {status.region}, ledger life {status.incarnation or '(none yet)'}: "
        f"{status.cached_promotions} promotions cached, {status.center_calls} calls to the center"
    )
    click.echo(describe_groups(status))
    if status.groups:
        view.print_table(groups_table(status), WIDTH)
    view.print_table(balances_table(status), WIDTH)


bind_environment(agent_status)
