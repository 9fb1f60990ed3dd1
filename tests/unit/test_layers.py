"""The layering, checked over every import in the repository (including imports inside functions):

    quota_cli ─▶ loadtest ─▶ quota_testing ─▶ quota_client ─▶ quota_center, region_agent ─▶ quota_common
                                  └──────▶ quota_console ─▶ quota_admin ─▶ quota_center (its published API)

- quota_common imports nothing of ours;
- the center and the agent never import each other, with one door: the gRPC adapter of the agent's port to
  the center (`region_agent.grpc_center`; the port, `region_agent.center_port`, speaks domain types) sees
  the center's published API, its generated stubs and the shared model's mapping onto them
  (`quota_center.v1`, `quota_center.wire`);
- protobuf stops at the edges: the servers, the center's conversions and the port's gRPC adapter;
- the client library for order services (`quota_client`) sees of the agent only its published API
  (`region_agent.v1`), so that it imports without the servers' code; but for `quota_client.embedded`, the
  agent run inside the order service, which is the agent's code behind the client's methods;
- people's tools reach the center through one admin client (`quota_admin`), which the command line and the
  web console (`quota_console`) share; both see of the center only what any client of its admin API may
  (`quota_center.v1`, `quota_center.wire`, and `quota_center.audit` to check the trail's hash chain), and
  the console sees nothing of the agents, the tools or the command line: it is a client of the admin API,
  holding no state of its own and no write the CLI does not have;
- nothing but tests imports tests.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "quota_common", "quota_center", "region_agent", "quota_client", "quota_testing", "loadtest", "quota_admin",
    "quota_console", "quota_cli", "tests",
)  # fmt: skip
MAY_IMPORT = {
    "quota_common": set(),
    "quota_center": {"quota_common"},
    "region_agent": {"quota_common"},
    "quota_client": {"quota_common", "region_agent"},
    "quota_testing": {"quota_common", "quota_center", "region_agent", "quota_client", "quota_admin", "quota_console"},
    "loadtest": {
        "quota_common",
        "quota_center",
        "region_agent",
        "quota_client",
        "quota_testing",
        "quota_admin",
        "quota_console",
    },
    "quota_admin": {"quota_common", "quota_center"},
    "quota_console": {"quota_common", "quota_center", "quota_admin"},
    "quota_cli": set(PACKAGES) - {"quota_cli", "tests"},
    "tests": set(PACKAGES),
}
CLIENT_SEES = "region_agent.v1"
"""All the client library may import of the agent: its published API."""
CLIENT_EMBEDS = "quota_client.embedded"
"""The client's one module that runs the agent itself, imported only by who embeds it."""
CENTER_API = ("quota_center.v1", "quota_center.wire")
PEOPLES_TOOLS = ("quota_admin", "quota_console")
TOOLS_SEE = (*CENTER_API, "quota_center.audit")
"""All the admin client and the console may import of the center: its published API, and the audit
trail's record format to check its chain."""
PORT = "region_agent.grpc_center"
PROTOBUF_EDGES = {
    "quota_center.v1": {"quota_center.server", "quota_center.convert", "quota_center.wire", PORT},
    "region_agent.v1": {"region_agent.server"},
}
"""Within the services, who may touch each generated API (tools, tests and the CLI may use both)."""
SERVICES = ("quota_center", "region_agent", "quota_common")


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _client_sees(importer: str, target: str) -> bool:
    return importer == CLIENT_EMBEDS or _within(target, CLIENT_SEES)


def _within_any(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(_within(module, prefix) for prefix in prefixes)


def forbidden(imports: Mapping[str, set[str]]) -> list[str]:
    """Every import that breaks a rule above, as "importer -> imported: why"; `imports` maps each module of
    ours to the modules of ours it imports."""
    found = []
    for importer, imported in sorted(imports.items()):
        package = importer.split(".")[0]
        for target in sorted(imported):
            other = target.split(".")[0]
            if other not in PACKAGES or other == package:
                continue
            door = importer == PORT and any(_within(target, api) for api in CENTER_API)
            if other not in MAY_IMPORT[package] and not door:
                found.append(f"{importer} -> {target}: {package} may not import {other}")
            elif package == "quota_client" and other == "region_agent" and not _client_sees(importer, target):
                found.append(f"{importer} -> {target}: quota_client sees of region_agent only {CLIENT_SEES}")
            elif (
                package in PEOPLES_TOOLS and other == "quota_center" and not any(_within(target, a) for a in TOOLS_SEE)
            ):
                found.append(f"{importer} -> {target}: {package} sees of quota_center only {', '.join(TOOLS_SEE)}")
        if package == "quota_client" and importer != CLIENT_EMBEDS and CLIENT_EMBEDS in imported:
            found.append(f"{importer} -> {CLIENT_EMBEDS}: the rest of the client imports without the agent")
        for api, edges in PROTOBUF_EDGES.items():
            edge = importer in edges or _within(importer, api) or package not in SERVICES
            if not edge and any(_within(target, api) for target in imported):
                found.append(f"{importer} -> {api}: protobuf stops at {', '.join(sorted(edges))}")
    return found


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from quota_center import server` imports the module quota_center.server.
            found |= {_module_or_parent(node.module, alias.name) for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _module_or_parent(parent: str, name: str) -> str:
    child = ROOT.joinpath(*parent.split("."), name)
    return f"{parent}.{name}" if child.is_dir() or child.with_suffix(".py").is_file() else parent


def repository_imports() -> dict[str, set[str]]:
    return {module: _imports(path) for module, path in _modules()}


def test_the_repository_keeps_its_layers() -> None:
    imports = repository_imports()

    assert imports["region_agent.agent"], "the walk found the agent's imports"
    assert forbidden(imports) == []


def test_a_forbidden_import_is_named_with_its_rule() -> None:
    imports = repository_imports()
    imports["quota_center.center"] = imports["quota_center.center"] | {"region_agent.supply"}
    imports["quota_common.model"] = imports["quota_common.model"] | {"quota_center.ledger"}
    imports["region_agent.catalog_sync"] = imports["region_agent.catalog_sync"] | {"quota_center.v1.quota_center_pb2"}
    imports["quota_client.calls"] = imports["quota_client.calls"] | {"region_agent.ledger.base"}
    imports["quota_client.aio"] = imports["quota_client.aio"] | {"quota_client.embedded"}
    imports["quota_admin.client"] = imports["quota_admin.client"] | {"quota_center.center", "quota_cli.budget"}

    assert forbidden(imports) == [
        "quota_admin.client -> quota_center.center: quota_admin sees of quota_center only quota_center.v1, "
        "quota_center.wire, quota_center.audit",
        "quota_admin.client -> quota_cli.budget: quota_admin may not import quota_cli",
        "quota_center.center -> region_agent.supply: quota_center may not import region_agent",
        "quota_client.aio -> quota_client.embedded: the rest of the client imports without the agent",
        "quota_client.calls -> region_agent.ledger.base: quota_client sees of region_agent only region_agent.v1",
        "quota_common.model -> quota_center.ledger: quota_common may not import quota_center",
        "region_agent.catalog_sync -> quota_center.v1.quota_center_pb2: region_agent may not import quota_center",
        "region_agent.catalog_sync -> quota_center.v1: protobuf stops at quota_center.convert, quota_center.server, "
        "quota_center.wire, region_agent.grpc_center",
    ]
