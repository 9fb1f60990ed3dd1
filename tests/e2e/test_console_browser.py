"""The console in a real headless browser (Debian's chromium), against a running center, agents of eu and us,
and traffic: every page loads, its numbers are the CLI's, the regions refresh without a reload, and people
act as themselves: alice acknowledges an alert and freezes her promotion (and the agents refuse it), fails to
approve her own held change, bob approves it, carol throws the emergency switch for eu."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from quota_client import Frozen, Line
from quota_testing.browser import chromium, missing
from quota_testing.console import PASSWORD, ConsoleStack
from tests.e2e.console_world import BUSY, HELD, SALE, SALE_BUDGET, SALE_SPENT, client, quota

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(missing()), reason=missing() or "chromium is installed")]
T = TypeVar("T")
WAIT_S = 30.0
"""Only bounds a hang: the refresh, a report or an alert evaluation lands well before."""
ALICE = "spiffe://quota/owner/alice"


@pytest.fixture(scope="module")
def browser(console_dir: Path) -> Iterator[Chrome]:
    with chromium(console_dir / "chromium-profile") as running:
        yield running


def _until(browser: Chrome, condition: Callable[[Chrome], T]) -> T:
    # The regions table is replaced every few seconds: an element read as it goes is read again.
    waiting = WebDriverWait(browser, WAIT_S, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])
    return waiting.until(condition)


def _text(browser: Chrome, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def _shown(browser: Chrome, css: str) -> str:
    """The text of `css` once the page that has it loaded: a click that submits a form or follows a link
    returns before the next page is there."""
    return _until(browser, lambda page: _text(page, css))


def _sign_in(browser: Chrome, console: ConsoleStack, login: str) -> None:
    browser.delete_all_cookies()
    browser.get(f"{console.url}/login")
    browser.find_element(By.NAME, "login").send_keys(login)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    _until(browser, lambda page: login in _text(page, "header .who"))


def _amount(text: str) -> int:
    return int(text.replace(",", ""))


def test_every_page_loads_with_the_live_parts_working(browser: Chrome, console: ConsoleStack) -> None:
    _sign_in(browser, console, "alice")

    for path, heading in (
        ("/", "Promotions"),
        (f"/promotions/{SALE}", SALE),
        ("/alerts", "Open alerts"),
        ("/approvals", "Approvals"),
        ("/actions", "Actions"),
    ):
        browser.get(console.url + path)
        assert _text(browser, "h1").startswith(heading), path
        assert not browser.find_elements(By.ID, "center-error"), path

    browser.get(f"{console.url}/promotions/{BUSY}")
    _until(browser, lambda page: page.find_element(By.ID, "burndown").get_attribute("data-drawn"))
    assert browser.find_elements(By.CSS_SELECTOR, "#burndown canvas"), "uPlot drew the burn-down"
    first = _until(browser, lambda page: page.find_element(By.ID, "regions").get_attribute("data-as-of"))
    _until(browser, lambda page: page.find_element(By.ID, "regions").get_attribute("data-as-of") not in (None, first))
    assert browser.execute_script("return performance.getEntriesByType('navigation').length") == 1, "no reload"


def test_the_numbers_are_those_the_cli_shows(browser: Chrome, console: ConsoleStack, console_dir: Path) -> None:
    _sign_in(browser, console, "alice")
    deadline = time.monotonic() + WAIT_S
    while True:  # the agents report what they sold every 0.2 s; SALE sells nothing more after the seed
        usage = quota(console, console_dir, "owner-alice", "budget", "usage", SALE)
        spent = {region["region"]: region["spent"] for region in usage["regions"]}
        if spent == SALE_SPENT or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert spent == SALE_SPENT

    browser.get(f"{console.url}/?q={SALE}")
    row = f"tr[data-promotion='{SALE}']"
    assert _amount(_text(browser, f"{row} .budget")) == usage["budget"] == SALE_BUDGET
    assert _amount(_text(browser, f"{row} .spent")) == sum(spent.values())
    assert _amount(_text(browser, f"{row} .left")) == SALE_BUDGET - sum(spent.values())
    assert _text(browser, f"{row} .state") == "live"

    browser.get(f"{console.url}/promotions/{SALE}")
    shown = _until(browser, _regions_shown)
    assert shown == {region["region"]: (region["spent"], region["lease_state"]) for region in usage["regions"]}
    assert _until(browser, lambda page: _amount(_text(page, "#regions-spent"))) == sum(spent.values())


def _regions_shown(page: Chrome) -> dict[str, tuple[int, str]]:
    """Spent and lease by region, as the regions table shows them (read again if it was replaced meanwhile)."""
    return {
        str(row.get_attribute("data-region")): (
            _amount(row.find_element(By.CSS_SELECTOR, ".spent").text),
            str(row.find_element(By.CSS_SELECTOR, ".lease").text),
        )
        for row in page.find_elements(By.CSS_SELECTOR, "#regions tbody tr")
    }


def test_an_alert_is_acknowledged_under_the_person(browser: Chrome, console: ConsoleStack, console_dir: Path) -> None:
    _sign_in(browser, console, "alice")

    def raised(page: Chrome) -> bool:
        page.get(f"{console.url}/alerts")
        return bool(page.find_elements(By.CSS_SELECTOR, "tr[data-alert] form"))

    _until(browser, raised)
    form = browser.find_element(By.CSS_SELECTOR, "tr[data-alert] form")
    Select(form.find_element(By.NAME, "cause")).select_by_value("false-alarm")
    form.find_element(By.NAME, "note").send_keys("the seeded orders")
    form.find_element(By.TAG_NAME, "button").click()

    assert f"acknowledged as false-alarm by {ALICE}" in _shown(browser, "#flash")
    answered = quota(console, console_dir, "owner-alice", "alerts", "--all")["alerts"]
    assert [(a["promotion_id"], a["acknowledged_by"], a["note"]) for a in answered] == [
        (SALE, ALICE, "the seeded orders")
    ]


def _decide_first(browser: Chrome, console: ConsoleStack, decision: str) -> str:
    browser.get(f"{console.url}/approvals")
    browser.find_element(By.CSS_SELECTOR, f"tr[data-pending='P-1'] button.{decision}").click()
    return _shown(browser, "#flash")


def test_a_held_change_is_approved_by_another_never_by_its_asker(
    browser: Chrome, console: ConsoleStack, console_dir: Path
) -> None:
    _sign_in(browser, console, "alice")
    browser.get(f"{console.url}/approvals")
    assert "(you)" in _text(browser, "tr[data-pending='P-1']")

    refusal = _decide_first(browser, console, "approve")

    assert "the center refused" in refusal
    assert "PERMISSION_DENIED" in refusal
    assert [
        change["state"] for change in quota(console, console_dir, "owner-alice", "budget", "pending")["changes"]
    ] == ["held"]

    _sign_in(browser, console, "bob")
    assert "P-1 approved" in _decide_first(browser, console, "approve")
    assert quota(console, console_dir, "owner-alice", "budget", "show", HELD)["budget"] == 1_000


def test_a_freeze_is_confirmed_then_the_agents_refuse(
    browser: Chrome, console: ConsoleStack, console_dir: Path
) -> None:
    _sign_in(browser, console, "alice")
    browser.get(f"{console.url}/promotions/{BUSY}")
    browser.find_element(By.ID, "freeze").click()
    assert f"stops every sale of {BUSY} in eu, us" in _shown(browser, "#what-it-does")

    browser.find_element(By.ID, "confirm").click()

    assert f"{BUSY} is frozen" in _shown(browser, "#flash")
    assert _shown(browser, "#promotion-state") == "frozen"
    with client(console, "eu") as orders:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                orders.deduct(f"after-freeze-{time.monotonic_ns()}", [Line(BUSY, 1, "user-1")])
            except Frozen:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the agent of eu kept selling a frozen promotion")
    audit = browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
    assert [row.find_element(By.CSS_SELECTOR, ".actor").text for row in audit[:1]] == [ALICE]
    assert audit[0].find_element(By.CSS_SELECTOR, ".call").text == "SetFrozen"


def test_the_emergency_switch_names_what_it_stops(browser: Chrome, console: ConsoleStack, console_dir: Path) -> None:
    _sign_in(browser, console, "carol")
    browser.get(f"{console.url}/actions")
    browser.find_element(By.LINK_TEXT, "Freeze eu…").click()
    assert SALE in _shown(browser, "#stopped")

    browser.find_element(By.ID, "confirm").click()

    assert "the emergency switch freezes eu" in _shown(browser, "#flash")
    assert "eu" in _shown(browser, "#emergency-banner")
    browser.find_element(By.LINK_TEXT, "Unfreeze eu…").click()
    browser.find_element(By.ID, "confirm").click()
    assert "the emergency switch is off everywhere" in _shown(browser, "#flash")
