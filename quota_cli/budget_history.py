"""`quota budget history ID`: a promotion's usage over time by region, as a table, JSON or a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from quota_admin.client import AdminClient
from quota_center.v1 import quota_center_pb2 as pb
from quota_cli import budget_view as view
from quota_cli.budget import json_flag
from quota_cli.chart import colour_names, line_chart
from quota_common.clock import iso


def _document(history: pb.History) -> dict[str, Any]:
    return {
        "promotion_id": history.promotion_id,
        "budget": history.budget,
        "regions": [
            {
                "region": region.region,
                "points": [
                    {"at": iso(point.at.ToMilliseconds()), "consumed": point.consumed, "granted": point.granted}
                    for point in region.points
                ],
            }
            for region in history.regions
        ],
    }


@click.command()
@click.argument("promotion_id", metavar="ID")
@click.option(
    "--png",
    "png",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw consumed by region over time into this PNG file.",
)
@json_flag
@click.pass_obj
def history(center: AdminClient, promotion_id: str, png: Path | None, as_json: bool) -> None:
    """How promotion ID was spent over time, by region: consumed and granted (net of returns) so far, every
    10 s for the last hour, every 5 min for two days, hourly before."""
    answer = center.call(lambda admin: admin.GetHistory, pb.GetHistoryRequest(promotion_id=promotion_id))
    document = _document(answer)
    if png is not None:
        series = {r.region: [(p.at.ToMilliseconds(), p.consumed) for p in r.points] for r in answer.regions}
        try:
            png.write_bytes(line_chart(series))
        except OSError as error:
            raise click.UsageError(f"cannot write --png {png}: {error.strerror}") from None
        colours = ", ".join(f"{region} {colour}" for region, colour in colour_names(list(series)).items())
        click.echo(f"wrote {png}: consumed by region over time ({colours or 'no region spent yet'})", err=as_json)
    if as_json:
        view.print_json(document)
        return
    if not document["regions"]:
        click.echo(f"no history of {promotion_id} yet: no region has held quota of it, or no sample was taken")
        return
    table = Table("region", "at (UTC)", "consumed", "granted", title=f"{promotion_id}: budget {answer.budget}")
    for region in document["regions"]:
        for point in region["points"]:
            table.add_row(region["region"], point["at"], str(point["consumed"]), str(point["granted"]))
    view.print_table(table)
