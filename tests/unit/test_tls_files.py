"""TLS files are checked when read, with a message naming the file at fault and what to do; a watch
rereads them when they change and keeps the last good ones when a change does not check out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from quota_common.clock import FakeClock
from quota_common.errors import ConfigError
from quota_common.tls import TlsFiles, TlsWatch, tls_files
from quota_testing.certs import Issued, issue, new_ca, write_pair

NOW = datetime(2030, 1, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
ALICE = "spiffe://quota/owner/alice"


@pytest.fixture
def ca() -> Issued:
    return new_ca(NOW, 30)


def _files(tmp_path: Path, ca: Issued, leaf: Issued, name: str = "alice") -> TlsFiles:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    cert, key = write_pair(tmp_path, name, leaf)
    return TlsFiles(cert, key, tmp_path / "ca.pem")


def test_good_files_give_the_material_and_the_identity(tmp_path: Path, ca: Issued) -> None:
    leaf = issue(ca, NOW, 10, uris=[ALICE])

    material = _files(tmp_path, ca, leaf).read(NOW_MS)

    assert material.cert_chain == leaf.cert_pem
    assert material.private_key == leaf.key_pem
    assert material.ca == ca.cert_pem
    assert material.uris == (ALICE,)
    assert material.not_after == NOW + timedelta(days=10)


def test_a_missing_file_is_named_with_its_option(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, ca, issue(ca, NOW, 10, uris=[ALICE]))
    files.key.unlink()

    with pytest.raises(ConfigError) as refused:
        files.read(NOW_MS)

    assert refused.value.message.startswith(f"--tls-key {files.key}: cannot read it (No such file or directory)")
    assert "quota certs dev" in refused.value.message


def test_an_unreadable_file_is_named_with_its_option(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, ca, issue(ca, NOW, 10, uris=[ALICE]))
    files.ca.unlink()
    files.ca.mkdir()

    with pytest.raises(ConfigError, match=r"--tls-ca .*: cannot read it \(Is a directory\)"):
        files.read(NOW_MS)


def test_files_that_hold_something_else_are_refused(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, ca, issue(ca, NOW, 10, uris=[ALICE]))
    good_cert, good_key = files.cert.read_bytes(), files.key.read_bytes()

    files.cert.write_bytes(good_key)
    with pytest.raises(ConfigError, match=r"^--tls-cert .*: no PEM certificate in it"):
        files.read(NOW_MS)
    files.cert.write_bytes(good_cert)
    files.key.write_bytes(good_cert)
    with pytest.raises(ConfigError, match=r"^--tls-key .*: no PEM private key in it"):
        files.read(NOW_MS)
    files.ca.write_text("")
    files.key.write_bytes(good_key)
    with pytest.raises(ConfigError, match=r"^--tls-ca .*: no PEM certificate in it"):
        files.read(NOW_MS)


def test_an_encrypted_key_is_refused(tmp_path: Path, ca: Issued) -> None:
    leaf = issue(ca, NOW, 10, uris=[ALICE])
    files = _files(tmp_path, ca, leaf)
    files.key.write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )

    with pytest.raises(ConfigError, match="the key is encrypted; give it unencrypted"):
        files.read(NOW_MS)


def test_a_key_of_another_certificate_is_refused(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, ca, issue(ca, NOW, 10, uris=[ALICE]))
    files.key.write_bytes(issue(ca, NOW, 10, uris=[ALICE]).key_pem)

    with pytest.raises(ConfigError, match=r"--tls-key .* is not the key of --tls-cert .*replace both"):
        files.read(NOW_MS)


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path, ca: Issued) -> None:
    stranger = new_ca(NOW, 30, "another CA")
    files = _files(tmp_path, ca, issue(stranger, NOW, 10, uris=[ALICE]))

    with pytest.raises(ConfigError, match=r"was not issued by a CA in --tls-ca .*'CN=another CA'"):
        files.read(NOW_MS)


def test_a_bundle_of_cas_and_a_chain_through_an_intermediate_are_accepted(tmp_path: Path, ca: Issued) -> None:
    """A CA rotation puts the old and the new CA in one file; cert-manager writes leaf then intermediates."""
    old = new_ca(NOW, 30, "old CA")
    files = _files(tmp_path, ca, issue(ca, NOW, 10, uris=[ALICE]))
    files.ca.write_bytes(old.cert_pem + ca.cert_pem)

    assert files.read(NOW_MS).uris == (ALICE,)

    files.cert.write_bytes(files.cert.read_bytes() + ca.cert_pem)  # the chain may end with the root itself
    assert files.read(NOW_MS).uris == (ALICE,)

    files.cert.write_bytes(files.cert.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"x")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        files.read(NOW_MS)


def test_a_chain_out_of_order_is_refused(tmp_path: Path, ca: Issued) -> None:
    leaf = issue(ca, NOW, 10, uris=[ALICE])
    files = _files(tmp_path, ca, leaf)
    files.cert.write_bytes(leaf.cert_pem + issue(ca, NOW, 10, uris=[ALICE]).cert_pem)

    with pytest.raises(ConfigError, match="are not a chain"):
        files.read(NOW_MS)


def test_an_expired_certificate_or_ca_is_refused(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, ca, issue(ca, NOW, 10, uris=[ALICE]))
    later = NOW + timedelta(days=10, seconds=1)

    with pytest.raises(ConfigError, match=r"--tls-cert .* expired at 2030-01-11T00:00:00\+00:00: issue a new one"):
        files.read(int(later.timestamp() * 1000))

    short_ca = new_ca(NOW, 1)
    files = _files(tmp_path, short_ca, issue(short_ca, NOW, 10, uris=[ALICE]))
    with pytest.raises(ConfigError, match="every CA certificate in it has expired"):
        files.read(NOW_MS + 2 * 86_400_000)


def test_the_three_settings_come_together_or_not_at_all() -> None:
    assert tls_files(None, "", None) is None
    assert tls_files("c.pem", "k.pem", "ca.pem") == TlsFiles(Path("c.pem"), Path("k.pem"), Path("ca.pem"))
    with pytest.raises(ConfigError, match="together; --tls-key is missing"):
        tls_files("c.pem", None, "ca.pem")
    with pytest.raises(ConfigError, match="together; --tls-cert and --tls-ca are missing"):
        tls_files(None, "k.pem", "")


def test_a_watch_rereads_changed_files_and_keeps_the_last_good_ones(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, ca, issue(ca, NOW, 10, uris=[ALICE]))
    watch = TlsWatch(files, FakeClock(wall_ms=NOW_MS))
    first = watch.current()

    assert watch.current() is first  # nothing changed: nothing read

    bob = issue(ca, NOW, 10, uris=["spiffe://quota/owner/bob"])
    files.cert.write_bytes(bob.cert_pem)  # the certificate first: for now it does not match the key
    assert watch.current() is first
    write_pair(tmp_path, "alice", bob)  # then both
    assert watch.current().uris == ("spiffe://quota/owner/bob",)

    files.cert.unlink()  # gone: the last good ones stay in use
    assert watch.current().uris == ("spiffe://quota/owner/bob",)


def test_a_watch_refuses_to_start_on_bad_files(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, ca, issue(new_ca(NOW, 1), NOW, 10, uris=[ALICE]))

    with pytest.raises(ConfigError, match="was not issued by a CA"):
        TlsWatch(files, FakeClock(wall_ms=NOW_MS))


def test_files_rewritten_in_place_at_once_are_noticed(tmp_path: Path, ca: Issued) -> None:
    """By their bytes: two writes within one tick of the file system's clock leave the same times."""
    files = _files(tmp_path, ca, issue(ca, NOW, 10, uris=[ALICE]))
    watch = TlsWatch(files, FakeClock(wall_ms=NOW_MS))
    renewed = issue(ca, NOW, 20, uris=[ALICE])

    files.cert.write_bytes(renewed.cert_pem)
    files.key.write_bytes(renewed.key_pem)

    assert watch.current().not_after == NOW + timedelta(days=20)


def test_a_bad_change_is_warned_about_once(tmp_path: Path, ca: Issued, caplog: pytest.LogCaptureFixture) -> None:
    files = _files(tmp_path, ca, issue(ca, NOW, 10, uris=[ALICE]))
    watch = TlsWatch(files, FakeClock(wall_ms=NOW_MS))
    files.key.unlink()

    for _ in range(3):
        watch.current()

    (warning,) = caplog.records
    assert warning.levelname == "WARNING"
    assert "still using the previous ones: --tls-key" in warning.getMessage()
