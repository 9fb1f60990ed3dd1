"""The Redis ACL user a region's agents log in as: the region's keys and the ledger's commands, nothing else.

Production Redis is set up from these (the Helm chart's bundled Redis writes the same rule; tests/helm checks
that it does), and the tests' Redis servers use them too. Every key the agents touch (the ledger's and the
promotion cache's) is under the hash tag `{quota:REGION}`, so one key pattern covers a region.
"""

from __future__ import annotations

import hashlib

LEDGER_COMMANDS = (
    "ping", "select", "evalsha", "script|load", "multi", "exec",
    "get", "set", "del", "exists", "pexpire",
    "hget", "hmget", "hset", "hsetnx", "hincrby", "hexists", "hvals",
    "sadd", "sismember", "smembers", "zadd", "zrangebyscore", "zrem", "time",
)  # fmt: skip
"""Every command a region's agents send to its Redis: their own (the ledger's and the promotion cache's
reads, the connection's set-up) and those their Lua scripts call, which Redis checks against the ACL too.
(Redis 7.0 has no CLIENT SETINFO, and refuses an ACL naming it: redis-py's connection set-up tolerates
its refusal.)"""

_GLOB = str.maketrans({special: f"\\{special}" for special in "*?[]\\"})


def region_tag(region: str) -> str:
    """The hash tag every key of a region begins with (one cluster slot: a script's keys all in one)."""
    return f"{{quota:{region}}}"


def incarnation_key(region: str) -> str:
    """The key of the region's ledger life, the ledger's first read."""
    return f"{region_tag(region)}:incarnation"


def agent_user(region: str) -> str:
    """The name of the ACL user a region's agents log in as."""
    return f"agent-{region}"


def key_pattern(region: str) -> str:
    """The ACL key pattern of a region's keys, glob characters in the region's name escaped."""
    return f"~{region_tag(region.translate(_GLOB))}:*"


def agent_acl(region: str) -> tuple[str, ...]:
    """The ACL rules of the Redis user a region's agents log in as (after its name, state and password):
    the region's keys and the ledger's commands, no channels, nothing else.
    ValueError for a region an ACL file cannot hold (it splits its lines on white space)."""
    if not region or any(character.isspace() for character in region):
        raise ValueError(f"region {region!r} is empty or has white space, which a Redis ACL file cannot hold")
    return (
        "resetkeys", key_pattern(region), "resetchannels",
        "-@all", *(f"+{command}" for command in LEDGER_COMMANDS),
    )  # fmt: skip


def password_sha256(password: str) -> str:
    """The hex SHA-256 of a password, as an ACL file holds it (`#HEX`) instead of the password."""
    return hashlib.sha256(password.encode()).hexdigest()


def agent_acl_line(region: str, password_sha256_hex: str) -> str:
    """The line of an ACL file (redis-server --aclfile) for a region's agents' user, with the password's
    hex SHA-256 (`password_sha256`). Put `user default off` before it, so only this user may log in."""
    if len(password_sha256_hex) != 64 or any(c not in "0123456789abcdef" for c in password_sha256_hex):
        raise ValueError("password_sha256_hex must be 64 lowercase hex digits (password_sha256)")
    return " ".join(("user", agent_user(region), "on", f"#{password_sha256_hex}", *agent_acl(region)))
