"""`quota shards`: the shard map of a deployment of several center groups on etcd.

    quota shards show   --store etcd://HOST:PORT[/PREFIX]
    quota shards resize --store etcd://... --groups default,g1,g2,g3 [--yes]
    quota shards audit  --store etcd://...

`resize` stores the plan (the slots that change hands and their targets) by compare-and-swap on the map's
version, with an audit record; each source group's leader then moves its slots (drain, seal, copy, flip:
`quota_center.shard_move`). Start the new groups' centers (`quota center serve --group NAME`) first.

A secured etcd is reached as `quota center serve` reaches it, with the same options and QUOTA_ variables
(`quota_cli.backends`): etcds:// with --etcd-ca, --etcd-cert and --etcd-key (defaulting to --tls-ca, --tls-cert
and --tls-key), and --etcd-user with --etcd-password-file. The user needs readwrite on the store's prefix.
"""

from __future__ import annotations

import asyncio
import functools
import getpass
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from quota_center.app import etcd_access, etcd_location
from quota_center.store.etcd import EtcdAccess, EtcdStore
from quota_center.store.etcd_shards import EtcdShards, Layout, shards_key
from quota_cli.backends import etcd_options, store_access
from quota_cli.security import tls_file_options
from quota_common.config import bind_environment
from quota_common.errors import ConfigError, FailedPrecondition
from quota_common.shards import moves, rebalance
from quota_common.tls import tls_files

T = TypeVar("T")


@dataclass(frozen=True)
class _Etcd:
    url: str
    access: EtcdAccess


def _on_etcd(command: Callable[..., None]) -> Callable[..., None]:
    """--store and the settings that reach a secured etcd, as `quota center serve` takes them (the TLS files
    defaulting to --tls-cert, --tls-key and --tls-ca), handed to `command` as one `_Etcd`, checked first."""

    @functools.wraps(command)
    def on_etcd(
        store: str,
        etcd_ca: Path | None,
        etcd_cert: Path | None,
        etcd_key: Path | None,
        etcd_user: str,
        etcd_password_file: Path | None,
        tls_cert: Path | None,
        tls_key: Path | None,
        tls_ca: Path | None,
        **rest: Any,
    ) -> None:
        access = store_access(etcd_ca, etcd_cert, etcd_key, etcd_user, etcd_password_file)
        command(_Etcd(store, etcd_access(store, access, tls_files(tls_cert, tls_key, tls_ca))), **rest)

    store = click.option(
        "--store",
        required=True,
        help="The centers' etcd: etcd://HOST:PORT[,HOST:PORT...][/PREFIX], or etcds://... for etcd over TLS, as "
        "given to quota center serve.",
    )
    return store(etcd_options("operator")(tls_file_options(on_etcd)))


@click.group()
def shards() -> None:
    """The shard map: which center group serves which promotions."""


@shards.command()
@_on_etcd
def show(etcd: _Etcd) -> None:
    """Print the map: its version, each group's slot count, and the slots being handed over."""
    layout = _run(etcd, lambda map_: map_.read())
    click.echo(describe(layout))


@shards.command()
@_on_etcd
@click.option("--groups", "names", required=True, help="The groups the map should have, comma-separated.")
@click.option("--yes", is_flag=True, help="Store the plan without asking.")
def resize(etcd: _Etcd, names: str, yes: bool) -> None:
    """Plan a change of the groups: the fewest slots move, each only after its regions gave back what they hold."""
    groups = [name.strip() for name in names.split(",") if name.strip()]

    async def plan(map_: EtcdShards) -> Layout:
        before = await map_.read()
        if before.moving:
            raise FailedPrecondition(
                f"{len(before.moving)} slots are still being handed over; wait until quota shards show lists none"
            )
        try:
            target = rebalance(before.shard_map, groups)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--groups") from None
        moving = {slot: to for slot, (_, to) in moves(before.shard_map, target).items()}
        click.echo(f"{len(moving)} of {target.slots} slots change hands: {_flows(before, moving)}")
        if moving and not (yes or click.confirm("store this plan?")):
            raise click.Abort
        after = before.next(moving=moving)
        if moving and not await map_.replace(before, after, f"operator {getpass.getuser()}"):
            raise FailedPrecondition("the shard map changed while planning; run quota shards resize again")
        return after

    layout = _run(etcd, plan)
    click.echo(describe(layout))


@shards.command()
@_on_etcd
def audit(etcd: _Etcd) -> None:
    """Every change of the map: its version, who made it and when, and what it planned or handed over."""
    for record in _run(etcd, lambda map_: map_.audit()):
        when = datetime.fromtimestamp(record["at_ms"] / 1000, UTC).isoformat(timespec="seconds")
        owners, planned = record["owners"], record["planned"]
        flows = ", ".join(sorted({f"{source} -> {target}" for source, target in owners.values()}))
        change = f"{len(planned)} slots planned to move" if planned else f"{len(owners)} slots handed over ({flows})"
        click.echo(f"version {record['version']}  {when}  {record['actor']}: {change}")


def describe(layout: Layout) -> str:
    counts = Counter(layout.shard_map.owners)
    lines = [f"shard map version {layout.shard_map.version}, {layout.shard_map.slots} slots"]
    lines += [f"  {group}: {counts[group]} slots" for group in sorted(counts)]
    if layout.moving:
        lines.append(f"  being handed over: {_flows(layout, layout.moving)}")
    return "\n".join(lines)


def _flows(layout: Layout, moving: dict[int, str]) -> str:
    flows = Counter((layout.shard_map.owners[slot], target) for slot, target in moving.items())
    return ", ".join(f"{n} {source} -> {target}" for (source, target), n in sorted(flows.items())) or "none"


def _run(etcd: _Etcd, work: Callable[[EtcdShards], Awaitable[T]]) -> T:
    endpoints, base = etcd_location(etcd.url)
    if not endpoints:
        raise ConfigError(f"--store {etcd.url!r}: the shard map lives in etcd; give etcd://HOST:PORT[/PREFIX]")

    async def run() -> T:
        store = await EtcdStore.connect(endpoints, base, etcd.access)
        try:
            return await work(EtcdShards(store, shards_key(base)))
        finally:
            await store.close()

    return asyncio.run(run())


for _command in (show, resize, audit):
    bind_environment(_command)
