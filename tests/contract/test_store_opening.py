"""A center told to use a SQLite file that was not there makes a new store, and says so where an operator
looks: a typo in --store (or a misspelt QUOTA_STORE, which falls back to the default) otherwise starts a
center that knows no promotion and none of its agents' ledger lives, with nothing to tell why."""

from __future__ import annotations

from pathlib import Path

import pytest

from quota_center.app import open_store
from quota_common.clock import SystemClock


async def test_only_a_new_sqlite_store_is_announced_with_its_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    announced = f"created a new, empty store at {tmp_path / 'centre.db'}"
    made, _ = await open_store("sqlite:///centre.db", SystemClock(), election_ttl_s=5)
    await made.close()
    said_when_made = caplog.text
    caplog.clear()
    reopened, _ = await open_store("sqlite:///centre.db", SystemClock(), election_ttl_s=5)
    await reopened.close()

    assert announced in said_when_made
    assert announced not in caplog.text, "a store that was there is opened as it is"
