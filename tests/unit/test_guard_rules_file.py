"""The guard rules file of a running center: read again when it changes; a bad edit never unguards it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quota_center.guard_file import RulesFile
from quota_common.errors import ConfigError

RULE = '[[rule]]\nname = "{name}"\nwhen = "budget > {limit}"\noutcome = "hold"\nmessage = "m"\n'


def _write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))  # a new time, however coarse the file system's clock


def test_an_edit_is_in_force_at_the_next_change_and_a_bad_one_keeps_the_last_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    _write(path, RULE.format(name="first", limit=10), 1_000_000_000)
    rules = RulesFile(path)
    assert [rule.name for rule in rules().rules] == ["first"]

    _write(path, RULE.format(name="second", limit=20), 2_000_000_000)
    assert [rule.name for rule in rules().rules] == ["second"]

    _write(path, RULE.format(name="broken", limit="budgett"), 3_000_000_000)
    assert [rule.name for rule in rules().rules] == ["second"]

    path.unlink()
    assert [rule.name for rule in rules().rules] == ["second"]


def test_a_file_that_does_not_check_out_at_start_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULE.format(name="broken", limit="budgett"))

    with pytest.raises(ConfigError, match="did you mean budget"):
        RulesFile(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        RulesFile(tmp_path / "missing.toml")
