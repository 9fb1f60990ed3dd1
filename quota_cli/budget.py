"""`quota budget ...`: what budget owners run against the center, whichever of its replicas leads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import grpc

from quota_admin.client import AdminClient, CenterRefused, ChangeHeld
from quota_admin.usage import usage_from_pb
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.wire import promotion_from_pb, promotion_to_pb
from quota_cli import budget_view as view
from quota_cli.security import security, security_options
from quota_common.clock import SystemClock, iso
from quota_common.config import FiniteFloatRange, bind_environment
from quota_common.model import Promotion, promotion_document
from quota_common.shards import center_groups
from quota_common.transport import open_transport
from quota_common.validation import MAX_AMOUNT

DEFAULT_WINDOW = timedelta(days=30)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instant(context: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """An ISO 8601 time as epoch milliseconds; without an offset, UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as 2025-11-11T00:00:00+08:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


AMOUNT = click.IntRange(min=1, max=MAX_AMOUNT)
LIMIT = click.IntRange(min=0, max=MAX_AMOUNT)
KINDS = {name: kind for kind, name in view.KIND_NAMES.items()}
PACINGS = {name: pacing for pacing, name in view.PACING_NAMES.items()}
json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
expected_revision_option = click.option(
    "--expected-revision",
    type=click.IntRange(min=1),
    show_default="read it now",
    help="The revision you read (quota budget show); refused if the promotion changed since.",
)
request_id_option = click.option(
    "--request-id",
    default="",
    help="Your id for this change (a ticket, a change number), kept in the audit trail; empty: the center makes one.",
)


class _CenterAddresses(click.ParamType[tuple[str, ...]]):
    """The center's replicas, host:port[,host:port...]: at least one; NAME=host:port names a center group."""

    name = "host:port[,host:port...]"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value  # converted already: config_file reads a file's value through this type, then click again
        if not isinstance(value, str):
            self.fail(f"{value!r} is not host:port[,host:port...]", param, ctx)
        addresses = tuple(address.strip() for address in value.split(",") if address.strip())
        if not addresses:
            self.fail("name at least one host:port", param, ctx)
        try:
            center_groups(list(addresses))  # NAME=host:port starts a center group: a bad name is a usage error
        except ValueError as error:
            self.fail(str(error), param, ctx)
        return addresses


CENTER_ADDRESSES = _CenterAddresses()


def report_change(promotion: Promotion, as_json: bool, summary: str) -> None:
    """What a change command prints: the promotion as it now stands."""
    if as_json:
        view.print_json(promotion_document(promotion))
    else:
        click.echo(f"{promotion.id}: {summary} (revision {promotion.revision})")


center_option = click.option(
    "--center",
    "addresses",
    default="127.0.0.1:50051",
    show_default=True,
    type=CENTER_ADDRESSES,
    help="The center's replicas, host:port[,host:port...]; whichever leads answers.",
)
timeout_option = click.option(
    "--timeout", type=FiniteFloatRange(min=0.1), default=5.0, show_default=True, help="Seconds per call."
)


@click.group()
@center_option
@timeout_option
@security_options
@click.pass_context
def budget(
    context: click.Context,
    addresses: tuple[str, ...],
    timeout: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    trust_domain: str,
    insecure: bool,
) -> None:
    """Promotions for their budget owners: create them, change their budget, freeze them, and watch
    each region spend them.

    Budgets and limits are whole numbers: coupons for count promotions, minor units of the currency
    (cents: 1999 is 19.99 EUR) for amount promotions.

    A center with mutual TLS needs --tls-cert, --tls-key and --tls-ca: your own certificate (an
    owner's, say) and the deployment's CA. Without them, calls are plaintext, to loopback only.

    \b
    Exit codes:
      0  done
      2  bad usage: a missing or malformed option
      3  the center refused, and its message says why: a bad field, an unknown promotion, an id
         taken, a stale revision, a budget below what regions have taken
      4  no center answered: nothing listens at the addresses, or no leader is elected yet
    """
    secured = security(tls_cert, tls_key, tls_ca, trust_domain, insecure)
    context.obj = AdminClient(list(addresses), timeout, open_transport(secured, None, center=addresses))


@budget.command()
@click.argument("promotion_id", metavar="ID")
@click.option("--budget", "amount", type=AMOUNT, required=True, help="Coupons, or minor units (1999 is 19.99 EUR).")
@click.option("--regions", required=True, help="The regions that may spend it, comma-separated: eu,us.")
@click.option("--kind", type=click.Choice(list(KINDS)), default="count", show_default=True, help="What it counts.")
@click.option("--currency", default="", help="ISO 4217 code such as EUR; amount promotions only.")
@click.option(
    "--start",
    metavar="ISO8601",
    callback=instant,
    show_default="now",
    help="When sales open; ISO 8601, UTC without an offset.",
)
@click.option(
    "--end",
    metavar="ISO8601",
    callback=instant,
    show_default="30 days after the start",
    help="When sales close (exclusive).",
)
@click.option("--per-user-limit", type=LIMIT, default=0, show_default=True, help="Units per user; 0: no limit.")
@click.option("--per-user-orders", type=LIMIT, default=0, show_default=True, help="Orders per user; 0: no limit.")
@click.option(
    "--pacing",
    type=click.Choice(list(PACINGS)),
    default="none",
    show_default=True,
    help="Release the budget all at once, evenly over the window, or --hourly-cap per hour started.",
)
@click.option("--hourly-cap", type=LIMIT, default=0, help="With --pacing hourly-cap: what each hour releases.")
@click.option("--face-value", type=LIMIT, default=0, help="What one unit costs you, minor units; 0: not stated.")
@click.option("--min-spend", type=LIMIT, default=0, help="The order total a unit needs, minor units; 0: none.")
@click.option(
    "--discount-bps", type=click.IntRange(0, 10_000), default=0, help="Percentage offers: basis points (1500 = 15 %)."
)
@click.option("--max-per-order", type=LIMIT, default=0, help="Units per order line; 0: no limit.")
@click.option(
    "--floor-price", type=LIMIT, default=0, help="The least a buyer pays for a unit after its discount; 0: none."
)
@click.option(
    "--floor-bps",
    type=click.IntRange(0, 10_000),
    default=0,
    help="The same floor as a share of the unit price, basis points (5000 = half price); 0: none.",
)
@click.option(
    "--block-below-floor", is_flag=True, help="Refuse order lines below the floor; without it they are counted."
)
@request_id_option
@json_flag
@click.pass_obj
def create(
    center: AdminClient,
    promotion_id: str,
    amount: int,
    regions: str,
    kind: str,
    currency: str,
    start: int | None,
    end: int | None,
    per_user_limit: int,
    per_user_orders: int,
    pacing: str,
    hourly_cap: int,
    face_value: int,
    min_spend: int,
    discount_bps: int,
    max_per_order: int,
    floor_price: int,
    floor_bps: int,
    block_below_floor: bool,
    request_id: str,
    as_json: bool,
) -> None:
    """Create promotion ID, owned by you (the identity your --tls-cert names); the center checks every
    field and says which one is wrong."""
    start_ms = SystemClock().wall_ms() if start is None else start
    promotion = Promotion(
        id=promotion_id,
        kind=KINDS[kind],
        currency=currency.upper(),
        budget=amount,
        start_ms=start_ms,
        end_ms=start_ms + DEFAULT_WINDOW // timedelta(milliseconds=1) if end is None else end,
        regions=tuple(region.strip() for region in regions.split(",") if region.strip()),
        per_user_limit=per_user_limit,
        per_user_orders=per_user_orders,
        pacing=PACINGS[pacing],
        hourly_cap=hourly_cap,
        face_value=face_value,
        min_spend=min_spend,
        discount_bps=discount_bps,
        max_per_order=max_per_order,
        floor_price=floor_price,
        floor_bps=floor_bps,
        block_below_floor=block_below_floor,
    )
    request = pb.CreatePromotionRequest(promotion=promotion_to_pb(promotion), request_id=request_id)
    created = promotion_from_pb(center.call(lambda admin: admin.CreatePromotion, request, idempotent=False))
    report_change(
        created,
        as_json,
        f"created: {view.kind_label(created)}, budget {created.budget:,}, regions {', '.join(created.regions)}, "
        f"from {iso(created.start_ms)} until {iso(created.end_ms)}",
    )


@budget.command("set-budget")
@click.argument("promotion_id", metavar="ID")
@click.argument("amount", metavar="N", type=AMOUNT)
@expected_revision_option
@request_id_option
@json_flag
@click.pass_obj
def set_budget(
    center: AdminClient,
    promotion_id: str,
    amount: int,
    expected_revision: int | None,
    request_id: str,
    as_json: bool,
) -> None:
    """Set the budget of promotion ID to N; never below what regions have already taken."""
    if expected_revision is None:
        expected_revision = current(center, promotion_id).revision
    request = pb.SetBudgetRequest(
        promotion_id=promotion_id, budget=amount, expected_revision=expected_revision, request_id=request_id
    )
    with hinted_refusal(promotion_id):
        changed = promotion_from_pb(center.call(lambda admin: admin.SetBudget, request, idempotent=False))
    report_change(changed, as_json, f"budget is now {changed.budget:,}")


def current(center: AdminClient, promotion_id: str) -> Promotion:
    """Promotion `promotion_id` as it stands, with the revision a change is based on."""
    request = pb.GetPromotionRequest(promotion_id=promotion_id)
    return promotion_from_pb(center.call(lambda admin: admin.GetPromotion, request))


@contextlib.contextmanager
def hinted_refusal(promotion_id: str) -> Iterator[None]:
    """A change refused on a precondition (a stale revision, a rule, a held change) says what to do next."""
    try:
        yield
    except CenterRefused as refusal:
        if refusal.code == grpc.StatusCode.FAILED_PRECONDITION and not isinstance(refusal, ChangeHeld):
            refusal.hint = (
                f"nothing changed: re-read the promotion (quota budget usage {promotion_id} shows its revision and "
                "what regions have taken) and retry"
            )
        raise


def _freeze_command(name: str, frozen: bool, description: str, summary: str) -> None:
    @budget.command(name, help=description)
    @click.argument("promotion_id", metavar="ID")
    @request_id_option
    @json_flag
    @click.pass_obj
    def command(center: AdminClient, promotion_id: str, request_id: str, as_json: bool) -> None:
        request = pb.SetFrozenRequest(promotion_id=promotion_id, frozen=frozen, request_id=request_id)
        report_change(promotion_from_pb(center.call(lambda admin: admin.SetFrozen, request)), as_json, summary)


_freeze_command(
    "freeze",
    True,
    "Stop every sale of promotion ID in every region (the kill switch).",
    "frozen: regions refuse it as soon as they hear (within a renewal at most) and give back what they hold",
)
_freeze_command("unfreeze", False, "Let promotion ID sell again.", "unfrozen: regions take quota and sell it again")


def _every_promotion(center: AdminClient, archived: bool) -> list[Promotion]:
    def request(token: str) -> pb.ListPromotionsRequest:
        return pb.ListPromotionsRequest(page_token=token, include_archived=archived)

    pages = center.every_group_page(lambda admin: admin.ListPromotions, request)
    return sorted((promotion_from_pb(p) for page in pages for p in page.promotions), key=lambda p: p.id)


@budget.command("list")
@click.option("--archived", is_flag=True, help="Also list archived promotions (settled and put away).")
@json_flag
@click.pass_obj
def list_promotions(center: AdminClient, archived: bool, as_json: bool) -> None:
    """Every promotion: kind, budget, regions, window, pacing, frozen, revision; archived ones only with --archived."""
    promotions = _every_promotion(center, archived)
    if as_json:
        view.print_json({"promotions": [promotion_document(promotion) for promotion in promotions]})
    elif promotions:
        view.print_table(view.promotions_table(promotions))
    else:
        click.echo("no promotions yet; quota budget create makes one")


@budget.command()
@click.argument("promotion_id", metavar="ID")
@json_flag
@click.pass_obj
def show(center: AdminClient, promotion_id: str, as_json: bool) -> None:
    """Promotion ID as configured, with the revision set-budget needs."""
    promotion = promotion_from_pb(
        center.call(lambda admin: admin.GetPromotion, pb.GetPromotionRequest(promotion_id=promotion_id))
    )
    if as_json:
        view.print_json(promotion_document(promotion))
    else:
        view.print_table(view.promotion_table(promotion))


@budget.command()
@click.argument("promotion_id", metavar="ID")
@json_flag
@click.pass_obj
def usage(center: AdminClient, promotion_id: str, as_json: bool) -> None:
    """How each region spends promotion ID: granted, spent, returned, held, written off, lease, burn
    rate; spent and lease as the region last reported (every few seconds)."""
    report = usage_from_pb(center.call(lambda admin: admin.GetUsage, pb.GetUsageRequest(promotion_id=promotion_id)))
    if as_json:
        view.print_json(view.usage_json(report))
    else:
        view.print_table(view.usage_table(report))


bind_environment(budget)
