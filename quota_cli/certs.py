"""`quota certs ...`: certificates for mutual TLS."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

LOOPBACK = "localhost,127.0.0.1,::1"
"""quota_testing.certs.LOOPBACK; not imported from there, so that `quota` starts without loading cryptography."""


@click.group()
def certs() -> None:
    """Certificates for mutual TLS: every link needs one, naming who holds it."""


def _names(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@certs.command("dev")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--trust-domain", default="quota", show_default=True, help="The SPIFFE trust domain of every identity.")
@click.option("--regions", default="eu,us,ap", show_default=True, help="Comma-separated: an agent and orders each.")
@click.option("--owners", default="alice", show_default=True, help="Comma-separated budget owners.")
@click.option("--approvers", default="bob", show_default=True, help="Comma-separated approvers.")
@click.option("--operators", default="carol", show_default=True, help="Comma-separated operators (emergency switch).")
@click.option(
    "--hosts",
    default=LOOPBACK,
    show_default=True,
    help="Comma-separated DNS names and IP addresses the center's and agents' certificates serve at.",
)
@click.option("--days", type=click.IntRange(1, 3650), default=90, show_default=True, help="How long all are valid.")
@click.option("--force", is_flag=True, help="Replace a CA already in DIRECTORY (and every certificate).")
def dev(
    directory: Path,
    trust_domain: str,
    regions: str,
    owners: str,
    approvers: str,
    operators: str,
    hosts: str,
    days: int,
    force: bool,
) -> None:
    """A development CA (ca.pem, ca-key.pem) and, per identity, NAME.pem and NAME-key.pem (keys 0600):
    center, agent-REGION, orders-REGION, owner-NAME, approver-NAME, operator-NAME, each with its
    identity as a SAN URI, such as spiffe://quota/region/eu/agent. Not for production."""
    from quota_common.identity import require_trust_domain
    from quota_testing.certs import DevPlan, dev_identities, require_hosts, serves, write_dev_set

    try:
        require_trust_domain(trust_domain)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--trust-domain") from None
    try:
        identities = dev_identities(trust_domain, _names(regions), _names(owners), _names(approvers), _names(operators))
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    try:
        plan = DevPlan(identities, require_hosts(_names(hosts)), days)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--hosts") from None
    write_dev_set(directory, plan, datetime.now(UTC), force=force)
    click.echo(f"wrote a development CA and {len(identities)} certificates to {directory} (valid {days} days):")
    click.echo("  ca.pem             the CA every process verifies its peers against (--tls-ca)")
    for name, identity in identities.items():
        role = "serves and calls" if serves(identity) else "calls"
        click.echo(f"  {name + '.pem':<18} {identity.uri}  ({role}; key {name}-key.pem)")
