"""Alerts posted to webhooks: JSON, at least once, off the center's event loop.

    webhook_urls(urls)           the --alert-webhook values, checked (ConfigError naming a bad one)
    Webhooks(urls, delivered)
      .send(payload)             posts to every URL, each retried with jittered exponential backoff until
                                 it answers 2xx; a post of the same alert to the same URL still under way
                                 is not started twice
      .close()                   stops every post under way (leadership lost, the center stops)

Each post carries the alert's id in the body and in an Idempotency-Key header: a receiver that saw it
already drops it (a retry whose first answer was lost arrives twice). Posts run in threads (urllib), so a
slow receiver never holds up the center's RPCs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from quota_common.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    first_s: float = 1.0
    """The first retry waits up to this long (jittered); each next one up to twice as long."""
    max_s: float = 60.0
    """No wait is longer: a receiver that recovers hears of every alert within about this long."""
    timeout_s: float = 10.0
    """A post not answered within this long failed."""


class DeliveryFailed(Exception):
    pass


def webhook_urls(urls: Sequence[str]) -> tuple[str, ...]:
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--alert-webhook {url!r}: give an http:// or https:// URL with a host")
        try:
            parts.port  # noqa: B018  # urlsplit checks the port only when it is read
        except ValueError:
            raise ConfigError(f"--alert-webhook {url!r}: the port must be a number within 1..65535") from None
    return tuple(urls)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would arrive as a GET without its body: a redirect is an answer that failed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _post(url: str, alert_id: str, body: bytes, timeout_s: float) -> None:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": alert_id, "User-Agent": "quota-center"},
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as answer:
            status = answer.status
    except urllib.error.HTTPError as error:
        raise DeliveryFailed(f"{url} answered {error.code}") from None
    except (OSError, ValueError) as error:
        raise DeliveryFailed(f"{url}: {error}") from None
    if not 200 <= status < 300:
        raise DeliveryFailed(f"{url} answered {status}")


class Webhooks:
    def __init__(
        self, urls: Sequence[str], delivered: Callable[[str], Awaitable[None]], backoff: Backoff | None = None
    ) -> None:
        """`delivered(alert_id)` is awaited after each 2xx."""
        self.urls = tuple(urls)
        self._delivered = delivered
        self._backoff = backoff or Backoff()
        self._posts: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.deliveries = 0
        self.failures = 0
        """Posts that failed (each retry counts)."""

    def in_flight(self, alert_id: str) -> bool:
        return any(key[0] == alert_id for key in self._posts)

    def send(self, payload: dict[str, Any]) -> None:
        alert_id = str(payload["id"])
        body = json.dumps(payload, sort_keys=True).encode()
        for url in self.urls:
            key = (alert_id, url)
            if key not in self._posts:
                task = asyncio.create_task(self._deliver(url, alert_id, body), name=f"webhook {alert_id} {url}")
                self._posts[key] = task
                task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: tuple[str, str], _: asyncio.Task[None]) -> None:
        self._posts.pop(key, None)

    async def close(self) -> None:
        posts = list(self._posts.values())
        for task in posts:
            task.cancel()
        await asyncio.gather(*posts, return_exceptions=True)

    async def _deliver(self, url: str, alert_id: str, body: bytes) -> None:
        backoff = self._backoff
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DeliveryFailed),
            wait=wait_random_exponential(multiplier=backoff.first_s, max=backoff.max_s),
            before_sleep=lambda state: self._failed(alert_id, state.outcome),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await asyncio.to_thread(_post, url, alert_id, body, backoff.timeout_s)
        self.deliveries += 1
        try:
            await self._delivered(alert_id)
        except Exception:
            log.exception("alert %s was delivered to %s; counting the delivery failed", alert_id, url)

    def _failed(self, alert_id: str, outcome: Any) -> None:
        self.failures += 1
        log.warning("alert %s not delivered, will retry: %s", alert_id, outcome.exception() if outcome else "")
