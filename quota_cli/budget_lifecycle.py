"""`quota budget update ID ...` and `quota budget end ID`: a promotion's life after it is created."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click
from google.protobuf.field_mask_pb2 import FieldMask

from quota_admin.client import AdminClient
from quota_center.lifecycle import UPDATABLE
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.wire import promotion_from_pb, promotion_to_pb
from quota_cli.budget import (
    LIMIT,
    current,
    expected_revision_option,
    hinted_refusal,
    instant,
    json_flag,
    report_change,
    request_id_option,
)
from quota_common.clock import iso
from quota_common.model import Promotion


def _shown(name: str, value: Any) -> str:
    if name in ("start_ms", "end_ms"):
        return iso(value)
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _changes(before: Promotion, after: Promotion) -> str:
    moved = [
        f"{wire} {_shown(name, getattr(before, name))} -> {_shown(name, getattr(after, name))}"
        for wire, name in UPDATABLE.items()
        if getattr(before, name) != getattr(after, name)
    ]
    return "; ".join(moved) or "nothing changed"


@click.command()
@click.argument("promotion_id", metavar="ID")
@click.option("--start", metavar="ISO8601", callback=instant, help="A new start (only before sales open).")
@click.option("--end", metavar="ISO8601", callback=instant, help="A new end, in the future (to stop now: end).")
@click.option("--regions", help="The regions that may spend it from now on, comma-separated: eu,us.")
@click.option("--per-user-limit", type=LIMIT, help="Units per user; 0: no limit.")
@click.option("--per-user-orders", type=LIMIT, help="Orders per user; 0: no limit.")
@click.option("--face-value", type=LIMIT, help="What one unit costs you, minor units; 0: not stated.")
@click.option("--min-spend", type=LIMIT, help="The order total a unit needs, minor units; 0: none.")
@click.option("--discount-bps", type=click.IntRange(0, 10_000), help="Percentage offers: basis points (1500 = 15 %).")
@click.option("--max-per-order", type=LIMIT, help="Units per order line; 0: no limit.")
@click.option("--floor-price", type=LIMIT, help="The least a unit may cost the buyer after discount; 0: none.")
@click.option("--floor-bps", type=click.IntRange(0, 10_000), help="The floor as basis points of the unit price.")
@click.option(
    "--block-below-floor/--allow-below-floor",
    default=None,
    help="Refuse order lines below the floor, or let them through with an alert.",
)
@expected_revision_option
@request_id_option
@json_flag
@click.pass_obj
def update(
    center: AdminClient,
    /,
    promotion_id: str,
    start: int | None,
    end: int | None,
    regions: str | None,
    expected_revision: int | None,
    request_id: str,
    as_json: bool,
    **values: Any,
) -> None:
    """Change promotion ID's window, regions, per-user limits, values or price floor: only the options
    given. The guard rules judge it as they judge a create; a held change prints its pending id and waits
    for `quota budget approve`. Regions hear of it within a renewal; a region removed gives back what it holds.
    """
    changes = {name: value for name, value in values.items() if value is not None}
    if start is not None:
        changes["start_ms"] = start
    if end is not None:
        changes["end_ms"] = end
    if regions is not None:
        changes["regions"] = tuple(region.strip() for region in regions.split(",") if region.strip())
    if not changes:
        raise click.UsageError("name at least one thing to change (--end, --regions, --per-user-limit, ...)")
    before = current(center, promotion_id)
    paths = [wire for wire, name in UPDATABLE.items() if name in changes]
    request = pb.UpdatePromotionRequest(
        promotion=promotion_to_pb(replace(before, **changes)),
        update_mask=FieldMask(paths=paths),
        expected_revision=expected_revision or before.revision,
        request_id=request_id,
    )
    with hinted_refusal(promotion_id):
        after = promotion_from_pb(center.call(lambda admin: admin.UpdatePromotion, request, idempotent=False))
    report_change(after, as_json, _changes(before, after))


@click.command()
@click.argument("promotion_id", metavar="ID")
@request_id_option
@json_flag
@click.pass_obj
def end(center: AdminClient, promotion_id: str, request_id: str, as_json: bool) -> None:
    """End promotion ID now (one not started yet ends at its start): regions stop selling it as soon as they
    hear and give back what they hold; refunds of its orders are still honoured. Ending it again changes nothing."""
    request = pb.EndPromotionRequest(promotion_id=promotion_id, request_id=request_id)
    ended = promotion_from_pb(center.call(lambda admin: admin.EndPromotion, request))
    report_change(ended, as_json, f"ended at {iso(ended.end_ms)}: regions give back what they hold")
