"""The backends secured as production runs them, against real servers: the region's Redis on TLS only, with
client certificates required and an ACL user per region (the default user off); etcd with client
certificates required and with RBAC users. The agent and the center serve on them; a region's user cannot
touch another region's keys; every way of getting the settings wrong stops the process at start with exit 2
and one line saying what to change, never showing a password."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from redis.exceptions import NoPermissionError, ResponseError

from quota_center.app import StoreAccess, open_store
from quota_center.store import etcd as etcd_store
from quota_common.clock import SystemClock
from quota_common.errors import ConfigError
from quota_common.shards import DEFAULT_GROUP
from quota_testing.certs import write_server_pair
from quota_testing.launch import ServerProcess, agent_process, center_process, run_quota
from quota_testing.servers import (
    LEDGER_COMMANDS,
    EtcdUser,
    RedisUser,
    RunningServer,
    ServerTls,
    agent_acl,
    etcd_server,
    free_port,
    redis_server,
)
from quota_testing.support import order, recorded_redis_clients
from quota_testing.tls import DevTls, write_dev_tls
from region_agent import cache_redis
from region_agent.app import LedgerAccess, open_ledger
from region_agent.cache import CatalogSnapshot
from region_agent.ledger import redis_scripts
from region_agent.ledger.base import Line, Settle, UserLimit
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc
from tests.e2e.test_bad_settings import refused

pytestmark = pytest.mark.e2e

REGIONS = ("eu", "us")
AGENT = ("agent", "serve", "--region", "eu", "--listen", "127.0.0.1:0")
CENTER = ("center", "serve", "--listen", "127.0.0.1:0")
CENTER_USER = "quota-center"
PREFIX = "/quota"
HANG_GUARD_S = 60
"""Only so that a broken link fails the test instead of hanging it."""


@dataclass(frozen=True)
class Secrets:
    """The development CA's certificates, the backends' own certificate, and a password file per user."""

    dev: DevTls
    backend: ServerTls
    passwords: dict[str, str]

    def password_file(self, user: str) -> str:
        return str(self.dev.directory / f"{user}.password")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    directory = tmp_path_factory.mktemp("secrets")
    dev = write_dev_tls(directory, REGIONS)
    cert, key = write_server_pair(directory, "backend", datetime.now(UTC))
    passwords = {user: secrets.token_urlsafe(16) for user in (*(f"agent-{r}" for r in REGIONS), CENTER_USER)}
    passwords["wrong"] = secrets.token_urlsafe(16)
    for user, password in passwords.items():
        (directory / f"{user}.password").write_text(f"{password}\n")  # as `echo` writes it
    return Secrets(dev, ServerTls(cert, key, directory / "ca.pem"), passwords)


@pytest.fixture(scope="module")
def secure_redis(keys: Secrets) -> Iterator[RunningServer]:
    """TLS only, client certificates required, one ACL user per region, the default user off."""
    users = [RedisUser(f"agent-{region}", keys.passwords[f"agent-{region}"], agent_acl(region)) for region in REGIONS]
    with redis_server(tls=keys.backend, users=users) as server:
        yield server


def refused_by_etcd(*args: str, cwd: Path) -> str:
    """As `refused`, but gRPC may have logged its own lines first (a refused TLS handshake): the last line
    is the center's."""
    result = run_quota(*args, cwd=cwd)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "", "nothing announced as ready"
    *grpc_lines, line = result.stderr.splitlines()
    assert line.startswith("quota: error: ")
    assert all(re.match(r"[EWI]\d{4} ", logged) for logged in grpc_lines), result.stderr
    return line


def _ledger(server: RunningServer, user: str = "agent-eu", scheme: str = "rediss") -> str:
    return f"{scheme}://{user}@{server.address}/0"


def _budget(keys: Secrets, center: ServerProcess, *args: str) -> Any:
    done = run_quota(
        "budget", "--center", center.address, *keys.dev.flags("owner-alice"), *args, "--json", cwd=keys.dev.directory
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _as_region_user(keys: Secrets, server: RunningServer, region: str) -> redis.Redis:
    """A client of the secure Redis as `region`'s agents log in."""
    files = keys.dev.files(f"agent-{region}")
    return redis.Redis.from_url(
        _ledger(server, f"agent-{region}"),
        password=keys.passwords[f"agent-{region}"],
        ssl_ca_certs=str(files.ca),
        ssl_certfile=str(files.cert),
        ssl_keyfile=str(files.key),
    )


async def test_an_agent_on_a_tls_redis_as_its_regions_acl_user_serves_orders(
    keys: Secrets, secure_redis: RunningServer, tmp_path: Path
) -> None:
    """The agent verifies Redis and presents its certificate with its own --tls-* files (the defaults)."""
    center = center_process(tmp_path, tls=keys.dev).start()
    ledger = ("--ledger", _ledger(secure_redis), "--ledger-password-file", keys.password_file("agent-eu"))
    agent = agent_process(tmp_path, "eu", center.address, *ledger, "--renew-interval", "0.2", tls=keys.dev).start()
    try:
        _budget(keys, center, "create", "sealed", "--budget", "100", "--regions", "eu")
        with keys.dev.transport("orders-eu").channel(agent.address) as channel:
            stub = agent_grpc.RegionAgentStub(channel)
            answers = [stub.Deduct(order(f"o-{n}", "eu", ("sealed", 3)), timeout=10) for n in range(3)]
        assert [line.amount for answer in answers for line in answer.lines] == [3, 3, 3]

        deadline = time.monotonic() + HANG_GUARD_S
        while [region["spent"] for region in _budget(keys, center, "usage", "sealed")["regions"]] != [9]:
            assert time.monotonic() < deadline, "the agent's renewals never reported its sales"
            await asyncio.sleep(0.2)
    finally:
        agent.kill()
        center.kill()

    async with _as_region_user(keys, secure_redis, "eu") as client:
        assert await client.hget("{quota:eu}:incarnation", "life"), "the ledger lives in Redis, under eu's keys"
    log = (tmp_path / "agent-eu.log").read_text()
    assert keys.passwords["agent-eu"] not in log


async def test_a_regions_acl_user_cannot_read_or_write_another_regions_keys(
    keys: Secrets, secure_redis: RunningServer
) -> None:
    async with _as_region_user(keys, secure_redis, "us") as us:
        await us.set("{quota:us}:incarnation-probe", "us")
    async with _as_region_user(keys, secure_redis, "eu") as eu:
        await eu.set("{quota:eu}:probe", "eu")
        assert await eu.get("{quota:eu}:probe") == b"eu"

        for command in (
            eu.get("{quota:us}:incarnation-probe"),
            eu.set("{quota:us}:incarnation-probe", "eu"),
            eu.hget("{quota:us}:incarnation", "life"),
            eu.delete("{quota:us}:incarnation-probe"),
            eu.keys("*"),
            eu.flushall(),
            eu.config_get("*"),
            eu.acl_list(),
        ):
            with pytest.raises(NoPermissionError):
                await command

        # A script is checked too, whatever keys it declares: a key it reaches for by name, a command outside
        # the ledger's.
        reach = eu.register_script("return redis.call('GET', '{quota:us}:incarnation-probe')")
        with pytest.raises(ResponseError, match="can't access at least one of the keys"):
            await reach(keys=["{quota:eu}:probe"])
        flush = eu.register_script("return redis.call('FLUSHALL')")
        with pytest.raises(ResponseError, match="can't run this command"):
            await flush(keys=["{quota:eu}:probe"])

    async with _as_region_user(keys, secure_redis, "us") as us:
        assert await us.get("{quota:us}:incarnation-probe") == b"us", "eu changed nothing of us's"


def test_the_acl_allows_every_command_the_ledgers_and_the_caches_scripts_call() -> None:
    """Redis checks a script's commands against the ACL as it runs them: a command a script gained and the
    ACL lacks would fail orders in production only. (The agent's own calls are run by the next test.)"""
    sources = inspect.getsource(redis_scripts) + inspect.getsource(cache_redis)
    called = {name.lower() for name in re.findall(r"redis\.p?call\('([A-Za-z]+)'", sources)}

    assert called, "the scripts call Redis as redis.call('COMMAND', ...)"
    assert called <= set(LEDGER_COMMANDS), called - set(LEDGER_COMMANDS)


async def test_every_ledger_and_cache_operation_runs_as_the_regions_acl_user(
    keys: Secrets, secure_redis: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger's operations, each path of its scripts, and the promotion cache's tier, through open_ledger
    (TLS with the agent's own files, logged in as eu's user): nothing is refused. (Keys of their own: the
    region's ledger in this Redis is shared with the other tests.)"""
    clients = recorded_redis_clients(monkeypatch)
    access = LedgerAccess(password=keys.passwords["agent-eu"])
    ledger, tier = await open_ledger(_ledger(secure_redis), "eu", 3600, access, keys.dev.files("agent-eu"))
    assert tier is not None
    try:
        life = await ledger.incarnation()
        assert await ledger.apply_grant("ops-g1", "ops", 100, life)
        assert not await ledger.apply_grant("ops-g1", "ops", 100, life)
        line, limits = (Line("ops", 2, "u"),), {"ops": UserLimit(units=50, orders=10)}
        assert (await ledger.deduct("ops-1", line, limits)).accepted
        assert (await ledger.deduct("ops-1", line, limits)).replayed
        assert await ledger.find_order("ops-1", line) is not None
        assert (await ledger.deduct("ops-short", (Line("ops", 1_000),))).short == ("ops",)
        for key in ("ops-r1", "ops-r2", "ops-r3"):
            assert (await ledger.deduct(key, line, limits, hold_ms=60_000 if key != "ops-r3" else 1)).accepted
        await ledger.settle("ops-r1", Settle.CONFIRM)
        await ledger.settle("ops-r2", Settle.CANCEL)
        await asyncio.sleep(0.01)
        assert await ledger.expire_reservations() == 1
        assert (await ledger.refund("ops-1", "f-1", (Line("ops", 1),))).lines == (Line("ops", 1),)
        assert (await ledger.refund("ops-1", "f-1", (Line("ops", 1),))).replayed
        assert await ledger.refund("ops-r1", "f-2", ()) is not None
        assert await ledger.return_quota("ops", 10) == 10
        assert await ledger.claim_refill("ops", "me", 5)
        await ledger.release_refill("ops", "me")
        assert (await ledger.balance("ops")).granted == 100
        assert "ops" in await ledger.balances()

        for group in (DEFAULT_GROUP, "g1"):  # each center group's copy under the region's keys
            assert await tier.save(CatalogSnapshot(revision=3), since=0, group=group)
            assert (await tier.load(group)).revision >= 3
    finally:
        await ledger.aclose()
        for client in clients:
            await client.aclose()


async def test_open_ledger_refuses_a_user_kept_from_the_regions_keys(
    keys: Secrets, secure_redis: RunningServer
) -> None:
    access = LedgerAccess(password=keys.passwords["agent-us"])

    with pytest.raises(ConfigError, match="does not let user agent-us use the region's keys"):
        await open_ledger(_ledger(secure_redis, "agent-us"), "eu", 3600, access, keys.dev.files("agent-us"))


async def test_open_ledger_refuses_a_password_redis_has_not_set() -> None:
    """redis-py's client takes it; the ledger's own connection would be refused, and every order with it."""
    with redis_server() as plain:
        access = LedgerAccess(password="a password this Redis does not have")
        with pytest.raises(ConfigError, match="without any password configured"):
            await open_ledger(f"redis://{plain.address}/0", "eu", 3600, access, None)


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("wrong password", "Redis refused user agent-eu: invalid username-password pair"),
        ("password in the URL, wrong", "Redis refused user agent-eu: invalid username-password pair"),
        ("another region's user", "does not let user agent-us use the region's keys"),
        ("no client certificate", "give --ledger-cert and --ledger-key"),
        ("plaintext client", "if it serves TLS only, use rediss://"),
        ("no user", "name the ACL user in --ledger"),
        ("rediss without a CA", "give --ledger-ca (or --tls-ca)"),
        ("password file missing", "--ledger-password-file"),
        ("a CA that did not sign Redis's", "presented a certificate that the CA in --tls-ca did not sign"),
        ("TLS files with a plaintext ledger", "--ledger-ca secure Redis over TLS"),
    ],
)
def test_an_agent_refused_by_redis_stops_with_one_line_saying_what_to_change(
    keys: Secrets, secure_redis: RunningServer, tmp_path: Path, case: str, named: str
) -> None:
    eu, plaintext = ("--ledger", _ledger(secure_redis)), ("--ledger", _ledger(secure_redis, scheme="redis"))
    password = ("--ledger-password-file", keys.password_file("agent-eu"))
    mtls = tuple(keys.dev.flags("agent-eu"))
    ca = ("--ledger-ca", str(keys.dev.files("agent-eu").ca))
    stranger = write_dev_tls(tmp_path / "stranger", ["eu"])
    given: dict[str, tuple[str, ...]] = {
        "wrong password": (*eu, "--ledger-password-file", keys.password_file("wrong"), *mtls),
        "password in the URL, wrong": (
            "--ledger", f"rediss://agent-eu:{keys.passwords['wrong']}@{secure_redis.address}/0", *mtls,
        ),
        "another region's user": (
            "--ledger", _ledger(secure_redis, "agent-us"), "--ledger-password-file", keys.password_file("agent-us"),
            *mtls,
        ),
        "no client certificate": (*eu, *password, *ca, "--insecure"),
        "plaintext client": (*plaintext, *password, "--insecure"),
        "no user": ("--ledger", f"rediss://{secure_redis.address}/0", *mtls),
        "rediss without a CA": (*eu, *password, "--insecure"),
        "password file missing": (*eu, "--ledger-password-file", "nowhere", *mtls),
        "a CA that did not sign Redis's": (*eu, *password, *stranger.flags("agent-eu")),
        "TLS files with a plaintext ledger": (*plaintext, *password, *ca, "--insecure"),
    }  # fmt: skip

    line = refused(*AGENT, *given[case], cwd=tmp_path)

    assert named in line
    assert all(password not in line for password in keys.passwords.values())


@pytest.fixture
def secure_etcd(keys: Secrets, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """etcd as the test's parameter says: "certificates" (TLS, client certificates required), "password"
    (RBAC on, the center's user may use PREFIX only), or "both"."""
    tls = keys.backend if request.param in ("certificates", "both") else None
    user = EtcdUser(CENTER_USER, keys.passwords[CENTER_USER], f"{PREFIX}/")
    users = [user] if request.param in ("password", "both") else []
    with etcd_server(tls=tls, users=users) as server:
        yield server


@pytest.mark.parametrize("secure_etcd", ["certificates", "password", "both"], indirect=True)
def test_a_center_on_a_secured_etcd_elects_itself_and_serves(
    keys: Secrets, secure_etcd: RunningServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The center presents its own --tls-* certificate to etcd (the default) and logs in as its user."""
    how = request.node.callspec.params["secure_etcd"]
    scheme = "etcd" if how == "password" else "etcds"
    login = ("--etcd-user", CENTER_USER, "--etcd-password-file", keys.password_file(CENTER_USER))
    extra = ("--election-ttl", "2", *(login if how != "certificates" else ()))
    center = center_process(tmp_path, *extra, store=f"{scheme}://{secure_etcd.address}{PREFIX}", tls=keys.dev).start()
    try:
        created = _budget(keys, center, "create", "on-etcd", "--budget", "50", "--regions", "eu")
        assert created["budget"] == 50
        assert [promotion["id"] for promotion in _budget(keys, center, "list")["promotions"]] == ["on-etcd"]
    finally:
        center.kill()
    assert keys.passwords[CENTER_USER] not in (tmp_path / "center.log").read_text()


@pytest.mark.parametrize(
    ("secure_etcd", "case", "named"),
    [
        ("certificates", "no client certificate", "give --etcd-cert and --etcd-key"),
        ("certificates", "plaintext client", "if it serves TLS only, use etcds://"),
        ("certificates", "etcds without a CA", "give --etcd-ca (or --tls-ca)"),
        ("certificates", "TLS files with a plaintext store", "--etcd-ca secure etcd over TLS"),
        ("password", "wrong password", f"refused user {CENTER_USER}: etcdserver: authentication failed"),
        ("password", "no user", "give --etcd-user and --etcd-password-file"),
        ("password", "a user without its password", "--etcd-password-file is missing"),
        ("password", "a prefix the user may not use", "grant its role readwrite on that prefix"),
        ("password", "password file missing", "--etcd-password-file nowhere: cannot read it"),
    ],
    indirect=["secure_etcd"],
)
def test_a_center_refused_by_etcd_stops_with_one_line_saying_what_to_change(
    keys: Secrets, secure_etcd: RunningServer, tmp_path: Path, case: str, named: str
) -> None:
    tls_store, plain_store = f"etcds://{secure_etcd.address}{PREFIX}", f"etcd://{secure_etcd.address}{PREFIX}"
    ca = ("--etcd-ca", str(keys.dev.files("center").ca))
    login = ("--etcd-user", CENTER_USER, "--etcd-password-file", keys.password_file(CENTER_USER))
    given: dict[str, tuple[str, ...]] = {
        "no client certificate": ("--store", tls_store, *ca, "--insecure"),
        "plaintext client": ("--store", plain_store, "--insecure"),
        "etcds without a CA": ("--store", tls_store, "--insecure"),
        "TLS files with a plaintext store": ("--store", plain_store, *ca, "--insecure"),
        "wrong password": (
            "--store", plain_store, "--etcd-user", CENTER_USER, "--etcd-password-file", keys.password_file("wrong"),
            "--insecure",
        ),
        "no user": ("--store", plain_store, "--insecure"),
        "a user without its password": ("--store", plain_store, "--etcd-user", CENTER_USER, "--insecure"),
        "a prefix the user may not use": ("--store", f"{plain_store}-other", *login, "--insecure"),
        "password file missing": (
            "--store", plain_store, "--etcd-user", CENTER_USER, "--etcd-password-file", "nowhere", "--insecure",
        ),
    }  # fmt: skip

    line = refused_by_etcd(*CENTER, *given[case], cwd=tmp_path)

    assert named in line
    assert all(password not in line for password in keys.passwords.values())


async def test_the_center_renews_its_etcd_token_before_etcd_forgets_it(
    keys: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd forgets a token unused for --auth-token-ttl (here 1 s): a center idle longer still reads."""
    monkeypatch.setattr(etcd_store, "TOKEN_RENEWAL_S", 0.3)
    user = EtcdUser(CENTER_USER, keys.passwords[CENTER_USER], f"{PREFIX}/")
    with etcd_server(users=[user], extra=("--auth-token-ttl", "1")) as server:
        access = StoreAccess(user=CENTER_USER, password=keys.passwords[CENTER_USER])
        store, _ = await open_store(f"etcd://{server.address}{PREFIX}", SystemClock(), 2, access)
        try:
            await asyncio.sleep(2.5)
            assert await store.load_all() == []
        finally:
            await store.close()


def test_a_redis_password_in_the_url_is_never_shown(tmp_path: Path) -> None:
    """Redis down: the URL is shown, with its password replaced."""
    nobody = f"127.0.0.1:{free_port()}"

    line = refused(*AGENT, "--ledger", f"redis://agent-eu:hunter2@{nobody}/0", cwd=tmp_path)

    assert f"Redis at redis://agent-eu:***@{nobody}/0 does not answer" in line
    assert "hunter2" not in line
