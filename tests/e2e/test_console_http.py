"""The console's guards, as a browser's plain HTTP sees them, against a running center, agents and console:
nothing without signing in, a wrong password gets nothing, no write by GET, none without the session's CSRF
token, and no redirect off the console after signing in."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from quota_testing.console import PASSWORD, ConsoleStack
from tests.e2e.console_world import SALE, quota

pytestmark = pytest.mark.e2e


@pytest.fixture
def new(console: ConsoleStack) -> Iterator[Callable[..., httpx.Client]]:
    """New cookie jars on the console (`new(cookies={...})`), each closed at the end."""
    opened: list[httpx.Client] = []

    def new(**options: Any) -> httpx.Client:
        opened.append(httpx.Client(base_url=console.url, timeout=30, **options))
        return opened[-1]

    yield new
    for client in opened:
        client.close()


def _token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "every form carries the session's token"
    return found.group(1)


def _signed_in(new: Callable[..., httpx.Client], login: str = "alice") -> tuple[httpx.Client, str]:
    browser = new()
    token = _token(browser.get("/login"))
    answer = browser.post("/login", data={"csrf": token, "login": login, "password": PASSWORD, "next": "/"})
    assert answer.status_code == 303, answer.text
    return browser, _token(browser.get("/"))


def _frozen(console: ConsoleStack, console_dir: Path) -> bool:
    return bool(quota(console, console_dir, "owner-alice", "budget", "show", SALE)["frozen"])


def test_pages_need_a_signed_in_person(new: Callable[..., httpx.Client]) -> None:
    browser = new()

    for path in ("/", f"/promotions/{SALE}", "/alerts", "/approvals", "/actions", f"/promotions/{SALE}/freeze"):
        answer = browser.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"] == f"/login?next={path}"
    assert browser.get(f"/promotions/{SALE}/burndown.json").status_code == 401
    assert browser.get("/healthz").text == "ok\n"


def test_a_wrong_password_signs_nobody_in(new: Callable[..., httpx.Client]) -> None:
    browser = new()
    token = _token(browser.get("/login"))

    for login, password in (("alice", "not it"), ("nobody", PASSWORD)):
        answer = browser.post("/login", data={"csrf": token, "login": login, "password": password})
        assert answer.status_code == 401
        assert "do not match" in answer.text
    assert browser.get("/").status_code == 303


def test_the_session_cookie_is_signed_http_only_and_strict(new: Callable[..., httpx.Client]) -> None:
    browser = new()
    token = _token(browser.get("/login"))

    answer = browser.post("/login", data={"csrf": token, "login": "alice", "password": PASSWORD, "next": "/"})

    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    forged = new(cookies={"quota_console": "eyJsb2dpbiI6ICJhbGljZSJ9.x.y"})
    assert forged.get("/").status_code == 303, "an unsigned cookie naming alice signs nobody in"


def test_signing_in_never_sends_the_browser_off_the_console(new: Callable[..., httpx.Client]) -> None:
    for target, landing in (("//evil.example/", "/"), ("https://evil.example/", "/"), ("/alerts", "/alerts")):
        browser = new()
        token = _token(browser.get("/login"))
        answer = browser.post("/login", data={"csrf": token, "login": "alice", "password": PASSWORD, "next": target})
        assert answer.headers["location"] == landing


def test_a_get_never_acts(console: ConsoleStack, console_dir: Path, new: Callable[..., httpx.Client]) -> None:
    browser, _ = _signed_in(new)

    confirmation = browser.get(f"/promotions/{SALE}/freeze")

    assert confirmation.status_code == 200
    assert f"stops every sale of {SALE}" in confirmation.text
    assert not _frozen(console, console_dir)


def test_a_write_without_the_sessions_token_is_refused_and_changes_nothing(
    console: ConsoleStack, console_dir: Path, new: Callable[..., httpx.Client]
) -> None:
    browser, _ = _signed_in(new)
    other, _ = _signed_in(new, "dave")

    for fields in ({}, {"csrf": "forged"}, {"csrf": _token(other.get("/"))}):
        assert browser.post(f"/promotions/{SALE}/freeze", data=fields).status_code == 403
    assert not _frozen(console, console_dir)
    assert browser.post("/logout", data={}).status_code == 403, "not even signing out"
    assert browser.get("/").status_code == 200


def test_a_refusal_of_the_center_is_shown_and_changes_nothing(
    console: ConsoleStack, console_dir: Path, new: Callable[..., httpx.Client]
) -> None:
    browser, token = _signed_in(new, "dave")

    answer = browser.post(f"/promotions/{SALE}/freeze", data={"csrf": token}, follow_redirects=True)

    assert "the center refused" in answer.text
    assert "PERMISSION_DENIED" in answer.text, "dave owns no part of alice's sale"
    assert not _frozen(console, console_dir)


def test_an_unknown_promotion_is_a_page_saying_so(new: Callable[..., httpx.Client]) -> None:
    browser, _ = _signed_in(new)

    answer = browser.get("/promotions/no-such-sale")

    assert answer.status_code == 404
    assert 'id="center-error"' in answer.text
    assert "no-such-sale" in answer.text
