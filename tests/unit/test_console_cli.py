"""`quota console` refuses to start on settings that would expose people, and `quota console hash-password`
makes what the users file keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from quota_cli.main import main
from quota_console.users import check_password, hash_password


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "--users FILE is required"),
        (["--users", "u.toml"], "give --tls-ca for a center with mutual TLS, or --insecure"),
        (["--users", "u.toml", "--insecure", "--tls-ca", "ca.pem"], "--insecure contradicts --tls-ca"),
        (["--users", "u.toml", "--insecure", "--center", "10.0.0.1:50051"], "only on loopback"),
        (["--users", "u.toml", "--insecure", "--center", "Foo=127.0.0.1:1"], "group name 'Foo': use 1 to 32"),
        (["--users", "u.toml", "--insecure", "--listen", "0.0.0.0:8080"], "passwords would cross the network"),
        (["--users", "u.toml", "--insecure", "--web-cert", "c.pem"], "--web-cert and --web-key go together"),
        (["--users", "u.toml", "--insecure", "--session-key-file", "k"], "--session-key-file k: cannot read it"),
    ],
)
def test_the_console_does_not_start_on_settings_that_expose_people(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "u.toml").write_text(f'[users.alice]\npassword = "{hash_password("pw")}"\n')

    result = CliRunner().invoke(main, ["console", *flags])

    assert result.exit_code == 2
    assert message in result.output


def test_hash_password_prints_what_the_users_file_keeps() -> None:
    result = CliRunner().invoke(main, ["console", "hash-password", "--stdin"], input="s3cret\n")

    assert result.exit_code == 0, result.output
    assert check_password(result.output.strip(), "s3cret")
    assert CliRunner().invoke(main, ["console", "hash-password", "--stdin"], input="\n").exit_code == 2
