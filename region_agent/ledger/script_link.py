"""The ledger's own connection to Redis for its Lua scripts, the order path's one round trip.

redis-py's asyncio client spends about 190 µs of the agent's CPU on each call (its connection pool,
retry wrapper, command packing in Python and stream reads), more than gRPC spends serving the
order; and at the agent's rate a batch holds one or two orders, so that cost is paid per order.
This link packs with hiredis, parses with hiredis's reader inside an `asyncio.Protocol`, and
pipelines every call on one connection, matching each reply to the oldest call waiting (Redis
answers in order): about 50 µs a call. A caller that stops waiting leaves its reply to be read
and dropped, so the connection never falls out of step.

It connects as the redis-py client it is made from would (host and port or Unix socket, TLS,
user, password, database), and answers errors as redis-py's exception classes, so callers treat
an outage (`redis.ConnectionError`, `redis.TimeoutError`, Redis still loading its data) and a
script error as before. A lost connection fails the calls in flight, and so does a call left
unanswered for the client's `socket_timeout` (redis-py's default: 5 s); the next call reconnects.

Made from a `RedisCluster` client, it keeps one such connection per master, sends each script to the
master of its keys' slot (the ledger's keys share one hash tag, so one slot per region), and follows
the cluster's answers that the script did not run there: MOVED, ASK and TRYAGAIN while a slot
migrates, NOSCRIPT on a master that has not loaded it yet.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
import redis.asyncio as redis

# redis-py's own mapping from an error reply to its exception class, the one its hiredis parser uses.
from redis._parsers.base import BaseParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    InvalidResponse,
    MovedError,
    NoScriptError,
    SlotNotCoveredError,
    TryAgainError,
)

CONNECT_TIMEOUT_S = 5.0
"""How long to wait for a connection when the client does not say (redis-py would wait forever)."""
CLOSE_TIMEOUT_S = 1.0
"""How long a closing connection may take (TLS says goodbye) before it is cut."""
REDIRECTIONS = 40
"""How many MOVED, ASK and TRYAGAIN answers one script call follows before it gives up (UNAVAILABLE)."""
TRY_AGAIN_S = 0.025
"""How long a script waits after TRYAGAIN: a slot's keys move in milliseconds, so 40 of these outlast a
migration of thousands of keys, and a script still refused then is answered as an outage."""

Reply = Any
"""What hiredis parses: bytes, int, None, or lists of them."""


@dataclass(frozen=True)
class LuaScript:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class _Pipe(asyncio.Protocol):
    def __init__(self, reply_timeout_s: float | None) -> None:
        """`reply_timeout_s`: how long a call may wait for its reply before the connection is given up."""
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        self._waiting: collections.deque[tuple[asyncio.Future[Reply], float]] = collections.deque()
        """Every call sent and not yet answered, oldest first, with when it was sent."""
        self._transport: asyncio.Transport | None = None
        self._reply_timeout_s = reply_timeout_s
        # One timer for the oldest call, not one per call (asyncio.wait_for on the order path cost
        # a fifth of the ledger's round trip).
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: Exception | None = None
        """Why the connection is over, from the moment it is: no call may be sent on it after."""
        self._closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's do not derive from asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            waiter, _ = self._waiting.popleft()
            if waiter.done():
                continue
            if isinstance(reply, redis.RedisError):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = redis.ConnectionError(f"the connection to Redis was lost ({exc or 'closed by the server'})")
        if self._watchdog is not None:
            self._watchdog.cancel()
        while self._waiting:
            waiter, _ = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)
        self._closed.set_result(None)

    def send(self, command: tuple[str | int | bytes, ...]) -> asyncio.Future[Reply]:
        assert self._transport is not None
        # Packed before anything is queued: a command that does not pack (an argument of a type hiredis
        # refuses) fails alone, where a waiter queued for it would take the next call's reply, and every
        # call after it another's, until the reply timeout gave the connection up.
        packed = hiredis.pack_command(command)  # type: ignore[arg-type]  # its stub says a 1-tuple
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiting.append((waiter, loop.time()))
        if self._reply_timeout_s is not None and self._watchdog is None:
            self._watchdog = loop.call_later(self._reply_timeout_s, self._check_replies)
        self._transport.write(packed)
        return waiter

    def _check_replies(self) -> None:
        """Gives the connection up when its oldest call has waited too long: a reply that comes
        later would be out of step with the calls after it, so all of them fail and the next
        call connects afresh."""
        self._watchdog = None
        if not self._waiting or self.lost is not None:
            return
        assert self._reply_timeout_s is not None
        _, oldest_sent_at = self._waiting[0]
        loop = asyncio.get_running_loop()
        left = oldest_sent_at + self._reply_timeout_s - loop.time()
        if left > 0:
            self._watchdog = loop.call_later(left, self._check_replies)
            return
        self.close(redis.TimeoutError(f"Redis did not answer within {self._reply_timeout_s} s"))

    def close(self, why: redis.RedisError) -> None:
        """Ends the connection; the calls still waiting fail with `why`."""
        if self.lost is None:
            self.lost = why
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT_S)
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()
            await self._closed


class _Node:
    """One pipelined connection to one Redis server, made again after it is lost."""

    def __init__(self, settings: AbstractConnection) -> None:
        # An unconnected redis-py connection resolves the client's settings (URL, TLS context) for us.
        self._settings = settings
        self._pipe: _Pipe | None = None
        self._connecting = asyncio.Lock()

    async def call(self, command: tuple[str | int | bytes, ...], asking: bool = False) -> Reply:
        """Sends `command`, after ASKING when `asking` (the two leave together, so nothing comes between)."""
        pipe = self._pipe
        if pipe is None or pipe.lost is not None:
            pipe = await self._connected()
        if not asking:
            return await pipe.send(command)
        asked = pipe.send(("ASKING",))
        try:
            return await pipe.send(command)
        finally:
            # Answered before the command (Redis answers in order); read, so that a lost connection's
            # error on it is not reported as never retrieved.
            if asked.done() and not asked.cancelled():
                asked.exception()

    async def _connected(self) -> _Pipe:
        async with self._connecting:
            if self._pipe is None or self._pipe.lost is not None:
                self._pipe = await self._connect()
            return self._pipe

    async def _connect(self) -> _Pipe:
        settings, loop = self._settings, asyncio.get_running_loop()
        timeout = settings.socket_connect_timeout or CONNECT_TIMEOUT_S
        pipe_for_this_client = functools.partial(_Pipe, settings.socket_timeout)
        if isinstance(settings, UnixDomainSocketConnection):
            where, opening = settings.path, loop.create_unix_connection(pipe_for_this_client, settings.path)
        else:
            assert isinstance(settings, Connection), "redis-py's clients connect by TCP, TLS or Unix socket"
            tls = settings.ssl_context.get() if isinstance(settings, SSLConnection) else None
            where, opening = (
                f"{settings.host}:{settings.port}",
                loop.create_connection(pipe_for_this_client, settings.host, settings.port, ssl=tls),
            )
        try:
            _, pipe = await asyncio.wait_for(opening, timeout)
        except (OSError, TimeoutError) as error:
            raise redis.ConnectionError(f"cannot connect to Redis at {where}: {error or 'timed out'}") from error
        try:
            await asyncio.wait_for(self._handshake(pipe), settings.socket_timeout or timeout)
        except TimeoutError:
            timed_out = redis.TimeoutError(f"Redis at {where} did not answer AUTH or SELECT in time")
            pipe.close(timed_out)
            raise timed_out from None
        except BaseException:
            pipe.close(redis.ConnectionError("the handshake failed"))
            raise
        return pipe

    async def _handshake(self, pipe: _Pipe) -> None:
        settings = self._settings
        if settings.password:
            credentials = (settings.username, settings.password) if settings.username else (settings.password,)
            await pipe.send(("AUTH", *credentials))
        if settings.db:
            await pipe.send(("SELECT", settings.db))

    async def aclose(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close(redis.ConnectionError("the ledger closed its connection"))
            await pipe.wait_closed()


class ScriptLink:
    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        """The link connects as `client` does. A `RedisCluster` client's link keeps a connection to each
        master that serves its scripts' slots, and follows the cluster's redirections."""
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._nodes: dict[str, _Node] = {}
        """By host:port; a single Redis's under ""."""
        self._slots: dict[int, str] = {}
        """Where a slot lives as the cluster last said (MOVED), ahead of the client's map."""
        self._remap = False
        """A master did not answer: read the cluster's slot map afresh before trusting the client's."""
        if not isinstance(client, RedisCluster):
            pool = client.connection_pool
            self._nodes[""] = _Node(pool.connection_class(**pool.connection_kwargs))

    async def run(self, script: LuaScript, keys: list[str], args: list[str | int]) -> Reply:
        """EVALSHA, loading the script into Redis first when Redis does not have it (yet, or any more).
        On a cluster it runs where the slot of `keys[0]` lives (all keys must share it: a hash tag):
        MOVED sends it to the master named, from then on; ASK to the importing master, this once;
        TRYAGAIN (the slot migrates and the keys are split between two masters) waits and sends it
        again. Each of those answers means the script did not run, so sending it again applies it once."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if self._cluster is None:
            return await self._on(self._nodes[""], script, command)
        slot = key_slot(keys[0].encode())
        address, asking = await self._home(slot), False
        for _ in range(REDIRECTIONS):
            try:
                return await self._on(self._node(address), script, command, asking)
            except MovedError as moved:
                self._slots[slot] = address = f"{moved.host}:{moved.port}"
                asking = False
            except AskError as ask:
                address, asking = f"{ask.host}:{ask.port}", True
            except TryAgainError:
                await asyncio.sleep(TRY_AGAIN_S)
                address, asking = self._slots[slot], False
            except ClusterDownError as down:
                raise redis.ConnectionError(f"Redis Cluster does not serve slot {slot} now ({down})") from down
            except (redis.ConnectionError, redis.TimeoutError):
                # The master may be gone (a replica took over): the next call asks the cluster where the slot is.
                self._slots.pop(slot, None)
                self._remap = True
                raise
        raise redis.ConnectionError(
            f"Redis Cluster kept redirecting a script for slot {slot} ({REDIRECTIONS} times): is it resharding?"
        )

    async def _on(self, node: _Node, script: LuaScript, command: tuple[str | int, ...], asking: bool = False) -> Reply:
        try:
            return await node.call(command, asking)
        except NoScriptError:
            await node.call(("SCRIPT", "LOAD", script.source))
            return await node.call(command, asking)

    async def _home(self, slot: int) -> str:
        """host:port of the master serving `slot`: as MOVED last said, else as the client's map says."""
        if slot not in self._slots:
            assert self._cluster is not None
            await self._cluster.initialize()
            if self._remap:
                self._remap = False
                await self._cluster.nodes_manager.initialize()
            try:
                master = self._cluster.nodes_manager.get_node_from_slot(slot)
            except SlotNotCoveredError as uncovered:
                raise redis.ConnectionError(f"no master of the Redis Cluster serves slot {slot}") from uncovered
            self._slots[slot] = f"{master.host}:{master.port}"
        return self._slots[slot]

    def _node(self, address: str) -> _Node:
        if address not in self._nodes:
            assert self._cluster is not None
            host, port = address.rsplit(":", 1)
            # Connects as the cluster client's own connections to that master do (TLS, user, password).
            options: dict[str, Any] = dict(self._cluster.get_connection_kwargs())
            master = ClusterNode(host, int(port), **options)
            self._nodes[address] = _Node(master.connection_class(**master.connection_kwargs))
        return self._nodes[address]

    async def aclose(self) -> None:
        """Closes every connection; a call after it connects again."""
        for node in list(self._nodes.values()):
            await node.aclose()
