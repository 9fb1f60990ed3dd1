"""`quota certs dev`: a CA and one certificate per identity, each loadable as TLS files and naming its
identity; keys readable by the owner only; an existing CA kept unless --force."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner, Result
from cryptography import x509

from quota_cli.main import main
from quota_common.identity import Identity, Role, identity_from_uris
from quota_common.tls import TlsFiles

NOW_MS = int(datetime.now(UTC).timestamp() * 1000)


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, ["certs", "dev", *args])


def _identity(directory: Path, name: str, trust_domain: str = "quota") -> Identity:
    files = TlsFiles(directory / f"{name}.pem", directory / f"{name}-key.pem", directory / "ca.pem")
    return identity_from_uris(files.read(NOW_MS).uris, trust_domain)


def test_every_identity_gets_a_certificate_that_loads_and_names_it(tmp_path: Path) -> None:
    result = _run(str(tmp_path), "--regions", "eu,us", "--owners", "alice,dave", "--approvers", "bob", "--days", "7")

    assert result.exit_code == 0, result.output
    assert {
        name: (identity.role, identity.region, identity.name)
        for name in (
            "center",
            "agent-eu",
            "orders-eu",
            "agent-us",
            "orders-us",
            "owner-alice",
            "owner-dave",
            "approver-bob",
            "operator-carol",
        )
        for identity in [_identity(tmp_path, name)]
    } == {
        "center": (Role.CENTER, None, "center"),
        "agent-eu": (Role.AGENT, "eu", "agent"),
        "orders-eu": (Role.ORDERS, "eu", "orders"),
        "agent-us": (Role.AGENT, "us", "agent"),
        "orders-us": (Role.ORDERS, "us", "orders"),
        "owner-alice": (Role.OWNER, None, "alice"),
        "owner-dave": (Role.OWNER, None, "dave"),
        "approver-bob": (Role.APPROVER, None, "bob"),
        "operator-carol": (Role.OPERATOR, None, "carol"),
    }
    assert "spiffe://quota/region/eu/agent" in result.output
    assert not (tmp_path / "agent-ap.pem").exists()


def test_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    assert _run(str(tmp_path)).exit_code == 0

    keys = sorted(tmp_path.glob("*-key.pem"))
    assert len(keys) == 1 + 1 + 2 * 3 + 3  # the CA, the center, 3 regions, 3 people
    assert {stat.S_IMODE(key.stat().st_mode) for key in keys} == {0o600}
    assert not list(tmp_path.glob(".*"))  # no partial file left behind


def test_only_the_center_and_agents_serve_and_at_the_given_hosts(tmp_path: Path) -> None:
    assert _run(str(tmp_path), "--hosts", "center.example.com,10.0.0.7").exit_code == 0

    def sans(name: str) -> list[str]:
        certificate = x509.load_pem_x509_certificate((tmp_path / f"{name}.pem").read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(getattr(value, "value", value)) for value in names]

    assert sans("center") == ["spiffe://quota/center", "center.example.com", "10.0.0.7"]
    assert sans("agent-eu") == ["spiffe://quota/region/eu/agent", "center.example.com", "10.0.0.7"]
    assert sans("orders-eu") == ["spiffe://quota/region/eu/orders"]
    assert sans("owner-alice") == ["spiffe://quota/owner/alice"]


def test_another_trust_domain(tmp_path: Path) -> None:
    assert _run(str(tmp_path), "--trust-domain", "shop.example").exit_code == 0

    assert _identity(tmp_path, "operator-carol", "shop.example").uri == "spiffe://shop.example/operator/carol"


def test_an_existing_ca_is_kept_unless_forced(tmp_path: Path) -> None:
    assert _run(str(tmp_path)).exit_code == 0
    ca = (tmp_path / "ca.pem").read_bytes()

    refused = _run(str(tmp_path))

    assert refused.exit_code == 2
    assert refused.output.splitlines() == [
        f"quota: error: {tmp_path / 'ca.pem'} exists: replacing the CA would invalidate every certificate it "
        "issued; pass --force to write a new CA and new certificates, or choose another directory"
    ]
    assert (tmp_path / "ca.pem").read_bytes() == ca

    assert _run(str(tmp_path), "--force").exit_code == 0
    assert (tmp_path / "ca.pem").read_bytes() != ca
    assert _identity(tmp_path, "center").role is Role.CENTER  # the new CA issued the new certificates


def test_bad_settings_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for args, says in [
        (["--regions", "eu,e u"], "the region 'e u' cannot be part of an identity"),
        (["--owners", "../x"], "the owner's name '../x' cannot be part of an identity"),
        (["--trust-domain", "Quota"], "Invalid value for --trust-domain: trust domain 'Quota'"),
        (["--hosts", "a b"], "Invalid value for --hosts: 'a b' is neither an IP address nor a DNS name"),
        (["--days", "0"], "Invalid value for '--days'"),
    ]:
        result = _run(str(tmp_path / "certs"), *args)

        assert result.exit_code == 2, args
        (line,) = result.output.splitlines()
        assert line.startswith("quota: error: ")
        assert says in line
    assert not (tmp_path / "certs").exists()
