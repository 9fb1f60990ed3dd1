"""The client refuses what it cannot send as a QuotaClientError naming the field, before anything is sent:
Python lets an order service pass a float, a bool or a Decimal where the API carries whole numbers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from quota_client import InvalidRequest, Line, RefundLine, calls

MISTYPED: list[Any] = [1.5, True, Decimal(1), "3", 2**64]


@pytest.mark.parametrize("amount", MISTYPED)
def test_a_line_protobuf_cannot_carry_is_an_invalid_request(amount: Any) -> None:
    with pytest.raises(InvalidRequest, match="whole numbers of units"):
        calls.deduct("order-1", "eu", [Line("coupon", amount, "user-7")])
    with pytest.raises(InvalidRequest, match="whole numbers of units"):
        calls.refund("order-1", None, [RefundLine("coupon", amount)])


def test_an_order_key_that_is_not_a_string_is_an_invalid_request() -> None:
    key: Any = 1001
    with pytest.raises(InvalidRequest, match="order_key must be a string"):
        calls.get_order(key)
