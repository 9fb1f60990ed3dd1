"""What `quota budget` prints: the center's answers as plain data (for --json) and as Rich tables."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from quota_admin.usage import UsageReport
from quota_common.clock import iso
from quota_common.model import Kind, Promotion, promotion_document
from quota_common.policy import Pacing

KIND_NAMES = {Kind.COUNT: "count", Kind.AMOUNT: "amount"}
PACING_NAMES = {Pacing.NONE: "none", Pacing.LINEAR: "linear", Pacing.HOURLY_CAP: "hourly-cap"}
BAR_WIDTH = 20
MINOR_UNITS = "amounts are in minor units of their currency: 1999 EUR is 19.99 EUR"


def usage_json(report: UsageReport) -> dict[str, Any]:
    return {
        "promotion": promotion_document(report.promotion),
        "budget": report.promotion.budget,
        "unallocated": report.unallocated,
        "regions": [asdict(region) for region in report.regions],
    }


def print_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2))


def print_table(table: Table, min_width: int = 0) -> None:
    """`min_width`: columns to lay the table out in when the terminal is narrower, or output goes to a pipe
    (80 columns), so that a wide table's cells are not cut."""
    # Ids and regions are the owners' own strings: a bracket in one is text, not Rich markup.
    console = Console(markup=False)
    console.width = max(min_width, console.width)
    console.print(table)


def bar(part: int, whole: int, width: int = BAR_WIDTH) -> str:
    """`part` of `whole` as a bar of `width` cells and a percentage; text only, so it reads in a pipe too."""
    filled = part * width // whole
    return "█" * filled + "░" * (width - filled) + f" {part / whole:6.1%}"


def kind_label(promotion: Promotion) -> str:
    name = KIND_NAMES[promotion.kind]
    return f"{name} ({promotion.currency})" if promotion.currency else name


def pacing_label(promotion: Promotion) -> str:
    name = PACING_NAMES[promotion.pacing]
    return f"{name} {promotion.hourly_cap:,}/h" if promotion.pacing is Pacing.HOURLY_CAP else name


def window_label(promotion: Promotion) -> str:
    return f"{iso(promotion.start_ms)} →\n{iso(promotion.end_ms)}"


def frozen_label(promotion: Promotion) -> str:
    return "yes" if promotion.frozen else "no"


def budget_label(promotion: Promotion) -> str:
    if promotion.currency:
        return f"{promotion.budget:,} minor units of {promotion.currency}"
    return f"{promotion.budget:,}"


def promotions_table(promotions: list[Promotion]) -> Table:
    has_amounts = any(promotion.kind is Kind.AMOUNT for promotion in promotions)
    has_archived = any(promotion.archived for promotion in promotions)
    table = Table(title="promotions", caption=MINOR_UNITS if has_amounts else None)
    headers = ("id", "kind", "budget", "regions", "window", "pacing", "frozen", "revision")
    for header in (*headers, "archived") if has_archived else headers:
        table.add_column(header, justify="right" if header in ("budget", "revision") else "left")
    for promotion in promotions:
        cells = [
            promotion.id,
            kind_label(promotion),
            f"{promotion.budget:,}",
            ", ".join(promotion.regions),
            window_label(promotion),
            pacing_label(promotion),
            frozen_label(promotion),
            str(promotion.revision),
        ]
        table.add_row(*cells, *(["yes" if promotion.archived else "no"] if has_archived else []))
    return table


def offer_label(promotion: Promotion) -> str:
    """What one unit is worth and needs, as the owner stated it (minor units)."""
    parts = [
        f"face value {promotion.face_value:,}" if promotion.face_value else "",
        f"{_percent(promotion.discount_bps)} off" if promotion.discount_bps else "",
        f"from an order of {promotion.min_spend:,}" if promotion.min_spend else "no threshold",
        f"at most {promotion.max_per_order:,} per order" if promotion.max_per_order else "",
        floor_label(promotion),
    ]
    return ", ".join(part for part in parts if part)


def floor_label(promotion: Promotion) -> str:
    """The least a buyer pays for one unit, and what happens to a line below it; "" with no floor."""
    floors = [
        f"{promotion.floor_price:,}" if promotion.floor_price else "",
        f"{_percent(promotion.floor_bps)} of its price" if promotion.floor_bps else "",
    ]
    if not any(floors):
        return ""
    below = "refused" if promotion.block_below_floor else "let through and counted"
    return f"a unit sells for at least {' and '.join(floor for floor in floors if floor)} ({below} below)"


def _percent(bps: int) -> str:
    return f"{bps // 100}.{bps % 100:02d} %"


def promotion_table(promotion: Promotion) -> Table:
    table = Table(title=f"promotion {promotion.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    limits = [
        f"{promotion.per_user_limit:,} units" if promotion.per_user_limit else "",
        f"{promotion.per_user_orders:,} orders" if promotion.per_user_orders else "",
    ]
    rows = {
        "kind": kind_label(promotion),
        "budget": budget_label(promotion),
        "regions": ", ".join(promotion.regions),
        "window": window_label(promotion),
        "per user": ", ".join(limit for limit in limits if limit) or "no limit",
        "pacing": pacing_label(promotion),
        "offer": offer_label(promotion),
        "frozen": frozen_label(promotion),
        "revision": str(promotion.revision),
        "archived": "yes: settled and put away, regions dropped it" if promotion.archived else "no",
        "owner": promotion.owner or "none recorded (created without TLS): any owner may change it",
    }
    for field, value in rows.items():
        table.add_row(field, value)
    return table


def usage_table(report: UsageReport) -> Table:
    promotion = report.promotion
    spent = report.spent
    table = Table(
        title=f"usage of {promotion.id} ({kind_label(promotion)})",
        caption=(
            f"budget {budget_label(promotion)} · unallocated {report.unallocated:,} · spent {spent:,} · "
            f"{'FROZEN' if promotion.frozen else 'not frozen'} · revision {promotion.revision}"
        ),
        show_footer=True,
    )
    totals = {
        "granted": sum(region.granted for region in report.regions),
        "spent": spent,
        "returned": sum(region.returned for region in report.regions),
        "held": sum(region.held for region in report.regions),
        "written off": sum(region.written_off for region in report.regions),
    }
    table.add_column("region", footer="total")
    for header, total in totals.items():
        table.add_column(header, footer=f"{total:,}", justify="right")
    table.add_column("lease")
    table.add_column("burn/min", footer=f"{report.burn_per_minute:,}", justify="right")
    table.add_column("spent of budget", footer=bar(spent, promotion.budget))
    for region in report.regions:
        table.add_row(
            region.region,
            *(
                f"{amount:,}"
                for amount in (region.granted, region.spent, region.returned, region.held, region.written_off)
            ),
            region.lease_state,
            f"{region.burn_per_minute:,}",
            bar(region.spent, promotion.budget),
        )
    return table
