"""`quota bench console`: how fast the console's pages answer while the demo's load runs.

What `quota demo` runs (a center and agents of eu, us and ap with mutual TLS, the demo's promotion, its
orders skewed 70/20/10 from 8 order services), with the console beside it and `viewers` people signed in,
each loading every page in turn for as long as the orders run. Each page's time is what the console itself
reports in its Server-Timing header: from the request's arrival to the answer's first byte, every call to
the center included (the browser's own round trip on loopback is left out). The target: p95 < 300 ms.

`screenshots`: also pictures of the promotion's page halfway through the orders and once they are done,
taken by a headless Chromium (docs/console-*.png; make them again with `quota bench console --screenshots
docs`, which is also why the README's figures come from a run without it: the browser costs CPU too).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from loadtest.demo import PROMOTION_ID, REGIONS, DemoOptions, create_promotion, demand_of, drive, percentile
from quota_testing.console import PASSWORD, ConsoleStack, console_stack
from quota_testing.secure_stack import write_secure_set

TARGET_P95_MS = 300.0
PAGES = {
    "promotions": "/",
    "promotion": f"/promotions/{PROMOTION_ID}",
    "regions (refresh)": f"/promotions/{PROMOTION_ID}/regions",
    "burn-down data": f"/promotions/{PROMOTION_ID}/burndown.json",
    "alerts": "/alerts",
    "approvals": "/approvals",
    "actions": "/actions",
}
_TIMING = re.compile(r"app;dur=([0-9.]+)")


async def _viewer(url: str, stop: asyncio.Event, timings: dict[str, list[float]]) -> None:
    """A person signed in as alice, loading every page in turn until `stop`."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as browser:
        login = await browser.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert token, "the login form carries its token"
        fields = {"csrf": token.group(1), "login": "alice", "password": PASSWORD, "next": "/"}
        assert (await browser.post("/login", data=fields)).status_code == 303, "alice signs in"
        while not stop.is_set():
            for page, path in PAGES.items():
                answer = await browser.get(path)
                answer.raise_for_status()
                timing = _TIMING.search(answer.headers.get("server-timing", ""))
                assert timing, "the console times every answer"
                timings[page].append(float(timing.group(1)))


def _screenshot(stack: ConsoleStack, profile: Path, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    from quota_testing.browser import chromium

    with chromium(profile, width=1200, height=1300) as browser:
        browser.get(f"{stack.url}/login")
        browser.find_element(By.NAME, "login").send_keys("alice")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        browser.get(f"{stack.url}/promotions/{PROMOTION_ID}")
        WebDriverWait(browser, 30).until(lambda page: page.find_element(By.ID, "burndown").get_attribute("data-drawn"))
        browser.save_screenshot(str(path))


async def bench_console(
    viewers: int, options: DemoOptions, screenshots: Path | None, say: Callable[[str], None]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="quota-bench-console-") as directory:
        workdir = Path(directory)
        dev = write_secure_set(workdir / "certs", list(REGIONS))
        # A sample every second, so that the chart has a shape within the demo's half minute.
        with console_stack(workdir, dev, list(REGIONS), ("--history-interval", "1"), ()) as stack:
            await create_promotion(stack.center.address, options.budget, dev)
            agents = {region: agent.address for region, agent in stack.agents.items()}
            timings: dict[str, list[float]] = defaultdict(list)
            stop = asyncio.Event()
            orders, halfway = [0], asyncio.Event()

            def counted() -> None:
                orders[0] += 1
                if orders[0] * 2 >= demand_of(options):
                    halfway.set()

            say(f"the demo's {demand_of(options):,} orders, {viewers} people loading every page of the console")
            started = time.perf_counter()
            load = asyncio.create_task(drive(agents, options, dev, counted))
            watching = [asyncio.create_task(_viewer(stack.url, stop, timings)) for _ in range(viewers)]
            if screenshots is not None:
                await halfway.wait()
                await asyncio.to_thread(
                    _screenshot, stack, workdir / "profile-1", screenshots / "console-promotion.png"
                )
            tallies = await load
            seconds = time.perf_counter() - started
            stop.set()
            await asyncio.gather(*watching)
            if screenshots is not None:
                await asyncio.to_thread(_screenshot, stack, workdir / "profile-2", screenshots / "console-sold-out.png")
    issued = sum(tally.acked for tally in tallies.values())
    rows: list[dict[str, Any]] = [
        {
            "page": page,
            "samples": len(timings[page]),
            "p50_ms": round(percentile(timings[page], 0.5), 1),
            "p95_ms": round(percentile(timings[page], 0.95), 1),
            "max_ms": round(max(timings[page], default=0.0), 1),
        }
        for page in PAGES
    ]
    worst = max(row["p95_ms"] for row in rows)
    return {
        "viewers": viewers,
        "orders": demand_of(options),
        "issued": issued,
        "load_seconds": round(seconds, 1),
        "orders_per_s": round(demand_of(options) / seconds),
        "rows": rows,
        "worst_p95_ms": worst,
        "target_p95_ms": TARGET_P95_MS,
        "met": worst < TARGET_P95_MS,
    }
