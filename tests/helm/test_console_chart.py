"""The chart's web console (console.enabled): off by default; when on, a Deployment and Service that are valid
Kubernetes, run `quota console` with flags it accepts, read the users file, CA and session key from the Secret
the values name, call this release's center in its trust domain, and keep passwords off plain HTTP unless a
proxy in front terminates TLS."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest

from quota_cli.console import console
from tests.helm.chart import RELEASE, THREE_REGIONS, Helm, Manifest, Render, refusal

ON: dict[str, Any] = {"console": {"enabled": True, "usersSecret": "quota-console-people"}}
NAME = f"{RELEASE}-quota-console"


def _console(manifests: list[Manifest]) -> tuple[Manifest, Manifest]:
    [deployment] = [m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == NAME]
    [service] = [m for m in manifests if m["kind"] == "Service" and m["metadata"]["name"] == NAME]
    return deployment, service


def _options(deployment: Manifest) -> dict[str, Any]:
    """The container's arguments as `quota console` parses them (an unknown flag fails here, not in a pod)."""
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "console"
    context = console.make_context("console", list(container["args"][1:]), resilient_parsing=True)
    return dict(context.params)


def test_the_console_is_off_by_default(render: Render) -> None:
    names = [manifest["metadata"]["name"] for manifest in render(THREE_REGIONS)]

    assert not [name for name in names if "console" in name]


@pytest.mark.parametrize("https", [False, True])
def test_the_console_is_valid_kubernetes_and_runs_as_configured(render: Render, https: bool) -> None:
    values: dict[str, Any] = {"console": {**ON["console"], "webTlsSecret": "console-web-tls" if https else ""}}
    deployment, service = _console(render(THREE_REGIONS, values, {"tls": {"trustDomain": "shop.example"}}))

    for manifest in (deployment, service):
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    options = _options(deployment)
    assert options["addresses"] == (f"{RELEASE}-quota-center:50051",)
    assert options["trust_domain"] == "shop.example"
    assert not options["insecure"], "the console calls the center with mutual TLS, always"
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {mount["name"]: PurePosixPath(mount["mountPath"]) for mount in container["volumeMounts"]}
    secrets = {volume["name"]: volume["secret"]["secretName"] for volume in pod["volumes"]}
    assert secrets["users"] == "quota-console-people"
    for option in ("users", "tls_ca", "session_key_file"):
        assert Path(options[option]).parent == Path(mounts["users"]), option
    assert options["web_plaintext"] is not https
    if https:
        assert secrets["web-tls"] == "console-web-tls"
        assert Path(options["web_cert"]).parent == Path(mounts["web-tls"])
    assert {probe["httpGet"]["scheme"] for probe in (container["readinessProbe"], container["livenessProbe"])} == {
        "HTTPS" if https else "HTTP"
    }
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["web"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"]


def test_the_console_needs_its_users_secret(helm: Helm, tmp_path: Path) -> None:
    stderr = refusal(helm, tmp_path, {"console": {"enabled": True}})

    assert "console.usersSecret" in stderr
