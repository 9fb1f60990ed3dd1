"""The console's users file: passwords kept as scrypt hashes, each person mapped to their own certificate,
and every mistake stopping the console at start with the user and file named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quota_common.errors import ConfigError
from quota_common.identity import Role
from quota_console.users import check_password, hash_password, load_users
from quota_testing.tls import DevTls, write_dev_tls


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevTls:
    return write_dev_tls(tmp_path_factory.mktemp("certs"), ["eu"])


def test_a_password_is_kept_as_a_salted_hash() -> None:
    stored = hash_password("s3cret")

    assert stored.startswith("scrypt$16384$8$1$")
    assert "s3cret" not in stored
    assert stored != hash_password("s3cret"), "salted"
    assert check_password(stored, "s3cret")
    assert not check_password(stored, "s3cret ")


def _users_file(directory: Path, body: str) -> Path:
    path = directory / "users.toml"
    path.write_text(body)
    return path


def _person(dev: DevTls, login: str, name: str, password: str = "pw") -> str:
    files = dev.files(name)
    return f'[users.{login}]\npassword = "{hash_password(password)}"\ncert = "{files.cert}"\nkey = "{files.key}"\n'


def test_each_person_calls_the_center_with_their_own_certificate(dev: DevTls, tmp_path: Path) -> None:
    path = _users_file(tmp_path, _person(dev, "alice", "owner-alice") + _person(dev, "bob", "approver-bob", "pw2"))

    users = load_users(path, dev.files("center").ca, dev.trust_domain)

    alice = users.authenticate("alice", "pw")
    assert alice is not None
    assert alice.identity is not None
    assert (alice.identity.role, alice.identity.name) == (Role.OWNER, "alice")
    assert alice.transport.tls is not None
    assert users.authenticate("bob", "pw") is None, "bob's password is his own"
    assert users.authenticate("nobody", "pw") is None


def test_a_plaintext_center_takes_passwords_only(tmp_path: Path) -> None:
    path = _users_file(tmp_path, f'[users.alice]\npassword = "{hash_password("pw")}"\n')

    alice = load_users(path, None, "quota").authenticate("alice", "pw")

    assert alice is not None
    assert alice.identity is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "needs [users.NAME] tables"),
        ("users = 1", "needs [users.NAME] tables"),
        ("[users.alice]\npassword = 'pw'\ncert = 'a'\nkey = 'b'\n", "password is not a scrypt$N$r$p$salt$hash"),
        ("[users.alice]\npassword = 'scrypt$3$8$1$YQ==$YQ=='\ncert = 'a'\nkey = 'b'\n", "out of range"),
        ("[users.alice]\ncert = 'a'\nkey = 'b'\n", "needs password"),
        ("[users.alice]\npassword = 'x'\n", "it needs password, cert and key"),
        ("not toml [", "not TOML"),
    ],
)
def test_a_bad_users_file_stops_the_console_naming_what_is_wrong(
    dev: DevTls, tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_users(_users_file(tmp_path, body), dev.files("center").ca, dev.trust_domain)


def test_a_certificate_that_names_no_person_is_refused(dev: DevTls, tmp_path: Path) -> None:
    path = _users_file(tmp_path, _person(dev, "mallory", "agent-eu"))

    with pytest.raises(ConfigError, match=r"user 'mallory'.*not a person"):
        load_users(path, dev.files("center").ca, dev.trust_domain)


def test_a_missing_users_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--users .*cannot read it"):
        load_users(tmp_path / "absent.toml", None, "quota")
