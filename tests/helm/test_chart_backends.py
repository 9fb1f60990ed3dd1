"""The chart's backends, secured: the bundled Redis serves TLS only and admits only its region's agents, as the ACL
user region_agent.ledger.redis_acl describes; the bundled etcd serves clients and peers over TLS only, and a hook
Job turns its authentication on, with a user for the center on its prefix. The agents and the center are pointed
at them (URL, user, password file, CA) so that the real CLI accepts it, and the pieces work together against real
Redis and etcd servers. An existing Redis or etcd takes its TLS and user settings from values."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from pathlib import PurePosixPath as PurePath
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from quota_center.app import CenterConfig, open_store
from quota_common.clock import SystemClock
from quota_testing.certs import Issued, issue, new_ca
from quota_testing.servers import ServerTls, etcd_server, free_port
from quota_testing.support import recorded_redis_clients
from region_agent.app import AgentConfig, open_ledger
from region_agent.ledger.redis_acl import (
    LEDGER_COMMANDS,
    agent_acl,
    agent_acl_line,
    agent_user,
    key_pattern,
    password_sha256,
)
from tests.helm.chart import CHART, NAMESPACE, RELEASE, THREE_REGIONS, Helm, Manifest, Render, refusal
from tests.helm.test_chart import (
    EXTERNAL_STORES,
    REGIONS,
    _env,
    _name,
    _only,
    _secret_file,
    _settings,
    _start,
    _workloads,
)

PASSWORD = "a password"  # what _start puts in every password file it is not given
DOMAIN = f"{NAMESPACE}.svc.cluster.local"
ETCD = f"{RELEASE}-quota-etcd"
ETCD_HOST = f"{ETCD}.{DOMAIN}"
SECURED_EXTERNAL: dict[str, Any] = {
    "etcd": {
        "endpoints": ["etcd.db:2379"],
        "prefix": "/shop/quota",
        "tls": {"enabled": True, "caSecret": {"name": "etcd-ca"}, "clientSecret": "center-etcd-cert"},
        "auth": {"user": "shop-center", "passwordSecret": {"name": "etcd-login", "key": "pw"}},
    },
    "redis": {"bundled": False},
    "regions": [
        {
            "name": "eu",
            "redis": {
                "url": "rediss://quota-eu@redis.eu.example:6380/2",
                "passwordSecret": {"name": "redis-eu-login"},
                "tls": {"caSecret": {"name": "managed-redis-ca", "key": "root.pem"}},
            },
        },
        {"name": "us", "redis": {"url": "redis://redis.us.example:6379/0"}},
        {
            "name": "ap",
            "redis": {
                "urlSecret": {"name": "quota-redis-ap", "key": "url"},
                "tls": {"clientSecret": "ap-redis-client"},
            },
        },
    ],
}


def test_bundled_redis_serves_tls_only_to_the_regions_acl_user(three_regions: list[Manifest]) -> None:
    """Each region's Redis: no plaintext port, client certificates required, its certificate from its own Secret,
    and an ACL file in which the default user is off and the region's agents' user may run exactly the ledger's
    commands on exactly the region's keys. The agents log in as that user, over TLS, on that port, with the
    password the Redis pod hashes into the ACL."""
    redises = _workloads(three_regions, "StatefulSet", "redis")
    agents = _workloads(three_regions, "Deployment", "agent")
    for region in REGIONS:
        redis = redises[f"{RELEASE}-quota-redis-{region}"]
        pod = redis["spec"]["template"]["spec"]
        [container] = pod["containers"]
        flags = _flags(container["args"])
        assert flags["--port"] == "0", "no plaintext port"
        assert flags["--tls-auth-clients"] == "yes"
        assert _mounted(redis, flags["--tls-cert-file"]) == (f"{RELEASE}-quota-redis-{region}-tls", "tls.crt")
        assert _mounted(redis, flags["--tls-key-file"]) == (f"{RELEASE}-quota-redis-{region}-tls", "tls.key")
        assert _mounted(redis, flags["--tls-ca-cert-file"]) == (f"{RELEASE}-quota-redis-{region}-tls", "ca.crt")

        # The ACL file Redis reads is written at start from the chart's, in a volume only the pod has.
        [init] = pod["initContainers"]
        acl_dir = PurePath(flags["--aclfile"]).parent
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        [run] = [mount for mount in init["volumeMounts"] if PurePath(mount["mountPath"]) == acl_dir]
        assert "emptyDir" in volumes[run["name"]]
        [source] = [mount for mount in init["volumeMounts"] if "configMap" in volumes[mount["name"]]]
        config_map = _only(three_regions, "ConfigMap", volumes[source["name"]]["configMap"]["name"])
        default, user = config_map["data"]["users.acl"].splitlines()
        assert default == "user default off"
        words = user.split()
        assert words[:4] == ["user", agent_user(region), "on", "#@PASSWORD_SHA256@"]
        assert words[4:] == list(agent_acl(region))
        assert {word[1:] for word in words if word.startswith("+")} == set(LEDGER_COMMANDS)
        assert [word for word in words if word.startswith(("~", "%", "&"))] == [key_pattern(region)]

        settings = _settings(agents[f"{RELEASE}-quota-agent-{region}"], three_regions, "agent")
        ledger = urlsplit(settings["ledger"])
        assert (ledger.scheme, ledger.username, ledger.password) == ("rediss", agent_user(region), None)
        assert ledger.port == int(flags["--tls-port"]) == container["ports"][0]["containerPort"]
        assert _only(three_regions, "Service", str(ledger.hostname))["spec"]["selector"].items() <= (
            redis["spec"]["template"]["metadata"]["labels"].items()
        )
        # The agents' password is the one the Redis pod hashes; their CA (--tls-ca: no ledger-ca) is the servers'.
        agent = agents[f"{RELEASE}-quota-agent-{region}"]
        password_secret = _secret_file(agent, settings["ledger-password-file"])
        assert password_secret == (f"{RELEASE}-quota-redis-{region}-password", "password")
        assert _mounted(redis, "/etc/redis/password/password", init) == password_secret
        assert "ledger-ca" not in settings
        generated = _only(three_regions, "Secret", password_secret[0])
        assert set(generated["data"]) == {"password"}


def test_redis_pod_hashes_the_password_and_admits_the_agent_as_the_chart_sets_it_up(
    three_regions: list[Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Redis pod's own commands, run here on its files: the init container writes the ACL file with the
    password's SHA-256 (as redis_acl.agent_acl_line does), redis-server starts with the chart's arguments, the
    readiness probe logs in as the agent's user, and the agent, started by the real CLI from its config.toml, opens
    its ledger over TLS as that user. A renewed certificate fails the liveness probe (Redis reads it at start
    only)."""
    now = datetime.now(UTC)
    authority = new_ca(now, 1)
    redis = _workloads(three_regions, "StatefulSet", "redis")[f"{RELEASE}-quota-redis-eu"]
    pod = redis["spec"]["template"]["spec"]
    [init], [container] = pod["initContainers"], pod["containers"]
    tls_secret = f"{RELEASE}-quota-redis-eu-tls"
    certificate = _certificate_for(three_regions, tls_secret)
    leaf = issue(authority, now, 1, hosts=[*certificate["dnsNames"], "localhost"], server=True)
    contents = {(tls_secret, "tls.crt"): leaf.cert_pem, (tls_secret, "tls.key"): leaf.key_pem}
    contents |= {(tls_secret, "ca.crt"): authority.cert_pem}
    local = _materialize(redis, three_regions, tmp_path / "redis", contents)

    assert init["command"][:2] == ["sh", "-ec"]
    subprocess.run(["sh", "-ec", local(init["command"][2])], check=True, timeout=10)
    acl_file = Path(local(_flags(container["args"])["--aclfile"]))
    assert acl_file.read_text().splitlines() == ["user default off", agent_acl_line("eu", password_sha256(PASSWORD))]

    port = free_port()
    args = [local(arg) for arg in container["args"]]
    args[args.index("--tls-port") + 1] = str(port)
    assert container["command"][:2] == ["sh", "-ec"]
    command = [*container["command"][:2], local(container["command"][2]), *container["command"][3:]]
    process = subprocess.Popen([*command, *args, "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        chart_port = int(_flags(container["args"])["--tls-port"])
        readiness, liveness = (
            _probe_command(container[kind], local, chart_port, port) for kind in ("readinessProbe", "livenessProbe")
        )
        _wait_until(lambda: subprocess.run(readiness, timeout=5, check=False).returncode == 0)
        assert subprocess.run(liveness, timeout=5, check=False).returncode == 0

        agent = _workloads(three_regions, "Deployment", "agent")[f"{RELEASE}-quota-agent-eu"]
        config = _start(agent, three_regions, authority, now, tmp_path / "agent", monkeypatch)
        assert isinstance(config, AgentConfig)
        assert config.ledger_access.password == PASSWORD
        ledger_url = urlsplit(config.ledger)
        url = ledger_url._replace(netloc=f"{ledger_url.username}@localhost:{port}").geturl()
        asyncio.run(_open_ledger_once(url, config, monkeypatch))

        # cert-manager renewed the certificate: the liveness probe has Redis restarted, to read it.
        renewed = issue(authority, now, 1, hosts=certificate["dnsNames"], server=True)
        Path(local(_flags(container["args"])["--tls-cert-file"])).write_bytes(renewed.cert_pem)
        assert subprocess.run(liveness, timeout=5, check=False).returncode != 0
    finally:
        process.terminate()
        process.wait(10)


async def _open_ledger_once(url: str, config: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_ledger as the agent runs it (its checks: the user reaches the region's keys, may run scripts), then
    the ledger's first write, through its scripts."""
    clients = recorded_redis_clients(monkeypatch)
    ledger, tier = await open_ledger(url, "eu", 60, config.ledger_access, config.security.tls)
    try:
        assert tier is not None
        assert await ledger.incarnation()
    finally:
        await ledger.aclose()
        for client in clients:
            await client.aclose()


def test_bundled_etcd_serves_tls_only_and_the_center_logs_in(three_regions: list[Manifest]) -> None:
    """Clients and peers reach etcd over TLS only, each presenting a certificate (client-cert-auth on both);
    the members' certificate carries the one name the center dials and each member's peer name. The center dials
    that name over TLS (etcds://), as the user the hook Job makes, with the password the Job sets."""
    [etcd] = _workloads(three_regions, "StatefulSet", "etcd").values()
    [container] = etcd["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {name: item.get("value", "") for name, item in _env(container).items()}
    assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    assert env["ETCD_LISTEN_CLIENT_URLS"].startswith("https://")
    assert env["ETCD_LISTEN_PEER_URLS"].startswith("https://")
    tls_secret = f"{ETCD}-tls"
    for prefix in ("", "PEER_"):
        for variable, key in (("TRUSTED_CA_FILE", "ca.crt"), ("CERT_FILE", "tls.crt"), ("KEY_FILE", "tls.key")):
            assert _mounted(etcd, env[f"ETCD_{prefix}{variable}"]) == (tls_secret, key), variable
    peers = [urlsplit(member.partition("=")[2]) for member in env["ETCD_INITIAL_CLUSTER"].split(",")]
    assert {peer.scheme for peer in peers} == {"https"}
    names = set(_certificate_for(three_regions, tls_secret)["dnsNames"])
    assert {str(peer.hostname) for peer in peers} <= names

    [center] = _workloads(three_regions, "StatefulSet", "center").values()
    settings = _settings(center, three_regions, "center")
    store = urlsplit(settings["store"])
    assert (store.scheme, store.hostname, store.port, store.path) == ("etcds", ETCD_HOST, 2379, "/quota/v1")
    assert ETCD_HOST in names  # the name the center verifies
    assert settings["etcd-user"] == "quota-center"
    assert _secret_file(center, settings["etcd-password-file"]) == (f"{ETCD}-center-password", "password")
    assert not {"etcd-ca", "etcd-cert", "etcd-key"} & set(settings)  # the center's own, from the servers' CA

    job = _auth_job(three_regions)
    job_env = {name: item["value"] for name, item in _env(job["spec"]["template"]["spec"]["containers"][0]).items()}
    assert urlsplit(job_env["ETCD_ENDPOINT"]).hostname == ETCD_HOST
    assert (job_env["CENTER_USER"], job_env["PREFIX"]) == (settings["etcd-user"], store.path)
    assert _mounted(job, job_env["CENTER_PASSWORD_FILE"]) == _secret_file(center, settings["etcd-password-file"])
    assert _mounted(job, job_env["ROOT_PASSWORD_FILE"]) == (f"{ETCD}-root-password", "password")
    for secret in (f"{ETCD}-center-password", f"{ETCD}-root-password"):
        generated = _only(three_regions, "Secret", secret)
        assert set(generated["data"]) == {"password"}
        assert generated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", "etcd's volumes outlive it"


def test_the_auth_job_is_a_hook_running_the_charts_script(three_regions: list[Manifest]) -> None:
    """After install and every upgrade (etcd must be running), replaced each time, in the quota image (etcd's has
    no shell), running files/etcd_auth.py as the chart ships it."""
    job = _auth_job(three_regions)
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"post-install", "post-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"].startswith("quota:")
    assert container["command"][0] == "python"
    assert _script_of(job, three_regions) == (CHART / "files" / "etcd_auth.py").read_text()
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_auth_job_sets_up_etcd_for_the_center_again_and_again(
    three_regions: list[Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Job's script, run with the Job's environment and files on a real etcd that requires client
    certificates: it turns authentication on, and a second run (an upgrade) keeps it; then the center, started by
    the real CLI from its config.toml, opens its store on it as its user. A root password that is not etcd's
    stops the Job, saying so."""
    now = datetime.now(UTC)
    authority = new_ca(now, 1)
    tls_secret = f"{ETCD}-tls"
    certificate = _certificate_for(three_regions, tls_secret)
    # As cert-manager issues it, with no common name: etcd's JSON gateway, which the Job calls, refuses a client
    # certificate with one once authentication is on.
    assert "commonName" not in certificate
    leaf = _without_common_name(authority, now, [*certificate["dnsNames"], "localhost", "127.0.0.1"])
    backend = _write_tls(tmp_path / "etcd-tls", leaf, authority)
    job = _auth_job(three_regions)
    with etcd_server(tls=backend) as server:
        run = functools.partial(_run_job, job, three_regions, tmp_path, leaf, authority, server.port)
        first = run()
        assert first.returncode == 0, first.stderr
        assert "turned on" in first.stdout
        again = run()
        assert again.returncode == 0, again.stderr
        assert "kept" in again.stdout

        [center] = _workloads(three_regions, "StatefulSet", "center").values()
        config = _start(center, three_regions, authority, now, tmp_path / "center", monkeypatch)
        assert isinstance(config, CenterConfig)
        assert (config.store_access.user, config.store_access.password) == ("quota-center", PASSWORD)
        store_url = urlsplit(config.store)._replace(netloc=f"localhost:{server.port}").geturl()
        asyncio.run(_open_store_once(store_url, config))

        wrong = run(root_password="not root's")
        assert wrong.returncode != 0
        assert "root password Secret" in wrong.stderr


def test_existing_backends_take_their_tls_and_user_settings_from_values(
    render: Render, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing etcd over TLS with a CA and a client certificate of its own and a user; existing Redis over TLS
    with a managed CA, as a user; plaintext Redis as before; a URL from a Secret with a client certificate. Each
    setting is a mounted Secret's file, and the real CLI takes them."""
    manifests = render(THREE_REGIONS, SECURED_EXTERNAL)
    assert not [_name(item) for item in manifests if item["kind"] in ("StatefulSet", "Job", "Secret")
                and item["metadata"]["labels"]["app.kubernetes.io/component"] in ("redis", "etcd")]  # fmt: skip
    [center] = _workloads(manifests, "StatefulSet", "center").values()
    settings = _settings(center, manifests, "center")
    assert settings["store"] == "etcds://etcd.db:2379/shop/quota"
    assert settings["etcd-user"] == "shop-center"
    assert _secret_file(center, settings["etcd-password-file"]) == ("etcd-login", "pw")
    assert _secret_file(center, settings["etcd-ca"]) == ("etcd-ca", "ca.crt")
    assert _secret_file(center, settings["etcd-cert"]) == ("center-etcd-cert", "tls.crt")
    assert _secret_file(center, settings["etcd-key"]) == ("center-etcd-cert", "tls.key")

    agents = _workloads(manifests, "Deployment", "agent")
    eu = _settings(agents[f"{RELEASE}-quota-agent-eu"], manifests, "agent")
    assert eu["ledger"] == "rediss://quota-eu@redis.eu.example:6380/2"
    assert _secret_file(agents[f"{RELEASE}-quota-agent-eu"], eu["ledger-password-file"]) == (
        "redis-eu-login",
        "password",
    )
    assert _secret_file(agents[f"{RELEASE}-quota-agent-eu"], eu["ledger-ca"]) == ("managed-redis-ca", "root.pem")
    us = _settings(agents[f"{RELEASE}-quota-agent-us"], manifests, "agent")
    assert us["ledger"] == "redis://redis.us.example:6379/0"
    assert not {key for key in us if key.startswith("ledger-")}
    ap = _settings(agents[f"{RELEASE}-quota-agent-ap"], manifests, "agent")
    assert ap["ledger"] == {"secretKeyRef": {"name": "quota-redis-ap", "key": "url"}}
    assert _secret_file(agents[f"{RELEASE}-quota-agent-ap"], ap["ledger-cert"]) == ("ap-redis-client", "tls.crt")

    now = datetime.now(UTC)
    authority = new_ca(now, 1)
    config = _start(center, manifests, authority, now, tmp_path / "center", monkeypatch)
    assert isinstance(config, CenterConfig)
    assert (config.store_access.user, config.store_access.password) == ("shop-center", PASSWORD)
    assert config.store_access.ca is not None
    assert config.store_access.ca.parent.name == "etcd-ca"
    agent = _start(agents[f"{RELEASE}-quota-agent-eu"], manifests, authority, now, tmp_path / "eu", monkeypatch)
    assert isinstance(agent, AgentConfig)
    assert agent.ledger_access.password == PASSWORD
    assert agent.ledger_access.ca is not None
    assert agent.ledger_access.ca.parent.name == "redis-ca"

    # Without a passwordSecret an existing etcd is reached without a user, as before.
    plain = _settings(
        next(iter(_workloads(render(THREE_REGIONS, EXTERNAL_STORES), "StatefulSet", "center").values())),
        render(THREE_REGIONS, EXTERNAL_STORES),
        "center",
    )
    assert not {key for key in plain if key.startswith("etcd-")}


def test_own_password_secrets_replace_the_generated_ones(render: Render) -> None:
    values = {
        "regions": [{"name": "eu", "redis": {"passwordSecret": {"name": "eu-redis", "key": "secret"}}}],
        "etcd": {"auth": {"passwordSecret": {"name": "center-etcd"}, "rootPasswordSecret": {"name": "etcd-root"}}},
    }
    manifests = render(values)
    assert not [item for item in manifests if item["kind"] == "Secret"]
    agent = _workloads(manifests, "Deployment", "agent")[f"{RELEASE}-quota-agent-eu"]
    settings = _settings(agent, manifests, "agent")
    assert _secret_file(agent, settings["ledger-password-file"]) == ("eu-redis", "secret")
    redis_server = _workloads(manifests, "StatefulSet", "redis")[f"{RELEASE}-quota-redis-eu"]
    assert _mounted(redis_server, "/etc/redis/password/password") == ("eu-redis", "secret")
    job = _auth_job(manifests)
    job_env = {item["name"]: item["value"] for item in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert _mounted(job, job_env["ROOT_PASSWORD_FILE"]) == ("etcd-root", "password")
    assert _mounted(job, job_env["CENTER_PASSWORD_FILE"]) == ("center-etcd", "password")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"center": {"config": {"etcd-user": "x"}}}, "center.config.etcd-user is set by the chart: use etcd.auth"),
        ({"agent": {"config": {"ledger-password-file": "/x"}}}, "agent.config.ledger-password-file is set by the"),
        ({"regions": [{"name": "eu", "redis": {"tls": {"caSecret": {"name": "x"}}}}]}, "apply to an existing Redis"),
        (
            {"regions": [{"name": "eu", "redis": {"url": "redis://r:6379/0", "tls": {"clientSecret": "c"}}}]},
            "redis.url is not rediss://",
        ),
        (
            {"regions": [{"name": "eu", "redis": {"url": "rediss://r:6379/0", "tls": {"secretName": "r"}}}]},
            "regions[eu].redis.tls.secretName is the bundled Redis's certificate",
        ),
        ({"etcd": {"endpoints": ["e:2379"], "tls": {"caSecret": {"name": "x"}}}}, "set etcd.tls.enabled=true"),
        ({"etcd": {"tls": {"clientSecret": "x"}}}, "apply to an existing etcd"),
        ({"etcd": {"auth": {"user": ""}}}, "etcd.auth.user"),
        ({"etcd": {"auth": {"passwordSecret": {"key": "x"}}}}, "etcd.auth.passwordSecret"),
    ],
)
def test_impossible_backend_values_are_refused_naming_the_setting(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    stderr = refusal(helm, tmp_path, values)
    assert message in stderr, stderr


def _flags(args: list[str]) -> dict[str, str]:
    """redis-server's --flag value pairs."""
    return dict(zip(args[::2], args[1::2], strict=True))


def _mounted(workload: Manifest, path: str, container: dict[str, Any] | None = None) -> tuple[str, str]:
    """The (Secret, key) that file `path` of the container (default: the pod's only one) is."""
    pod = workload["spec"]["template"]["spec"]
    if container is None:
        [container] = pod["containers"]
    file = PurePath(path)
    [mount] = [item for item in container["volumeMounts"] if PurePath(item["mountPath"]) == file.parent]
    assert mount.get("readOnly") is True, mount
    [volume] = [item for item in pod["volumes"] if item["name"] == mount["name"]]
    items = {item["path"]: item["key"] for item in volume["secret"]["items"]}
    return volume["secret"]["secretName"], items[file.name]


def _certificate_for(manifests: list[Manifest], secret: str) -> dict[str, Any]:
    [certificate] = [
        item for item in manifests if item["kind"] == "Certificate" and item["spec"]["secretName"] == secret
    ]
    spec: dict[str, Any] = certificate["spec"]
    assert {"server auth", "client auth"} <= set(spec["usages"])
    return spec


def _auth_job(manifests: list[Manifest]) -> Manifest:
    [job] = [item for item in manifests if item["kind"] == "Job"]
    assert job["metadata"]["name"] == f"{ETCD}-auth"
    return job


def _script_of(job: Manifest, manifests: list[Manifest]) -> str:
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    script = PurePath(container["command"][1])
    [mount] = [item for item in container["volumeMounts"] if PurePath(item["mountPath"]) == script.parent]
    [volume] = [item for item in pod["volumes"] if item["name"] == mount["name"]]
    text: str = _only(manifests, "ConfigMap", volume["configMap"]["name"])["data"][script.name]
    return text


def _materialize(
    workload: Manifest, manifests: list[Manifest], directory: Path, contents: dict[tuple[str, str], bytes]
) -> Callable[[str], str]:
    """Every volume of the workload's pod as a local directory (a Secret's keys from `contents`, else the
    password; a ConfigMap's data; empty otherwise). Returns what turns the pod's paths into the local ones."""
    pod = workload["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    paths: dict[str, Path] = {}
    for container in (*pod.get("initContainers", []), *pod["containers"]):
        for mount in container["volumeMounts"]:
            local = directory / mount["name"]
            paths[mount["mountPath"]] = local
            local.mkdir(parents=True, exist_ok=True)
            volume = volumes.get(mount["name"], {})
            if "secret" in volume:
                for item in volume["secret"]["items"]:
                    key = (volume["secret"]["secretName"], item["key"])
                    (local / item["path"]).write_bytes(contents.get(key, f"{PASSWORD}\n".encode()))
            elif "configMap" in volume:
                for key, text in _only(manifests, "ConfigMap", volume["configMap"]["name"])["data"].items():
                    (local / key).write_text(text)

    def local_paths(text: str) -> str:
        for path in sorted(paths, key=len, reverse=True):
            text = re.sub(rf"{re.escape(path)}(?=/|\b|$)", str(paths[path]), text)
        return text

    return local_paths


def _probe_command(probe: dict[str, Any], local: Callable[[str], str], chart_port: int, port: int) -> list[str]:
    command = [local(part) for part in probe["exec"]["command"]]
    return [part.replace(f"-p {chart_port}", f"-p {port}") for part in command]


def _wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)


def _without_common_name(authority: Issued, now: datetime, hosts: list[str]) -> Issued:
    """A serving and client certificate for `hosts` with an empty subject, as cert-manager issues one from a
    Certificate without commonName."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(authority.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def _write_tls(directory: Path, leaf: Issued, authority: Issued) -> ServerTls:
    directory.mkdir()
    files = ServerTls(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    files.cert.write_bytes(leaf.cert_pem)
    files.key.write_bytes(leaf.key_pem)
    files.ca.write_bytes(authority.cert_pem)
    return files


def _run_job(
    job: Manifest,
    manifests: list[Manifest],
    directory: Path,
    leaf: Issued,
    authority: Issued,
    port: int,
    root_password: str = PASSWORD,
) -> subprocess.CompletedProcess[str]:
    """The Job's container run here: its script, environment and files, etcd at localhost:`port`."""
    secret = f"{ETCD}-tls"
    contents = {(secret, "tls.crt"): leaf.cert_pem, (secret, "tls.key"): leaf.key_pem}
    contents |= {(secret, "ca.crt"): authority.cert_pem, (f"{ETCD}-root-password", "password"): root_password.encode()}
    local = _materialize(job, manifests, directory / f"job-{len(list(directory.glob('job-*')))}", contents)
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: local(item["value"]) for item in container["env"]}
    env["ETCD_ENDPOINT"] = f"https://localhost:{port}"
    env["WAIT_SECONDS"] = "10"
    command = [sys.executable if part == "python" else local(part) for part in container["command"]]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False)


async def _open_store_once(url: str, config: CenterConfig) -> None:
    """open_store as the center runs it: TLS with its own certificate, logged in as its user; then a write and a
    read under its prefix."""
    store, _ = await open_store(url, SystemClock(), 2, config.store_access, config.security.tls)
    try:
        assert await store.load_all() == []
    finally:
        await store.close()
