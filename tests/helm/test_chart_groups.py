"""center.groups: one StatefulSet, Service and election per center group, the first named as a one-group release
always was, and a certificate every group's callers can check."""

from __future__ import annotations

from tests.helm.chart import THREE_REGIONS, Manifest, Render


def _centers(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {
        item["metadata"]["name"]: item
        for item in manifests
        if item["kind"] == kind and item["metadata"]["labels"]["app.kubernetes.io/component"].startswith("center")
    }


def test_each_group_is_a_statefulset_of_its_own_serving_its_group(render: Render) -> None:
    manifests = render(THREE_REGIONS, {"center": {"groups": 3}})
    sets = _centers(manifests, "StatefulSet")
    assert sorted(sets) == ["shop-quota-center", "shop-quota-center-g1", "shop-quota-center-g2"]
    args = {name: item["spec"]["template"]["spec"]["containers"][0]["args"] for name, item in sets.items()}
    assert args["shop-quota-center"] == ["center", "serve"]
    assert args["shop-quota-center-g2"] == ["center", "serve", "--group", "g2"]
    # No group's Service or disruption budget selects another group's pods.
    pods = {name: item["spec"]["template"]["metadata"]["labels"] for name, item in sets.items()}
    for kind, path in (("Service", ("spec", "selector")), ("PodDisruptionBudget", ("spec", "selector", "matchLabels"))):
        for name, item in _centers(manifests, kind).items():
            selector = item[path[0]][path[1]] if len(path) == 2 else item[path[0]][path[1]][path[2]]
            chosen = [set_name for set_name, labels in pods.items() if selector.items() <= labels.items()]
            assert len(chosen) == 1, (kind, name, chosen)


def test_the_center_certificate_names_every_group(render: Render) -> None:
    manifests = render(THREE_REGIONS, {"center": {"groups": 2}})
    (certificate,) = [
        item["spec"]
        for item in manifests
        if item["kind"] == "Certificate" and item["metadata"]["labels"]["app.kubernetes.io/component"] == "center"
    ]
    for service in ("shop-quota-center", "shop-quota-center-g1"):
        assert f"{service}.promotions.svc" in certificate["dnsNames"]
        assert (
            f"{service}-0.{service.replace('center', 'center-pods')}.promotions.svc.cluster.local"
            in certificate["dnsNames"]
        )


def test_one_group_renders_as_before(render: Render) -> None:
    sets = _centers(render(THREE_REGIONS), "StatefulSet")
    assert list(sets) == ["shop-quota-center"]


def test_agents_and_the_console_are_given_every_group(render: Render) -> None:
    manifests = render(THREE_REGIONS, {"center": {"groups": 2}, "console": {"enabled": True, "usersSecret": "people"}})
    groups = "default=shop-quota-center:50051,g1=shop-quota-center-g1:50051"
    configs = [
        item["data"]["config.toml"]
        for item in manifests
        if item["kind"] == "ConfigMap" and item["metadata"]["labels"]["app.kubernetes.io/component"] == "agent"
    ]
    assert configs
    assert all(f'center = "{groups}"' in config for config in configs)
    (console,) = [item for item in manifests if item["kind"] == "Deployment" and "console" in item["metadata"]["name"]]
    assert groups in console["spec"]["template"]["spec"]["containers"][0]["args"]
