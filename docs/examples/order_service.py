"""Calling quota from an order service: the complete example of the README, run by tests/e2e/test_client.py.

    python docs/examples/order_service.py PROMOTION AGENT [AGENT ...]

AGENT: host:port of each of the region's agents (here plaintext on loopback; in production give
`tls=Tls(cert, key, ca)` with the order service's certificate, `quota certs dev` writes one).
"""

from __future__ import annotations

import asyncio
import sys

from quota_client import (
    AsyncQuotaClient,
    LeaseExpired,
    Line,
    OrderStatus,
    QuotaClient,
    QuotaClientError,
    Refused,
    RetryPolicy,
    Unavailable,
)

REGION = "eu"


def place_order(quota: QuotaClient, order_id: str, promotion_id: str, user_id: str) -> str:
    """A blocking order service applies one coupon to an order: the order's own id is the key, so that
    whatever the client retries (and whatever this service retries) spends once."""
    line = Line(promotion_id, 1, user_id, unit_price=2_000, discount=500)
    try:
        deducted = quota.deduct(order_id, [line])
    except LeaseExpired as error:
        return f"{order_id}: the region lost touch with the center; offer the coupon again in {error.retry_after} s"
    except Refused as error:  # Exhausted, Frozen, UserLimit, ...: tell the customer, never retry
        return f"{order_id}: coupon refused, {type(error).__name__}: {error.message}"
    except Unavailable as error:
        if error.may_have_applied:
            return f"{order_id}: outcome unknown, {what_became_of(quota, order_id)}"
        return f"{order_id}: quota is unreachable and nothing was spent; sell without the coupon or try later"
    return f"{order_id}: coupon applied" + (" (a retry: applied once, before)" if deducted.replayed else "")


def what_became_of(quota: QuotaClient, order_id: str) -> str:
    """After Unavailable(may_have_applied=True): ask, never send the order again under a new key."""
    try:
        state = quota.get_order(order_id)
    except QuotaClientError:
        return "keep the order id and send the same call again later (same key: it applies at most once)"
    if state.status is not OrderStatus.UNKNOWN:
        return f"it was {state.status.value}"
    if state.ledger_life_lost:  # the region lost its ledger since: the order may have applied in that one
        return "the region's ledger was lost since; reconcile the order, do not send it again"
    return "not applied"


async def checkout(agents: list[str], promotion_id: str) -> None:
    """An asyncio order service holds the coupon at checkout and spends it when the customer pays."""
    async with AsyncQuotaClient(agents, REGION, policy=RetryPolicy(deadline_s=3.0)) as quota:
        reserved = await quota.reserve("cart-7", [Line(promotion_id, 1, "user-7")], ttl_s=15 * 60)
        print(f"cart-7: coupon held until {reserved.expires_at_ms} (Unix ms)")
        confirmed = await quota.confirm("cart-7")  # paid
        print(f"cart-7: paid, {confirmed.lines[0].amount} coupon spent")
        refunded = await quota.refund("cart-7")  # the goods came back
        print(f"cart-7: returned, {refunded.lines[0].amount} coupon back to the budget")


def main(promotion_id: str, agents: list[str]) -> None:
    with QuotaClient(agents, REGION) as quota:  # one client per process: it keeps a channel per agent
        print(place_order(quota, "order-1001", promotion_id, "user-1"))
        print(place_order(quota, "order-1001", promotion_id, "user-1"))  # the same order, sent again
        print(place_order(quota, "order-1002", promotion_id, "user-1"))  # one coupon per user
    asyncio.run(checkout(agents, promotion_id))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
