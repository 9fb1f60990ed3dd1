"""The guard rules a center applies, from a file read again when it changes on disk.

A file that does not check out at start stops the center (ConfigError, exit 2, every problem named); one
that stops checking out later is logged, and the rules last loaded stay in force, so an operator's typo
in a running deployment never leaves changes unguarded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from quota_center.guard import RulesError, RuleSet, load_rules
from quota_common.errors import ConfigError

log = logging.getLogger(__name__)


class RulesFile:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen = self._stamp()
        self._rules = self._load()
        log.info("guard rules %s in force (%d rules, sha256 %s)", path, len(self._rules.rules), self._rules.digest)

    def __call__(self) -> RuleSet:
        """The rules in force now: read again when the file's size, time or inode changed."""
        stamp = self._stamp()
        if stamp != self._seen:
            self._seen = stamp
            try:
                self._rules = self._load()
            except ConfigError as error:
                log.error("guard rules %s not reloaded, the previous ones stay in force: %s", self._path, error)
            else:
                log.warning(
                    "guard rules %s reloaded (%d rules, sha256 %s)",
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

    def _load(self) -> RuleSet:
        try:
            text = self._path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"--guard-rules {self._path}: cannot be read ({error})") from None
        try:
            return load_rules(text, str(self._path))
        except RulesError as error:
            # One line, as every setting that stops a process at start; each problem names its file and line.
            raise ConfigError(f"--guard-rules: {'; '.join(error.problems)}") from None
