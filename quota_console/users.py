"""Who may sign in to the console, and as whom the console then calls the center.

    # users.toml: one table per person; `quota console hash-password` prints the hash
    [users.alice]
    password = "scrypt$16384$8$1$<salt>$<hash>"     # never the password itself
    cert = "/etc/quota/people/alice.pem"            # alice's own client certificate (her SPIFFE identity) ...
    key = "/etc/quota/people/alice-key.pem"         # ... and its key

After sign-in every call to the center carries that person's certificate, so the center's authorization and
audit trail see the person, and the console holds no identity or privilege of its own. Checked at start:
every file readable, every certificate a person's (owner, approver or operator) of the trust domain, issued
by the CA; a mistake stops the console with a ConfigError naming the user and the file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from quota_common.errors import ConfigError
from quota_common.identity import PEOPLE, Identity, IdentityError, identity_from_uris
from quota_common.tls import TlsFiles, TlsWatch
from quota_common.transport import Transport

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""OWASP's minimum for scrypt: about 16 MiB and some tens of milliseconds per check."""
_SCRYPT_MAX_N = 2**20
_SALT_BYTES, _KEY_BYTES = 16, 32


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash` (base64): what the users file keeps instead of the password."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def check_password(stored: str, password: str) -> bool:
    """Whether `password` is the one `stored` was made from; in constant time for a given hash."""
    n, r, p, salt, key = _parse_hash(stored)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), key)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n, dklen=_KEY_BYTES)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """ValueError saying what a valid hash looks like."""
    parts = stored.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("not a scrypt$N$r$p$salt$hash string; `quota console hash-password` makes one") from None
    if not (2 <= n <= _SCRYPT_MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16 and salt and key):
        raise ValueError(f"scrypt parameters N={n} r={r} p={p} are out of range (N a power of two up to 2^20)")
    return n, r, p, salt, key


@dataclass(frozen=True)
class User:
    login: str
    password_hash: str
    identity: Identity | None
    """Who the center sees; None on a plaintext center (loopback only), which sees nobody."""
    transport: Transport
    """The person's own links to the center: mutual TLS with their certificate, or plaintext."""


_DUMMY_HASH = hash_password(secrets.token_hex(16))
"""Checked for a login nobody has, so that a wrong name costs as long as a wrong password."""


@dataclass(frozen=True)
class Users:
    by_login: dict[str, User]

    def authenticate(self, login: str, password: str) -> User | None:
        user = self.by_login.get(login)
        matched = check_password(user.password_hash if user else _DUMMY_HASH, password)
        return user if user is not None and matched else None


def load_users(path: Path, ca: Path | None, trust_domain: str) -> Users:
    """The users file at `path`; with `ca`, each user's certificate is checked against it and the user calls
    with mutual TLS, without, the center is plaintext and a user's cert and key must be left out."""
    try:
        document = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"--users {path}: cannot read it ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--users {path}: not TOML ({error})") from None
    table = document.get("users")
    if not isinstance(table, dict) or not table or set(document) != {"users"}:
        raise ConfigError(f"--users {path}: needs [users.NAME] tables (and nothing else), one per person")
    return Users({login: _user(path, login, fields, ca, trust_domain) for login, fields in table.items()})


def _user(path: Path, login: str, fields: object, ca: Path | None, trust_domain: str) -> User:
    where = f"--users {path}, user {login!r}"
    if not isinstance(fields, dict) or not isinstance(fields.get("password"), str):
        raise ConfigError(f"{where}: needs password = the output of `quota console hash-password`")
    expected = {"password", "cert", "key"} if ca is not None else {"password"}
    if set(fields) != expected:
        needs = "password, cert and key" if ca is not None else "only password (the center is plaintext)"
        raise ConfigError(f"{where}: has {', '.join(sorted(fields))}; it needs {needs}")
    try:
        _parse_hash(fields["password"])
    except ValueError as error:
        raise ConfigError(f"{where}: password is {error}") from None
    if ca is None:
        return User(login, fields["password"], None, Transport(None, trust_domain))
    files = TlsFiles(path.parent / str(fields["cert"]), path.parent / str(fields["key"]), ca)
    watch = TlsWatch(files)
    try:
        identity = identity_from_uris(watch.current().uris, trust_domain)
    except IdentityError as error:
        raise ConfigError(f"{where}: {files.cert}: {error.message}") from None
    if identity.role not in PEOPLE:
        raise ConfigError(f"{where}: {files.cert} names {identity}, not a person (an owner, approver or operator)")
    return User(login, fields["password"], identity, Transport(watch, trust_domain))
