"""`quota center serve` and `quota agent serve`: the two server processes an operator runs.

Every setting comes, by precedence, from the command line, from its environment variable
(`QUOTA_` and the option's name: --lease-ttl is QUOTA_LEASE_TTL), from the file given by
`quota --config`, or from its default (see quota_common.config).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from quota_center.alert_engine import AlertSettings
from quota_center.app import CenterConfig, run_center
from quota_center.center_core import CenterSettings
from quota_center.webhooks import webhook_urls
from quota_cli.backends import FILE, backend_tls_options, etcd_options, read_password, store_access
from quota_cli.budget import CENTER_ADDRESSES
from quota_cli.security import security, security_options
from quota_common.config import FiniteFloatRange, bind_environment
from quota_common.errors import ConfigError, InvalidArgument
from quota_common.policy import RefillSettings
from quota_common.shards import check_group_name
from quota_common.top_series import DEFAULT_TOP
from quota_common.validation import require_region
from region_agent.agent import AgentSettings
from region_agent.app import AgentConfig, LedgerAccess, run_agent

# Each default has one source, the settings it configures: these are read from, never typed again.
_CENTER, _CENTER_CONFIG = CenterSettings(), CenterConfig()
_AGENT, _AGENT_CONFIG = AgentSettings(region=""), AgentConfig(AgentSettings(region=""))


def _group_name(name: str) -> str:
    try:
        return check_group_name(name)
    except ValueError as error:
        raise ConfigError(f"--group: {error}") from None


_metrics_promotions_option = click.option(
    "--metrics-promotions",
    type=click.IntRange(min=0),
    default=DEFAULT_TOP,
    show_default=True,
    help="Promotions with series of their own on /metrics: the top N by spend (on the center, and any with an "
    'open alert); the others are summed into series labelled promotion="".',
)


class _Region(click.ParamType[str]):
    """A region's or a cell's name (eu, eu.1), as the center requires it of every agent: 1..128 bytes."""

    name = "region"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return require_region("the region", str(value))
        except InvalidArgument as error:
            self.fail(error.message, param, ctx)


@click.group()
def center() -> None:
    """The central quota authority."""


@center.command("serve")
@click.option("--listen", default=_CENTER_CONFIG.listen, show_default=True, help="host:port; port 0 picks a free one.")
@click.option(
    "--store",
    default=_CENTER_CONFIG.store,
    show_default=True,
    help="sqlite:///PATH, etcd://HOST:PORT,...[/PREFIX], or etcds://... for etcd over TLS.",
)
@etcd_options("center")
@click.option(
    "--lease-ttl",
    # At most an hour: a region cut off from the center spends for up to a lease after a freeze, and a
    # value meant in milliseconds (10000) would make that hours.
    type=FiniteFloatRange(min=0.5, max=3600),
    default=_CENTER.lease_ttl_s,
    show_default=True,
    help="Seconds.",
)
@click.option("--advertise", default="", help="host:port others reach this replica at [default: the listen address].")
@click.option(
    "--election-ttl",
    type=click.IntRange(min=1),
    default=_CENTER_CONFIG.election_ttl_s,
    show_default=True,
    help="etcd leader lease, s.",
)
@click.option("--metrics-listen", default="", help="host:port of the Prometheus endpoint (GET /metrics); empty: none.")
@_metrics_promotions_option
@click.option(
    "--guard-rules",
    type=FILE,
    help="Guard rules file (TOML), read again when it changes; check one with `quota center check-rules FILE` "
    "[default: the rules the center ships].",
)
@click.option(
    "--pending-ttl",
    type=FiniteFloatRange(min=1),
    default=_CENTER.pending_ttl_s,
    show_default=True,
    help="Seconds a change held by a guard rule waits for approval before it expires.",
)
@click.option(
    "--alert-rules",
    type=FILE,
    help="Alert rules file (TOML), read again when it changes; a bad one stops the center, naming each rule "
    "and line [default: the rules the center ships].",
)
@click.option(
    "--alert-interval",
    type=FiniteFloatRange(min=0.1),
    default=_CENTER.alerts.interval_s,
    show_default=True,
    help="Seconds between evaluations of the alert rules (on the leader).",
)
@click.option(
    "--alert-webhook",
    "alert_webhooks",
    multiple=True,
    help="http(s) URL every alert is POSTed to as JSON, retried until it answers 2xx (repeatable).",
)
@click.option(
    "--alert-resend",
    type=FiniteFloatRange(min=1),
    default=_CENTER.alerts.resend_s,
    show_default=True,
    help="Seconds after which an alert nobody acknowledged is posted to the webhooks again.",
)
@click.option(
    "--history-interval",
    type=FiniteFloatRange(min=1),
    default=_CENTER.history_interval_s,
    show_default=True,
    help="Seconds between two samples of every promotion's usage by region (quota budget history).",
)
@click.option(
    "--group",
    default=_CENTER.group,
    show_default=True,
    help="The center group this replica belongs to (etcd only): it serves the promotions the shard map gives its "
    "group, keeps its store and election under STORE-PREFIX/groups/GROUP (the default group: STORE-PREFIX itself); "
    "see quota shards.",
)
@click.option(
    "--settle-grace",
    type=FiniteFloatRange(min=1),
    default=_CENTER.settle_grace_s,
    show_default=True,
    help="Seconds after its end a promotion is settled (its statement final); refunds are honoured until then.",
)
@security_options
def center_serve(
    listen: str,
    store: str,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_user: str,
    etcd_password_file: Path | None,
    lease_ttl: float,
    advertise: str,
    election_ttl: int,
    metrics_listen: str,
    metrics_promotions: int,
    guard_rules: Path | None,
    pending_ttl: float,
    alert_rules: Path | None,
    alert_interval: float,
    alert_webhooks: tuple[str, ...],
    alert_resend: float,
    history_interval: float,
    settle_grace: float,
    group: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    trust_domain: str,
    insecure: bool,
) -> None:
    """Serve the center's gRPC API (on etcd: as one replica of several, one elected leader).

    With --tls-cert, --tls-key and --tls-ca (the center's certificate) every caller must present a
    certificate from that CA; without them it serves plaintext, on a loopback address only."""
    alerts = AlertSettings(alert_interval, alert_resend, webhook_urls(alert_webhooks))
    settings = CenterSettings(
        lease_ttl_s=lease_ttl,
        pending_ttl_s=pending_ttl,
        alerts=alerts,
        history_interval_s=history_interval,
        settle_grace_s=settle_grace,
        group=_group_name(group),
    )
    secured = security(tls_cert, tls_key, tls_ca, trust_domain, insecure)
    etcd = store_access(etcd_ca, etcd_cert, etcd_key, etcd_user, etcd_password_file)
    config = CenterConfig(
        listen,
        store,
        settings,
        advertise,
        election_ttl,
        metrics_listen,
        secured,
        etcd,
        guard_rules,
        alert_rules,
        metrics_promotions=metrics_promotions,
    )
    asyncio.run(run_center(config))


@click.group()
def agent() -> None:
    """A regional agent: what order services call."""


@agent.command("serve")
@click.option("--region", type=_Region(), required=True, help="The region this agent serves.")
@click.option("--listen", default=_AGENT_CONFIG.listen, show_default=True, help="host:port; port 0 picks a free one.")
@click.option(
    "--center",
    "center_addresses",
    type=CENTER_ADDRESSES,
    default=",".join(_AGENT_CONFIG.center),
    show_default=True,
    help="host:port[,host:port...]; several center groups: each group's after its name, default=h1:50051,g1=h2:50051.",
)
@click.option(
    "--ledger",
    default=_AGENT_CONFIG.ledger,
    show_default=True,
    help="memory, redis://[USER@]HOST:PORT[/DB], rediss://... for Redis over TLS, or redis+cluster://HOST:PORT "
    "(rediss+cluster://...) for a node of a Redis Cluster.",
)
@backend_tls_options("ledger", "Redis", "rediss://", "agent")
@click.option("--ledger-password-file", type=FILE, help="File holding the password of the Redis user --ledger names.")
@click.option(
    "--horizon",
    type=FiniteFloatRange(min=0.1),
    default=_AGENT.refill.horizon_s,
    show_default=True,
    help="Refill seconds.",
)
@click.option(
    "--renew-interval",
    type=FiniteFloatRange(min=0.05),
    default=_AGENT.renew_interval_s,
    show_default=True,
    help="Seconds between lease renewals and reports; keep it at most a third of the center's lease TTL.",
)
@click.option(
    "--pull-interval",
    type=FiniteFloatRange(min=0.05),
    default=_AGENT.pull_interval_s,
    show_default=True,
    help="Seconds between pulls of promotion changes (the repair link beside the push stream).",
)
@click.option("--push/--no-push", default=_AGENT.push, show_default=True, help="Follow the center's promotion stream.")
@click.option(
    "--opening-lookahead",
    type=FiniteFloatRange(min=0),
    default=_AGENT.opening_lookahead_s,
    show_default=True,
    help="Seconds before a promotion starts that its opening allotment is acquired; 0: none.",
)
@click.option(
    "--reservation-ttl",
    type=FiniteFloatRange(min=1, max=86_400),
    default=_AGENT.reservation_ttl_ms / 1000,
    show_default=True,
    help="Seconds a reservation holds its quota when Reserve does not say.",
)
@click.option(
    "--retention",
    type=FiniteFloatRange(min=60),
    default=_AGENT_CONFIG.retention_s,
    show_default=True,
    help="Seconds the ledger remembers an order, so its retries replay; keep it above the callers' retry window.",
)
@click.option("--metrics-listen", default="", help="host:port of the Prometheus endpoint (GET /metrics); empty: none.")
@_metrics_promotions_option
@security_options
def agent_serve(
    region: str,
    listen: str,
    center_addresses: tuple[str, ...],
    ledger: str,
    ledger_ca: Path | None,
    ledger_cert: Path | None,
    ledger_key: Path | None,
    ledger_password_file: Path | None,
    horizon: float,
    renew_interval: float,
    pull_interval: float,
    push: bool,
    opening_lookahead: float,
    reservation_ttl: float,
    retention: float,
    metrics_listen: str,
    metrics_promotions: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    trust_domain: str,
    insecure: bool,
) -> None:
    """Serve Deduct/Refund/Reserve/Confirm/Cancel for one region.

    With --tls-cert, --tls-key and --tls-ca (this region's agent certificate) every caller must present
    a certificate from that CA, and the center is called with it; without them, plaintext on loopback only."""
    settings = AgentSettings(
        region,
        refill=RefillSettings(horizon_s=horizon),
        renew_interval_s=renew_interval,
        pull_interval_s=pull_interval,
        push=push,
        opening_lookahead_s=opening_lookahead,
        reservation_ttl_ms=round(reservation_ttl * 1000),
    )
    secured = security(tls_cert, tls_key, tls_ca, trust_domain, insecure)
    redis_access = LedgerAccess(
        ledger_ca, ledger_cert, ledger_key, read_password(ledger_password_file, "--ledger-password-file")
    )
    config = AgentConfig(
        settings,
        listen,
        center_addresses,
        ledger,
        retention,
        metrics_listen,
        secured,
        redis_access,
        metrics_promotions=metrics_promotions,
    )
    asyncio.run(run_agent(config))


bind_environment(center_serve)
bind_environment(agent_serve)
