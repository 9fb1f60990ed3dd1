"""Which links a process may open, decided at start: mutual TLS with the certificate its role needs, or
plaintext that never leaves the machine; anything else is a ConfigError naming what to change."""

from __future__ import annotations

import logging

import pytest

from quota_common.errors import ConfigError
from quota_common.identity import Identity, Role, center, regional
from quota_common.transport import Security, Transport, is_loopback, open_transport
from quota_testing.tls import DevTls, write_dev_tls

AGENT_EU = regional("quota", Role.AGENT, "eu")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevTls:
    return write_dev_tls(tmp_path_factory.mktemp("certs"), ["eu", "us"])


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_is_what_cannot_leave_the_machine(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "[::]", "10.0.0.5", "192.168.1.1", "example.com", "localhost."])
def test_every_interface_another_address_or_a_name_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize("insecure", [True, False])
def test_plaintext_is_allowed_on_loopback(insecure: bool) -> None:
    transport = open_transport(Security(insecure=insecure), AGENT_EU, listen="127.0.0.1:0", center=["[::1]:50051"])

    assert transport.server_credentials() is None
    assert transport.material() is None
    assert bool(transport.warning) is not insecure, "a warning unless --insecure said plaintext is meant"


@pytest.mark.parametrize(
    ("security", "listen", "addresses", "named"),
    [
        (Security(insecure=True), "0.0.0.0:50051", (), "--insecure allows plaintext only on loopback"),
        (Security(), "10.0.0.5:50051", (), "without TLS files, plaintext is allowed only on loopback"),
        (Security(insecure=True), "127.0.0.1:0", ("127.0.0.1:1", "center:50051"), "not --center center:50051"),
        (Security(), "", ("10.0.0.5:50051",), "not --center 10.0.0.5:50051"),
    ],
)
def test_plaintext_beyond_loopback_is_refused(
    security: Security, listen: str, addresses: tuple[str, ...], named: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        open_transport(security, AGENT_EU, listen=listen, center=addresses)

    assert named in refused.value.message
    assert "give --tls-cert, --tls-key and --tls-ca" in refused.value.message


def test_with_tls_files_any_address_is_allowed_and_served_with_tls(dev: DevTls) -> None:
    transport = open_transport(Security(dev.files("agent-eu")), AGENT_EU, listen="0.0.0.0:0", center=["10.0.0.5:1"])

    assert transport.server_credentials() is not None
    material = transport.material()
    assert material is not None
    assert material.uris == ("spiffe://quota/region/eu/agent",)
    assert transport.may_call("10.0.0.5:50051")
    assert not transport.warning


def test_tls_files_and_insecure_together_are_refused(dev: DevTls) -> None:
    with pytest.raises(ConfigError, match="--insecure contradicts --tls-cert, --tls-key and --tls-ca"):
        open_transport(Security(dev.files("center"), insecure=True), center("quota"), listen="127.0.0.1:0")


@pytest.mark.parametrize(
    ("name", "needed", "named"),
    [
        ("agent-us", AGENT_EU, "names spiffe://quota/region/us/agent, but an agent of region eu needs"),
        ("agent-eu", center("quota"), "names spiffe://quota/region/eu/agent, but the center needs"),
        ("center", AGENT_EU, "names spiffe://quota/center, but an agent of region eu needs"),
        ("owner-alice", center("quota"), "names spiffe://quota/owner/alice, but the center needs"),
    ],
)
def test_a_certificate_naming_another_identity_than_the_role_is_refused(
    dev: DevTls, name: str, needed: Identity, named: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        open_transport(Security(dev.files(name)), needed)

    assert named in refused.value.message
    assert str(dev.files(name).cert) in refused.value.message


def test_a_certificate_of_another_trust_domain_is_refused_even_for_any_identity(dev: DevTls) -> None:
    with pytest.raises(ConfigError) as refused:
        open_transport(Security(dev.files("owner-alice"), trust_domain="shop.example"), None)

    assert "belongs to trust domain 'quota', not 'shop.example'" in refused.value.message


def test_any_identity_of_the_trust_domain_may_call_when_none_is_required(dev: DevTls) -> None:
    transport = open_transport(Security(dev.files("owner-alice")), None, center=["10.0.0.5:50051"])

    assert transport.material() is not None


def test_the_plaintext_warning_is_logged_when_announced(caplog: pytest.LogCaptureFixture) -> None:
    transport = open_transport(Security(), center("quota"), listen="127.0.0.1:50051")

    with caplog.at_level(logging.WARNING):
        transport.announce()
        Transport().announce()

    [record] = caplog.records
    assert record.getMessage().startswith("serving plaintext on 127.0.0.1:50051: any process on this machine")


def test_a_plaintext_transport_follows_only_loopback_leaders() -> None:
    assert Transport().may_call("127.0.0.1:50051")
    assert not Transport().may_call("10.0.0.5:50051")
