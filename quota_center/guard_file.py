"""Rules from a file read again when it changes on disk: the guard rules, and the alert rules.

A file that does not check out at start stops the center (ConfigError, exit 2, every problem named); one
that stops checking out later is logged, and the rules last loaded stay in force, so an operator's typo
in a running deployment never leaves changes unguarded or sales unwatched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from quota_center.guard import RulesError, RuleSet, load_rules
from quota_common.errors import ConfigError

log = logging.getLogger(__name__)


class Loaded(Protocol):
    @property
    def rules(self) -> Sized: ...

    @property
    def digest(self) -> str: ...


R = TypeVar("R", bound=Loaded)


class WatchedRules(Generic[R]):
    def __init__(self, path: Path, load: Callable[[str, str], R], option: str, what: str) -> None:
        """`load(text, source)` checks the file's text (RulesError); `option` and `what` name it in messages."""
        self._path = path
        self._load_text = load
        self._option = option
        self._what = what
        self._seen = self._stamp()
        self._rules = self._load()
        log.info("%s %s in force (%d rules, sha256 %s)", what, path, len(self._rules.rules), self._rules.digest)

    def __call__(self) -> R:
        """The rules in force now: read again when the file's size, time or inode changed."""
        stamp = self._stamp()
        if stamp != self._seen:
            self._seen = stamp
            try:
                self._rules = self._load()
            except ConfigError as error:
                log.error("%s %s not reloaded, the previous ones stay in force: %s", self._what, self._path, error)
            else:
                log.warning(
                    "%s %s reloaded (%d rules, sha256 %s)",
                    self._what,
                    self._path,
                    len(self._rules.rules),
                    self._rules.digest,
                )
        return self._rules

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _load(self) -> R:
        try:
            text = self._path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{self._option} {self._path}: cannot be read ({error})") from None
        try:
            return self._load_text(text, str(self._path))
        except RulesError as error:
            # One line, as every setting that stops a process at start; each problem names its file and line.
            raise ConfigError(f"{self._option}: {'; '.join(error.problems)}") from None


class RulesFile(WatchedRules[RuleSet]):
    """The guard rules file (--guard-rules)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, load_rules, "--guard-rules", "guard rules")
