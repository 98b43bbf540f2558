"""Who a client is and what it may do, sans-I/O: tokens, permissions, origins
and client addresses.

* :class:`Authenticator` turns a token into a :class:`Principal` (a user id,
  what it may subscribe to and publish to, when its token expires) or raises
  :class:`AuthFailed` with a reason fit for logs and replies (never the token).
  Tokens are the configured static token (``security.auth_token``, compared in
  constant time) or a JWT: HS256 with ``security.jwt_secret``, RS256 or ES256
  with the PEM public key in ``security.jwt_public_key_file`` (the key's kind
  picks the algorithm; ``none`` and any other algorithm are refused). A JWT
  must carry ``sub`` (the user id) and ``exp``; ``nbf``, ``aud`` and ``iss``
  are checked against the configuration. Optional claims ``subscribe`` and
  ``publish`` (lists of type patterns) replace the defaults.
* :class:`TypePatterns`: type names with ``*`` wildcards (``market.*``).
* :func:`token_from_request`: the token of an upgrade request, from
  ``Authorization: Bearer``, the ``token`` query parameter (browsers cannot
  set headers) or ``Sec-WebSocket-Protocol: bearer, <token>``.
* :class:`OriginPolicy`: the allow-list of browser origins.
* :func:`client_address`: the client's address, believing ``X-Forwarded-For``
  and ``X-Real-IP`` only from configured trusted proxies.

docs/security.md describes all of it for operators and client authors.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, SecurityConfig

__all__ = [
    "ANONYMOUS",
    "BEARER_PROTOCOL",
    "AuthFailed",
    "Authenticator",
    "OriginPolicy",
    "Principal",
    "SecurityPolicy",
    "TrustedProxies",
    "TypePatterns",
    "client_address",
    "exposure_warnings",
    "is_loopback",
    "token_from_request",
]

#: The subprotocol a browser offers before its token:
#: ``new WebSocket(url, ["bearer", token])``; the server answers with it.
BEARER_PROTOCOL = "bearer"

#: The user of every connection when authentication is off.
ANONYMOUS = "anonymous"

#: Longest token accepted, in characters (a JWT with many claims fits easily).
MAX_TOKEN_LENGTH = 8192


class AuthFailed(Exception):
    """A token was missing or refused; ``reason`` says why (without the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TypePatterns:
    """Type names a principal may use: exact names and ``*`` wildcards
    (``*`` matches any run of characters, dots included; ``*`` alone matches
    every type). An empty set allows nothing."""

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        parts = [".*".join(re.escape(piece) for piece in p.split("*")) for p in self.patterns]
        self._regex = (
            re.compile("|".join(f"(?:{p})" for p in parts), re.DOTALL) if parts else None
        )

    def allows(self, type_: str) -> bool:
        return self._regex is not None and self._regex.fullmatch(type_) is not None

    def __repr__(self) -> str:
        return f"TypePatterns({list(self.patterns)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypePatterns) and self.patterns == other.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated (or, with auth off, anonymous) client."""

    user: str
    subscribe: TypePatterns
    publish: TypePatterns
    method: str  # "none" (auth off), "token" (the static token) or "jwt"
    expires_at: float | None = None  # epoch seconds (a JWT's exp)

    @property
    def limited(self) -> bool:
        """Whether the per-user connection limit applies: JWT users only (with
        auth off there are no users, and the static token is a service
        credential shared by design)."""
        return self.method == "jwt"


def _patterns_claim(claims: Mapping[str, Any], name: str, default: TypePatterns) -> TypePatterns:
    if name not in claims:
        return default
    value = claims[name]
    if isinstance(value, str):
        items = [p for p in re.split(r"[\s,]+", value) if p]
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        items = [p.strip() for p in value if p.strip()]
    else:
        raise AuthFailed(f"claim {name!r} must be a list of type patterns")
    return TypePatterns(items)


class Authenticator:
    """Checks tokens against one configuration (rebuilt on reload).

    Raises :class:`ConfigError` when the configuration cannot work: auth on
    with no credential, or a public key file that is missing or not a key.
    """

    def __init__(
        self, cfg: SecurityConfig, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.enabled = cfg.enable_auth
        self._token = cfg.auth_token
        self._token_user = cfg.auth_token_user
        self._secret = cfg.jwt_secret
        self._audience = cfg.jwt_audience
        self._issuer = cfg.jwt_issuer
        self._leeway = cfg.jwt_leeway
        self._wall = wall_clock
        self.default_subscribe = TypePatterns(cfg.default_subscribe)
        self.default_publish = TypePatterns(cfg.default_publish)
        #: algorithm -> verification key
        self._keys: dict[str, Any] = {}
        if cfg.jwt_secret:
            self._keys["HS256"] = cfg.jwt_secret
        if cfg.jwt_public_key_file:
            alg, key = _load_public_key(cfg.jwt_public_key_file)
            self._keys[alg] = key
        if self.enabled and not self._token and not self._keys:
            raise ConfigError.single(
                "security.enable_auth",
                True,
                "authentication is on but no credential is configured: set "
                "security.auth_token (AUTH_TOKEN), security.jwt_secret (JWT_SECRET) or "
                "security.jwt_public_key_file (JWT_PUBLIC_KEY_FILE)",
            )

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The JWT algorithms accepted."""
        return tuple(self._keys)

    def anonymous(self) -> Principal:
        """Who a client is when authentication is off."""
        return Principal(ANONYMOUS, self.default_subscribe, self.default_publish, "none")

    def authenticate(self, token: str | None) -> Principal:
        """The principal ``token`` proves, or :class:`AuthFailed`."""
        if not token:
            raise AuthFailed("no token: send Authorization: Bearer <token>, ?token=<token> "
                             "or Sec-WebSocket-Protocol: bearer, <token>")  # fmt: skip
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthFailed(f"token longer than {MAX_TOKEN_LENGTH} characters")
        if not _printable_ascii(token):
            raise AuthFailed("invalid token: it holds characters other than printable ASCII")
        if self._token and same_secret(token, self._token):
            return Principal(
                self._token_user, self.default_subscribe, self.default_publish, "token"
            )
        if token.count(".") != 2:
            raise AuthFailed("invalid token: neither the static token nor a JWT")
        if not self._keys:
            raise AuthFailed("invalid token: JWTs are not accepted (no JWT key is configured)")
        return self._verify_jwt(token)

    def _verify_jwt(self, token: str) -> Principal:
        import jwt  # PyJWT; imported here so a server without auth never loads it

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthFailed(f"invalid JWT: {exc}") from None
        alg = header.get("alg")
        key = self._keys.get(alg) if isinstance(alg, str) else None
        if key is None or not isinstance(alg, str):
            raise AuthFailed(
                f"JWT algorithm {alg!r} is not accepted; this server accepts "
                + ", ".join(self._keys)
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("JWT expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailed("JWT not valid yet (nbf is in the future)") from None
        except jwt.InvalidAudienceError as exc:
            raise AuthFailed(f"JWT audience refused: {exc}") from None
        except jwt.InvalidIssuerError:
            raise AuthFailed("JWT issuer refused") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailed(f"JWT lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthFailed("JWT signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise AuthFailed(f"invalid JWT: {exc}") from None
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise AuthFailed("JWT exp must be a number (seconds since the epoch)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 256:
            raise AuthFailed("JWT sub must be a non-empty string of at most 256 characters")
        return Principal(
            user=sub,
            subscribe=_patterns_claim(claims, "subscribe", self.default_subscribe),
            publish=_patterns_claim(claims, "publish", self.default_publish),
            method="jwt",
            expires_at=float(exp),
        )

    def seconds_left(self, principal: Principal) -> float | None:
        """Seconds until ``principal``'s token expires (with the leeway), or None."""
        if principal.expires_at is None:
            return None
        return principal.expires_at + self._leeway - self._wall()


def _printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def same_secret(given: str, secret: str) -> bool:
    """Constant-time comparison of a presented secret with the configured one
    (any text: a header's undecodable bytes arrive as lone surrogates)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), secret.encode("utf-8", "surrogateescape")
    )


def _load_public_key(path: str) -> tuple[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as exc:
        raise ConfigError.single(
            "security.jwt_public_key_file", path, f"cannot read the key: {exc.strerror}"
        ) from None
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise ConfigError.single(
            "security.jwt_public_key_file", path, "not a PEM public key"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return "ES256", key
    raise ConfigError.single(
        "security.jwt_public_key_file",
        path,
        "the key must be RSA (RS256) or EC P-256 (ES256)",
    )


# -- where the token is --------------------------------------------------------------


def _protocols(headers: Mapping[str, str] | Any) -> list[str]:
    values: list[str] = (
        list(headers.getall("Sec-WebSocket-Protocol", ()))
        if hasattr(headers, "getall")
        else [str(headers.get("Sec-WebSocket-Protocol") or "")]
    )
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def token_from_request(
    headers: Mapping[str, str], query: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """(token, subprotocol to answer with) of an upgrade request.

    Looked for in ``Authorization: Bearer <token>``, then ``?token=``, then
    the subprotocols ``bearer, <token>`` (answered with ``bearer``).
    """
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), None
    token = query.get("token")
    if token:
        return token, None
    offered = _protocols(headers)
    for i, proto in enumerate(offered[:-1]):
        if proto.lower() == BEARER_PROTOCOL:
            return offered[i + 1], BEARER_PROTOCOL
    return None, None


# -- origins ----------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN_RE = re.compile(
    r"(?i)(https?)://((?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*\.?|\[[0-9a-f:.]+\])(?::(\d{1,5}))?"
)


def _split_origin(origin: str, entry: bool = False) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin; ``*.`` may start the host of an
    allow-list ``entry`` only (a browser's origin is a host name)."""
    match = _ORIGIN_RE.fullmatch(origin.strip())
    if match is None:
        return None
    scheme, host, port = match.groups()
    if host.startswith("*") and not entry:
        return None
    scheme = scheme.lower()
    return scheme, host.lower().rstrip("."), int(port) if port else _DEFAULT_PORTS[scheme]


class OriginPolicy:
    """Which browser origins may open a connection.

    Entries are ``scheme://host[:port]`` (exact) or ``scheme://*.domain[:port]``
    (any subdomain of ``domain``, at any depth, not ``domain`` itself); the
    port defaults to the scheme's. An empty list allows every origin. A
    request without ``Origin`` is not from a browser and is not checked
    (anything else can forge the header anyway); ``Origin: null`` (sandboxed
    frames, files) is refused whenever there is a list.
    """

    __slots__ = ("_exact", "_suffixes", "entries")

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        self._exact: set[tuple[str, str, int]] = set()
        self._suffixes: list[tuple[str, str, int]] = []
        for entry in self.entries:
            parts = _split_origin(entry, entry=True)
            if parts is None:
                raise ValueError(f"not an origin: {entry!r}")
            scheme, host, port = parts
            if host.startswith("*."):
                self._suffixes.append((scheme, host[1:], port))  # ".example.com"
            else:
                self._exact.add(parts)

    def allows(self, origin: str | None) -> bool:
        if not self.entries or origin is None:
            return True
        parts = _split_origin(origin)
        if parts is None:
            return False
        if parts in self._exact:
            return True
        scheme, host, port = parts
        return any(
            scheme == s and port == p and host.endswith(suffix) and len(host) > len(suffix)
            for s, suffix, p in self._suffixes
        )


# -- client addresses -----------------------------------------------------------------


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> Address | None:
    """The address in ``text`` (brackets allowed), or None. Cached: parsing
    costs about 2 µs, and the same few peers (proxies, loopback publishers)
    ask on every request."""
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _forms(ip: Address) -> tuple[Address, ...]:
    """``ip``, and for an IPv4-mapped IPv6 address (what a dual-stack
    listener sees of an IPv4 peer) the IPv4 address too."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return (ip, ip.ipv4_mapped)
    return (ip,)


@functools.lru_cache(maxsize=4096)
def is_loopback(address: str) -> bool:
    ip = _ip(address)
    return ip is not None and any(form.is_loopback for form in _forms(ip))


class TrustedProxies:
    """The networks whose forwarding headers are believed."""

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def trusts(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(
            form in net for form in _forms(ip) for net in self.networks
        )


def client_address(peer: str, headers: Mapping[str, str], proxies: TrustedProxies) -> str:
    """The client's address: ``peer`` (the socket's), unless ``peer`` is a
    trusted proxy. Then ``X-Forwarded-For`` is read right to left, skipping
    trusted proxies, and the first other address is the client (a malformed
    entry stops the walk at the last proxy that was believed); without it,
    ``X-Real-IP``."""
    if not proxies.networks or not proxies.trusts(peer):
        return peer
    getall = getattr(headers, "getall", None)
    lines = list(getall("X-Forwarded-For", ())) if getall is not None else (
        [headers["X-Forwarded-For"]] if "X-Forwarded-For" in headers else []
    )
    # several header lines are one list, in order: a proxy may add its own line
    forwarded = ",".join(lines)
    if forwarded.strip():
        nearest = peer
        for hop in reversed([h.strip() for h in forwarded.split(",")]):
            if _ip(hop) is None:
                return nearest.strip("[]")
            if not proxies.trusts(hop):
                return hop.strip("[]")
            nearest = hop
        return nearest.strip("[]")
    real = headers.get("X-Real-IP")
    if real and _ip(real) is not None:
        return real.strip().strip("[]")
    return peer


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    """The parts of the security configuration that are built once per
    configuration (a key file read, patterns compiled): rebuilt on reload."""

    authenticator: Authenticator
    origins: OriginPolicy
    proxies: TrustedProxies

    @classmethod
    def from_config(cls, cfg: SecurityConfig) -> SecurityPolicy:
        """Raises :class:`ConfigError` when the configuration cannot work."""
        return cls(Authenticator(cfg), OriginPolicy(cfg.allowed_origins),
                   TrustedProxies(cfg.trusted_proxies))  # fmt: skip


def exposure_warnings(
    auth_on: bool, api_token: bool, ws_host: str, api_host: str
) -> list[str]:
    """What an operator starting the server on a non-loopback address without
    credentials must read (logged at start)."""
    notes = []
    if not auth_on and not is_loopback(ws_host) and ws_host != "localhost":
        notes.append(
            f"security: authentication is off (security.enable_auth) and the WebSocket "
            f"endpoint listens on {ws_host}: anyone who reaches it can subscribe"
        )
    if not api_token and not is_loopback(api_host) and api_host != "localhost":
        notes.append(
            f"security: api.token is unset and the API listens on {api_host}: "
            "POST /api/publish and /admin/* answer only loopback callers (set API_TOKEN "
            "to call them from elsewhere)"
        )
    return notes
