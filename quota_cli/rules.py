"""`quota center check-rules [FILE]`: a guard rules file checked before a center loads it."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from quota_center.gate import shipped_rules
from quota_center.guard import load_rules
from quota_cli import budget_view as view
from quota_common.errors import ConfigError


@click.command("check-rules")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check_rules(file: Path | None) -> None:
    """Check the guard rules in FILE (without FILE: the ones the center ships) and print them: each rule's
    name, outcome and condition, and the owners' budget limits. Every problem is named with its line, all at
    once, and the exit status is 2."""
    if file is None:
        rules = shipped_rules()
    else:
        try:
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{file}: cannot be read ({error})") from None
        rules = load_rules(text, str(file))
    title = f"{rules.source}: {len(rules.rules)} rules, sha256 {rules.digest[:12]}"
    table = Table("rule", "outcome", "when", title=title)
    for rule in rules.rules:
        table.add_row(rule.name, rule.outcome.word, rule.condition.text)
    view.print_table(table)
    if rules.owner_limits:
        limits = Table("owner", "limit (minor units of what a promotion can cost)", title="owner limits")
        for owner, limit in sorted(rules.owner_limits.items()):
            limits.add_row(owner, f"{limit:,}")
        view.print_table(limits)
