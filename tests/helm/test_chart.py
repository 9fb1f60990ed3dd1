"""The Helm chart (helm/quota), offline: `helm lint`, `helm template`, every rendered manifest against the
Kubernetes schemas, and the wiring an operator relies on once it is installed (which Redis each region's agents
use, where the center keeps its state, probes, disruption budgets, durability)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import click
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml  # type: ignore[import-untyped]  # installed with kubernetes-validate, without stubs

from quota_cli.main import main
from quota_common.config import load_config
from quota_common.process import GRACE_S

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "quota"
THREE_REGIONS = Path(__file__).with_name("values-three-regions.yaml")
FETCHED_HELM = ROOT / ".cache" / "helm" / "helm"
# The oldest Kubernetes the chart supports (Chart.yaml: gRPC probes are GA from 1.27) and the newest the
# schemas of kubernetes-validate describe.
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())
RELEASE = "shop"
NAMESPACE = "promotions"
CENTER_PORT = 50051
AGENT_PORT = 50061
PROMETHEUS_DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")

Manifest = dict[str, Any]
Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[Manifest]]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = shutil.which("helm") or (str(FETCHED_HELM) if FETCHED_HELM.exists() else None)
    if binary is None:
        pytest.fail(
            "helm is neither on the PATH nor at .cache/helm/helm: run `make test` (which fetches it) or "
            "`.venv/bin/python scripts/fetch_helm.py`",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("helm-home")
    # Rendering a local chart needs no repositories; keep helm away from the user's own configuration.
    env = {**os.environ, **{f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60, check=False)

    return run


@pytest.fixture(scope="module")
def render(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Render:
    """`helm template` of the chart with these values files (paths, or dicts written to files)."""
    values_dir = tmp_path_factory.mktemp("values")
    numbers = itertools.count()

    def template(*values: Path | dict[str, Any]) -> list[Manifest]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for value in values:
            if isinstance(value, dict):
                path = values_dir / f"values-{next(numbers)}.yaml"
                path.write_text(yaml.safe_dump(value))
                value = path
            args += ["--values", str(value)]
        done = helm(*args)
        assert done.returncode == 0, done.stderr
        return [manifest for manifest in yaml.safe_load_all(done.stdout) if manifest]

    return template


@pytest.fixture(scope="module")
def three_regions(render: Render) -> list[Manifest]:
    return render(THREE_REGIONS)


EXTERNAL_STORES: dict[str, Any] = {
    "redis": {"bundled": False},
    "etcd": {"endpoints": ["etcd-a.db:2379", "etcd-b.db:2379", "etcd-c.db:2379"], "prefix": "/shop/quota"},
    "regions": [
        {"name": "eu", "redis": {"url": "redis://redis.eu.example:6379/2"}},
        {"name": "us", "redis": {"urlSecret": {"name": "quota-redis-us", "key": "url"}}},
        {"name": "ap", "redis": {"url": "rediss://redis.ap.example:6380/0"}},
    ],
}
SCENARIOS: dict[str, list[Path | dict[str, Any]]] = {
    "defaults": [],
    "three regions": [THREE_REGIONS],
    "external stores": [THREE_REGIONS, EXTERNAL_STORES],
    "agents only": [THREE_REGIONS, {"center": {"enabled": False}, "agent": {"centerAddress": "quota.hq:50051"}}],
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
        if manifest["kind"] == "ServiceMonitor":
            # A CRD (Prometheus Operator): kubernetes-validate has schemas for built-in kinds only.
            _check_service_monitor(manifest, manifests)
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

        ledger = re.fullmatch(r"redis://([^:/]+):(\d+)/0", settings["ledger"])
        assert ledger is not None, settings["ledger"]
        redis = _workload_behind(three_regions, ledger.group(1), int(ledger.group(2)))
        assert redis["kind"] == "StatefulSet"
        assert redis["spec"]["template"]["metadata"]["labels"]["quota/region"] == region
    assert _settings(agents[f"{RELEASE}-quota-agent-ap"], three_regions, "agent")["horizon"] == 4
    assert _settings(agents[f"{RELEASE}-quota-agent-eu"], three_regions, "agent")["renew-interval"] == 3


def test_center_replicas_elect_a_leader_on_the_bundled_etcd(three_regions: list[Manifest]) -> None:
    [center] = _workloads(three_regions, "Deployment", "center").values()
    assert center["spec"]["replicas"] == 3
    settings = _settings(center, three_regions, "center")
    assert settings["lease-ttl"] == 12

    store = re.fullmatch(r"etcd://([^/]+)(/.*)", settings["store"])
    assert store is not None, settings["store"]
    assert store.group(2) == "/quota/v1"
    [etcd] = _workloads(three_regions, "StatefulSet", "etcd").values()
    members = [f"{etcd['metadata']['name']}-{ordinal}" for ordinal in range(etcd["spec"]["replicas"])]
    assert len(members) == 3
    service = _only(three_regions, "Service", etcd["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert _selects(service["spec"]["selector"], etcd["spec"]["template"]["metadata"]["labels"])
    domain = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert store.group(1).split(",") == [f"{member}.{domain}:2379" for member in members]
    etcd_env = _env(etcd["spec"]["template"]["spec"]["containers"][0])
    assert etcd_env["ETCD_INITIAL_CLUSTER"]["value"] == ",".join(
        f"{member}=http://{member}.{domain}:2380" for member in members
    )

    # Agents follow the leader by the address it campaigned with: each replica's own pod IP.
    env = list(_env(center["spec"]["template"]["spec"]["containers"][0]).values())
    names = [item["name"] for item in env]
    assert env[names.index("POD_IP")]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env[names.index("QUOTA_ADVERTISE")]["value"] == f"$(POD_IP):{CENTER_PORT}"
    assert names.index("POD_IP") < names.index("QUOTA_ADVERTISE")


def test_servers_are_probed_over_grpc_health_and_stop_gracefully(three_regions: list[Manifest]) -> None:
    deployments = [manifest for manifest in three_regions if manifest["kind"] == "Deployment"]
    assert len(deployments) == 4
    for deployment in deployments:
        table = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        listen_port = int(_settings(deployment, three_regions, table)["listen"].rsplit(":", 1)[1])
        assert ports["grpc"] == listen_port == {"center": CENTER_PORT, "agent": AGENT_PORT}[table]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # No `service`: the overall health, SERVING on every replica until SIGTERM.
            assert container[probe]["grpc"] == {"port": listen_port}, (_name(deployment), probe)
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
    assert "StatefulSet" not in {manifest["kind"] for manifest in manifests}

    [center] = _workloads(manifests, "Deployment", "center").values()
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
    manifests = [*render(THREE_REGIONS), *render(THREE_REGIONS, EXTERNAL_STORES)]
    variables = {param.envvar for command in (main, _serve("center"), _serve("agent")) for param in command.params}
    for manifest in manifests:
        if manifest["kind"] == "ConfigMap":
            path = tmp_path / "config.toml"
            path.write_text(manifest["data"]["config.toml"])
            assert load_config(path, main), _name(manifest)
        if manifest["kind"] == "Deployment":
            [container] = manifest["spec"]["template"]["spec"]["containers"]
            assert container["args"][:2] in (["center", "serve"], ["agent", "serve"])
            assert {name for name in _env(container) if name.startswith("QUOTA_")} <= variables, _name(manifest)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"bundled": False}}, "regions[eu]: give redis.url or redis.urlSecret"),
        ({"etcd": {"bundled": False}}, "give etcd.endpoints"),
        ({"center": {"config": {"store": "sqlite:///x.db"}}}, "center.config.store is set by the chart"),
        ({"regions": [{"name": "eu"}, {"name": "eu"}]}, '"eu" is listed twice'),
        ({"regions": [{"name": "EU"}]}, "regions.0.name"),
        ({"etcd": {"replicas": 2}}, "etcd.replicas must be odd"),
    ],
)
def test_impossible_values_are_refused_naming_the_setting(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = helm("template", RELEASE, str(CHART), "--values", str(path))
    assert done.returncode != 0
    assert message in done.stderr


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
