"""Order services may name themselves: spiffe://<domain>/region/<region>/orders/<service> is an identity of
its own (the agent keeps each order for the identity that placed it), beside the region's shared
.../orders; the role table treats both alike."""

from __future__ import annotations

import pytest

from quota_common.identity import Identity, IdentityError, Role, identity_from_uri, regional
from quota_common.roles import AGENT, TABLE, refusal

DEDUCT = f"{AGENT}.RegionAgent/Deduct"


@pytest.mark.parametrize("service", ["checkout", "Pay-2", "a.b_c", "x" * 128])
def test_an_order_service_that_names_itself_is_an_identity_that_prints_as_its_uri(service: str) -> None:
    uri = f"spiffe://quota/region/eu/orders/{service}"

    identity = identity_from_uri(uri, "quota")

    assert identity == Identity("quota", Role.ORDERS, "eu", "orders", service)
    assert identity == regional("quota", Role.ORDERS, "eu", service)
    assert str(identity) == identity.uri == uri
    assert identity != identity_from_uri("spiffe://quota/region/eu/orders", "quota")


def test_the_shared_order_service_identity_names_no_service() -> None:
    shared = identity_from_uri("spiffe://quota/region/eu/orders", "quota")

    assert shared.service == ""
    assert shared == regional("quota", Role.ORDERS, "eu") == Identity("quota", Role.ORDERS, "eu", "orders")


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("spiffe://quota/region/eu/orders/", "malformed path"),
        ("spiffe://quota/region/eu/orders/..", "malformed path"),
        ("spiffe://quota/region/eu/orders/a b", "malformed path"),
        ("spiffe://quota/region/eu/orders/" + "x" * 129, "malformed path"),
        ("spiffe://quota/region/eu/orders/a/b", "names no role"),
        ("spiffe://quota/region/eu/agent/checkout", "names no role"),
        ("spiffe://quota/center/checkout", "names no role"),
    ],
)
def test_only_an_order_service_names_a_service_and_only_one_segment(uri: str, says: str) -> None:
    with pytest.raises(IdentityError) as refused:
        identity_from_uri(uri, "quota")

    assert says in refused.value.message
    assert "spiffe://quota/region/<region>/orders/<service>" in refused.value.message


def test_only_an_order_service_is_made_with_a_service_name() -> None:
    with pytest.raises(ValueError, match="only an order service's identity names a service"):
        regional("quota", Role.AGENT, "eu", "checkout")
    with pytest.raises(ValueError, match="cannot be part of an identity"):
        regional("quota", Role.ORDERS, "eu", "a/b")


def test_the_role_table_treats_a_named_order_service_as_its_regions_order_service() -> None:
    named = regional("quota", Role.ORDERS, "eu", "checkout")

    assert refusal(TABLE, DEDUCT, named, "eu") is None
    assert refusal(TABLE, DEDUCT, named, "us") == (
        "spiffe://quota/region/eu/orders/checkout may not call /region_agent.v1.RegionAgent/Deduct for region us: "
        "an order service calls only its own region's agent"
    )
    assert refusal(TABLE, "/quota_center.v1.PromotionAdmin/GetUsage", named) is not None
