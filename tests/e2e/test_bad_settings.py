"""A setting that cannot work stops `quota` at start with exit 2 and one line on stderr naming it:
a bad flag, variable or file key, a port another process holds, a backend that does not answer,
a store file that is not a database. No traceback, and nothing served or joined meanwhile."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from quota_testing.launch import run_quota
from quota_testing.servers import free_port

pytestmark = pytest.mark.e2e

CENTER = ("center", "serve", "--listen", "127.0.0.1:0")
AGENT = ("agent", "serve", "--region", "eu", "--listen", "127.0.0.1:0")


def refused(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Runs `quota ARGS`, which must stop at start with exit 2 and one line; returns the line."""
    result = run_quota(*args, cwd=cwd, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "", "nothing announced as ready"
    [line] = result.stderr.splitlines()
    assert line.startswith("quota: error: ")
    return line


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process's server listens on."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("--log-level", "verbose", *CENTER), {}, "'verbose' is not one of"),
        (CENTER, {"QUOTA_LOG_LEVEL": "verbose"}, "QUOTA_LOG_LEVEL"),
        ((*CENTER, "--store", "mysql://x"), {}, "--store 'mysql://x' is no store"),
        ((*AGENT, "--ledger", "mem"), {}, "--ledger 'mem' is no ledger"),
        ((*CENTER, "--lease-ttl", "0"), {}, "--lease-ttl"),
        ((*CENTER, "--lease-ttl", "10000"), {}, "0.5<=x<=3600"),
        (CENTER, {"QUOTA_LEASE_TTL": "soon"}, "QUOTA_LEASE_TTL"),
        (("center", "serve", "--listen", "nowhere"), {}, "give host:port"),
        (("agent", "serve"), {}, "Missing option '--region'"),
    ],
)
def test_an_invalid_flag_or_variable_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    assert named in refused(*args, cwd=tmp_path, env=env)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("center", "serve", "--listen", "127.0.0.1:99999"), "--listen '127.0.0.1:99999': port 99999 does not exist"),
        (("center", "serve", "--listen", "127.0.0.1:65536"), "port 65536 does not exist"),
        (("agent", "serve", "--region", "eu", "--listen", "127.0.0.1:70000"), "port 70000 does not exist"),
        ((*CENTER, "--metrics-listen", "127.0.0.1:99999"), "--metrics-listen '127.0.0.1:99999': port 99999"),
        ((*AGENT, "--metrics-listen", "127.0.0.1:65536"), "--metrics-listen '127.0.0.1:65536': port 65536"),
        (
            (*CENTER, "--alert-webhook", "http://127.0.0.1:99999/hook"),
            "--alert-webhook 'http://127.0.0.1:99999/hook': the port must be a number within 1..65535",
        ),
    ],
)
def test_a_port_above_65535_is_one_line_naming_it(tmp_path: Path, args: tuple[str, ...], named: str) -> None:
    """gRPC would serve on the port modulo 65536, asyncio on a random one for 65536."""
    assert named in refused(*args, cwd=tmp_path)


AGENT_FLOATS = ("--horizon", "--renew-interval", "--pull-interval", "--opening-lookahead", "--reservation-ttl")


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ((*CENTER, "--lease-ttl", "nan"), {}, ("'--lease-ttl'", "nan is not a finite number")),
        ((*CENTER, "--lease-ttl", "inf"), {}, ("'--lease-ttl'", "inf is not a finite number")),
        (CENTER, {"QUOTA_LEASE_TTL": "NaN"}, ("QUOTA_LEASE_TTL", "nan is not a finite number")),
        *(((*AGENT, flag, "nan"), {}, (f"'{flag}'", "nan is not a finite number")) for flag in AGENT_FLOATS),
        ((*AGENT, "--retention", "inf"), {}, ("'--retention'", "inf is not a finite number")),
        (AGENT, {"QUOTA_HORIZON": "inf"}, ("QUOTA_HORIZON", "inf is not a finite number")),
        # The other commands' numbers too: chaos or a bench for nan seconds would run without end.
        (("chaos", "--seconds", "nan"), {}, ("'--seconds'", "nan is not a finite number")),
        (("bench", "recovery", "--renew-interval", "inf"), {}, ("'--renew-interval'", "inf is not a finite number")),
        (("budget", "--timeout", "nan", "list"), {}, ("'--timeout'", "nan is not a finite number")),
    ],
)
def test_a_float_setting_that_is_not_finite_is_one_line_naming_it(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], named: tuple[str, str]
) -> None:
    """nan passes every bound (it compares false with everything): a center on a lease TTL of nan failed
    every Acquire after committing its grant, an agent on a horizon of nan every Deduct."""
    line = refused(*args, cwd=tmp_path, env=env)
    assert all(fragment in line for fragment in named), line


def test_a_float_setting_in_the_config_file_that_is_not_finite_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "quota.toml").write_text("[center]\nlease-ttl = nan\n[agent]\nhorizon = inf\n")

    line = refused("--config", "quota.toml", *CENTER, cwd=tmp_path)

    assert "quota.toml: [center] lease-ttl = nan: nan is not a finite number" in line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("agent", "serve", "--region", "", "--listen", "127.0.0.1:0"), "the region is required"),
        (("agent", "serve", "--region", "r" * 129, "--listen", "127.0.0.1:0"), "129 bytes; at most 128"),
        ((*AGENT, "--center", ""), "name at least one host:port"),
        ((*AGENT, "--center", " , "), "name at least one host:port"),
    ],
)
def test_an_empty_region_or_center_is_one_line_naming_it(tmp_path: Path, args: tuple[str, ...], named: str) -> None:
    assert named in refused(*args, cwd=tmp_path)


def test_a_bad_config_file_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "quota.toml").write_text('[center]\nstroe = "sqlite:///x.db"\n')

    line = refused("--config", "quota.toml", *CENTER, cwd=tmp_path)

    assert "[center] has no setting 'stroe'" in line


def test_a_busy_grpc_port_is_one_line_naming_it(tmp_path: Path, held_port: int) -> None:
    for serve in (("center", "serve"), ("agent", "serve", "--region", "eu")):
        line = refused(*serve, "--listen", f"127.0.0.1:{held_port}", cwd=tmp_path)
        assert f"cannot listen on 127.0.0.1:{held_port}: the port is in use" in line


def test_a_busy_metrics_port_is_one_line_naming_it(tmp_path: Path, held_port: int) -> None:
    line = refused(*CENTER, "--metrics-listen", f"127.0.0.1:{held_port}", cwd=tmp_path)

    assert f"cannot serve metrics on 127.0.0.1:{held_port}: the port is in use" in line


def test_redis_down_at_start_is_one_line_naming_it(tmp_path: Path) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"

    line = refused(*AGENT, "--ledger", nobody, cwd=tmp_path)

    assert f"Redis at {nobody} does not answer" in line


def test_etcd_unreachable_at_start_is_one_line_naming_it(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"

    line = refused(*CENTER, "--store", f"etcd://{nobody}", cwd=tmp_path)

    assert f"etcd at {nobody} does not answer" in line


def test_a_store_file_that_is_no_database_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("these are my notes, not a database; " * 10)

    line = refused(*CENTER, "--store", "sqlite:///notes.db", cwd=tmp_path)

    assert "cannot open the SQLite file notes.db (file is not a database)" in line


def test_a_guard_rules_file_that_does_not_check_out_is_one_line_naming_each_problem(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "typo"\nwhen = "budgett > 5"\noutcome = "hold"\nmessage = "m"\n')

    line = refused(*CENTER, "--store", f"sqlite:///{tmp_path / 'c.db'}", "--guard-rules", str(rules), cwd=tmp_path)

    assert f"--guard-rules: {rules}:3: rule 1 ('typo'): `budgett`: unknown field; did you mean budget?" in line
    assert not (tmp_path / "c.db").exists(), "refused before the store was opened"
