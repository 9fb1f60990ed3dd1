"""Check the wire contract in proto/ with Buf: lint, and no breaking change since the last release.

`python scripts/check_wire.py` runs `buf lint`, then `buf breaking` against the newest tag `v*` that
HEAD contains (the last release). With no such tag nothing was released to break: it says so and
passes. Both read buf.yaml at the root and local files only. `make test` runs it through
tests/unit/test_wire_contract.py; cutting a release tag: README "Other languages: Java, Go".
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Outcome:
    ok: bool
    report: str
    """What Buf found, or what was compared."""


def _buf(repo: Path, *args: str) -> Outcome:
    # The buf-bin wheel installs the binary beside this interpreter; the venv need not be on the PATH.
    buf = Path(sysconfig.get_path("scripts")) / "buf"
    done = subprocess.run([buf, *args], cwd=repo, capture_output=True, text=True, check=False)
    return Outcome(done.returncode == 0, (done.stdout + done.stderr).strip())


def last_release(repo: Path) -> str | None:
    """The newest tag `v*` by version order (v0.10.0 after v0.9.0) among those HEAD contains."""
    tags = subprocess.run(
        ["git", "tag", "--list", "v*", "--merged", "HEAD", "--sort=-version:refname"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return tags[0] if tags else None


def lint(repo: Path = ROOT) -> Outcome:
    return _buf(repo, "lint")


def breaking(repo: Path = ROOT) -> Outcome:
    """`buf breaking` of the working tree against the last release."""
    tag = last_release(repo)
    if tag is None:
        return Outcome(True, "no release tag v* yet: nothing released, so nothing to break")
    # Buf clones the tag from the local repository (a worktree's .git file works too). The release is
    # read with today's buf.yaml, so a tag cut before buf.yaml existed compares the same files.
    found = _buf(repo, "breaking", "--against", f".git#tag={tag}", "--against-config", "buf.yaml")
    verdict = "no breaking change" if found.ok else "breaking changes"
    return Outcome(found.ok, f"{verdict} against release {tag}\n{found.report}".strip())


def main() -> None:
    failed = False
    for name, outcome in (("buf lint", lint()), ("buf breaking", breaking())):
        print(f"{name}: {'ok' if outcome.ok else 'FAILED'}")
        if outcome.report:
            print(outcome.report)
        failed |= not outcome.ok
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
