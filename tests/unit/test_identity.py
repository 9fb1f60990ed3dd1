"""Identities from SPIFFE IDs: the six shapes accepted, everything else refused with a message that says
what would do; and the peer's identity taken from a gRPC auth context as grpcio 1.85 fills it in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quota_common.identity import (
    Identity,
    IdentityError,
    Role,
    center,
    identity_from_certificate,
    identity_from_uri,
    identity_from_uris,
    peer_identity,
    person,
    regional,
    require_trust_domain,
)
from quota_testing.certs import issue, new_ca

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("spiffe://quota/center", Identity("quota", Role.CENTER, None, "center")),
        ("spiffe://quota/region/eu/agent", Identity("quota", Role.AGENT, "eu", "agent")),
        ("spiffe://quota/region/us-east_1.b/orders", Identity("quota", Role.ORDERS, "us-east_1.b", "orders")),
        ("spiffe://quota/owner/alice", Identity("quota", Role.OWNER, None, "alice")),
        ("spiffe://quota/approver/bob", Identity("quota", Role.APPROVER, None, "bob")),
        ("spiffe://quota/operator/carol", Identity("quota", Role.OPERATOR, None, "carol")),
    ],
)
def test_each_shape_is_an_identity_that_prints_as_its_uri(uri: str, expected: Identity) -> None:
    identity = identity_from_uri(uri, "quota")

    assert identity == expected
    assert str(identity) == identity.uri == uri


def test_the_constructors_make_the_identities_the_parser_reads() -> None:
    made = [
        center("shop.example"),
        regional("shop.example", Role.AGENT, "eu"),
        regional("shop.example", Role.ORDERS, "eu"),
        person("shop.example", Role.OWNER, "alice"),
        person("shop.example", Role.APPROVER, "bob"),
        person("shop.example", Role.OPERATOR, "carol"),
    ]

    assert [identity_from_uri(identity.uri, "shop.example") for identity in made] == made


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("spiffe://other/center", "belongs to trust domain 'other', not 'quota'"),
        ("spiffe://QUOTA/center", "belongs to trust domain 'QUOTA'"),
        ("spiffe://quota:443/center", "belongs to trust domain 'quota:443'"),
        ("spiffe://user@quota/center", "belongs to trust domain 'user@quota'"),
        ("https://quota/center", "is not a SPIFFE ID"),
        ("SPIFFE://quota/center", "is not a SPIFFE ID"),
        ("quota/center", "is not a SPIFFE ID"),
        ("", "is not a SPIFFE ID"),
        ("spiffe://quota", "malformed path"),
        ("spiffe://quota/", "malformed path"),
        ("spiffe://quota/center/", "malformed path"),
        ("spiffe://quota//center", "malformed path"),
        ("spiffe://quota/region/../agent", "malformed path"),
        ("spiffe://quota/region/./agent", "malformed path"),
        ("spiffe://quota/owner/al%20ice", "malformed path"),
        ("spiffe://quota/owner/alice?admin=1", "malformed path"),
        ("spiffe://quota/owner/alice#x", "malformed path"),
        ("spiffe://quota/owner/" + "a" * 129, "malformed path"),
        ("spiffe://quota/admin/alice", "names no role"),
        ("spiffe://quota/owner", "names no role"),
        ("spiffe://quota/owner/alice/extra", "names no role"),
        ("spiffe://quota/center/eu", "names no role"),
        ("spiffe://quota/region/eu", "names no role"),
        ("spiffe://quota/region/eu/owner", "names no role"),
        ("spiffe://quota/region/eu/agent/1", "names no role"),
        ("spiffe://quota/agent/eu", "names no role"),
    ],
)
def test_anything_else_is_refused_naming_what_was_given_and_what_would_do(uri: str, says: str) -> None:
    with pytest.raises(IdentityError) as refused:
        identity_from_uri(uri, "quota")

    assert says in refused.value.message
    assert repr(uri) in refused.value.message
    assert "spiffe://quota/" in refused.value.message  # the way out: what an accepted ID looks like


def test_a_certificate_names_exactly_one_identity() -> None:
    with pytest.raises(IdentityError, match="has no URI SAN"):
        identity_from_uris([], "quota")
    with pytest.raises(IdentityError, match="has 2 URI SANs"):
        identity_from_uris(["spiffe://quota/owner/alice", "spiffe://quota/operator/alice"], "quota")

    assert identity_from_uris(["spiffe://quota/owner/alice"], "quota") == person("quota", Role.OWNER, "alice")


@pytest.mark.parametrize("domain", ["", "Quota", "quo ta", "quota/x", "q" * 256])
def test_a_trust_domain_is_what_spiffe_allows(domain: str) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        require_trust_domain(domain)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "é", "x" * 129])
def test_names_that_cannot_be_a_path_segment_make_no_identity(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be part of an identity"):
        regional("quota", Role.AGENT, name)
    with pytest.raises(ValueError, match="cannot be part of an identity"):
        person("quota", Role.OWNER, name)


def test_roles_keep_to_their_shapes() -> None:
    with pytest.raises(ValueError, match="not a regional role"):
        regional("quota", Role.OWNER, "eu")
    with pytest.raises(ValueError, match="not a person's role"):
        person("quota", Role.AGENT, "alice")


def test_the_peer_is_read_from_peer_uri_as_grpcio_sets_it() -> None:
    auth = {
        "transport_security_type": [b"ssl"],
        "x509_subject_alternative_name": [b"spiffe://quota/region/eu/agent", b"127.0.0.1"],
        "peer_uri": [b"spiffe://quota/region/eu/agent"],
        "peer_ip": [b"127.0.0.1"],
    }

    assert peer_identity(auth, "quota") == regional("quota", Role.AGENT, "eu")


def test_a_dns_or_ip_san_is_never_taken_for_an_identity() -> None:
    """x509_subject_alternative_name mixes DNS names, IPs and URIs as bare strings; only peer_uri is read."""
    auth = {"x509_subject_alternative_name": [b"spiffe://quota/owner/alice"], "peer_ip": [b"127.0.0.1"]}

    with pytest.raises(IdentityError, match="without a verified client certificate"):
        peer_identity(auth, "quota")


def test_without_peer_uri_the_certificate_itself_is_read() -> None:
    ca = new_ca(NOW, 1)
    alice = issue(ca, NOW, 1, uris=["spiffe://quota/owner/alice"])
    nameless = issue(ca, NOW, 1, hosts=["localhost"])

    assert peer_identity({"x509_pem_cert": [alice.cert_pem]}, "quota") == person("quota", Role.OWNER, "alice")
    assert identity_from_certificate(alice.cert_pem, "quota") == person("quota", Role.OWNER, "alice")
    with pytest.raises(IdentityError, match="has no URI SAN"):
        peer_identity({"x509_pem_cert": [nameless.cert_pem]}, "quota")
    with pytest.raises(IdentityError, match="cannot be read"):
        identity_from_certificate(b"not a certificate", "quota")


def test_a_plaintext_call_has_no_identity() -> None:
    with pytest.raises(IdentityError, match="connect with mutual TLS"):
        peer_identity({}, "quota")
    with pytest.raises(IdentityError, match="connect with mutual TLS"):
        peer_identity({"transport_security_type": [b"insecure"]}, "quota")


def test_what_a_peer_presented_is_quoted_and_cut_short_in_messages() -> None:
    with pytest.raises(IdentityError) as refused:
        identity_from_uri("spiffe://quota/owner/\n" + "x" * 5000, "quota")

    assert "\\n" in refused.value.message
    assert "\n" not in refused.value.message
    assert len(refused.value.message) < 1000
