"""The embedded default store: one SQLite file in WAL mode, fsynced on every commit.

SQLite calls block, so they run on one dedicated thread; the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path
from typing import Any, TypeVar

from quota_center.audit import AuditRecord
from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.base import Commit
from quota_common.errors import AlreadyExists, ConfigError, Conflict

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS promotions (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT NOT NULL UNIQUE,
    request_id TEXT NOT NULL,
    promotion_id TEXT NOT NULL,
    region TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    amount INTEGER NOT NULL,
    asked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (promotion_id, region, request_id)
);
CREATE TABLE IF NOT EXISTS documents (
    name TEXT PRIMARY KEY,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        """Opens the file, which this process then owns: ConfigError when another process does."""
        self.path = Path(path).resolve()
        self.created = not self.path.exists()
        """No file was there: this store was made now."""
        self._lock = _own(Path(path))
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            _add_asked_column(self._db)
        except sqlite3.Error:
            os.close(self._lock)
            raise
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._closed = False

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def load_all(self) -> list[PromotionState]:
        def work() -> list[PromotionState]:
            rows = self._db.execute("SELECT document FROM promotions ORDER BY id").fetchall()
            return [PromotionState.from_document(json.loads(row[0])) for row in rows]

        return await self._run(work)

    async def load(self, promotion_id: str) -> PromotionState | None:
        def work() -> PromotionState | None:
            row = self._db.execute("SELECT document FROM promotions WHERE id = ?", (promotion_id,)).fetchone()
            return None if row is None else PromotionState.from_document(json.loads(row[0]))

        return await self._run(work)

    async def create(self, state: PromotionState, audit: AuditRecord) -> None:
        def work() -> None:
            with self._transaction():
                try:
                    self._db.execute(
                        "INSERT INTO promotions (id, version, document) VALUES (?, ?, ?)",
                        (state.promotion.id, state.version, state.encoded()),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyExists(f"promotion {state.promotion.id!r} already exists") from None
                self._append(audit)

        await self._run(work)

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        def work() -> None:
            with self._transaction():
                if audit is not None:
                    self._append(audit)
                for state, expected_version, grant in commits:
                    updated = self._db.execute(
                        "UPDATE promotions SET version = ?, document = ? WHERE id = ? AND version = ?",
                        (state.version, state.encoded(), state.promotion.id, expected_version),
                    )
                    if updated.rowcount != 1:
                        raise Conflict(f"promotion {state.promotion.id} moved past version {expected_version}")
                    if grant is None:
                        continue
                    try:
                        self._db.execute(
                            "INSERT INTO grants"
                            " (grant_id, request_id, promotion_id, region, incarnation, amount, asked)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)",
                            astuple(grant),
                        )
                    except sqlite3.IntegrityError:
                        raise Conflict(f"request id {grant.request_id!r} already has a grant") from None

        await self._run(work)

    async def load_document(self, name: str) -> dict[str, Any] | None:
        def work() -> dict[str, Any] | None:
            row = self._db.execute("SELECT document FROM documents WHERE name = ?", (name,)).fetchone()
            return None if row is None else dict(json.loads(row[0]))

        return await self._run(work)

    async def save_document(self, name: str, document: dict[str, Any], audit: AuditRecord | None = None) -> None:
        def work() -> None:
            with self._transaction():
                if audit is not None:
                    self._append(audit)
                self._db.execute(
                    "INSERT INTO documents (name, document) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET document = excluded.document",
                    (name, json.dumps(document)),
                )

        await self._run(work)

    def _append(self, audit: AuditRecord) -> None:
        """Inside a transaction: a record whose seq is taken means another center wrote since this one read
        the head, so the whole write is refused."""
        try:
            self._db.execute("INSERT INTO audit (seq, body, hash) VALUES (?, ?, ?)", astuple(audit))
        except sqlite3.IntegrityError:
            raise Conflict(f"audit record {audit.seq} was written by another center") from None

    async def audit_records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        def work() -> list[AuditRecord]:
            rows = self._db.execute(
                "SELECT seq, body, hash FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
            return [AuditRecord(*row) for row in rows]

        return await self._run(work)

    async def audit_head(self) -> AuditRecord | None:
        def work() -> AuditRecord | None:
            row = self._db.execute("SELECT seq, body, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            return None if row is None else AuditRecord(*row)

        return await self._run(work)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    async def find_grant(self, promotion_id: str, region: str, request_id: str) -> GrantRecord | None:
        def work() -> GrantRecord | None:
            row = self._db.execute(
                "SELECT grant_id, request_id, promotion_id, region, incarnation, amount, asked FROM grants"
                " WHERE promotion_id = ? AND region = ? AND request_id = ?",
                (promotion_id, region, request_id),
            ).fetchone()
            return None if row is None else GrantRecord(*row)

        return await self._run(work)

    async def close(self) -> None:
        """Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)
        os.close(self._lock)


def _add_asked_column(db: sqlite3.Connection) -> None:
    """Files written before grants kept what was asked get the column, at 0 (not checked) for their grants."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(grants)")}
    if "asked" not in columns:
        db.execute("ALTER TABLE grants ADD COLUMN asked INTEGER NOT NULL DEFAULT 0")


def _own(database: Path) -> int:
    """Takes the lock file beside `database` that says which process owns it, and returns its
    descriptor (closing it releases the lock). Two centers on one file would each trust their own
    copy of the books and grant the same budget twice, so the second is refused, naming the first.

    A POSIX record lock: the kernel drops it when the process dies, kill -9 included, so nothing
    stale is left to clean up; it is per process, so one process may open the store twice (tests).
    The lock sits beside the file the path resolves to: a symlink to a taken file is the same store."""
    lock_file = Path(f"{os.path.realpath(database)}.lock")
    try:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        why = f"cannot create {lock_file} ({error.strerror})"
        raise ConfigError(f"{why}; the directory must exist and be writable by this user") from None
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise ConfigError(
            f"{database} is in use by another center (pid {holder}); "
            "stop that one first, or give this one its own --store"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._db.execute("ROLLBACK")
            return
        try:
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
