"""The audit trail of a running center (a real process, mutual TLS): every admin write leaves exactly one
record naming who made it (the caller's SPIFFE ID), which call, which promotion, the caller's request id,
and the promotion (or the emergency switch) before and after; a write that changes nothing and a refused
write leave none. `quota budget audit --verify`, the real command, passes on the trail as written and
exits 5 naming the record once the test tampers with the store directly: the center's SQLite file
while the center runs, and the keys of a center on etcd.

The chain's own logic is tested in tests/unit/test_audit_chain.py; here the records are the ones the
center wrote in the same transaction as each change, served back through ListAudit."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from quota_center.audit import GENESIS, AuditRecord, verify
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.launch import run_quota
from quota_testing.secure_stack import (
    APPROVER,
    CALL_TIMEOUT_S,
    OPERATOR,
    OTHER_OWNER,
    OWNER,
    Rogue,
    SecureStack,
    code_of,
    identity,
    refused,
    rogue_credentials,
    secure_stack,
)
from quota_testing.servers import etcd_server
from quota_testing.support import promotion

pytestmark = pytest.mark.e2e

PROMOTION = "audited"
EXIT_TAMPERED = 5
ETCD_PREFIX = "/quota-audit"


@dataclass(frozen=True)
class Write:
    caller: str
    call: str
    request_id: str
    promotion_id: str
    started_ms: int
    records: list[dict[str, Any]]
    """The records the trail gained with this write: the fields of each, with its seq, hash and prev."""


def _fields(record: center_pb.AuditRecord) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(record.body)
    return {**fields, "stored_seq": record.seq, "hash": record.hash}


def _admin_writes(stack: SecureStack) -> list[tuple[str, str, str, str, Callable[[str], object]]]:
    """(caller, call, request id, promotion id, the call given its request id), in order: every kind of
    admin write, by owner alice and operator carol; the last passes no request id."""

    def revision() -> int:
        return stack.usage(PROMOTION).promotion.revision

    def create(request_id: str) -> object:
        return stack.create(promotion(PROMOTION, budget=100, regions=("eu",)), request_id=request_id)

    def set_budget(budget: int) -> Callable[[str], object]:
        return lambda request_id: stack.admin().SetBudget(
            center_pb.SetBudgetRequest(
                promotion_id=PROMOTION, budget=budget, expected_revision=revision(), request_id=request_id
            ),
            timeout=CALL_TIMEOUT_S,
        )

    def set_frozen(frozen: bool) -> Callable[[str], object]:
        return lambda request_id: stack.admin().SetFrozen(
            center_pb.SetFrozenRequest(promotion_id=PROMOTION, frozen=frozen, request_id=request_id),
            timeout=CALL_TIMEOUT_S,
        )

    def switch(frozen: bool) -> Callable[[str], object]:
        return lambda request_id: stack.admin(OPERATOR).SetEmergencyFreeze(
            center_pb.SetEmergencyFreezeRequest(region="us", frozen=frozen, request_id=request_id),
            timeout=CALL_TIMEOUT_S,
        )

    return [
        (OWNER, "CreatePromotion", "CHG-1 create", PROMOTION, create),
        (OWNER, "SetBudget", "CHG-2 raise", PROMOTION, set_budget(250)),
        (OWNER, "SetFrozen", "INC-3 freeze", PROMOTION, set_frozen(True)),
        (OPERATOR, "SetEmergencyFreeze", "INC-4 switch on", "", switch(True)),
        (OPERATOR, "SetEmergencyFreeze", "INC-4 switch off", "", switch(False)),
        (OWNER, "SetFrozen", "INC-3 thaw", PROMOTION, set_frozen(False)),
        (OWNER, "SetBudget", "", PROMOTION, set_budget(300)),
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    with secure_stack(tmp_path_factory.mktemp("audit")) as running:
        yield running


@pytest.fixture(scope="module")
def writes(stack: SecureStack) -> list[Write]:
    """Every admin write made once, with the records each added to the trail."""
    made = []
    for caller, call, request_id, promotion_id, write in _admin_writes(stack):
        seen = len(stack.audit())
        started_ms = time.time_ns() // 1_000_000
        write(request_id)
        records = [_fields(record) for record in stack.audit()[seen:]]
        made.append(Write(caller, call, request_id, promotion_id, started_ms, records))
    return made


def test_every_admin_write_leaves_exactly_one_record_saying_who_what_and_why(
    stack: SecureStack, writes: list[Write]
) -> None:
    previous = None
    for write in writes:
        assert len(write.records) == 1, f"{write.call} by {write.caller} left {len(write.records)} records"
        [record] = write.records

        assert record["actor"] == identity(stack.dev, write.caller).uri
        assert (record["call"], record["promotion_id"]) == (write.call, write.promotion_id)
        if write.request_id:
            assert record["request_id"] == write.request_id
        else:
            assert len(record["request_id"]) == 32, "the center made one: a uuid4 in hex"
        assert write.started_ms <= record["at_ms"] <= time.time_ns() // 1_000_000
        assert record["seq"] == record["stored_seq"] == (1 if previous is None else previous["seq"] + 1)
        assert record["prev"] == (GENESIS if previous is None else previous["hash"])
        previous = record

    create, raise_budget, freeze, switch_on, switch_off, thaw, unnamed = (write.records[0] for write in writes)
    assert create["before"] is None
    assert create["after"]["budget"] == 100
    assert create["after"]["owner"] == "spiffe://quota/owner/alice"
    assert (raise_budget["before"]["budget"], raise_budget["after"]["budget"]) == (100, 250)
    assert raise_budget["after"]["revision"] > raise_budget["before"]["revision"]
    assert (freeze["before"]["frozen"], freeze["after"]["frozen"]) == (False, True)
    assert (switch_on["before"]["regions"], switch_on["after"]["regions"]) == ([], ["us"])
    assert (switch_off["before"]["regions"], switch_off["after"]["regions"]) == (["us"], [])
    assert (thaw["before"]["frozen"], thaw["after"]["frozen"]) == (True, False)
    assert (unnamed["before"]["budget"], unnamed["after"]["budget"]) == (250, 300)


def test_the_trail_served_is_the_trail_stored_with_each_change(stack: SecureStack, writes: list[Write]) -> None:
    """ListAudit serves the SQLite rows as they are; each row's hash is the SHA-256 of its body; the last
    record's `after` is the promotion the store holds now."""
    with contextlib.closing(sqlite3.connect(stack.database)) as db:
        rows = db.execute("SELECT seq, body, hash FROM audit ORDER BY seq").fetchall()
        [stored] = db.execute("SELECT document FROM promotions WHERE id = ?", (PROMOTION,)).fetchone()

    assert rows == [(record.seq, record.body, record.hash) for record in stack.audit()]
    assert all(hashlib.sha256(body.encode()).hexdigest() == digest for _, body, digest in rows)
    assert json.loads(rows[-1][1])["after"] == json.loads(stored)["promotion"]


def test_a_write_that_changes_nothing_or_is_refused_leaves_no_record(stack: SecureStack, writes: list[Write]) -> None:
    revision = stack.usage(PROMOTION).promotion.revision

    def budget(caller: str, amount: int, expected: int = revision) -> Callable[[], object]:
        request = center_pb.SetBudgetRequest(promotion_id=PROMOTION, budget=amount, expected_revision=expected)
        return lambda: stack.admin(caller).SetBudget(request, timeout=CALL_TIMEOUT_S)

    def frozen(caller: str, value: bool) -> Callable[[], object]:
        request = center_pb.SetFrozenRequest(promotion_id=PROMOTION, frozen=value)
        return lambda: stack.admin(caller).SetFrozen(request, timeout=CALL_TIMEOUT_S)

    def switch(caller: str, value: bool) -> Callable[[], object]:
        request = center_pb.SetEmergencyFreezeRequest(region="us", frozen=value)
        return lambda: stack.admin(caller).SetEmergencyFreeze(request, timeout=CALL_TIMEOUT_S)

    def anonymous() -> object:
        with grpc.secure_channel(stack.center.address, rogue_credentials(stack.dev, Rogue.NO_CERTIFICATE)) as channel:
            request = center_pb.SetBudgetRequest(promotion_id=PROMOTION, budget=10**9, expected_revision=revision)
            return center_grpc.PromotionAdminStub(channel).SetBudget(request, timeout=CALL_TIMEOUT_S)

    no_ops = {
        "thaw a promotion not frozen": frozen(OWNER, False),
        "switch off a switch that is off": switch(OPERATOR, False),
    }
    refusals = {
        "another owner's budget": (budget(OTHER_OWNER, 10**9), grpc.StatusCode.PERMISSION_DENIED),
        "another owner's freeze": (frozen(OTHER_OWNER, True), grpc.StatusCode.PERMISSION_DENIED),
        "an approver's freeze": (frozen(APPROVER, True), grpc.StatusCode.PERMISSION_DENIED),
        "an owner's emergency switch": (switch(OWNER, True), grpc.StatusCode.PERMISSION_DENIED),
        "a stale revision": (budget(OWNER, 400, revision - 1), grpc.StatusCode.FAILED_PRECONDITION),
        "a budget of zero": (budget(OWNER, 0), grpc.StatusCode.INVALID_ARGUMENT),
        "an id taken": (
            lambda: stack.admin().CreatePromotion(
                center_pb.CreatePromotionRequest(promotion=promotion(PROMOTION)), timeout=CALL_TIMEOUT_S
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        "no certificate": (anonymous, grpc.StatusCode.UNAVAILABLE),
    }
    trail = stack.audit()
    for what, call in no_ops.items():
        call()
        assert stack.audit() == trail, f"{what} left a record"
    for what, (call, code) in refusals.items():
        assert code_of(refused(call)) == code, what
        assert stack.audit() == trail, f"{what} was refused, yet left a record"


def _records(stack: SecureStack) -> list[AuditRecord]:
    return [AuditRecord(record.seq, record.body, record.hash) for record in stack.audit()]


def _verify(stack: SecureStack, as_whom: str = OWNER) -> subprocess.CompletedProcess[str]:
    """`quota budget audit --verify --json` as the real command, with `as_whom`'s certificate."""
    flags = stack.dev.flags(as_whom)
    return run_quota(
        "budget", "--center", stack.center.address, *flags, "audit", "--verify", "--json", cwd=stack.workdir
    )


def test_verify_passes_on_the_trail_as_written(stack: SecureStack, writes: list[Write]) -> None:
    done = _verify(stack, APPROVER)

    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    count = len(stack.audit())
    assert shown["verified"] == {"records": count, "problems": []}
    assert [record["actor"] for record in shown["records"][:2]] == ["spiffe://quota/owner/alice"] * 2
    assert f"verified: {count} records intact and chained" in done.stderr


@contextlib.contextmanager
def _sqlite_trail(path: Path) -> Iterator[sqlite3.Connection]:
    """The center's SQLite file opened beside the running center; the trail put back as it was after."""
    db = sqlite3.connect(path, isolation_level=None)
    saved = db.execute("SELECT seq, body, hash FROM audit ORDER BY seq").fetchall()
    try:
        yield db
    finally:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM audit")
        db.executemany("INSERT INTO audit (seq, body, hash) VALUES (?, ?, ?)", saved)
        db.execute("COMMIT")
        db.close()


def _edit(db: sqlite3.Connection, seq: int, rehash: bool) -> None:
    [body] = db.execute("SELECT body FROM audit WHERE seq = ?", (seq,)).fetchone()
    edited = body.replace('"budget":250', '"budget":25000')
    assert edited != body
    digest = hashlib.sha256(edited.encode()).hexdigest() if rehash else None
    db.execute("UPDATE audit SET body = ?, hash = coalesce(?, hash) WHERE seq = ?", (edited, digest, seq))


def _delete(db: sqlite3.Connection, seq: int) -> None:
    db.execute("DELETE FROM audit WHERE seq = ?", (seq,))


def _swap(db: sqlite3.Connection, first: int, second: int) -> None:
    """Two records trade places in the store's order (seq is the key the store orders by)."""
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE audit SET seq = -1 WHERE seq = ?", (first,))
    db.execute("UPDATE audit SET seq = ? WHERE seq = ?", (first, second))
    db.execute("UPDATE audit SET seq = ? WHERE seq = -1", (second,))
    db.execute("COMMIT")


TAMPERING: dict[str, tuple[Callable[[sqlite3.Connection], None], list[str]]] = {
    "an edited record": (
        lambda db: _edit(db, 2, rehash=False),
        ["record 2: its body does not match its hash (edited)"],
    ),
    "an edited record with its hash recomputed": (
        lambda db: _edit(db, 2, rehash=True),
        ["record 3: it does not chain to the one before (a record before it was edited, deleted or moved)"],
    ),
    "a deleted record": (lambda db: _delete(db, 3), ["record 4: expected record 3 here (records missing or moved)"]),
    "two records swapped": (
        lambda db: _swap(db, 2, 4),
        ["record 2: its body says it is record 4 (moved or edited)", "record 4: its body says it is record 2"],
    ),
}


@pytest.mark.parametrize("tampering", TAMPERING, ids=str)
def test_verify_exits_5_naming_the_record_tampered_with_in_sqlite(
    stack: SecureStack, writes: list[Write], tampering: str
) -> None:
    tamper, named = TAMPERING[tampering]
    with _sqlite_trail(stack.database) as db:
        tamper(db)

        done = _verify(stack)

        assert done.returncode == EXIT_TAMPERED, done.stderr
        for problem in named:
            assert f"tampered: {problem}" in done.stderr
        assert json.loads(done.stdout)["verified"]["problems"], "--json says what is wrong too"

    assert verify(_records(stack)) == [], "put back as it was, the trail verifies again"


def _etcd(port: int, call: str, body: dict[str, str]) -> dict[str, Any]:
    """One call of etcd's JSON gateway (keys and values in base64)."""
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in body.items()}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v3/kv/{call}", json.dumps(encoded).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as answer:
        result: dict[str, Any] = json.load(answer)
    return result


def _etcd_key(seq: int) -> str:
    return f"{ETCD_PREFIX}/audit/{seq:020d}"


def test_verify_finds_records_edited_or_deleted_in_etcd(tmp_path: Path) -> None:
    """The same trail on etcd (a center on `--store etcd://.../PREFIX`), tampered through etcd's own API."""
    with etcd_server() as etcd, secure_stack(tmp_path, store=f"etcd://{etcd.address}{ETCD_PREFIX}") as stack:
        for _, _, request_id, _, write in _admin_writes(stack)[:4]:
            write(request_id)
        assert _verify(stack).returncode == 0

        [stored] = _etcd(etcd.port, "range", {"key": _etcd_key(2)})["kvs"]
        record = json.loads(base64.b64decode(stored["value"]))
        edited = {**record, "body": record["body"].replace('"budget":250', '"budget":25000')}
        _etcd(etcd.port, "put", {"key": _etcd_key(2), "value": json.dumps(edited)})

        done = _verify(stack)
        assert done.returncode == EXIT_TAMPERED, done.stderr
        assert "tampered: record 2: its body does not match its hash (edited)" in done.stderr

        _etcd(etcd.port, "put", {"key": _etcd_key(2), "value": json.dumps(record)})
        _etcd(etcd.port, "deleterange", {"key": _etcd_key(3)})

        done = _verify(stack)
        assert done.returncode == EXIT_TAMPERED, done.stderr
        assert "tampered: record 4: expected record 3 here (records missing or moved)" in done.stderr
