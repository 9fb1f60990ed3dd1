"""Turns on authentication in the chart's bundled etcd, once, and keeps it as the values say: the user root and the
center's user, whose role may read and write the center's prefix and nothing else. The chart's post-install and
post-upgrade hook Job runs it (in the quota image: etcd's own image has etcdctl but no shell to script it with),
through etcd's JSON gateway, over TLS with a client certificate. Running it again changes nothing but the
passwords, to those of the Secrets. Python's standard library only.

Settings, from the environment: ETCD_ENDPOINT (https://HOST:2379), ETCD_CA, ETCD_CERT, ETCD_KEY (PEM files),
ROOT_PASSWORD_FILE, CENTER_USER, CENTER_PASSWORD_FILE, PREFIX; WAIT_SECONDS, how long etcd may take to answer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any


class EtcdError(Exception):
    """etcd answered with an error (its message)."""


def call(endpoint: str, context: ssl.SSLContext, path: str, body: dict[str, Any], token: str = "") -> dict[str, Any]:
    request = urllib.request.Request(f"{endpoint}/v3/{path}", json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            result: dict[str, Any] = json.loads(answer.read() or b"{}")
            return result
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            answer_body = json.loads(text)
            text = answer_body.get("message") or answer_body.get("error") or text
        raise EtcdError(text) from None


def password(variable: str) -> str:
    with open(os.environ[variable], encoding="utf-8") as file:
        text = file.read().removesuffix("\n").removesuffix("\r")
    if not text:
        sys.exit(f"{os.environ[variable]} ({variable}) is empty")
    return text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def main() -> None:
    endpoint = os.environ["ETCD_ENDPOINT"].rstrip("/")
    context = ssl.create_default_context(cafile=os.environ["ETCD_CA"])
    context.load_cert_chain(os.environ["ETCD_CERT"], os.environ["ETCD_KEY"])
    root_password, user, user_password = (
        password("ROOT_PASSWORD_FILE"),
        os.environ["CENTER_USER"],
        password("CENTER_PASSWORD_FILE"),
    )
    prefix = os.environ["PREFIX"].encode()
    deadline = time.monotonic() + float(os.environ.get("WAIT_SECONDS", "300"))

    # Whether authentication is on (root logs in) or not yet (etcd says so); until etcd answers, wait.
    while True:
        try:
            token = call(endpoint, context, "auth/authenticate", {"name": "root", "password": root_password})["token"]
            enabled = True
            break
        except EtcdError as error:
            if "not enabled" in str(error):
                token, enabled = "", False
                break
            if "authentication failed" in str(error):
                sys.exit(
                    f"etcd refused root's password ({error}): the root password Secret is not the one etcd was set "
                    "up with (etcd keeps it in its volumes); put that one back in the Secret"
                )
            problem = str(error)
        except OSError as error:  # not up yet, or not a quorum yet
            problem = str(error)
        if time.monotonic() > deadline:
            sys.exit(f"etcd at {endpoint} did not answer: {problem}")
        time.sleep(2)

    def ensure(path: str, body: dict[str, Any], exists: str = "already exists") -> bool:
        """True when this made it; False when it was there."""
        try:
            call(endpoint, context, path, body, token)
        except EtcdError as error:
            if exists in str(error):
                return False
            raise
        return True

    def logs_in(name: str, secret: str) -> bool:
        try:
            call(endpoint, context, "auth/authenticate", {"name": name, "password": secret})
        except EtcdError:
            return False
        return True

    # A password is changed only when it is not the Secret's already: a change ends the user's sessions (root's is
    # this one; the centers' would have to log in again).
    role = user
    for name, secret in (("root", root_password), (user, user_password)):
        if ensure("auth/user/add", {"name": name, "password": secret}):
            continue
        if not (enabled and logs_in(name, secret)):
            call(endpoint, context, "auth/user/changepw", {"name": name, "password": secret}, token)
    call(endpoint, context, "auth/user/grant", {"user": "root", "role": "root"}, token)
    ensure("auth/role/add", {"name": role})
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    permission = {"permType": "READWRITE", "key": b64(prefix), "range_end": b64(end)}
    call(endpoint, context, "auth/role/grant", {"name": role, "perm": permission}, token)
    call(endpoint, context, "auth/user/grant", {"user": user, "role": role}, token)
    if not enabled:
        call(endpoint, context, "auth/enable", {}, token)
    print(f"etcd authentication {'kept' if enabled else 'turned on'}: root, and {user} on {prefix.decode()}")


if __name__ == "__main__":
    try:
        main()
    except EtcdError as error:
        sys.exit(f"etcd refused: {error}")
