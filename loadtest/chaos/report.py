"""A chaos run's summary for a person: what was broken and how often, what clients saw, what was found, and on a
failing run how to replay it."""

from __future__ import annotations

from typing import Any


def render(summary: dict[str, Any], saved: str = "") -> str:
    """`saved`: where the summary was written, so a failing run can be replayed from it."""
    lines = [f"quota chaos: {summary['stack']} stack, seed {summary['seed']}, {summary['seconds']:g} s"]
    lines.append(f"  {'fault':<12} {'injected':>8} {'in flight':>9} {'violations':>10} {'serve again':>11}")
    for kind, row in sorted(summary["faults"].items()):
        again = row.get("serve_again_s")
        worst = f"{again['max']:.2f} s" if again else "-"
        lines.append(f"  {kind:<12} {row['injected']:>8} {row['in_flight']:>9} {row['violations']:>10} {worst:>11}")
    if summary["failover_s"]:
        lines.append(f"  failover: longest {max(summary['failover_s']):.2f} s of {len(summary['failover_s'])}")
    operations = ", ".join(f"{count} {status}" for status, count in summary["operations"].items())
    lines.append(f"  operations: {operations}")
    found = {kind: count for kind, count in summary["violations"].items() if count}
    if not found:
        lines.append("  violations: none")
        return "\n".join(lines)
    lines.append("  violations: " + ", ".join(f"{count} {kind}" for kind, count in found.items()))
    lines += [f"    - {example}" for example in summary["examples"]]
    if saved:
        lines.append(
            f"  replay: quota chaos --stack {summary['stack']} --seconds {summary['seconds']:g} "
            f"--seed {summary['seed']} --schedule {saved}"
        )
    return "\n".join(lines)
