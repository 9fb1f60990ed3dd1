"""Fixtures of the end-to-end tests that several modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from quota_testing.console import ConsoleStack
from tests.e2e.console_world import console_world


@pytest.fixture(scope="module")
def console_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console")


@pytest.fixture(scope="module")
def console(console_dir: Path) -> Iterator[ConsoleStack]:
    """The console's world (tests.e2e.console_world), one per test module."""
    with console_world(console_dir) as running:
        yield running
