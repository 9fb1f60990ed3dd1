"""`quota center check-rules`: what an operator runs before handing a center a rules file."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from quota_cli.main import main


def test_the_shipped_rules_check_and_are_listed() -> None:
    done = CliRunner().invoke(main, ["center", "check-rules"], env={"COLUMNS": "200"})

    assert done.exit_code == 0, done.output
    assert "6 rules" in done.output
    assert "discount-above-half-the-threshold" in done.output


def test_every_problem_of_a_file_is_named_with_its_line_and_the_exit_is_2(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "typo"\nwhen = "budgett > 5"\noutcome = "hold"\nmessage = "m"\n\n'
        '[[rule]]\nname = "sneaky"\nwhen = "__import__(1)"\noutcome = "maybe"\nmessage = "m"\n'
    )

    done = CliRunner().invoke(main, ["center", "check-rules", str(rules)])

    assert done.exit_code == 2
    assert f"{rules}:3: rule 1 ('typo')" in done.output
    assert "did you mean budget?" in done.output
    assert f"{rules}:9: rule 2 ('sneaky')" in done.output
    assert f"{rules}:10: rule 2 ('sneaky'): unknown outcome 'maybe'" in done.output


def test_the_owner_limits_a_file_sets_are_listed(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    owner = "spiffe://quota/owner/alice"
    rules.write_text(
        '[[rule]]\nname = "r"\nwhen = "owner_limit > 0"\noutcome = "hold"\nmessage = "m"\n\n'
        f'[owner_limits]\ndefault = 1_000\n"{owner}" = 500_000\n'
    )

    done = CliRunner().invoke(main, ["center", "check-rules", str(rules)], env={"COLUMNS": "200"})

    assert done.exit_code == 0, done.output
    assert "owner limits" in done.output
    assert owner in done.output
    assert "500,000" in done.output
