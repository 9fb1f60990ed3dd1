"""The Redis ledger's own connection for its Lua scripts (`ScriptLink`), on real redis-server processes.

It must answer as redis-py's client would: the same replies, the same exception classes, the
same connection settings (TCP, Unix socket, TLS, user and password, database), reloading a
script Redis forgot. And it must stay in step when it pipelines: every call gets its own
answer, also after a call was cancelled, timed out (`socket_timeout`) or lost with the
connection; the next call after an outage reconnects.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import subprocess
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from quota_testing.servers import RestartableServer, RunningServer, free_port, redis_process, redis_server
from region_agent.ledger.script_link import LuaScript, ScriptLink

ECHO = LuaScript("return ARGV[1]")
WRITE_AND_ECHO = LuaScript("redis.call('SET', KEYS[1], ARGV[1])\nreturn ARGV[1]")
READ_ONLY_ECHO = LuaScript("#!lua flags=no-writes\nreturn ARGV[1]")
"""Runs while Redis is paused for writes (`CLIENT PAUSE ... WRITE`); scripts without the flag wait."""
BUSY_THEN_ECHO = LuaScript(
    """
    local function now_ms()
        local time = redis.call('TIME')
        return tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
    end
    local deadline = now_ms() + tonumber(ARGV[1])
    while now_ms() < deadline do end
    return ARGV[2]
    """
)
"""Holds Redis (every client) for ARGV[1] ms, then answers ARGV[2]."""

PAUSE_MS = 10_000
"""Outlasts every test that pauses Redis: the test (and its Redis) ends before the pause does."""
WELL_BEFORE_THE_PAUSE_ENDS_S = PAUSE_MS / 1000 / 2
"""A call still unanswered this long was ended by the pause, not by its socket_timeout: a bound that
tells the two apart however busy the machine is, not a speed."""


def client_of(server: RunningServer | RestartableServer, **options: Any) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, **options)


@asynccontextmanager
async def linked(client: redis.Redis) -> AsyncIterator[ScriptLink]:
    """A link made from `client`; both are closed afterwards."""
    link = ScriptLink(client)
    try:
        yield link
    finally:
        await link.aclose()
        await client.aclose()


@asynccontextmanager
async def admin_of(server: RunningServer | RestartableServer, **options: Any) -> AsyncIterator[redis.Redis]:
    admin = client_of(server, **options)
    try:
        yield admin
    finally:
        await admin.aclose()


async def require_password(admin: redis.Redis, password: str) -> None:
    """What `--requirepass` does; set at run time because the servers' readiness probe is an unauthenticated PING."""
    await admin.config_set("requirepass", password)


async def pause_all_clients(admin: redis.Redis) -> None:
    await admin.client_pause(PAUSE_MS)


async def pause_writes(admin: redis.Redis) -> None:
    """Scripts wait, except READ_ONLY_ECHO (and the admin's CLIENT UNPAUSE)."""
    await admin.client_pause(PAUSE_MS, all=False)


@pytest.fixture
def private_redis() -> Iterator[RunningServer]:
    """A Redis of the test's own, for tests that pause it or change its users."""
    with redis_server() as server:
        yield server


@pytest.mark.parametrize(
    ("source", "keys", "args", "expected"),
    [
        ("return tonumber(ARGV[1]) * 2", [], [21], 42),
        ("return tonumber(ARGV[1]) * 2", [], [-21], -42),
        ("return 3.99", [], [], 3),
        ("return ARGV[1]", [], ["héllo ✓"], "héllo ✓".encode()),
        ("return false", [], [], None),
        ("return redis.status_reply('FINE')", [], [], b"FINE"),
        (
            "return {KEYS[1], {tonumber(ARGV[1]), {ARGV[2]}}, {}, false, 'after nil'}",
            ["script-link:k"],
            [7, "deep"],
            [b"script-link:k", [7, [b"deep"]], [], None, b"after nil"],
        ),
        (
            "redis.call('SET', KEYS[1], ARGV[1])\nreturn redis.call('GET', KEYS[1])",
            ["script-link:stored"],
            ["stored"],
            b"stored",
        ),
    ],
    ids=["int", "negative-int", "float-truncated", "utf8-bytes", "nil", "status", "nested-arrays", "key-round-trip"],
)
async def test_a_script_answers_what_redis_py_answers(
    redis_address: RunningServer, source: str, keys: list[str], args: list[str | int], expected: object
) -> None:
    client = client_of(redis_address)
    async with linked(client) as link:
        from_redis_py = await client.register_script(source)(keys=keys, args=args)
        from_link = await link.run(LuaScript(source), keys, args)

    assert from_link == from_redis_py == expected


async def test_a_script_redis_forgot_is_loaded_again(redis_address: RunningServer) -> None:
    answer = f"loaded {uuid.uuid4().hex}"
    script = LuaScript(f"return '{answer}'")
    client = client_of(redis_address)
    async with linked(client) as link:
        first = await link.run(script, [], [])
        await client.script_flush()
        assert await client.script_exists(script.sha) == [False]

        after_flush = await link.run(script, [], [])

        assert after_flush == first == answer.encode()
        assert await client.script_exists(script.sha) == [True]


@pytest.mark.parametrize(
    ("source", "error_class", "message"),
    [
        ("return redis.error_reply('boom')", redis.ResponseError, "boom"),
        ("return redis.call('NO_SUCH_COMMAND')", redis.ResponseError, "Unknown Redis command called from script"),
        ("error('raised in Lua')", redis.ResponseError, "raised in Lua"),
        ("return redis.error_reply('READONLY a replica')", redis.ReadOnlyError, "a replica"),
        ("return redis.error_reply('LOADING still loading')", redis.BusyLoadingError, "still loading"),
    ],
    ids=["error-reply", "unknown-command", "lua-error", "readonly", "loading"],
)
async def test_a_script_error_raises_what_redis_py_raises_and_the_link_goes_on(
    redis_address: RunningServer, source: str, error_class: type[redis.RedisError], message: str
) -> None:
    # redis-py would retry a LOADING error for seconds before raising it; its class is what matters here.
    client = client_of(redis_address, retry=Retry(NoBackoff(), retries=0))
    async with linked(client) as link:
        with pytest.raises(error_class, match=message) as from_redis_py:
            await client.register_script(source)(keys=[], args=[])
        with pytest.raises(error_class, match=message) as from_link:
            await link.run(LuaScript(source), [], [])

        assert from_link.type is from_redis_py.type is error_class
        assert str(from_link.value) == str(from_redis_py.value)
        assert await link.run(ECHO, [], ["still working"]) == b"still working"


async def test_concurrent_calls_each_get_their_own_answer_or_error(redis_address: RunningServer) -> None:
    script = LuaScript(
        """
        if tonumber(ARGV[1]) % 7 == 0 then return redis.error_reply('multiple of seven: ' .. ARGV[1]) end
        return {tonumber(ARGV[1]), KEYS[1]}
        """
    )
    calls = range(200)
    async with linked(client_of(redis_address)) as link:
        answers = await asyncio.gather(
            *(link.run(script, [f"script-link:{n}"], [n]) for n in calls), return_exceptions=True
        )

    def described(answer: object) -> object:
        return f"{type(answer).__name__}: {answer}" if isinstance(answer, BaseException) else answer

    def expected(n: int) -> object:
        return f"ResponseError: multiple of seven: {n}" if n % 7 == 0 else [n, f"script-link:{n}".encode()]

    assert [described(answer) for answer in answers] == [expected(n) for n in calls]


async def test_a_call_whose_arguments_do_not_pack_fails_alone_and_the_link_stays_in_step(
    redis_address: RunningServer,
) -> None:
    async with linked(client_of(redis_address)) as link:
        with pytest.raises(TypeError):
            await link.run(ECHO, [], [True])  # what a caller's bug may pass: a bool
        answers = await asyncio.gather(*(link.run(ECHO, [], [f"call {n}"]) for n in range(20)))

    assert answers == [f"call {n}".encode() for n in range(20)]


async def test_a_cancelled_call_leaves_the_calls_after_it_their_own_answers(redis_address: RunningServer) -> None:
    async with linked(client_of(redis_address)) as link:
        await link.run(BUSY_THEN_ECHO, [], [0, "loaded"])
        started = time.monotonic()
        cancelled = asyncio.create_task(link.run(BUSY_THEN_ECHO, [], [300, "cancelled"]))
        await asyncio.sleep(0.05)
        queued_behind = asyncio.create_task(link.run(ECHO, [], ["queued behind"]))
        await asyncio.sleep(0.01)
        cancelled.cancel()

        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert await queued_behind == b"queued behind"
        assert time.monotonic() - started >= 0.25, "the cancelled call was running in Redis, ahead of the next one"
        assert await link.run(ECHO, [], ["next"]) == b"next"


@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_a_lost_connection_fails_the_calls_and_the_same_link_reconnects_when_redis_is_back(outage: str) -> None:
    with redis_process() as server:
        async with linked(client_of(server)) as link, admin_of(server) as admin, asyncio.timeout(5):
            assert await link.run(ECHO, [], ["before"]) == b"before"
            await pause_all_clients(admin)
            in_flight = asyncio.create_task(link.run(ECHO, [], ["in flight"]))
            await asyncio.sleep(0.05)
            assert not in_flight.done()

            if outage == "stop":
                server.stop()
            else:
                server.kill()

            with pytest.raises(redis.ConnectionError):
                await in_flight
            with pytest.raises(redis.ConnectionError):
                await link.run(ECHO, [], ["while down"])
            server.start()
            assert await link.run(ECHO, [], ["after"]) == b"after"


async def test_a_client_with_the_password_runs_scripts(private_redis: RunningServer) -> None:
    async with admin_of(private_redis) as admin:
        await require_password(admin, "s3cret")

    async with linked(client_of(private_redis, password="s3cret")) as link:
        assert await link.run(ECHO, [], ["authenticated"]) == b"authenticated"


@pytest.mark.parametrize("password", ["wrong", None], ids=["wrong-password", "no-password"])
async def test_a_client_without_the_right_password_is_refused(
    private_redis: RunningServer, password: str | None
) -> None:
    async with admin_of(private_redis) as admin:
        await require_password(admin, "s3cret")

    async with linked(client_of(private_redis, password=password)) as link:
        with pytest.raises(redis.AuthenticationError) as refused:
            await link.run(ECHO, [], ["refused"])

    assert refused.type is redis.AuthenticationError


async def test_an_acl_user_authenticates_with_its_username_and_password(private_redis: RunningServer) -> None:
    async with admin_of(private_redis) as admin:
        await admin.acl_setuser(
            "ledger", enabled=True, passwords=["+ledger-pw"], keys=["script-link:*"], categories=["+@all"]
        )
        # The default user's password differs: a link that dropped the username would be refused.
        await require_password(admin, "admin-pw")

    async with linked(client_of(private_redis, username="ledger", password="ledger-pw")) as link:
        assert await link.run(WRITE_AND_ECHO, ["script-link:acl"], ["as ledger"]) == b"as ledger"


async def test_the_database_of_the_client_url_is_the_one_written(redis_address: RunningServer) -> None:
    key = f"script-link:db:{uuid.uuid4().hex}"
    url = f"redis://{redis_address.host}:{redis_address.port}/5"
    async with linked(redis.Redis.from_url(url)) as link:
        await link.run(WRITE_AND_ECHO, [key], ["in db 5"])

    async with admin_of(redis_address, db=5) as db5, admin_of(redis_address, db=0) as db0:
        assert await db5.get(key) == b"in db 5"
        assert await db0.exists(key) == 0


async def test_a_client_of_a_unix_socket_runs_scripts_over_it(tmp_path: Path) -> None:
    socket_path = tmp_path / "r.sock"
    with redis_server("--unixsocket", str(socket_path), "--unixsocketperm", "700"):
        async with linked(redis.Redis.from_url(f"unix://{socket_path}")) as link:
            assert await link.run(ECHO, [], ["over the socket"]) == b"over the socket"


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA (ca.pem) and a server certificate it signed for 127.0.0.1 (server.pem, server.key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the TLS tests make their certificates with the openssl command, which is not installed")
    folder = tmp_path_factory.mktemp("tls")
    ec_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec_key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=quota test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip
    _openssl("req", "-new", *ec_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "1", "-extfile", "server.ext", cwd=folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def tls_port(certificates: Path) -> Iterator[int]:
    """The TLS port of a Redis that also listens in plain text, where the servers' readiness probe talks."""
    port = free_port()
    tls = [
        "--tls-port", str(port),
        "--tls-cert-file", str(certificates / "server.pem"),
        "--tls-key-file", str(certificates / "server.key"),
        "--tls-ca-cert-file", str(certificates / "ca.pem"),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    try:
        with redis_server(*tls):
            yield port
    except RuntimeError as error:
        if "Bad directive" not in str(error):
            raise
        pytest.skip(f"this redis-server was built without TLS: {error}")


@pytest.mark.parametrize("built_from", ["options", "rediss-url"])
async def test_a_tls_client_trusting_the_ca_runs_scripts(tls_port: int, certificates: Path, built_from: str) -> None:
    ca = str(certificates / "ca.pem")
    client = (
        redis.Redis(host="127.0.0.1", port=tls_port, ssl=True, ssl_ca_certs=ca)
        if built_from == "options"
        else redis.Redis.from_url(f"rediss://127.0.0.1:{tls_port}", ssl_ca_certs=ca)
    )
    async with linked(client) as link:
        assert await link.run(ECHO, [], ["over TLS"]) == b"over TLS"


def test_a_closed_tls_link_leaves_no_socket_open(tls_port: int, certificates: Path) -> None:
    """After `await link.aclose()` the connection is closed, as after redis-py's `await client.aclose()`:
    a program that ends its event loop right after closing leaves no socket open."""

    async def run_then_close() -> None:
        client = redis.Redis(host="127.0.0.1", port=tls_port, ssl=True, ssl_ca_certs=str(certificates / "ca.pem"))
        async with linked(client) as link:
            assert await link.run(ECHO, [], ["over TLS"]) == b"over TLS"

    loop = asyncio.new_event_loop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loop.run_until_complete(run_then_close())
        finally:
            loop.close()
        gc.collect()

    assert [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)] == []


async def test_a_tls_client_not_trusting_the_ca_cannot_connect(tls_port: int) -> None:
    async with linked(redis.Redis(host="127.0.0.1", port=tls_port, ssl=True)) as link:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            await link.run(ECHO, [], ["untrusted"])


async def test_a_call_redis_does_not_answer_within_socket_timeout_raises_timeout_error(
    private_redis: RunningServer,
) -> None:
    async with (
        linked(client_of(private_redis, socket_timeout=0.2)) as link,
        admin_of(private_redis) as admin,
        asyncio.timeout(WELL_BEFORE_THE_PAUSE_ENDS_S),
    ):
        await link.run(WRITE_AND_ECHO, ["script-link:timeout"], ["loaded"])
        await pause_writes(admin)
        started = time.monotonic()

        with pytest.raises(redis.TimeoutError):
            await link.run(WRITE_AND_ECHO, ["script-link:timeout"], ["unanswered"])

        waited = time.monotonic() - started
        assert 0.19 <= waited < WELL_BEFORE_THE_PAUSE_ENDS_S, "socket_timeout, not the pause, ended the call"
        await admin.client_unpause()
        assert await link.run(WRITE_AND_ECHO, ["script-link:timeout"], ["answered"]) == b"answered"


async def test_a_call_made_right_after_a_timeout_gets_its_answer(private_redis: RunningServer) -> None:
    """An order retried as soon as its predecessor timed out: Redis answers it, so it must succeed."""
    async with (
        linked(client_of(private_redis, socket_timeout=0.2)) as link,
        admin_of(private_redis) as admin,
        asyncio.timeout(WELL_BEFORE_THE_PAUSE_ENDS_S),
    ):
        await link.run(READ_ONLY_ECHO, [], ["loaded before the pause"])
        await pause_writes(admin)
        with pytest.raises(redis.TimeoutError):
            await link.run(WRITE_AND_ECHO, ["script-link:retry"], ["unanswered"])

        assert await link.run(READ_ONLY_ECHO, [], ["answered"]) == b"answered"


@pytest.mark.parametrize("handshake", [{"password": "s3cret"}, {"db": 3}], ids=["auth", "select"])
async def test_a_redis_that_does_not_answer_the_handshake_raises_timeout_error(
    private_redis: RunningServer, handshake: dict[str, Any]
) -> None:
    """A new connection's AUTH or SELECT is a call like any other: redis-py gives up on it after socket_timeout."""
    async with admin_of(private_redis) as admin:
        if "password" in handshake:
            await require_password(admin, handshake["password"])
        await pause_all_clients(admin)
        async with (
            linked(client_of(private_redis, socket_timeout=0.2, **handshake)) as link,
            asyncio.timeout(WELL_BEFORE_THE_PAUSE_ENDS_S),
        ):
            with pytest.raises(redis.TimeoutError):
                await link.run(ECHO, [], ["unanswered"])
