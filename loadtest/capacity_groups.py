"""`quota bench capacity --groups 1,2,4`: the capacity measurement in front of several center groups on one etcd.

Each count of groups gets, per size, its own etcd with the shard map laid out evenly over the groups before any
promotion exists (`ShardMap.even`: each group owns about 1/N of the promotions), one center process per group
(`center serve --group NAME`), and the load generator's agents speaking to every group (`CenterGroups`). One
group is run as it always was: no map stored, no `--group`.

A row gains, per group: its pairs, its center's cores, its renew p99 (at the agents, and the center's bucket
bound). The capacity of a deployment is judged the way one group is (renew p99 < the limit, each center under
one core), and, since a machine of few cores cannot give every group its own, also predicted from CPU time,
which sharing the cores does not inflate: the pairs the deployment would hold when its busiest center reached
one core, if each center's CPU grew in proportion to its pairs (`predicted_pairs_at_one_core`; its fixed
costs scale too, so the prediction errs low). `group_capacity` sets that against one group's at the same size.
"""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path
from typing import Any

from loadtest.bench_groups import group_names, store_even
from loadtest.capacity_regions import promotion_id
from loadtest.capacity_report import cell
from loadtest.report import machine, splice
from quota_common.shards import DEFAULT_GROUP, ShardMap
from quota_testing.launch import ServerProcess, center_process

BASE = "/capacity"
"""The centers' store prefix (each other group's store is under it, `{BASE}/groups/NAME`)."""


async def lay_out(etcd: str, base: str, groups: int) -> ShardMap:
    """The map the groups serve by: stored evenly over `groups` groups; with one, the implicit map, not stored."""
    if groups == 1:
        return ShardMap.single()
    return await store_even(etcd, base, group_names(groups), "quota bench capacity")


def start_center(workdir: Path, etcd: str, base: str, group: str, groups: int) -> ServerProcess:
    """The center of `group`, its log in workdir/group/center.log; `--group` only when there are several."""
    (workdir / group).mkdir()
    extra = ("--metrics-listen", "127.0.0.1:0", *(("--group", group) if groups > 1 else ()))
    return center_process(workdir / group, *extra, store=f"etcd://{etcd}{base}").start()


def center_argument(centers: dict[str, ServerProcess]) -> str:
    """The generator's `--center`: a bare address for one group (as a deployment without groups names it)."""
    if list(centers) == [DEFAULT_GROUP]:
        return centers[DEFAULT_GROUP].address
    return ",".join(f"{group}={center.address}" for group, center in centers.items())


def promoted(shard_map: ShardMap, promotions: int) -> dict[str, int]:
    """Promotions per group, by the map, of `cap-000000` ... (the generator's ids)."""
    owned = Counter(shard_map.owner_of(promotion_id(n)) for n in range(promotions))
    return {group: owned[group] for group in shard_map.groups}


def group_figures(
    pairs: dict[str, int],
    cores: dict[str, float],
    renew_p99_ms: dict[str, float],
    center_renew_p99_ms: dict[str, float | None],
) -> dict[str, Any]:
    """A row's figures per group (`pairs`: active pairs each group serves; `cores`: its center's CPU seconds per
    second), and the pairs the deployment would serve when its busiest center reached one core."""
    busiest = max(cores.values())
    return {
        "groups": len(pairs),
        "group_pairs": pairs,
        "group_cores": {group: round(used, 3) for group, used in cores.items()},
        "group_cores_per_1k_pairs": {
            group: round(1000 * cores[group] / served, 4) if served else None for group, served in pairs.items()
        },
        "group_renew_p99_ms": renew_p99_ms,
        "group_center_renew_p99_ms_at_most": center_renew_p99_ms,
        "center_cores_max": round(busiest, 3),
        "predicted_pairs_at_one_core": round(sum(pairs.values()) / busiest) if busiest > 0 else None,
    }


def fitted_pairs_at_one_core(rows: list[dict[str, Any]]) -> int | None:
    """Where the line through the two largest sizes (the busiest center's cores against the pairs) reaches one
    core: a fixed cost and a cost per pair, so unlike `predicted_pairs_at_one_core` the fixed cost does not scale.
    None with one size, or when the line does not rise (too little CPU to tell the sizes apart)."""
    if len(rows) < 2:
        return None
    small, large = sorted(rows, key=lambda row: row["pairs"])[-2:]
    rise = large["center_cores_max"] - small["center_cores_max"]
    if rise <= 0 or large["pairs"] == small["pairs"]:
        return None
    per_pair = rise / (large["pairs"] - small["pairs"])
    fixed = large["center_cores_max"] - per_pair * large["pairs"]
    return round((1 - fixed) / per_pair) if fixed < 1 else None


def _ratio(value: int | None, one: int | None) -> float | None:
    return round(value / one, 2) if value and one else None


def group_capacity(rows_by_count: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per count of groups, at the largest size measured (where fixed costs weigh least): the predicted pairs at
    one core, the fitted ones (`fitted_pairs_at_one_core`), their ratios to one group's; and the largest size
    measured within the limits (None: none was)."""

    def largest(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return max(rows, key=lambda row: row["pairs"])

    one = largest(rows_by_count[1])["predicted_pairs_at_one_core"]
    one_fitted = fitted_pairs_at_one_core(rows_by_count[1])
    summary = []
    for count, rows in sorted(rows_by_count.items()):
        row = largest(rows)
        predicted, fitted = row["predicted_pairs_at_one_core"], fitted_pairs_at_one_core(rows)
        within = [candidate["pairs"] for candidate in rows if candidate["within_limits"]]
        summary.append(
            {
                "groups": count,
                "pairs": row["pairs"],
                "renew_p50_ms": row["renew_p50_ms"],
                "renew_p99_ms": row["renew_p99_ms"],
                "renew_failed": row["renew_failed"],
                "center_cores": row["center_cpu_per_s"],
                "center_cores_max": row["center_cores_max"],
                "predicted_pairs_at_one_core": predicted,
                "ratio_to_one_group": _ratio(predicted, one),
                "fitted_pairs_at_one_core": fitted,
                "fitted_ratio_to_one_group": _ratio(fitted, one_fitted),
                "largest_pairs_within_limits": max(within, default=None),
            }
        )
    return summary


GROUP_COLUMNS = {
    "groups": "groups",
    "pairs": "pairs",
    "renew_p50_ms": "p50 ms",
    "renew_p99_ms": "p99 ms",
    "renew_failed": "failed",
    "center_cores": "centers' cores",
    "center_cores_max": "busiest center",
    "predicted_pairs_at_one_core": "pairs at 1 core",
    "ratio_to_one_group": "ratio",
    "fitted_pairs_at_one_core": "fitted at 1 core",
    "fitted_ratio_to_one_group": "fitted ratio",
    "largest_pairs_within_limits": "within limits up to",
}
"""The table of `group_capacity` (one row per count of groups)."""
START = "<!-- capacity groups: written by `quota bench capacity --groups ... --docs docs`, do not edit by hand -->"
END = "<!-- end capacity groups -->"


def _cell(value: object) -> str:
    return "-" if value is None else cell(value)


def cells(summary: dict[str, Any]) -> list[str]:
    """One count of groups' row of the table."""
    return [_cell(summary[key]) for key in GROUP_COLUMNS]


def ratio_line(summary: list[dict[str, Any]]) -> str:
    def ratios(key: str) -> str:
        return ", ".join(
            f"{row['groups']} groups " + ("-" if row[key] is None else f"{row[key]}x") for row in summary[1:]
        )

    line = "capacity relative to one group (pairs when the busiest center reaches one core): "
    line += ratios("ratio_to_one_group")
    if any(row["fitted_ratio_to_one_group"] for row in summary[1:]):
        line += f"; by the line through the two largest sizes: {ratios('fitted_ratio_to_one_group')}"
    return line


def group_table(summary: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(GROUP_COLUMNS.values()) + " |", "|" + "---|" * len(GROUP_COLUMNS)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in summary]
    return "\n".join(lines)


def section(figures: dict[str, Any], command: str) -> str:
    summary = figures["group_capacity"]
    sizes = sorted({row["pairs"] for row in figures["rows"]})
    return "\n".join(
        [
            START,
            f"Measured {datetime.date.today().isoformat()} on {machine()}, with `{command}`: "
            f"{figures['regions']} regions, {figures['selling']:.0%} of the promotions selling, "
            f"{figures['orders_per_s']:,.0f} orders/s offered, {figures['seconds']:g} s measured per size "
            f"({', '.join(f'{pairs:,}' for pairs in sizes)} active pairs) at each count of groups; "
            "figures of the largest size. The machine's load average (1 min) at the end of each run: "
            f"{', '.join(str(row['load_average_1m']) for row in [*figures['rows'], *figures['group_rows']])}.",
            "",
            group_table(summary),
            "",
            f"**{ratio_line(summary)[0].upper()}{ratio_line(summary)[1:]}.**",
            END,
        ]
    )


def write(figures: dict[str, Any], docs: Path, command: str) -> Path:
    """Replaces the groups' section of docs/benchmarks.md (appended the first time); one group's is left alone."""
    docs.mkdir(parents=True, exist_ok=True)
    page = docs / "benchmarks.md"
    splice(page, START, END, section(figures, command))
    return page
