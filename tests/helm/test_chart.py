"""The Helm chart (helm/quota), offline: `helm lint`, `helm template`, every rendered manifest against the
Kubernetes schemas, and the wiring an operator relies on once it is installed (which Redis each region's agents
use, where the center keeps its state, which certificate each server holds and which names it must carry, probes,
disruption budgets, durability)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import click
import grpc
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml  # type: ignore[import-untyped]  # installed with kubernetes-validate, without stubs
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from quota_center.app import CenterConfig
from quota_cli import serve
from quota_cli.main import main
from quota_common.config import load_config
from quota_common.identity import Role, center, regional
from quota_common.process import GRACE_S
from quota_common.tls import TlsFiles
from quota_common.transport import Security, Transport, open_transport
from quota_testing.certs import Issued, issue, new_ca
from region_agent.app import AgentConfig
from tests.helm.chart import CHART, NAMESPACE, RELEASE, THREE_REGIONS, Helm, Manifest, Render, refusal

# The oldest Kubernetes the chart supports (Chart.yaml: gRPC probes are GA from 1.27) and the newest the
# schemas of kubernetes-validate describe.
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())
CENTER_PORT = 50051
AGENT_PORT = 50061
PROMETHEUS_DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")
REGIONS = ("eu", "us", "ap")
# Where the chart's config.toml points each server for its certificate, key and CA, and the key of the Secret
# (cert-manager's format) each must come from.
TLS_FILES = {"tls-cert": "tls.crt", "tls-key": "tls.key", "tls-ca": "ca.crt"}
SERVERS = ("center", "agent")  # the chart's own servers; the others (redis, etcd) are their backends
ISSUER = {"name": "quota-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}  # values-three-regions.yaml

EXTERNAL_STORES: dict[str, Any] = {
    "redis": {"bundled": False},
    "etcd": {"endpoints": ["etcd-a.db:2379", "etcd-b.db:2379", "etcd-c.db:2379"], "prefix": "/shop/quota"},
    "regions": [
        {"name": "eu", "redis": {"url": "redis://redis.eu.example:6379/2"}},
        {"name": "us", "redis": {"urlSecret": {"name": "quota-redis-us", "key": "url"}}},
        {"name": "ap", "redis": {"url": "rediss://redis.ap.example:6380/0"}},
    ],
}
OWN_SECRETS: dict[str, Any] = {
    "tls": {"trustDomain": "shop.example", "center": {"secretName": "center-cert"}},
    "regions": [{"name": "eu"}, {"name": "us", "tls": {"secretName": "us-agent-cert"}}, {"name": "ap"}],
}
SCENARIOS: dict[str, list[Path | dict[str, Any]]] = {
    "defaults": [],
    "three regions": [THREE_REGIONS],
    "external stores": [THREE_REGIONS, EXTERNAL_STORES],
    "agents only": [THREE_REGIONS, {"center": {"enabled": False}, "agent": {"centerAddress": "quota.hq:50051"}}],
    "secrets made by hand": [THREE_REGIONS, OWN_SECRETS, {"tls": {"certManager": {"enabled": False}}}],
    "four center groups": [THREE_REGIONS, {"center": {"groups": 4}}],
}


def test_chart_lints_cleanly(helm: Helm) -> None:
    for values in ((), ("--values", str(THREE_REGIONS))):
        done = helm("lint", "--strict", str(CHART), *values)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout
        assert not re.search(r"\[(WARNING|ERROR)\]", done.stdout), done.stdout


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_rendered_manifest_is_valid_kubernetes(render: Render, scenario: str) -> None:
    manifests = render(*SCENARIOS[scenario])
    assert manifests
    invalid = []
    for manifest in manifests:
        # CRDs (Prometheus Operator, cert-manager): kubernetes-validate has schemas for built-in kinds only.
        if manifest["kind"] == "ServiceMonitor":
            _check_service_monitor(manifest, manifests)
            continue
        if manifest["kind"] == "Certificate":
            _check_certificate(manifest)
            continue
        if manifest["kind"] == "PrometheusRule":
            _check_prometheus_rule(manifest)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(part) for part in error.path)
                invalid.append(f"{_name(manifest)} on Kubernetes {version}: {where}: {error.message}")
    assert not invalid, "\n".join(invalid)


def test_one_agent_deployment_per_region_each_on_its_own_redis(three_regions: list[Manifest]) -> None:
    agents = _workloads(three_regions, "Deployment", "agent")
    assert {name: deployment["spec"]["replicas"] for name, deployment in agents.items()} == {
        f"{RELEASE}-quota-agent-eu": 3,
        f"{RELEASE}-quota-agent-us": 2,
        f"{RELEASE}-quota-agent-ap": 1,
    }
    center_service = _only(three_regions, "Service", f"{RELEASE}-quota-center")
    for name, deployment in agents.items():
        region = name.rsplit("-", 1)[1]
        settings = _settings(deployment, three_regions, "agent")
        assert settings["region"] == region
        assert settings["center"] == f"{center_service['metadata']['name']}:{CENTER_PORT}"

        ledger = re.fullmatch(rf"rediss://agent-{region}@([^:/]+):(\d+)/0", settings["ledger"])
        assert ledger is not None, settings["ledger"]
        redis = _workload_behind(three_regions, ledger.group(1), int(ledger.group(2)))
        assert redis["kind"] == "StatefulSet"
        assert redis["spec"]["template"]["metadata"]["labels"]["quota/region"] == region
    assert _settings(agents[f"{RELEASE}-quota-agent-ap"], three_regions, "agent")["horizon"] == 4
    assert _settings(agents[f"{RELEASE}-quota-agent-eu"], three_regions, "agent")["renew-interval"] == 3


def test_center_replicas_elect_a_leader_on_the_bundled_etcd(three_regions: list[Manifest]) -> None:
    [center] = _workloads(three_regions, "StatefulSet", "center").values()
    assert center["spec"]["replicas"] == 3
    settings = _settings(center, three_regions, "center")
    assert settings["lease-ttl"] == 12

    store = re.fullmatch(r"etcds://([^/]+)(/.*)", settings["store"])
    assert store is not None, settings["store"]
    assert store.group(2) == "/quota/v1"
    [etcd] = _workloads(three_regions, "StatefulSet", "etcd").values()
    members = [f"{etcd['metadata']['name']}-{ordinal}" for ordinal in range(etcd["spec"]["replicas"])]
    assert len(members) == 3
    service = _only(three_regions, "Service", etcd["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert _selects(service["spec"]["selector"], etcd["spec"]["template"]["metadata"]["labels"])
    domain = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    # One name, the headless Service's, which resolves to every member (test_chart_backends: its TLS and users).
    assert store.group(1) == f"{domain}:2379"
    etcd_env = _env(etcd["spec"]["template"]["spec"]["containers"][0])
    assert etcd_env["ETCD_INITIAL_CLUSTER"]["value"] == ",".join(
        f"{member}=https://{member}.{domain}:2380" for member in members
    )

    # Agents follow the leader by the address it campaigned with: each replica's own DNS name, which its
    # certificate can carry (test_certificates_name_what_clients_dial), published by a headless Service.
    advertised = _advertised(center)
    pods = _only(three_regions, "Service", center["spec"]["serviceName"])
    assert pods["spec"]["clusterIP"] == "None"
    assert pods["spec"]["publishNotReadyAddresses"] is True
    assert _selects(pods["spec"]["selector"], center["spec"]["template"]["metadata"]["labels"])
    domain = f"{pods['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert advertised == [f"{RELEASE}-quota-center-{ordinal}.{domain}:{CENTER_PORT}" for ordinal in range(3)]


def test_servers_are_probed_on_healthz_and_stop_gracefully(three_regions: list[Manifest]) -> None:
    """The gRPC port requires a client certificate, which a Kubernetes probe cannot present: every probe is
    GET /healthz on the server's metrics port (200 while it serves, 503 from SIGTERM on)."""
    servers = _servers(three_regions)
    assert len(servers) == 4
    for server in servers:
        table = server["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = server["spec"]["template"]["spec"]
        [container] = pod["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        settings = _settings(server, three_regions, table)
        listen_port = int(settings["listen"].rsplit(":", 1)[1])
        assert ports["grpc"] == listen_port == {"center": CENTER_PORT, "agent": AGENT_PORT}[table]
        metrics_port = int(settings["metrics-listen"].rsplit(":", 1)[1])
        for kind, timings in _chart_values()["probes"].items():
            probe = dict(container[f"{kind}Probe"])
            where = (_name(server), kind)
            request = probe.pop("httpGet")
            assert request["path"] == "/healthz", where
            assert request.get("scheme", "HTTP") == "HTTP", where
            assert ports.get(request["port"], request["port"]) == metrics_port == ports["metrics"], where
            assert probe == timings, where  # the values' timings, and no gRPC probe beside
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] > sleep + GRACE_S
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["resources"]["requests"].keys() == {"cpu", "memory"}
        assert "memory" in container["resources"]["limits"]


def test_every_server_has_a_disruption_budget(three_regions: list[Manifest]) -> None:
    budgets = [manifest for manifest in three_regions if manifest["kind"] == "PodDisruptionBudget"]
    workloads = [manifest for manifest in three_regions if manifest["kind"] in ("Deployment", "StatefulSet")]
    covered = {
        _name(workload): [
            budget["spec"]
            for budget in budgets
            if _selects(budget["spec"]["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"])
        ]
        for workload in workloads
        if workload["metadata"]["labels"]["app.kubernetes.io/component"] != "redis"
    }
    assert len(covered) == 5  # the center, three regions' agents, etcd
    for name, specs in covered.items():
        assert len(specs) == 1, name
        assert specs[0]["maxUnavailable"] == 1, name


def test_service_monitor_is_rendered_only_when_enabled(render: Render, three_regions: list[Manifest]) -> None:
    [monitor] = [manifest for manifest in three_regions if manifest["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    scraped = _check_service_monitor(monitor, three_regions)
    assert sorted(scraped) == sorted(
        [f"{RELEASE}-quota-center", *(f"{RELEASE}-quota-agent-{region}" for region in ("eu", "us", "ap"))]
    )

    disabled = render(THREE_REGIONS, {"metrics": {"serviceMonitor": {"enabled": False}}})
    assert "ServiceMonitor" not in {manifest["kind"] for manifest in disabled}
    assert "ServiceMonitor" not in {manifest["kind"] for manifest in render()}


def test_every_server_gives_series_of_their_own_to_as_many_promotions_as_metrics_promotions(render: Render) -> None:
    manifests = render(THREE_REGIONS, {"metrics": {"promotions": 7}})
    servers = [
        *_workloads(manifests, "StatefulSet", "center").values(),
        *_workloads(manifests, "Deployment", "agent").values(),
    ]
    assert len(servers) == 4
    for server in servers:
        table = "center" if server["kind"] == "StatefulSet" else "agent"
        assert _settings(server, manifests, table)["metrics-promotions"] == 7, _name(server)


# What the PrometheusRule may refer to: the servers export them (tests/e2e/test_operability.py scrapes them).
EXPORTED = {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "quota_center_leader"}
EXPORTED |= {"quota_agent_catalog_stream_up"}


def test_prometheus_rule_is_rendered_only_when_enabled_and_watches_exported_series(
    render: Render, three_regions: list[Manifest]
) -> None:
    [rule] = [manifest for manifest in three_regions if manifest["kind"] == "PrometheusRule"]

    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = _check_prometheus_rule(rule)
    assert set(alerts) == {"QuotaNoCenterLeads", "QuotaCallsFailing", "QuotaCallsSlow", "QuotaAgentCatalogStreamDown"}
    for name, alert in alerts.items():
        assert f'namespace="{NAMESPACE}"' in alert["expr"], name
        watched = set(re.findall(r"\b((?:grpc|quota)_[a-z_]+)\{", alert["expr"]))
        assert watched, name
        assert watched <= EXPORTED, name
    assert "> 0.05" in alerts["QuotaCallsFailing"]["expr"]
    [rule] = [manifest for manifest in render(*SCENARIOS["agents only"]) if manifest["kind"] == "PrometheusRule"]
    assert "QuotaNoCenterLeads" not in _check_prometheus_rule(rule)
    assert "PrometheusRule" not in {manifest["kind"] for manifest in render()}


def test_bundled_redis_fsyncs_every_write_to_its_volume(three_regions: list[Manifest]) -> None:
    redises = _workloads(three_regions, "StatefulSet", "redis")
    assert len(redises) == 3
    for name, redis in redises.items():
        assert redis["spec"]["replicas"] == 1
        [container] = redis["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        flags = dict(zip(args[::2], args[1::2], strict=True))
        assert flags["--appendonly"] == "yes", name
        assert flags["--appendfsync"] == "always", name
        assert flags["--save"] == "", name
        [claim] = redis["spec"]["volumeClaimTemplates"]
        assert {"name": claim["metadata"]["name"], "mountPath": flags["--dir"]} in container["volumeMounts"]


def test_existing_redis_and_etcd_replace_the_bundled_ones(render: Render) -> None:
    manifests = render(THREE_REGIONS, EXTERNAL_STORES)
    bundled = [_name(item) for item in _servers(manifests, "redis", "etcd") if item["kind"] == "StatefulSet"]
    assert not bundled

    [center] = _workloads(manifests, "StatefulSet", "center").values()
    store = "etcd://etcd-a.db:2379,etcd-b.db:2379,etcd-c.db:2379/shop/quota"
    assert _settings(center, manifests, "center")["store"] == store

    agents = _workloads(manifests, "Deployment", "agent")
    eu = _settings(agents[f"{RELEASE}-quota-agent-eu"], manifests, "agent")
    assert eu["ledger"] == "redis://redis.eu.example:6379/2"
    ap = _settings(agents[f"{RELEASE}-quota-agent-ap"], manifests, "agent")
    assert ap["ledger"] == "rediss://redis.ap.example:6380/0"
    us = _settings(agents[f"{RELEASE}-quota-agent-us"], manifests, "agent")
    assert us["ledger"] == {"secretKeyRef": {"name": "quota-redis-us", "key": "url"}}


def test_a_region_with_its_own_redis_gets_no_bundled_one(render: Render) -> None:
    values = {"regions": [{"name": "eu", "redis": {"url": "redis://redis.eu.example:6379/0"}}, {"name": "us"}]}
    manifests = render(THREE_REGIONS, values)
    assert list(_workloads(manifests, "StatefulSet", "redis")) == [f"{RELEASE}-quota-redis-us"]
    agents = _workloads(manifests, "Deployment", "agent")
    assert _settings(agents[f"{RELEASE}-quota-agent-eu"], manifests, "agent")["ledger"] == (
        "redis://redis.eu.example:6379/0"
    )


def test_servers_accept_the_configuration_the_chart_gives_them(render: Render, tmp_path: Path) -> None:
    """Every config.toml loads with the servers' own option checks, and every QUOTA_* variable the chart sets
    names a real option, so a chart-side typo fails here instead of in a crash-looping pod."""
    manifests = [*render(THREE_REGIONS), *render(THREE_REGIONS, EXTERNAL_STORES), *render(THREE_REGIONS, OWN_SECRETS)]
    variables = {param.envvar for command in (main, _serve("center"), _serve("agent")) for param in command.params}
    for manifest in manifests:
        if manifest["kind"] == "ConfigMap" and "config.toml" in manifest["data"]:
            path = tmp_path / "config.toml"
            path.write_text(manifest["data"]["config.toml"])
            assert load_config(path, main), _name(manifest)
    for server in _servers(manifests):
        [container] = server["spec"]["template"]["spec"]["containers"]
        assert container["args"][:2] in (["center", "serve"], ["agent", "serve"])
        assert {name for name in _env(container) if name.startswith("QUOTA_")} <= variables, _name(server)


@pytest.mark.parametrize("scenario", ["three regions", "secrets made by hand"])
def test_every_server_mounts_its_own_secret_and_passes_all_three_files(render: Render, scenario: str) -> None:
    """Each server reads its certificate, key and CA from the keys of cert-manager's format (tls.crt, tls.key,
    ca.crt) of its own Secret, mounted whole (a subPath mount would never see a renewal), in the trust domain of
    the values; with the default names, or those the values give."""
    manifests = render(*SCENARIOS[scenario])
    own = scenario == "secrets made by hand"
    expected = {f"{RELEASE}-quota-center": f"{RELEASE}-quota-center-tls"}
    expected |= {f"{RELEASE}-quota-agent-{region}": f"{RELEASE}-quota-agent-{region}-tls" for region in REGIONS}
    if own:  # OWN_SECRETS
        expected |= {f"{RELEASE}-quota-center": "center-cert", f"{RELEASE}-quota-agent-us": "us-agent-cert"}
    found = {}
    for server in _servers(manifests):
        table = server["metadata"]["labels"]["app.kubernetes.io/component"]
        settings = _settings(server, manifests, table)
        assert settings["trust-domain"] == ("shop.example" if own else "quota"), _name(server)
        assert "insecure" not in settings
        secrets = {_secret_file(server, settings[option])[0] for option in TLS_FILES}
        for option, key in TLS_FILES.items():
            assert _secret_file(server, settings[option])[1] == key, (_name(server), option)
        [found[server["metadata"]["name"]]] = secrets
    assert found == expected
    assert len(set(found.values())) == len(found)  # every server its own certificate


def test_cert_manager_issues_each_secret_naming_its_server(render: Render, three_regions: list[Manifest]) -> None:
    """With tls.certManager.enabled, one cert-manager Certificate fills each Secret a server mounts: the server's
    SPIFFE ID as its only URI SAN, from the values' issuer, for serving and calling, with a new key at every
    renewal. Without it, none."""
    certificates = {
        item["spec"]["secretName"]: item
        for item in three_regions
        if item["kind"] == "Certificate" and item["metadata"]["labels"]["app.kubernetes.io/component"] in SERVERS
    }
    expected = {f"{RELEASE}-quota-center-tls": "spiffe://quota/center"} | {
        f"{RELEASE}-quota-agent-{region}-tls": f"spiffe://quota/region/{region}/agent" for region in REGIONS
    }
    mounted = {_mounted_secret(server) for server in _servers(three_regions)}
    assert set(certificates) == set(expected) == mounted
    for secret, certificate in certificates.items():
        spec = certificate["spec"]
        assert spec["uris"] == [expected[secret]], secret
        assert spec["issuerRef"] == ISSUER, secret
        assert {"server auth", "client auth"} <= set(spec["usages"]), secret
        assert spec["privateKey"]["rotationPolicy"] == "Always", secret
        assert (spec["duration"], spec["renewBefore"]) == ("2160h", "720h"), secret

    assert "Certificate" not in {item["kind"] for item in render()}
    assert "Certificate" not in {item["kind"] for item in render(*SCENARIOS["secrets made by hand"])}
    others = render(THREE_REGIONS, OWN_SECRETS)
    renamed = {item["spec"]["secretName"]: item["spec"]["uris"] for item in others if "uris" in item.get("spec", {})}
    assert renamed["center-cert"] == ["spiffe://shop.example/center"]
    assert renamed["us-agent-cert"] == ["spiffe://shop.example/region/us/agent"]
    assert set(renamed) == {_mounted_secret(server) for server in _servers(others)}


def test_certificates_name_what_clients_dial(three_regions: list[Manifest]) -> None:
    """gRPC checks the name a client dials against the server's certificate: the center's carries its Service's
    names (agents and budget owners dial it) and every replica's advertised name (agents follow a standby's
    redirect there); each agent's, its region's Service's names (order services dial it)."""
    certificates = {item["spec"]["secretName"]: item["spec"] for item in three_regions if item["kind"] == "Certificate"}
    for server in _servers(three_regions):
        table = server["metadata"]["labels"]["app.kubernetes.io/component"]
        names = set(certificates[_mounted_secret(server)]["dnsNames"])
        service = _service_of(three_regions, server)
        assert _service_names(service) <= names, _name(server)
        if table == "center":
            assert {address.rpartition(":")[0] for address in _advertised(server)} <= names
            for agent in _workloads(three_regions, "Deployment", "agent").values():
                for address in _settings(agent, three_regions, "agent")["center"].split(","):
                    assert address.rpartition(":")[0] in names, address


def test_servers_start_with_the_certificates_the_chart_asks_for(
    three_regions: list[Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Certificate issued as cert-manager would (its URI and DNS SANs, one CA), its Secret's files put where
    the pod's volume puts them, and each server started as its pod starts it (args, config.toml, environment)
    by the real `quota ... serve` up to where it opens its gRPC links: the servers' own checks (a certificate
    naming the server's identity, TLS off loopback) accept them. Then the handshakes the cluster makes succeed:
    an agent calling the center by its Service and by each replica's advertised name, an order service calling
    its agent by the agent's Service; a name the certificates do not carry (a pod IP) fails."""
    now = datetime.now(UTC)
    authority = new_ca(now, 1)
    center_server = next(iter(_workloads(three_regions, "StatefulSet", "center").values()))
    agent_server = _workloads(three_regions, "Deployment", "agent")[f"{RELEASE}-quota-agent-eu"]

    center_config = _start(center_server, three_regions, authority, now, tmp_path / "center", monkeypatch)
    assert isinstance(center_config, CenterConfig)
    center_transport = open_transport(
        center_config.security, center(center_config.security.trust_domain), listen=center_config.listen
    )
    agent_config = _start(agent_server, three_regions, authority, now, tmp_path / "agent", monkeypatch)
    assert isinstance(agent_config, AgentConfig)
    agent_transport = open_transport(
        agent_config.security,
        regional(agent_config.security.trust_domain, Role.AGENT, "eu"),
        listen=agent_config.listen,
        center=agent_config.center,
    )
    orders = issue(authority, now, 1, uris=["spiffe://quota/region/eu/orders"])
    orders_transport = open_transport(
        _security_from(orders, authority, tmp_path / "orders", agent_config.security.trust_domain), None
    )

    center_names = [address.rpartition(":")[0] for address in (*agent_config.center, *_advertised(center_server))]
    with _health_server(center_transport) as port:
        for name in center_names:
            assert _handshake(agent_transport, port, name), name
        assert not _handshake(agent_transport, port, "10.1.2.3")
    agent_service = _service_of(three_regions, agent_server)
    with _health_server(agent_transport) as port:
        for name in _service_names(agent_service):
            assert _handshake(orders_transport, port, name), name
        assert not _handshake(orders_transport, port, f"{RELEASE}-quota-agent-us")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"bundled": False}}, "regions[eu]: give redis.url or redis.urlSecret"),
        ({"etcd": {"bundled": False}}, "give etcd.endpoints"),
        ({"center": {"config": {"store": "sqlite:///x.db"}}}, "center.config.store is set by the chart"),
        ({"regions": [{"name": "eu"}, {"name": "eu"}]}, '"eu" is listed twice'),
        ({"regions": [{"name": "EU"}]}, "regions.0.name"),
        ({"etcd": {"replicas": 2}}, "etcd.replicas must be odd"),
        ({"agent": {"config": {"tls-cert": "/x.pem"}}}, "agent.config.tls-cert is set by the chart"),
        ({"center": {"config": {"metrics-promotions": 9}}}, "use metrics.promotions"),
        ({"metrics": {"promotions": -1}}, "metrics.promotions"),
        ({"center": {"groups": 0}}, "center.groups"),
        ({"center": {"config": {"insecure": True}}}, "center.config.insecure: the chart always serves mutual TLS"),
        ({"regions": [{"name": "eu", "config": {"insecure": True}}]}, "agent.config.insecure: the chart always"),
        ({"center": {"config": {"trust-domain": "x"}}}, "use tls.trustDomain"),
        ({"tls": {"certManager": {"enabled": True}}}, "tls.certManager.issuerRef.name"),
        ({"tls": {"trustDomain": "Shop"}}, "tls.trustDomain"),
        (
            {"regions": [{"name": "eu"}, {"name": "us", "tls": {"secretName": "shop-quota-agent-eu-tls"}}]},
            'the Secret "shop-quota-agent-eu-tls" is given to both region eu and region us',
        ),
        ({"tls": {"center": {"secretName": "shop-quota-agent-eu-tls"}}}, "given to both the center and region eu"),
    ],
)
def test_impossible_values_are_refused_naming_the_setting(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    stderr = refusal(helm, tmp_path, values)
    assert message in stderr, stderr


def _check_certificate(certificate: Manifest) -> None:
    """The shape of a cert-manager.io/v1 Certificate, as far as the chart uses it."""
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert set(certificate) == {"apiVersion", "kind", "metadata", "spec"}
    spec = certificate["spec"]
    fields = {"secretName", "secretTemplate", "duration", "renewBefore", "privateKey", "usages", "uris", "dnsNames"}
    assert set(spec) <= fields | {"issuerRef"}
    assert {"secretName", "issuerRef"} <= set(spec)
    assert spec.get("uris") or spec.get("dnsNames"), "a server's identity, or a backend's names"
    assert set(spec["issuerRef"]) <= {"name", "kind", "group"}
    assert spec["issuerRef"]["name"]
    assert set(spec["privateKey"]) <= {"algorithm", "size", "rotationPolicy", "encoding"}
    assert spec["privateKey"]["rotationPolicy"] in ("Always", "Never")
    known_usages = {"digital signature", "key encipherment", "server auth", "client auth"}
    assert set(spec["usages"]) <= known_usages
    for duration in ("duration", "renewBefore"):
        assert duration not in spec or GO_DURATION.fullmatch(spec[duration]), spec
    assert set(spec.get("secretTemplate", {})) <= {"labels", "annotations"}
    assert all(isinstance(name, str) and name for name in spec.get("dnsNames", []))


def _check_prometheus_rule(rule: Manifest) -> dict[str, Any]:
    """The shape of a PrometheusRule (monitoring.coreos.com/v1) as far as the chart uses it; its alerts by name."""
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    alerts = {}
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for alert in group["rules"]:
            assert set(alert) == {"alert", "expr", "for", "labels", "annotations"}, alert
            assert PROMETHEUS_DURATION.fullmatch(alert["for"]), alert
            assert alert["labels"]["severity"] in ("critical", "warning"), alert
            assert {"summary", "description"} <= set(alert["annotations"]), alert
            alerts[alert["alert"]] = alert
    return alerts


def _check_service_monitor(monitor: Manifest, manifests: list[Manifest]) -> list[str]:
    """The ServiceMonitor's shape (monitoring.coreos.com/v1) and what it scrapes: the Services it selects in the
    release's namespace, each of which must have every endpoint's named port. Returns their names."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert isinstance(endpoint["port"], str)
        for duration in ("interval", "scrapeTimeout"):
            assert PROMETHEUS_DURATION.fullmatch(endpoint.get(duration, "")), endpoint
    selected = [
        service
        for service in manifests
        if service["kind"] == "Service" and _matches(spec["selector"], service["metadata"]["labels"])
    ]
    assert selected
    for service in selected:
        names = {port["name"] for port in service["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in spec["endpoints"]} <= names, _name(service)
    return [service["metadata"]["name"] for service in selected]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions with In, NotIn, Exists, DoesNotExist)."""
    if not _selects(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not held:
            return False
    return True


def _selects(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in match_labels.items())


def _workload_behind(manifests: list[Manifest], host: str, port: int) -> Manifest:
    """The one workload whose pods the Service `host` sends `port` to."""
    service = _only(manifests, "Service", host)
    [service_port] = [item for item in service["spec"]["ports"] if item["port"] == port]
    [workload] = [
        manifest
        for manifest in manifests
        if manifest["kind"] in ("Deployment", "StatefulSet")
        and _selects(service["spec"]["selector"], manifest["spec"]["template"]["metadata"]["labels"])
    ]
    container_ports = [
        item["name"] for container in workload["spec"]["template"]["spec"]["containers"] for item in container["ports"]
    ]
    assert service_port["targetPort"] in container_ports
    return workload


def _settings(workload: Manifest, manifests: list[Manifest], table: str) -> dict[str, Any]:
    """What the server in `workload` runs with: the [table] of the config.toml mounted where QUOTA_CONFIG points,
    under the QUOTA_<OPTION> variables of its container (a variable from a Secret shows as its valueFrom)."""
    pod = workload["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = _env(container)
    config = PurePosixPath(env["QUOTA_CONFIG"]["value"])
    [mount] = [item for item in container["volumeMounts"] if PurePosixPath(item["mountPath"]) == config.parent]
    [volume] = [item for item in pod["volumes"] if item["name"] == mount["name"]]
    config_map = _only(manifests, "ConfigMap", volume["configMap"]["name"])
    settings: dict[str, Any] = tomllib.loads(config_map["data"][config.name])[table]
    for param in _serve(table).params:
        if isinstance(param, click.Option) and param.envvar in env:
            item = env[param.envvar]
            settings[max(param.opts, key=len).lstrip("-")] = item.get("value", item.get("valueFrom"))
    return settings


def _servers(manifests: list[Manifest], *components: str) -> list[Manifest]:
    """The workloads of these components (default: the center and the agents, the chart's own servers)."""
    wanted = components or ("center", "agent")
    return [
        manifest
        for manifest in manifests
        if manifest["kind"] in ("Deployment", "StatefulSet")
        and manifest["metadata"]["labels"]["app.kubernetes.io/component"] in wanted
    ]


def _secret_file(workload: Manifest, path: str) -> tuple[str, str]:
    """The Secret and its key that the file `path` of the workload's container is: (secret name, key)."""
    pod = workload["spec"]["template"]["spec"]
    [container] = pod["containers"]
    file = PurePosixPath(path)
    [mount] = [item for item in container["volumeMounts"] if PurePosixPath(item["mountPath"]) == file.parent]
    assert mount.get("readOnly") is True, mount
    assert "subPath" not in mount, mount
    [volume] = [item for item in pod["volumes"] if item["name"] == mount["name"]]
    secret = volume["secret"]
    if "items" not in secret:
        return secret["secretName"], file.name
    items = {item["path"]: item["key"] for item in secret["items"]}
    assert file.name in items, (secret, file.name)
    return secret["secretName"], items[file.name]


def _mounted_secret(workload: Manifest) -> str:
    """The Secret the workload's server reads its certificate from (its volume "tls")."""
    pod = workload["spec"]["template"]["spec"]
    [name] = {volume["secret"]["secretName"] for volume in pod["volumes"] if volume["name"] == "tls"}
    return str(name)


def _service_of(manifests: list[Manifest], workload: Manifest) -> Manifest:
    """The ClusterIP Service clients dial to reach the workload's gRPC port."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    [service] = [
        item
        for item in manifests
        if item["kind"] == "Service"
        and item["spec"].get("clusterIP") != "None"
        and _selects(item["spec"]["selector"], labels)
    ]
    return service


def _service_names(service: Manifest) -> set[str]:
    """The names a Service is dialed by inside the cluster, short to fully qualified."""
    name = service["metadata"]["name"]
    return {name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"}


def _advertised(center: Manifest) -> list[str]:
    """The QUOTA_ADVERTISE each replica of the center StatefulSet runs with, as the kubelet expands it."""
    assert center["kind"] == "StatefulSet"
    [container] = center["spec"]["template"]["spec"]["containers"]
    name = center["metadata"]["name"]
    return [
        _pod_env(container, f"{name}-{ordinal}")["QUOTA_ADVERTISE"] for ordinal in range(center["spec"]["replicas"])
    ]


def _pod_env(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet sets it in pod `pod_name`: literal values with $(VAR) of the
    variables defined before them expanded, and metadata.name from the downward API (Secrets left out)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda match: env.get(match[1], match[0]), item["value"])
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = pod_name
    return env


def _start(
    workload: Manifest,
    manifests: list[Manifest],
    authority: Issued,
    now: datetime,
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[tuple[str, str], bytes] | None = None,
) -> CenterConfig | AgentConfig:
    """Issues the certificate the workload's Secret is to hold (from its Certificate, as cert-manager would) into
    `directory` (for the Secret's mount), and runs the workload's `quota ... serve` with its config.toml and
    environment until it would start serving: what the real command made of them. Every other Secret the
    container mounts (a backend's password, CA, certificate) is put in a directory of its own, each key's content
    from `files` by (Secret, key), else a password."""
    secret = _mounted_secret(workload)
    [certificate] = [
        item for item in manifests if item["kind"] == "Certificate" and item["spec"]["secretName"] == secret
    ]
    spec = certificate["spec"]
    assert {"server auth", "client auth"} <= set(spec["usages"])
    leaf = issue(authority, now, 1, uris=spec["uris"], hosts=spec["dnsNames"], server=True)
    directory.mkdir()
    contents = {
        (secret, "tls.crt"): leaf.cert_pem,
        (secret, "tls.key"): leaf.key_pem,
        (secret, "ca.crt"): authority.cert_pem,
    }
    contents |= files or {}

    pod = workload["spec"]["template"]["spec"]
    [container] = pod["containers"]
    table = workload["metadata"]["labels"]["app.kubernetes.io/component"]
    env = _pod_env(container, f"{workload['metadata']['name']}-0")
    config_path = PurePosixPath(env.pop("QUOTA_CONFIG"))
    [mount] = [item for item in container["volumeMounts"] if PurePosixPath(item["mountPath"]) == config_path.parent]
    [volume] = [item for item in pod["volumes"] if item["name"] == mount["name"]]
    text = _only(manifests, "ConfigMap", volume["configMap"]["name"])["data"][config_path.name]
    volumes = {item["name"]: item for item in pod["volumes"]}
    for secret_mount in container["volumeMounts"]:
        source = volumes[secret_mount["name"]].get("secret")
        if source is None:
            continue
        local = directory if secret_mount["name"] == "tls" else directory / secret_mount["name"]
        local.mkdir(exist_ok=True)
        for item in source["items"]:
            key = (source["secretName"], item["key"])
            (local / item["path"]).write_bytes(contents.get(key, b"a password\n"))
        text = text.replace(f'"{secret_mount["mountPath"]}/', f'"{local}/')
    config_file = directory / "config.toml"
    config_file.write_text(text)
    for name, value in env.items():
        if name.startswith("QUOTA_") and not name.startswith("QUOTA_LOG_"):
            monkeypatch.setenv(name, value)

    started: list[CenterConfig | AgentConfig] = []

    async def record(config: CenterConfig | AgentConfig) -> None:
        started.append(config)

    monkeypatch.setattr(serve, "run_center", record)
    monkeypatch.setattr(serve, "run_agent", record)
    command = _serve(table)
    default_map = load_config(config_file, main)[table]["serve"]
    assert container["args"][:2] == [table, "serve"]
    with command.make_context(f"quota {table} serve", list(container["args"][2:]), default_map=default_map) as context:
        command.invoke(context)
    for name in env:
        monkeypatch.delenv(name, raising=False)
    [config] = started
    return config


def _security_from(issued: Issued, authority: Issued, directory: Path, trust_domain: str) -> Security:
    """A client's Security with `issued` as its certificate."""
    directory.mkdir()
    (directory / "tls.crt").write_bytes(issued.cert_pem)
    (directory / "tls.key").write_bytes(issued.key_pem)
    (directory / "ca.crt").write_bytes(authority.cert_pem)
    return Security(TlsFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt"), trust_domain)


@contextmanager
def _health_server(transport: Transport) -> Iterator[int]:
    """A gRPC server on a loopback port with `transport`'s server credentials, answering grpc.health.v1."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = transport.server_credentials()
    assert credentials is not None
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def _handshake(client: Transport, port: int, name: str) -> bool:
    """Whether `client` completes a call to the server on `port` when it dials it as `name` (the name gRPC checks
    against the server's certificate)."""
    assert client.tls is not None
    options = [("grpc.ssl_target_name_override", name)]
    with grpc.secure_channel(f"127.0.0.1:{port}", client.tls.channel_credentials(), options) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            if code != grpc.StatusCode.UNAVAILABLE:  # a refused handshake; anything else is not this test's
                raise
            return False
    return True


def _chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _serve(group: str) -> click.Command:
    command = main.commands[group]
    assert isinstance(command, click.Group)
    return command.commands["serve"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _workloads(manifests: list[Manifest], kind: str, component: str) -> dict[str, Manifest]:
    return {
        manifest["metadata"]["name"]: manifest
        for manifest in manifests
        if manifest["kind"] == kind and manifest["metadata"]["labels"]["app.kubernetes.io/component"] == component
    }


def _only(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    [manifest] = [item for item in manifests if item["kind"] == kind and item["metadata"]["name"] == name]
    return manifest


def _name(manifest: Manifest) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"
