"""The HTTP endpoint beside every server: what a Kubernetes probe and a Prometheus scrape get."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from quota_common.metrics_http import MetricsEndpoint


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


async def test_healthz_turns_unavailable_once_the_process_is_stopping() -> None:
    endpoint = MetricsEndpoint("127.0.0.1:0", CollectorRegistry())
    stopping = False
    endpoint.serving = lambda: not stopping
    port = await endpoint.start()
    try:
        assert await asyncio.to_thread(_get, port, "/healthz") == (200, b"serving\n")
        stopping = True
        assert await asyncio.to_thread(_get, port, "/healthz") == (503, b"stopping\n")
    finally:
        await endpoint.close()


@pytest.mark.parametrize("path", ["/healthz/x", "/healthz.json"])
async def test_paths_other_than_metrics_and_healthz_are_not_found(path: str) -> None:
    endpoint = MetricsEndpoint("127.0.0.1:0", CollectorRegistry())
    port = await endpoint.start()
    try:
        status, _ = await asyncio.to_thread(_get, port, path)
        assert status == 404
    finally:
        await endpoint.close()
