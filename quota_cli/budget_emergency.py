"""`quota budget emergency`: the switch above single promotions, for operators."""

from __future__ import annotations

import click

from quota_admin.client import AdminClient
from quota_center.v1 import quota_center_pb2 as pb
from quota_cli import budget_view as view
from quota_cli.budget import json_flag, request_id_option


@click.command()
@click.argument("action", type=click.Choice(["freeze", "unfreeze"]))
@click.option("--region", default="", help="Only this region; empty: every region at once.")
@request_id_option
@json_flag
@click.pass_obj
def emergency(center: AdminClient, action: str, region: str, request_id: str, as_json: bool) -> None:
    """The emergency switch: freeze (or unfreeze) every promotion in one region, or everywhere. Agents
    refuse every deduction there as soon as they hear, and the center grants nothing; regions keep what
    they hold, so unfreezing resumes sales at once. Only operators may (an operator's --tls-cert)."""
    request = pb.SetEmergencyFreezeRequest(region=region, frozen=action == "freeze", request_id=request_id)
    switch, *_ = center.fan_out(lambda admin: admin.SetEmergencyFreeze, request)  # every group holds the switch
    regions = sorted(switch.regions)
    if as_json:
        view.print_json({"everywhere": switch.everywhere, "regions": regions, "revision": switch.revision})
    elif switch.everywhere:
        click.echo(f"the emergency switch freezes every region (revision {switch.revision})")
    elif regions:
        click.echo(f"the emergency switch freezes {', '.join(regions)} (revision {switch.revision})")
    else:
        click.echo(f"the emergency switch is off everywhere (revision {switch.revision})")
