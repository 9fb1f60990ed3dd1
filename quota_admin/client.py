"""The center's admin API for a person's tool: calls go to whichever replica leads (a standby names the
leader), each refusal becomes an error with a message a person can act on (and, on a command line, an exit
status), and a change the guard rules warned about or held says so.

With several center groups (docs/shards.md) the addresses name them: `default=h1:50051,h2:50051,g1=h3:50051`
(addresses before any `NAME=` are the default group's). A call about one promotion goes to the group that
serves it, learnt from the refusal of another (`quota-shard-owner`); `fan_out` asks every group, for the
calls that list everything; a call naming something else (a pending change, an alert) goes to each group in
turn until one knows it (NOT_FOUND changes nothing, so trying the next group is safe).

    CenterError (click.ClickException: message, hint, exit_code)
      ├── CenterRefused        the leader said no (code, details)
      │     └── ChangeHeld       a guard rule held the change for a second person (pending_id)
      └── CenterUnreachable    no replica answered as leader

The errors are click's so that the command line prints them and exits with their code as they are; the web
console shows their message and hint on the page instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol, TypeVar

import click
import grpc

from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_common.errors import (
    LEADER_METADATA_KEY,
    PENDING_METADATA_KEY,
    SHARD_OWNER_METADATA_KEY,
    WARNINGS_METADATA_KEY,
    trailing,
)
from quota_common.shards import center_groups
from quota_common.transport import Transport

EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
Request = TypeVar("Request")
Reply = TypeVar("Reply")
Stub = TypeVar("Stub")


class CenterError(click.ClickException):
    """Printed as `error: ...`, then what to do about it, and exits with the class's code."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)
        if self.hint:
            click.echo(self.hint, err=True)


class CenterRefused(CenterError):
    """The leader answered and said no; its message says why."""

    exit_code = EXIT_REFUSED

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{details} ({code.name})")
        self.code = code


class ChangeHeld(CenterRefused):
    """A guard rule held the change for a second person: not an error of the caller's, and not to be retried."""

    def __init__(self, details: str, pending_id: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, details)
        self.pending_id = pending_id
        self.hint = (
            f"nothing applies until an approver other than you decides it (quota budget approve {pending_id}, or "
            f"reject); `quota budget pending` shows it. Sending the change again only books another pending change"
        )

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"held for approval: {self.message}", err=True)
        click.echo(self.hint, err=True)


class CenterUnreachable(CenterError):
    exit_code = EXIT_UNREACHABLE


class ServedElsewhere(CenterRefused):
    """The group asked does not serve the promotion; `owner` does."""

    def __init__(self, details: str, owner: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, details)
        self.owner = owner
        self.hint = f"center group {owner!r} serves it: name its replicas in --center, as {owner}=HOST:PORT"


class Paged(Protocol):
    @property
    def next_page_token(self) -> str: ...


PageT = TypeVar("PageT", bound=Paged)


class AdminClient:
    """The leader among the center replicas at `addresses`. A standby answers UNAVAILABLE with the
    leader's address in trailing metadata, and the call goes there next; an address that does not
    answer passes the call on to the next one. Each address is tried once per call, on a channel of its
    own, secured as `transport` says."""

    def __init__(
        self,
        addresses: list[str],
        timeout_s: float,
        transport: Transport,
        warn: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.groups = center_groups(addresses)
        self.addresses = next(iter(self.groups.values()))
        self._owners: dict[str, str] = {}
        """By promotion: the group a refusal named as serving it."""
        self.timeout_s = timeout_s
        self.transport = transport
        self.warn = warn or _print_fired_rules
        """Told the guard rules that fired on a change that went through (their names)."""

    def call(
        self,
        method: Callable[[pb_grpc.PromotionAdminStub], grpc.UnaryUnaryMultiCallable[Request, Reply]],
        request: Request,
        *,
        idempotent: bool = True,
    ) -> Reply:
        """`idempotent=False`: a call that timed out is not sent again elsewhere, since it may have been applied.
        With several groups: to the group serving the promotion the request names, else to each in turn until
        one knows what it names."""
        if len(self.groups) == 1:
            return self.call_service(pb_grpc.PromotionAdminStub, method, request, idempotent=idempotent)
        promotion_id = _promotion_of(request)
        group = self._owners.get(promotion_id, next(iter(self.groups)))
        untried = [group, *(name for name in self.groups if name != group)]
        # Bounded: during a hand-over the new owner may still name the old one for a moment.
        for _ in range(2 * len(self.groups)):
            group = untried.pop(0)
            try:
                return self._call_at(self.groups[group], method, request, idempotent)
            except ServedElsewhere as elsewhere:
                if elsewhere.owner not in self.groups:
                    raise
                self._owners[promotion_id] = elsewhere.owner
                untried = [elsewhere.owner, *(name for name in untried if name != elsewhere.owner)]
            except CenterRefused as refused:
                if promotion_id or refused.code != grpc.StatusCode.NOT_FOUND or not untried:
                    raise
        raise CenterUnreachable(
            f"the center groups disagree on who serves promotion {promotion_id!r}",
            "a promotion is being handed over between groups (quota shards show); retry in a few seconds",
        )

    def fan_out(
        self,
        method: Callable[[pb_grpc.PromotionAdminStub], grpc.UnaryUnaryMultiCallable[Request, Reply]],
        request: Request,
    ) -> list[Reply]:
        """The answer of every group, in the order --center names them (for the calls that list everything,
        and the emergency switch, which every group holds)."""
        return [self._call_at(addresses, method, request, True) for addresses in self.groups.values()]

    def every_group_page(
        self,
        method: Callable[[pb_grpc.PromotionAdminStub], grpc.UnaryUnaryMultiCallable[Request, PageT]],
        request_for: Callable[[str], Request],
    ) -> Iterator[PageT]:
        """Every page of a paged listing (`request_for(page_token)`), from each group in turn."""
        for addresses in self.groups.values():
            yield from every_page(functools.partial(self._page_at, addresses, method, request_for))

    def _page_at(
        self,
        addresses: list[str],
        method: Callable[[pb_grpc.PromotionAdminStub], grpc.UnaryUnaryMultiCallable[Request, PageT]],
        request_for: Callable[[str], Request],
        token: str,
    ) -> PageT:
        return self._call_at(addresses, method, request_for(token), True)

    def _call_at(
        self,
        addresses: list[str],
        method: Callable[[pb_grpc.PromotionAdminStub], grpc.UnaryUnaryMultiCallable[Request, Reply]],
        request: Request,
        idempotent: bool,
    ) -> Reply:
        return self.call_service(pb_grpc.PromotionAdminStub, method, request, idempotent=idempotent, at=addresses)

    def call_service(
        self,
        stub: Callable[[grpc.Channel], Stub],
        method: Callable[[Stub], grpc.UnaryUnaryMultiCallable[Request, Reply]],
        request: Request,
        *,
        idempotent: bool = True,
        at: list[str] | None = None,
    ) -> Reply:
        """`call` on another of the center's services (the catalog, where the emergency switch is read); `at`:
        the replicas of the group to call (default: the first group's)."""
        to_try = list(at or self.addresses)
        failures: dict[str, str] = {}
        while to_try:
            address = to_try.pop(0)
            if address in failures:
                continue
            with self.transport.channel(address) as channel:
                try:
                    reply, call = method(stub(channel)).with_call(request, timeout=self.timeout_s)
                    metadata = call.trailing_metadata() or ()
                    fired = [str(value) for key, value in metadata if key == WARNINGS_METADATA_KEY]
                    if fired:
                        self.warn(fired)
                    return reply
                except grpc.RpcError as error:
                    if not isinstance(error, grpc.Call):
                        raise
                    code, details, leader = error.code(), error.details() or "", trailing(error, LEADER_METADATA_KEY)
                    pending = trailing(error, PENDING_METADATA_KEY)
                    owner = trailing(error, SHARD_OWNER_METADATA_KEY)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and not idempotent:
                raise CenterUnreachable(
                    f"{address} did not answer within {self.timeout_s:g} s (DEADLINE_EXCEEDED)",
                    "the change may or may not have been made: read the promotion (quota budget show ID) "
                    "before you retry",
                )
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                failures[address] = f"no answer within {self.timeout_s:g} s"
            elif code == grpc.StatusCode.UNAVAILABLE:
                failures[address] = details
                if leader and self.transport.may_call(leader):
                    to_try.insert(0, leader)
            elif pending:
                raise ChangeHeld(details, pending)
            elif owner:
                raise ServedElsewhere(details, owner)
            else:
                raise CenterRefused(code, details)
        tried = "".join(f"\n  {address}: {reason}" for address, reason in failures.items())
        # A TLS server refuses a plaintext client at the handshake, which gRPC reports as unreachable.
        plaintext = "" if self.transport.tls else "; a center with mutual TLS needs --tls-cert, --tls-key and --tls-ca"
        raise CenterUnreachable(
            f"no center leader answered; tried:{tried}",
            "check that `quota center serve` runs at these addresses and that --center (or QUOTA_CENTER) lists "
            f"its replicas; during a leader election, retry in a few seconds{plaintext}",
        )


def _promotion_of(request: object) -> str:
    """The promotion a request is about ("" if none): its promotion_id, or the promotion it creates."""
    promotion_id = getattr(request, "promotion_id", "")
    if not promotion_id and (promotion := getattr(request, "promotion", None)) is not None:
        promotion_id = getattr(promotion, "id", "")
    return str(promotion_id)


def _print_fired_rules(fired: list[str]) -> None:
    click.echo(
        f"warning: the guard rules flagged this change: {', '.join(fired)} (their messages are in its "
        "audit record: quota budget audit ID)",
        err=True,
    )


def every_page(ask: Callable[[str], PageT]) -> Iterator[PageT]:
    """Each page `ask(token)` answers, from the first until one names no next page; a page token resumes
    on whichever replica leads by then."""
    token = ""
    while True:
        page = ask(token)
        yield page
        token = page.next_page_token
        if not token:
            return
