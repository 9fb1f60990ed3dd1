"""Where an operator's settings come from: the command line over QUOTA_* variables over the
--config file over the defaults, and a bad setting stops the process naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from quota_center.app import CenterConfig
from quota_cli import serve as serve_cli
from quota_cli.main import main
from region_agent.app import AgentConfig


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[AgentConfig | CenterConfig]:
    """The configs the serve commands would have run with, instead of running them."""
    configs: list[AgentConfig | CenterConfig] = []

    async def record(config: AgentConfig | CenterConfig) -> None:
        configs.append(config)

    monkeypatch.setattr(serve_cli, "run_agent", record)
    monkeypatch.setattr(serve_cli, "run_center", record)
    return configs


def _quota(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def _config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "quota.toml"
    path.write_text(text)
    return str(path)


def test_the_command_line_wins_over_the_environment_which_wins_over_the_file(
    tmp_path: Path, started: list[AgentConfig | CenterConfig]
) -> None:
    config = _config_file(
        tmp_path,
        '[agent]\nregion = "file"\nledger = "redis://file:6379/0"\nhorizon = 4.0\nrenew_interval = 1.5\n',
    )
    result = _quota(
        "--config", config, "agent", "serve", "--region", "flag", env={"QUOTA_REGION": "env", "QUOTA_HORIZON": "3"}
    )

    assert result.exit_code == 0, result.output
    [agent] = started
    assert isinstance(agent, AgentConfig)
    assert agent.settings.region == "flag"
    assert agent.settings.refill.horizon_s == 3.0
    assert agent.ledger == "redis://file:6379/0"
    assert agent.settings.renew_interval_s == 1.5
    assert agent.listen == "127.0.0.1:50061", "unset everywhere: the default"


def test_the_config_file_may_come_from_the_environment_and_configure_the_center(
    tmp_path: Path, started: list[AgentConfig | CenterConfig]
) -> None:
    config = _config_file(tmp_path, '[center]\nstore = "etcd://etcd-0:2379"\nmetrics-listen = "0.0.0.0:9464"\n')

    result = _quota("center", "serve", env={"QUOTA_CONFIG": config})

    assert result.exit_code == 0, result.output
    [center] = started
    assert isinstance(center, CenterConfig)
    assert (center.store, center.metrics_listen) == ("etcd://etcd-0:2379", "0.0.0.0:9464")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[agent]\nregoin = "eu"\n', "[agent] has no setting 'regoin'"),
        ("[agent]\nhorizon = -1\n", "[agent] horizon = -1"),
        ('[agnet]\nregion = "eu"\n', "unknown table [agnet]"),
        ("[agent\n", "cannot be read as TOML"),
    ],
)
def test_a_bad_config_file_stops_the_start_naming_the_setting(
    tmp_path: Path, started: list[AgentConfig | CenterConfig], text: str, named: str
) -> None:
    result = _quota("--config", _config_file(tmp_path, text), "agent", "serve", "--region", "eu")

    assert result.exit_code == 2
    assert named in result.output
    assert started == []


def test_a_bad_environment_variable_is_named_as_such(started: list[AgentConfig | CenterConfig]) -> None:
    result = _quota("agent", "serve", "--region", "eu", env={"QUOTA_RENEW_INTERVAL": "soon"})

    assert result.exit_code == 2
    assert "QUOTA_RENEW_INTERVAL" in result.output
    assert started == []


def test_tls_settings_come_from_the_environment_and_the_file(
    tmp_path: Path, started: list[AgentConfig | CenterConfig]
) -> None:
    config = _config_file(
        tmp_path, '[center]\ntls-cert = "c.pem"\ntls-key = "c-key.pem"\ntls-ca = "ca.pem"\ntrust-domain = "shop"\n'
    )
    tls_env = {"QUOTA_TLS_CERT": "a.pem", "QUOTA_TLS_KEY": "a-key.pem", "QUOTA_TLS_CA": "ca.pem"}

    assert _quota("--config", config, "center", "serve").exit_code == 0
    assert _quota("agent", "serve", "--region", "eu", env=tls_env).exit_code == 0
    assert _quota("agent", "serve", "--region", "eu", env={"QUOTA_INSECURE": "1"}).exit_code == 0

    center, agent, insecure = (config.security for config in started)
    assert center.tls is not None
    assert (center.tls.cert, center.tls.key, center.tls.ca) == (Path("c.pem"), Path("c-key.pem"), Path("ca.pem"))
    assert center.trust_domain == "shop"
    assert agent.tls is not None
    assert agent.tls.cert == Path("a.pem")
    assert (agent.trust_domain, agent.insecure) == ("quota", False)
    assert (insecure.tls, insecure.insecure) == (None, True)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("--tls-cert", "c.pem"), {}, "--tls-key and --tls-ca are missing"),
        (("--trust-domain", "Shop!"), {}, "trust domain 'Shop!': use 1..255 of a-z 0-9 . _ -"),
        ((), {"QUOTA_TLS_CA": "ca.pem"}, "--tls-cert and --tls-key are missing"),
    ],
)
def test_incomplete_tls_settings_stop_the_start_naming_them(
    started: list[AgentConfig | CenterConfig], args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    result = _quota("center", "serve", *args, env=env)

    assert result.exit_code == 2
    assert named in result.output
    assert started == []


def test_the_budget_table_configures_quota_budget(tmp_path: Path) -> None:
    """Its --center names an address beyond loopback, with no TLS files: refused before any call."""
    config = _config_file(tmp_path, '[budget]\ncenter = "10.0.0.5:50051"\ntimeout = 1\n')

    result = _quota("--config", config, "budget", "list")

    assert result.exit_code == 2
    assert "not --center 10.0.0.5:50051" in result.output


def test_a_bad_center_group_name_is_a_one_line_usage_error() -> None:
    result = CliRunner().invoke(main, ["budget", "--center", "Foo=127.0.0.1:1", "list"])

    assert result.exit_code == 2
    assert "group name 'Foo': use 1 to 32 lower-case letters" in result.output
    assert "Traceback" not in result.output
