"""A center serving from a SQLite file that was not there says so where an operator looks: a typo in --store (or a
misspelt QUOTA_STORE, which falls back to the default) otherwise starts a center that knows no promotion and none
of its agents' ledger lives, with nothing to tell why."""

from __future__ import annotations

from pathlib import Path

import pytest

from quota_testing.launch import center_process

pytestmark = pytest.mark.e2e


def test_only_a_center_on_a_new_sqlite_file_says_it_made_a_new_store(tmp_path: Path) -> None:
    store = tmp_path / "centre.db"
    logs = []
    for start in ("first", "again"):
        workdir = tmp_path / start
        workdir.mkdir()
        center = center_process(workdir, store=f"sqlite:///{store}").start()
        center.stop()
        logs.append(center.log_path.read_text())

    announced = f"serving from a new, empty store at {store.resolve()}"
    assert announced in logs[0]
    assert announced not in logs[1], "a store that was there is opened as it is"
