"""The wire contract checks of scripts/check_wire.py: this repo passes them, and they see a break.

The break tests work on a throwaway git repository holding a copy of proto/ and buf.yaml, tag a
release there, then edit the working tree as a careless change would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import check_wire

AGENT_PROTO = Path("proto/region_agent/v1/region_agent.proto")
# A git that reads no user or system configuration (signing, hooks, templates) and needs no identity.
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, check=True, capture_output=True)


def _release(repo: Path, tag: str) -> None:
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "--allow-empty", "--message", f"release {tag}")
    _git(repo, "tag", "--annotate", tag, "--message", f"wire contract of {tag}")


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / AGENT_PROTO
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the contract in a git repository with one commit and no tag."""
    shutil.copytree(check_wire.ROOT / "proto", tmp_path / "proto")
    shutil.copy(check_wire.ROOT / "buf.yaml", tmp_path)
    _git(tmp_path, "init", "--quiet")
    _git(tmp_path, "add", "--all")
    _git(tmp_path, "commit", "--quiet", "--message", "the contract")
    return tmp_path


def test_the_protos_pass_buf_lint() -> None:
    outcome = check_wire.lint()
    assert outcome.ok, outcome.report


def test_the_protos_break_nothing_since_the_last_release() -> None:
    outcome = check_wire.breaking()
    assert outcome.ok, outcome.report


def test_with_no_release_tag_the_check_says_so_and_passes(repo: Path) -> None:
    _edit(repo, "bool ledger_life_lost = 7;", "")
    outcome = check_wire.breaking(repo)
    assert outcome.ok
    assert "no release tag" in outcome.report


def test_an_unchanged_contract_passes_against_its_release(repo: Path) -> None:
    _release(repo, "v0.1.0")
    outcome = check_wire.breaking(repo)
    assert outcome.ok, outcome.report
    assert "against release v0.1.0" in outcome.report


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        pytest.param(
            "string refund_id = 2;",
            "string refund_id = 4;",
            'field "2" with name "refund_id" on message "RefundRequest"',
            id="renumbered",
        ),
        pytest.param(
            "bool ledger_life_lost = 7;",
            "",
            'field "7" with name "ledger_life_lost" on message "OrderState"',
            id="removed",
        ),
    ],
)
def test_a_broken_field_fails_naming_it_and_the_release(repo: Path, old: str, new: str, named: str) -> None:
    _release(repo, "v0.1.0")
    _edit(repo, old, new)
    outcome = check_wire.breaking(repo)
    assert not outcome.ok
    assert named in outcome.report
    assert "breaking changes against release v0.1.0" in outcome.report


def test_the_newest_release_by_version_is_the_baseline(repo: Path) -> None:
    """A break released on purpose (v0.10.0) is the new baseline, though "v0.9.0" sorts after it as text."""
    _release(repo, "v0.9.0")
    _edit(repo, "bool ledger_life_lost = 7;", "reserved 7;")
    _release(repo, "v0.10.0")
    assert check_wire.last_release(repo) == "v0.10.0"
    outcome = check_wire.breaking(repo)
    assert outcome.ok, outcome.report


def test_a_lint_violation_in_a_new_package_is_reported(repo: Path) -> None:
    """The naming rules relaxed for the released v1 packages hold for a new one."""
    v2 = repo / "proto/region_agent/v2"
    v2.mkdir()
    (v2 / "region_agent.proto").write_text(
        'syntax = "proto3";\npackage region_agent.v2;\nservice RegionAgent {}\n',
    )
    outcome = check_wire.lint(repo)
    assert not outcome.ok
    assert 'Service name "RegionAgent" should be suffixed with "Service"' in outcome.report
