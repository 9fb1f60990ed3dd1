"""The real etcd and Redis that later contract tests run against start, answer, and go away."""

from __future__ import annotations

import json
import os
import urllib.request

import redis

from quota_testing.servers import etcd_server, redis_server


def _alive(pid: int) -> bool:
    """The fixture reaps what it stops, so a stopped server's PID is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_redis_starts_durable_on_loopback_and_stops() -> None:
    with redis_server() as server:
        client = redis.Redis(host=server.host, port=server.port)
        assert client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.close()
    assert not _alive(server.pid)


def test_etcd_starts_on_loopback_and_stops() -> None:
    with etcd_server() as server:
        request = urllib.request.Request(
            f"http://{server.address}/v3/kv/put",
            data=json.dumps({"key": "a2V5", "value": "dmFsdWU="}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert "header" in json.loads(answer.read())
    assert not _alive(server.pid)
