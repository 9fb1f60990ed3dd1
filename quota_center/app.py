"""The center's composition root: pick the store, build the service, serve it."""

from __future__ import annotations

import logging
import socket
import sqlite3
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path

from grpc_health.v1.health_pb2 import HealthCheckResponse

from quota_center import server as center_server
from quota_center.alerting import AlertRulesFile, shipped_alert_rules
from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.gate import shipped_rules
from quota_center.guard_file import RulesFile
from quota_center.jobs import Job, LeaderJobs
from quota_center.leadership import EtcdLeadership, Leadership, SingleNode
from quota_center.metrics import center_metrics
from quota_center.shard_follower import ShardFollower
from quota_center.store.base import Store
from quota_center.store.etcd import DEFAULT_PREFIX, EtcdAccess, EtcdStore
from quota_center.store.etcd_shards import REWATCH_S, EtcdShards, group_prefix, shards_key
from quota_center.store.sqlite import SqliteStore
from quota_center.trail import By
from quota_common import gc_policy, identity
from quota_common.clock import Clock, SystemClock
from quota_common.errors import ConfigError
from quota_common.metrics_http import MetricsEndpoint
from quota_common.process import STANDARD_SERVICES, guarded_server, health_servicer, serve
from quota_common.rpc_metrics import RpcMetrics
from quota_common.shards import DEFAULT_GROUP
from quota_common.tls import TlsFiles
from quota_common.top_series import DEFAULT_TOP
from quota_common.transport import Security, open_transport

log = logging.getLogger(__name__)

SETTLE_EVERY_S = 30.0
"""How often the leader looks for promotions to settle (more often when the grace is shorter)."""
SHARD_STEP_S = 1.0
"""How often a leading center on etcd moves the slots its group gives away a step on (drained yet?); the map
itself is watched, so a slot handed to the group is served as soon as the map names it."""


@dataclass(frozen=True)
class StoreAccess:
    """How the center reaches a secured etcd; each setting left out is not used (the TLS files default
    to the center's own, for etcds://)."""

    ca: Path | None = None
    """--etcd-ca: the CA etcd's certificate is verified against (etcds://)."""
    cert: Path | None = None
    """--etcd-cert: the certificate the center presents to etcd (etcds://)."""
    key: Path | None = None
    """--etcd-key: its private key."""
    user: str = ""
    """--etcd-user: the etcd user the center logs in as; empty: none."""
    password: str = field(default="", repr=False)
    """That user's password (read from --etcd-password-file)."""


@dataclass(frozen=True)
class CenterConfig:
    listen: str = "127.0.0.1:50051"
    """host:port to serve gRPC on; port 0 picks a free one (printed on stdout)."""
    store: str = "sqlite:///quota-center.db"
    """Where state lives: sqlite:///PATH (embedded default), etcd://HOST:PORT[,HOST:PORT...][/PREFIX], or
    etcds://... for etcd over TLS."""
    settings: CenterSettings = field(default_factory=CenterSettings)
    advertise: str = ""
    """host:port agents and clients reach this replica at; default: the listen host and port."""
    election_ttl_s: int = 5
    """etcd lease TTL of the leader: a dead leader is replaced within about this long."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint (GET /metrics); empty: none."""
    security: Security = field(default_factory=Security)
    """How its gRPC port is secured: mutual TLS with the center's certificate, or plaintext on loopback."""
    store_access: StoreAccess = field(default_factory=StoreAccess)
    """How it reaches a secured etcd: TLS files, a user."""
    guard_rules: Path | None = None
    """The guard rules file (read again when it changes); None: the rules the center ships."""
    alert_rules: Path | None = None
    """The alert rules file (read again when it changes); None: the rules the center ships."""
    metrics_promotions: int = DEFAULT_TOP
    """Promotions with series of their own on /metrics: the top N by spend (and any with an open alert);
    the others are summed into series with an empty promotion label."""


async def open_store(
    url: str,
    clock: Clock,
    election_ttl_s: int,
    access: StoreAccess | None = None,
    center_tls: TlsFiles | None = None,
    group: str = DEFAULT_GROUP,
) -> tuple[Store, Leadership]:
    """The store `url` names, open and answering, with who may write to it: a SQLite file has one
    center, which leads; the centers on one etcd prefix elect a leader. ConfigError when the store
    cannot be opened (another center holds the SQLite file, etcd does not answer or refuses the
    certificate or the user, the URL names no store). etcds:// verifies etcd with `access.ca` and
    presents `access.cert`, defaulting to the center's own TLS files `center_tls`. A `group` other than the
    default keeps its store (and its election) under its own prefix below the URL's (`group_prefix`)."""
    access = access or StoreAccess()
    if url.startswith("sqlite:///") and group != DEFAULT_GROUP:
        raise ConfigError(f"--group {group} shards promotions over center groups on etcd; --store {url} is SQLite")
    if url.startswith("sqlite:///"):
        _refuse_unused(url, access)
        file = Path(url.removeprefix("sqlite:///"))
        try:
            return SqliteStore(file), SingleNode()
        except sqlite3.Error as error:
            raise ConfigError(
                f"--store {url}: cannot open the SQLite file {file} ({error}); "
                "sqlite:///PATH is relative to the working directory, sqlite:////PATH absolute"
            ) from None
    endpoints, base = etcd_location(url)
    if endpoints:
        store = await EtcdStore.connect(endpoints, group_prefix(group, base), etcd_access(url, access, center_tls))
        return store, EtcdLeadership(store, clock, election_ttl_s)
    raise ConfigError(
        f"--store {url!r} is no store; use sqlite:///PATH, etcd://HOST:PORT[,HOST:PORT...][/PREFIX] "
        "or etcds://... (TLS)"
    )


def etcd_location(url: str) -> tuple[list[str], str]:
    """The endpoints and the base prefix an etcd:// or etcds:// URL names; no endpoints for another URL."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("etcd", "etcds"):
        return [], DEFAULT_PREFIX
    hosts, _, path = rest.partition("/")
    return [endpoint for endpoint in hosts.split(",") if endpoint], f"/{path}" if path else DEFAULT_PREFIX


def etcd_access(url: str, access: StoreAccess, own_tls: TlsFiles | None = None) -> EtcdAccess:
    """How to reach the etcd of `url` as `access` says, its TLS files defaulting to the process's own `own_tls`
    (--tls-*) for etcds://: what the center and `quota shards` connect with. ConfigError naming the option to
    fix when a setting does not apply to `url`, is missing its partner, or names a file that is not what it
    should be."""
    _refuse_unused(url, access)
    tls = _etcd_access(url, access, own_tls) if url.startswith("etcds://") else EtcdAccess()
    return replace(tls, user=access.user, password=access.password)


def _refuse_unused(url: str, access: StoreAccess) -> None:
    """Settings that would do nothing with this store are a mistake in them or in --store."""
    tls = {"--etcd-ca": access.ca, "--etcd-cert": access.cert, "--etcd-key": access.key}
    login = {"--etcd-user": access.user, "--etcd-password-file": access.password}
    given = [option for option, value in {**tls, **login}.items() if value]
    if not url.startswith(("etcd://", "etcds://")) and given:
        raise ConfigError(f"{', '.join(given)} apply to etcd, and --store is {url!r}; drop them or fix --store")
    tls_given = [option for option, value in tls.items() if value]
    if url.startswith("etcd://") and tls_given:
        raise ConfigError(
            f"{', '.join(tls_given)} secure etcd over TLS, and --store {url!r} is plaintext: use etcds://, or drop them"
        )
    if bool(access.user) != bool(access.password):
        missing = "--etcd-password-file" if access.user else "--etcd-user"
        raise ConfigError(f"--etcd-user and --etcd-password-file go together; {missing} is missing")


def _etcd_access(url: str, access: StoreAccess, own_tls: TlsFiles | None) -> EtcdAccess:
    """The TLS material for etcds://, each file from its --etcd-* option or else the process's own --tls-*,
    checked: ConfigError naming the option of a file that is missing or not what it should be."""
    ca = (access.ca, "--etcd-ca") if access.ca else (own_tls.ca, "--tls-ca") if own_tls else None
    if ca is None:
        raise ConfigError(
            f"--store {url} is TLS and nothing says which CA signed etcd's certificate: give --etcd-ca (or --tls-ca)"
        )
    ca_pem = _read(*ca)
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (ValueError, ssl.SSLError) as error:
        raise ConfigError(f"{ca[1]} {ca[0]}: not a CA certificate in PEM ({error})") from None
    if access.cert or access.key:
        if access.cert is None or access.key is None:
            missing = "--etcd-key" if access.key is None else "--etcd-cert"
            raise ConfigError(f"--etcd-cert and --etcd-key go together; {missing} is missing")
        (cert, cert_option), (key, key_option) = (access.cert, "--etcd-cert"), (access.key, "--etcd-key")
    elif own_tls is not None:
        (cert, cert_option), (key, key_option) = (own_tls.cert, "--tls-cert"), (own_tls.key, "--tls-key")
    else:
        return EtcdAccess(ca=ca_pem)
    cert_pem, key_pem = _read(cert, cert_option), _read(key, key_option)
    try:
        context.load_cert_chain(cert, key)
    except OSError as error:
        raise ConfigError(
            f"{cert_option} {cert} and {key_option} {key}: not a certificate and its key ({error})"
        ) from None
    return EtcdAccess(ca=ca_pem, cert=cert_pem, key=key_pem)


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{option} {path}: cannot read it ({error.strerror})") from None


def _reachable_host(listen_host: str) -> str:
    """The host others reach this replica at, when --advertise does not say: a wildcard listen
    address means nothing to a client on another machine, the machine's name may."""
    if listen_host not in ("", "0.0.0.0", "::", "[::]"):
        return listen_host
    name = socket.gethostname()
    log.warning("listening on all interfaces without --advertise: advertising %s to clients; set --advertise", name)
    return name


async def run_center(config: CenterConfig) -> None:
    """Serves at once; answers as the leader only after winning the election (at once on
    SQLite) and rebuilding its state from the store. A standby answers UNAVAILABLE with the
    leader's address in the trailing metadata."""
    security = config.security
    transport = open_transport(security, identity.center(security.trust_domain), listen=config.listen)
    clock = SystemClock()
    # Before the store: a rules file that does not check out stops the center before it touches anything.
    rules = shipped_rules if config.guard_rules is None else RulesFile(config.guard_rules)
    alert_rules = shipped_alert_rules if config.alert_rules is None else AlertRulesFile(config.alert_rules)
    group = config.settings.group
    store, leadership = await open_store(
        config.store, clock, config.election_ttl_s, config.store_access, security.tls, group
    )
    host = config.listen.rpartition(":")[0]
    center = Center(store, clock, config.settings, leadership, rules, alert_rules)
    _, base = etcd_location(config.store)
    shards = ShardFollower(center, EtcdShards(store, shards_key(base)), base) if isinstance(store, EtcdStore) else None
    registry, refresh = center_metrics(center, config.metrics_promotions)
    gc_policy.serving(registry, gc_policy.CENTER_THRESHOLDS)
    calls = RpcMetrics(registry, [*center_server.SERVICES, *STANDARD_SERVICES]) if config.metrics_listen else None
    server = guarded_server(transport, calls=calls)
    center_server.add_to_server(center, server)
    health_status = health_servicer()
    itself = By(identity.center(security.trust_domain))
    settle_every_s = min(SETTLE_EVERY_S, config.settings.settle_grace_s)
    jobs = LeaderJobs(
        [
            Job("settlement", settle_every_s, lambda: center.settle_due(itself)),
            Job("usage history", config.settings.history_interval_s, center.sample_history),
            Job("reconciliation", config.settings.alerts.interval_s, center.alert_discrepancies),
            *(
                [Job("shard moves", SHARD_STEP_S, shards.step), Job("shard map", REWATCH_S, shards.follow)]
                if shards
                else []
            ),
        ]
    )

    async def report_leading(now_leading: bool) -> None:
        """The whole server ("") is SERVING on every replica (it is alive and redirects callers);
        the center's own services are SERVING only on the leader, for balancers that want it."""
        status = HealthCheckResponse.SERVING if now_leading else HealthCheckResponse.NOT_SERVING
        for service in center_server.SERVICES:
            await health_status.set(service, status)

    async def elected() -> None:
        if shards is not None:
            await shards.prepare()  # before serving: a group must not answer for slots it does not own
        await center.start()
        gc_policy.settled()  # the state just loaded lives as long as the leadership
        center.alerts.run()
        jobs.start()
        await report_leading(True)

    async def deposed() -> None:
        await jobs.stop()
        center.stop_serving()
        await center.alerts.stop()
        gc_policy.unsettled()
        await report_leading(False)

    async def start(port: int) -> None:
        if isinstance(store, SqliteStore) and store.created:
            # Said once serving, so that a start refused for another reason stays one line. A typo in --store (or
            # a misspelt QUOTA_STORE, which falls back to the default) makes a store that knows no promotion and
            # none of the ledger lives its agents hold.
            log.warning("serving from a new, empty store at %s (no file was there)", store.path)
        await report_leading(False)
        await leadership.start(lambda: config.advertise or f"{_reachable_host(host)}:{port}", elected, deposed)

    async def stop() -> None:
        await center.alerts.stop()
        await jobs.stop()
        await leadership.close()
        await store.close()

    await serve(
        server,
        config.listen,
        transport=transport,
        name="center",
        services=center_server.SERVICES,
        on_stop=stop,
        on_start=start,
        health_status=health_status,
        metrics=MetricsEndpoint(config.metrics_listen, registry, refresh) if config.metrics_listen else None,
    )
