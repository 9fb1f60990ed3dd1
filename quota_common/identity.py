"""Who is calling: the identity a peer's certificate names, as a SPIFFE ID in its one URI SAN.

    spiffe://<trust domain>/center                  the center (every replica)
    spiffe://<trust domain>/region/<region>/agent   an agent of <region>
    spiffe://<trust domain>/region/<region>/orders  an order service of <region>
    spiffe://<trust domain>/region/<region>/orders/<service>
                                                    order service <service> of <region>: an identity of its own,
                                                    so its orders are its own (see region_agent.ledger.base)
    spiffe://<trust domain>/owner/<name>            a budget owner
    spiffe://<trust domain>/approver/<name>         an approver
    spiffe://<trust domain>/operator/<name>         an operator (the emergency switch)

Pure: no I/O. `identity_from_uri` parses and validates one ID; `peer_identity` takes it from a gRPC
call's auth context (grpcio puts the verified client certificate's URI SANs under `peer_uri`, and the
certificate itself under `x509_pem_cert`). Anything else is refused with `IdentityError`, whose message
names what was presented and what would be accepted; the caller answers it as UNAUTHENTICATED.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509

SCHEME = "spiffe://"
PEER_URI = "peer_uri"
"""grpcio's auth property holding the URI SANs of the verified peer certificate (every one of them)."""
PEER_PEM_CERT = "x509_pem_cert"
"""grpcio's auth property holding the verified peer certificate, PEM-encoded."""

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
"""A SPIFFE trust domain: lowercase letters, digits, dots, dashes and underscores."""
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""A path segment: SPIFFE's characters, and at most the 128 bytes a region's name may have."""


class Role(enum.StrEnum):
    CENTER = "center"
    AGENT = "agent"
    ORDERS = "orders"
    OWNER = "owner"
    APPROVER = "approver"
    OPERATOR = "operator"


REGIONAL = (Role.AGENT, Role.ORDERS)
"""Roles that belong to one region: `spiffe://<domain>/region/<region>/<role>`."""
PEOPLE = (Role.OWNER, Role.APPROVER, Role.OPERATOR)
"""Roles that name a person: `spiffe://<domain>/<role>/<name>`."""
SHAPES = (
    "spiffe://{domain}/center, spiffe://{domain}/region/<region>/agent, spiffe://{domain}/region/<region>/orders, "
    "spiffe://{domain}/region/<region>/orders/<service>, spiffe://{domain}/owner/<name>, "
    "spiffe://{domain}/approver/<name> or spiffe://{domain}/operator/<name>"
)


class IdentityError(Exception):
    """The peer presented no identity this system accepts; `message` says what it presented and what would do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Identity:
    """A verified caller. `region` is set for agents and order services only; `name` is the person's
    name for owners, approvers and operators, and the role's own name for the center, agents and
    order services (the region tells those apart)."""

    trust_domain: str
    role: Role
    region: str | None
    name: str
    service: str = ""
    """An order service's own name (`.../region/<region>/orders/<service>`); "" for an order service
    without one (`.../orders`, which every such service of the region shares) and for every other role.
    Authorization by the role table does not look at it; the agent does, to tell whose order is whose."""

    @property
    def uri(self) -> str:
        if self.role is Role.CENTER:
            return f"{SCHEME}{self.trust_domain}/center"
        if self.role in REGIONAL:
            service = f"/{self.service}" if self.service else ""
            return f"{SCHEME}{self.trust_domain}/region/{self.region}/{self.role}{service}"
        return f"{SCHEME}{self.trust_domain}/{self.role}/{self.name}"

    def __str__(self) -> str:
        return self.uri


def center(trust_domain: str) -> Identity:
    return Identity(require_trust_domain(trust_domain), Role.CENTER, None, Role.CENTER.value)


def regional(trust_domain: str, role: Role, region: str, service: str = "") -> Identity:
    """An agent's or an order service's identity in `region`; an order service's may name the `service`."""
    if role not in REGIONAL:
        raise ValueError(f"{role} is not a regional role; those are {', '.join(REGIONAL)}")
    if service and role is not Role.ORDERS:
        raise ValueError(f"only an order service's identity names a service, not an {role}'s")
    named = _segment("the order service's name", service) if service else ""
    return Identity(require_trust_domain(trust_domain), role, _segment("the region", region), role.value, named)


def person(trust_domain: str, role: Role, name: str) -> Identity:
    """An owner's, approver's or operator's identity."""
    if role not in PEOPLE:
        raise ValueError(f"{role} is not a person's role; those are {', '.join(PEOPLE)}")
    return Identity(require_trust_domain(trust_domain), role, None, _segment(f"the {role}'s name", name))


def identity_from_uri(uri: str, trust_domain: str) -> Identity:
    """The identity `uri` names, if it is one of the shapes above in `trust_domain`; IdentityError otherwise."""
    shapes = SHAPES.format(domain=trust_domain)
    shown = _shown(uri)
    if not uri.startswith(SCHEME):
        raise IdentityError(f"{shown} is not a SPIFFE ID; the certificate's URI SAN must be one of {shapes}")
    domain, _, path = uri[len(SCHEME) :].partition("/")
    if domain != trust_domain:
        raise IdentityError(
            f"{shown} belongs to trust domain {_shown(domain)}, not {trust_domain!r}: "
            f"issue the certificate for spiffe://{trust_domain}/... from this deployment's CA"
        )
    parts = path.split("/")
    if not path or not all(_SEGMENT.fullmatch(part) and part not in (".", "..") for part in parts):
        raise IdentityError(
            f"{shown} has a malformed path: segments are 1..128 of A-Z a-z 0-9 . _ - "
            f"(no empty, '.' or '..' segment, query or fragment); use one of {shapes}"
        )
    match parts:
        case ["center"]:
            return Identity(trust_domain, Role.CENTER, None, Role.CENTER.value)
        case ["region", region, ("agent" | "orders") as role]:
            return Identity(trust_domain, Role(role), region, role)
        case ["region", region, "orders", service]:
            return Identity(trust_domain, Role.ORDERS, region, Role.ORDERS.value, service)
        case [("owner" | "approver" | "operator") as role, name]:
            return Identity(trust_domain, Role(role), None, name)
    raise IdentityError(f"{shown} names no role of this system; use one of {shapes}")


def identity_from_uris(uris: Iterable[str], trust_domain: str) -> Identity:
    """The identity of a certificate whose URI SANs are `uris`: exactly one is allowed, as SPIFFE's
    X.509-SVID requires, so a certificate cannot be two identities at once."""
    found = list(uris)
    if not found:
        raise IdentityError(
            "the certificate has no URI SAN, so it names no identity; issue it with one such as "
            f"spiffe://{trust_domain}/owner/<name> (`quota certs dev` does)"
        )
    if len(found) > 1:
        raise IdentityError(
            f"the certificate has {len(found)} URI SANs ({', '.join(map(_shown, found[:4]))}); "
            "an identity certificate has exactly one"
        )
    return identity_from_uri(found[0], trust_domain)


def certificate_uris(certificate: x509.Certificate) -> tuple[str, ...]:
    """The certificate's URI SANs, in its order."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(names.get_values_for_type(x509.UniformResourceIdentifier))


def identity_from_certificate(pem: bytes, trust_domain: str) -> Identity:
    """The identity a PEM certificate (the first in `pem`) names."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise IdentityError(f"the certificate cannot be read ({error})") from None
    return identity_from_uris(certificate_uris(certificate), trust_domain)


def peer_identity(auth_context: Mapping[str, Iterable[bytes]], trust_domain: str) -> Identity:
    """The identity of the peer of a call, from `context.auth_context()` of a server that required and
    verified a client certificate. Reads `peer_uri` (grpcio 1.85 sets it to every URI SAN of the peer's
    certificate, and leaves it out when there is none); a grpcio that sets only `x509_pem_cert` is read
    from the certificate itself. A plaintext or certificate-less call has neither: IdentityError."""
    uris = auth_context.get(PEER_URI)
    if uris is not None:
        return identity_from_uris((uri.decode("utf-8", "replace") for uri in uris), trust_domain)
    pem = b"".join(auth_context.get(PEER_PEM_CERT, ()))
    if pem:
        return identity_from_certificate(pem, trust_domain)
    raise IdentityError(
        "the call came without a verified client certificate; connect with mutual TLS "
        "(--tls-cert, --tls-key and --tls-ca) using a certificate issued by this deployment's CA"
    )


def require_trust_domain(trust_domain: str) -> str:
    """`trust_domain` if SPIFFE allows it; ValueError saying what would do otherwise."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"trust domain {trust_domain!r}: use 1..255 of a-z 0-9 . _ -, such as 'quota'")
    return trust_domain


def _segment(field: str, value: str) -> str:
    if not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{field} {value!r} cannot be part of an identity: use 1..128 of A-Z a-z 0-9 . _ -")
    return value


def _shown(text: str, limit: int = 200) -> str:
    """What the peer presented, for a message: quoted, escaped, and cut short."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
