"""Property-based tests (hypothesis) of the security checks, sans-I/O
(aiosrv/auth.py, aiosrv/ratelimit.py, the security section of aiosrv/config.py).

Each property is stated against the input's structure (what was generated),
not by re-running the code under test: type patterns against a reference glob
matcher, origins against the scheme/host/port they were built from, client
addresses against the kind of each forwarded hop, tokens against the claims
they were signed with. The tests at the end of each part pin the bugs these
properties found (since fixed): lone surrogates in tokens, numeric-string exp,
'*' and newlines, multi-line X-Forwarded-For, bracketed IPv6 hops, wildcard
origins with non-host text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict

from aiosrv.auth import (
    BEARER_PROTOCOL,
    MAX_TOKEN_LENGTH,
    Authenticator,
    AuthFailed,
    OriginPolicy,
    Principal,
    TrustedProxies,
    TypePatterns,
    client_address,
    is_loopback,
    token_from_request,
)
from aiosrv.config import ConfigError, SecurityConfig, load_config
from aiosrv.ratelimit import AddressLimiter, TokenBucket

# ======================================================================= type patterns


def glob(pattern: str, name: str) -> bool:
    """Reference matcher: ``*`` is any run of characters (none, newlines,
    anything), every other character is itself. Leftmost-first scanning of the
    literal pieces, no regular expressions."""
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return name == pattern
    first, *middle, last = pieces
    if not name.startswith(first):
        return False
    pos = len(first)
    for piece in middle:
        found = name.find(piece, pos)
        if found < 0:
            return False
        pos = found + len(piece)
    return len(name) - pos >= len(last) and name.endswith(last)


#: Regex metacharacters among the letters, so that any of them taken as regex
#: syntax shows. No newline here: see test_star_matches_names_with_newlines.
META = "ab.?+[](){}|^$\\"
patterns = st.text(META + "*", max_size=6)
names = st.text(META + "x", max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns, max_size=4), names)
def test_type_patterns_agree_with_a_reference_glob(pats: list[str], name: str) -> None:
    assert TypePatterns(pats).allows(name) == any(glob(p, name) for p in pats)


@settings(deadline=None)
@given(patterns.filter(lambda p: "*" not in p), names)
def test_a_pattern_without_star_matches_exactly_itself(pattern: str, name: str) -> None:
    tp = TypePatterns([pattern])
    assert tp.allows(pattern)
    assert tp.allows(name) == (name == pattern)


@settings(deadline=None)
@given(st.text(META + "x", min_size=1, max_size=4), names)
def test_a_trailing_star_matches_exactly_the_names_with_that_prefix(prefix: str, rest: str) -> None:
    tp = TypePatterns([prefix + "*"])
    assert tp.allows(prefix + rest)
    assert tp.allows(rest) == rest.startswith(prefix)


@settings(deadline=None)
@given(names)
def test_star_alone_matches_every_name_without_newline(name: str) -> None:
    assert TypePatterns(["*"]).allows(name)


@settings(deadline=None)
@given(st.text("ab.x", min_size=1, max_size=5), st.text("ab.x", max_size=5))
def test_a_dot_in_a_pattern_is_a_dot(head: str, tail: str) -> None:
    tp = TypePatterns([f"{head}.{tail}"])
    assert tp.allows(f"{head}.{tail}")
    assert not tp.allows(f"{head}x{tail}")


@settings(deadline=None)
@given(names)
def test_no_patterns_allow_nothing(name: str) -> None:
    assert not TypePatterns([]).allows(name)


@example("a\nb")
@settings(deadline=None)
@given(st.text(min_size=1, max_size=5))
def test_star_matches_names_with_newlines(name: str) -> None:
    assert TypePatterns(["*"]).allows(name)
    assert TypePatterns(["a*"]).allows("a" + name)


# ======================================================================= origins

label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6)
domains = st.lists(label, min_size=1, max_size=3).map(".".join)
schemes = st.sampled_from(["http", "https"])
DEFAULT_PORT = {"http": 80, "https": 443}


def render(scheme: str, host: str, port: int | None, draw: st.DrawFn) -> str:
    """``scheme://host[:port]`` in random letter case, the default port
    written or not."""
    if port is None or (port == DEFAULT_PORT[scheme] and draw(st.booleans())):
        port_text = ""
    else:
        port_text = f":{port}"
    text = f"{scheme}://{host}{port_text}"
    return draw(st.sampled_from([text, text.upper(), text.title()]))


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int


@st.composite
def origin_cases(draw: st.DrawFn) -> tuple[str, bool, str, bool]:
    """(entry, is_wildcard, origin, expected)."""
    scheme = draw(schemes)
    domain = draw(domains)
    port = draw(st.one_of(st.none(), st.sampled_from([80, 443, 8080, 8443])))
    wildcard = draw(st.booleans())
    entry = render(scheme, ("*." if wildcard else "") + domain, port, draw)
    want = Origin(scheme, domain, port if port is not None else DEFAULT_PORT[scheme])

    o_scheme = draw(st.one_of(st.just(scheme), schemes))
    how = draw(st.sampled_from(["same", "sub", "glued", "parent", "other"]))
    if how == "same":
        o_host = domain
    elif how == "sub":
        o_host = draw(domains) + "." + domain
    elif how == "glued":  # evilexample.com against (*.)example.com
        o_host = draw(label) + domain
    elif how == "parent":
        o_host = domain.partition(".")[2] or domain + ".com"
    else:
        o_host = draw(domains)
    o_port = draw(st.one_of(st.none(), st.just(want.port), st.sampled_from([80, 443, 8080])))
    got = Origin(o_scheme, o_host, o_port if o_port is not None else DEFAULT_PORT[o_scheme])
    origin = render(o_scheme, o_host, o_port, draw)

    same_place = got.scheme == want.scheme and got.port == want.port
    if wildcard:
        expected = same_place and got.host.endswith("." + want.host)
    else:
        expected = same_place and got.host == want.host
    return entry, wildcard, origin, expected


@settings(max_examples=150, deadline=None)
@given(origin_cases())
def test_an_origin_entry_matches_exactly_what_it_names(case: tuple[str, bool, str, bool]) -> None:
    entry, _, origin, expected = case
    assert OriginPolicy([entry]).allows(origin) == expected


@settings(max_examples=60, deadline=None)
@given(origin_cases(), st.lists(origin_cases(), max_size=3))
def test_a_list_allows_what_any_of_its_entries_allows(
    case: tuple[str, bool, str, bool], others: list[tuple[str, bool, str, bool]]
) -> None:
    entries = [case[0]] + [o[0] for o in others]
    origin = case[2]
    assert OriginPolicy(entries).allows(origin) == any(
        OriginPolicy([e]).allows(origin) for e in entries
    )


@settings(deadline=None)
@given(schemes, domains)
def test_default_ports_are_the_same_origin(scheme: str, host: str) -> None:
    port = DEFAULT_PORT[scheme]
    for entry in (f"{scheme}://{host}", f"{scheme}://{host}:{port}"):
        policy = OriginPolicy([entry])
        assert policy.allows(f"{scheme}://{host}")
        assert policy.allows(f"{scheme}://{host}:{port}")
        assert not policy.allows(f"{scheme}://{host}:{port + 1}")
        other = "http" if scheme == "https" else "https"
        assert not policy.allows(f"{other}://{host}")


@settings(deadline=None)
@given(schemes, domains, label)
def test_a_wildcard_never_matches_its_bare_domain_or_a_glued_name(
    scheme: str, domain: str, prefix: str
) -> None:
    policy = OriginPolicy([f"{scheme}://*.{domain}"])
    assert policy.allows(f"{scheme}://{prefix}.{domain}")
    assert policy.allows(f"{scheme}://{prefix}.{prefix}.{domain}")
    assert not policy.allows(f"{scheme}://{domain}")
    assert not policy.allows(f"{scheme}://{prefix}{domain}")
    assert not policy.allows(f"{scheme}://{prefix}.{domain}.x_y")


any_text = st.text(max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.lists(origin_cases(), min_size=1, max_size=3), any_text)
def test_no_origin_is_allowed_null_is_not_and_garbage_never_raises(
    cases: list[tuple[str, bool, str, bool]], text: str
) -> None:
    policy = OriginPolicy([c[0] for c in cases])
    assert policy.allows(None)
    assert not policy.allows("null")
    assert policy.allows(text) in (True, False)


@settings(deadline=None)
@given(st.one_of(st.none(), any_text))
def test_an_empty_list_allows_every_origin(origin: str | None) -> None:
    assert OriginPolicy([]).allows(origin)


@example("evil.com?")
@settings(deadline=None)
@given(st.text(min_size=1, max_size=8).filter(lambda t: "/" not in t and ":" not in t))
def test_a_wildcard_allows_only_host_names(prefix: str) -> None:
    policy = OriginPolicy(["https://*.example.com"])
    host = f"{prefix}.example.com"
    allowed = policy.allows(f"https://{host}")
    labels = host.lower().rstrip(".").split(".")
    is_host_name = all(
        lab and set(lab) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") for lab in labels
    )
    assert allowed == is_host_name


# ======================================================================= client addresses

PROXY_NETS = ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]
PROXIES = TrustedProxies(PROXY_NETS)
_nets = [ipaddress.ip_network(n) for n in PROXY_NETS]


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(ip.version == n.version and ip in n for n in _nets)


trusted_ips = st.one_of(
    st.ip_addresses(network="10.0.0.0/8"),
    st.ip_addresses(network="fd00::/8"),
    st.just(ipaddress.ip_address("192.0.2.7")),
)
untrusted_ips = st.ip_addresses().filter(lambda ip: not _trusted(ip))
malformed = st.one_of(
    st.sampled_from(["", "unknown", "1.2.3", "300.1.1.1", "1.2.3.4:80", "_hidden", "::g"]),
    st.text("abcxyz_-", min_size=1, max_size=6),
)


@dataclass(frozen=True)
class Hop:
    kind: str  # "trusted", "untrusted" or "malformed"
    address: str  # the canonical address ("" for malformed)
    text: str  # as written in the header


@st.composite
def hops(draw: st.DrawFn, bracket_trusted: bool = True) -> Hop:
    """One X-Forwarded-For entry. ``bracket_trusted=False``: trusted IPv6
    hops are written bare (see test_the_nearest_trusted_hop_...)."""
    kind = draw(st.sampled_from(["trusted", "trusted", "untrusted", "malformed"]))
    if kind == "malformed":
        return Hop(kind, "", draw(malformed))
    ip = draw(trusted_ips if kind == "trusted" else untrusted_ips)
    text = str(ip)
    may_bracket = bracket_trusted or kind == "untrusted"
    if ip.version == 6 and may_bracket and draw(st.booleans()):
        text = f"[{text}]"
    pad = draw(st.sampled_from(["", " ", "  "]))
    return Hop(kind, str(ip), pad + text + draw(st.sampled_from(["", " "])))


def expected_client(peer: str, chain: list[Hop]) -> str:
    """The rightmost hop that is not a trusted proxy is the client; a
    malformed hop is not believed, nor anything left of it: the client is
    then the nearest trusted hop (or the peer)."""
    believed = peer
    for hop in reversed(chain):
        if hop.kind == "untrusted":
            return hop.address
        if hop.kind == "malformed":
            return believed
        believed = hop.address
    return believed


header_text = st.text(max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.ip_addresses().map(str), header_text, header_text)
def test_without_trusted_proxies_the_peer_is_the_client(peer: str, xff: str, xri: str) -> None:
    headers = {"X-Forwarded-For": xff, "X-Real-IP": xri}
    assert client_address(peer, headers, TrustedProxies([])) == peer


@settings(max_examples=60, deadline=None)
@given(untrusted_ips.map(str), st.lists(hops(), max_size=4), header_text)
def test_an_untrusted_peer_headers_are_ignored(peer: str, chain: list[Hop], xri: str) -> None:
    headers = {"X-Forwarded-For": ",".join(h.text for h in chain), "X-Real-IP": xri}
    assert client_address(peer, headers, PROXIES) == peer


@settings(max_examples=150, deadline=None)
@given(
    trusted_ips.map(str),
    st.lists(hops(bracket_trusted=False), min_size=1, max_size=6),
    st.booleans(),
)
def test_the_rightmost_untrusted_hop_is_the_client(
    peer: str, chain: list[Hop], as_multidict: bool
) -> None:
    xff = ",".join(h.text for h in chain)
    headers: Any = {"X-Forwarded-For": xff}
    if as_multidict:
        headers = CIMultiDict([("x-forwarded-for", xff)])
    if not xff:  # a lone empty hop: no header to speak of
        return
    assert client_address(peer, headers, PROXIES) == expected_client(peer, chain)


@settings(max_examples=100, deadline=None)
@given(
    trusted_ips.map(str),
    untrusted_ips.map(str),
    st.lists(trusted_ips.map(str), max_size=3),
    st.lists(st.one_of(untrusted_ips.map(str), trusted_ips.map(str), st.text(max_size=12)),
             max_size=4),
)  # fmt: skip
def test_spoofed_entries_left_of_an_untrusted_hop_never_count(
    peer: str, client: str, proxies: list[str], spoofed: list[str]
) -> None:
    honest = ", ".join([client, *proxies])
    forged = ", ".join([*spoofed, honest])
    for xff in (honest, forged):
        assert client_address(peer, {"X-Forwarded-For": xff}, PROXIES) == client


@settings(max_examples=60, deadline=None)
@given(trusted_ips.map(str), st.one_of(untrusted_ips, trusted_ips).map(str), malformed)
def test_x_real_ip_counts_only_without_x_forwarded_for(peer: str, real: str, junk: str) -> None:
    assert client_address(peer, {"X-Real-IP": real}, PROXIES) == real
    assert client_address(peer, {"X-Real-IP": f" {real} "}, PROXIES) == real
    assert client_address(peer, {"X-Real-IP": junk}, PROXIES) == peer


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(trusted_ips, untrusted_ips).map(str),
    st.one_of(header_text, st.lists(hops(), max_size=4).map(lambda c: ",".join(h.text for h in c))),
    st.one_of(st.none(), header_text, st.one_of(untrusted_ips, trusted_ips).map(str)),
)
def test_the_client_is_the_peer_or_an_address_the_headers_name(
    peer: str, xff: str, xri: str | None
) -> None:
    headers = {"X-Forwarded-For": xff}
    if xri is not None:
        headers["X-Real-IP"] = xri
    result = client_address(peer, headers, PROXIES)
    if result == peer:
        return
    named = {h.strip() for h in xff.split(",")} | {h.strip().strip("[]") for h in xff.split(",")}
    if xri is not None:
        named.add(xri.strip().strip("[]"))
    assert result in named
    ipaddress.ip_address(result.strip("[]"))  # and it is an address


@example(Hop("trusted", "fd00::1", "[fd00::1]"))
@settings(deadline=None)
@given(hops().filter(lambda h: h.kind == "trusted"))
def test_the_nearest_trusted_hop_comes_back_without_brackets(hop: Hop) -> None:
    xff = f"garbage, {hop.text}"
    assert client_address("10.0.0.1", {"X-Forwarded-For": xff}, PROXIES) == hop.address


@example(["6.6.6.6"], "203.0.113.9")
@settings(deadline=None)
@given(st.lists(untrusted_ips.map(str), min_size=1, max_size=3), untrusted_ips.map(str))
def test_x_forwarded_for_on_several_lines_is_one_list(spoofed: list[str], client: str) -> None:
    headers = CIMultiDict([("X-Forwarded-For", s) for s in spoofed])
    headers.add("X-Forwarded-For", client)  # the trusted proxy's own line, last
    assert client_address("10.0.0.1", headers, PROXIES) == client


# ======================================================================= tokens: JWT

SECRET = "hypothesis-jwt-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
STATIC = "static-token-Zq8mN3xV5tLc7RbP"
FAR = 10**9  # seconds: an exp that will not pass during the test run


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: Any, secret: str | bytes = SECRET, header: Any = None) -> str:
    """A JWT signed by hand: any header and claims, even ones PyJWT's encoder
    refuses to write (non-string iss, alg none, a PEM as HMAC secret)."""
    if header is None:
        header = {"alg": "HS256", "typ": "JWT"}
    signing = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}"
    key = secret.encode() if isinstance(secret, str) else secret
    return f"{signing}.{b64url(hmac.new(key, signing.encode(), hashlib.sha256).digest())}"


def security(**settings: Any) -> SecurityConfig:
    return SecurityConfig(enable_auth=True, **settings)


def refused(auth: Authenticator, token: str | None) -> str:
    with pytest.raises(AuthFailed) as info:
        auth.authenticate(token)
    reason = info.value.reason
    assert isinstance(reason, str) and reason
    assert SECRET not in reason and STATIC not in reason
    return reason


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    rsa_pem: bytes
    rsa_file: Path
    ec_file: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """An RSA and an EC P-256 key pair, made once for the module; the public
    halves as PEM files, as security.jwt_public_key_file names them."""
    folder = tmp_path_factory.mktemp("jwt-keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pems = {}
    for name, key in (("rsa", rsa_key), ("ec", ec_key)):
        pems[name] = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (folder / f"{name}.pem").write_bytes(pems[name])
    return Keys(rsa_key, ec_key, pems["rsa"], folder / "rsa.pem", folder / "ec.pem")


@dataclass
class Auths:
    hs: Authenticator  # jwt_secret only
    rs: Authenticator  # an RSA public key only
    es: Authenticator  # an EC P-256 public key only
    static: Authenticator  # the static token only
    all: Authenticator  # static token, secret and RSA key


@pytest.fixture(scope="module")
def auths(keys: Keys) -> Auths:
    return Auths(
        hs=Authenticator(security(jwt_secret=SECRET)),
        rs=Authenticator(security(jwt_public_key_file=str(keys.rsa_file))),
        es=Authenticator(security(jwt_public_key_file=str(keys.ec_file))),
        static=Authenticator(security(auth_token=STATIC)),
        all=Authenticator(
            security(auth_token=STATIC, jwt_secret=SECRET, jwt_public_key_file=str(keys.rsa_file))
        ),
    )


def sign(alg: str, claims: dict[str, Any], keys: Keys) -> str:
    if alg == "HS256":
        return hs256(claims)
    return jwt.encode(claims, keys.rsa if alg == "RS256" else keys.ec, algorithm=alg)


def verifier(alg: str, auths: Auths) -> Authenticator:
    return {"HS256": auths.hs, "RS256": auths.rs, "ES256": auths.es}[alg]


ALGS = st.sampled_from(["HS256", "RS256", "ES256"])
subs = st.text(min_size=1, max_size=256)
future = st.one_of(st.integers(60, FAR), st.floats(60, FAR))


def test_the_key_kinds_pick_the_algorithms(auths: Auths) -> None:
    assert auths.hs.algorithms == ("HS256",)
    assert auths.rs.algorithms == ("RS256",)
    assert auths.es.algorithms == ("ES256",)
    assert set(auths.all.algorithms) == {"HS256", "RS256"}


@settings(max_examples=150, deadline=None)
@given(ALGS, subs, future, st.booleans())
def test_a_well_signed_jwt_is_its_subject(
    auths: Auths, keys: Keys, alg: str, sub: str, ttl: float, with_nbf: bool
) -> None:
    now = time.time()
    exp = (int(now) + ttl) if isinstance(ttl, int) else now + ttl
    claims: dict[str, Any] = {"sub": sub, "exp": exp}
    if with_nbf:
        claims["nbf"] = int(now) - 5
    auth = verifier(alg, auths)
    principal = auth.authenticate(sign(alg, claims, keys))
    assert principal == Principal(
        sub, auth.default_subscribe, auth.default_publish, "jwt", float(exp)
    )
    assert principal.limited


@st.composite
def edits(draw: st.DrawFn, token: str) -> str:
    """``token`` with one character replaced, deleted or inserted."""
    i = draw(st.integers(0, len(token) - 1))
    char = draw(
        st.one_of(
            st.sampled_from(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
            ),
            # no lone surrogates: test_any_text_token_is_refused_with_auth_failed
            st.characters(codec="utf-8"),
        )
    )
    kind = draw(st.sampled_from(["replace", "delete", "insert"]))
    if kind == "replace":
        if char == token[i]:
            char = "A" if char != "A" else "B"
        return token[:i] + char + token[i + 1 :]
    if kind == "delete":
        return token[:i] + token[i + 1 :]
    return token[:i] + char + token[i:]


def lenient_b64(segment: str) -> bytes | None:
    """What a non-validating base64url decoder makes of a segment (padding
    bits and non-alphabet characters ignored), None if nothing."""
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


@pytest.fixture(scope="module")
def signed(auths: Auths, keys: Keys) -> dict[str, tuple[str, Principal]]:
    tokens = {}
    for alg in ("HS256", "RS256", "ES256"):
        claims = {"sub": "alice", "exp": int(time.time()) + FAR, "subscribe": ["a.*"]}
        token = sign(alg, claims, keys)
        tokens[alg] = (token, verifier(alg, auths).authenticate(token))
    return tokens


@settings(max_examples=300, deadline=None)
@given(ALGS, st.data())
def test_any_one_character_edit_of_a_jwt_is_refused(
    auths: Auths, signed: dict[str, tuple[str, Principal]], alg: str, data: st.DataObject
) -> None:
    """Precisely: an edited token verifies only if its header and payload
    segments are untouched and its signature segment decodes, leniently, to
    the same bytes (the edit hit the padding bits of the last character, or
    added a character a lenient decoder skips); the signing input is the text
    of the first two segments, so no edit there can verify. PyJWT 2.15 decodes
    segments strictly, so there every edit is refused."""
    token, principal = signed[alg]
    edited = data.draw(edits(token))
    parts, new = token.split("."), edited.split(".")
    may_verify = (
        len(new) == 3
        and new[:2] == parts[:2]
        and lenient_b64(new[2]) is not None
        and lenient_b64(new[2]) == lenient_b64(parts[2])
    )
    auth = verifier(alg, auths)
    try:
        got = auth.authenticate(edited)
    except AuthFailed as exc:
        assert edited not in exc.reason and parts[2] not in exc.reason
    else:
        assert may_verify, f"{edited!r} verified"
        assert got == principal


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=32, max_size=64).filter(lambda s: s != SECRET), subs)
def test_a_jwt_signed_with_another_secret_is_refused(auths: Auths, secret: str, sub: str) -> None:
    token = hs256({"sub": sub, "exp": int(time.time()) + FAR}, secret=secret)
    assert "signature" in refused(auths.hs, token)
    refused(auths.all, token)


@settings(deadline=None)
@given(ALGS, st.integers(1, FAR), st.booleans())
def test_an_expired_jwt_is_refused(
    auths: Auths, keys: Keys, alg: str, ago: int, float_exp: bool
) -> None:
    exp: float = time.time() - ago
    if not float_exp:
        exp = int(exp)
    token = sign(alg, {"sub": "u", "exp": exp}, keys)
    assert refused(verifier(alg, auths), token) == "JWT expired"


@settings(deadline=None)
@given(ALGS, st.integers(5, FAR))
def test_a_jwt_not_valid_yet_is_refused(auths: Auths, keys: Keys, alg: str, ahead: int) -> None:
    now = int(time.time())
    token = sign(alg, {"sub": "u", "exp": now + FAR + ahead, "nbf": now + ahead}, keys)
    assert "not valid yet" in refused(verifier(alg, auths), token)


aud_values = st.one_of(
    st.sampled_from(["aud-A", "aud-B", "", "AUD-A", " aud-A"]),
    st.lists(st.sampled_from(["aud-A", "aud-B", "x"]), max_size=3),
    st.lists(st.one_of(st.just("aud-A"), st.integers(0, 3), st.none()), max_size=3),
    st.integers(-1, 1),
    st.none(),
    st.booleans(),
)


@settings(deadline=None)
@given(st.one_of(st.just("<absent>"), aud_values), st.booleans())
def test_audiences_are_checked(aud: Any, configured: bool) -> None:
    auth = Authenticator(security(jwt_secret=SECRET, jwt_audience="aud-A" if configured else None))
    claims: dict[str, Any] = {"sub": "u", "exp": int(time.time()) + FAR}
    if aud != "<absent>":
        claims["aud"] = aud
    if configured:
        ok = aud == "aud-A" or (
            isinstance(aud, list) and "aud-A" in aud and all(isinstance(a, str) for a in aud)
        )
    else:
        ok = aud == "<absent>" or not aud  # PyJWT lets an empty aud through
    if ok:
        assert auth.authenticate(hs256(claims)).user == "u"
    else:
        refused(auth, hs256(claims))


@settings(deadline=None)
@given(
    st.one_of(
        st.just("<absent>"), st.sampled_from(["iss-A", "iss-B", "ISS-A", ""]), st.integers(-5, 5)
    ),
    st.booleans(),
)
def test_issuers_are_checked(iss: Any, configured: bool) -> None:
    auth = Authenticator(security(jwt_secret=SECRET, jwt_issuer="iss-A" if configured else None))
    claims: dict[str, Any] = {"sub": "u", "exp": int(time.time()) + FAR}
    if iss != "<absent>":
        claims["iss"] = iss
    if not configured or iss == "iss-A":
        assert auth.authenticate(hs256(claims)).user == "u"
    else:
        refused(auth, hs256(claims))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)

HEADER_ALGS = st.one_of(
    st.sampled_from(
        ["none", "None", "NONE", "nOnE", "", "hs256", "HS256 ", "HS384", "HS512", "RS384",
         "PS256", "ES384", "EdDSA", "RS256", "ES256"]
    ),
    st.text(max_size=8),
    json_values,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(HEADER_ALGS, st.sampled_from(["hmac-secret", "hmac-pem", "empty", "junk"]))
def test_only_the_configured_algorithms_are_accepted(
    auths: Auths, keys: Keys, alg: Any, signature: str
) -> None:
    """alg none, algorithm confusion (an HMAC made with the RSA public key as
    secret) and any other label are refused, whatever the signature."""
    claims = {"sub": "mallory", "exp": int(time.time()) + FAR}
    secret = {"hmac-secret": SECRET, "hmac-pem": keys.rsa_pem}.get(signature, SECRET)
    token = hs256(claims, secret=secret, header={"alg": alg, "typ": "JWT"})
    if signature == "empty":
        token = token.rpartition(".")[0] + "."
    elif signature == "junk":
        token = token.rpartition(".")[0] + "." + b64url(b"x" * 32)
    for auth in (auths.hs, auths.rs, auths.es, auths.static, auths.all):
        genuine = alg == "HS256" and signature == "hmac-secret" and "HS256" in auth.algorithms
        if genuine:
            assert auth.authenticate(token).user == "mallory"
        else:
            refused(auth, token)


@settings(deadline=None)
@given(st.sampled_from(["RS256", "ES256"]))
def test_an_hs256_token_made_with_the_public_key_is_refused(
    auths: Auths, keys: Keys, alg: str
) -> None:
    pem = keys.rsa_pem if alg == "RS256" else keys.ec_file.read_bytes()
    token = hs256({"sub": "mallory", "exp": int(time.time()) + FAR}, secret=pem)
    refused(auths.rs if alg == "RS256" else auths.es, token)
    refused(auths.all, token)


@settings(deadline=None)
@given(ALGS, st.sampled_from(["sub", "exp"]))
def test_sub_and_exp_are_required(auths: Auths, keys: Keys, alg: str, missing: str) -> None:
    claims: dict[str, Any] = {"sub": "u", "exp": int(time.time()) + FAR}
    del claims[missing]
    assert missing in refused(verifier(alg, auths), sign(alg, claims, keys))


@settings(deadline=None)
@given(st.one_of(st.just(""), st.text(min_size=257, max_size=300), json_values))
def test_sub_must_be_a_short_non_empty_string(auths: Auths, sub: Any) -> None:
    if isinstance(sub, str) and 0 < len(sub) <= 256:
        return
    refused(auths.hs, hs256({"sub": sub, "exp": int(time.time()) + FAR}))


def expected_patterns(value: Any) -> TypePatterns | None:
    """What a subscribe/publish claim becomes, None if it must be refused."""
    if isinstance(value, str):
        items = value.replace(",", " ").split()
        return TypePatterns(items)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return TypePatterns([v.strip() for v in value if v.strip()])
    return None


claim_values = st.one_of(
    st.lists(st.text("ab.* ,\t", max_size=5), max_size=4),
    st.text("ab.* ,\t\n", max_size=10),
    json_values,
)


@settings(max_examples=120, deadline=None)
@given(st.one_of(st.just("<absent>"), claim_values), st.one_of(st.just("<absent>"), claim_values))
def test_permission_claims_become_type_patterns(
    auths: Auths, sub_claim: Any, pub_claim: Any
) -> None:
    claims: dict[str, Any] = {"sub": "u", "exp": int(time.time()) + FAR}
    for name, value in (("subscribe", sub_claim), ("publish", pub_claim)):
        if value != "<absent>":
            claims[name] = value
    want_sub = (
        auths.hs.default_subscribe if sub_claim == "<absent>" else expected_patterns(sub_claim)
    )
    want_pub = auths.hs.default_publish if pub_claim == "<absent>" else expected_patterns(pub_claim)
    token = hs256(claims)
    if want_sub is None or want_pub is None:
        assert "must be a list of type patterns" in refused(auths.hs, token)
        return
    principal = auths.hs.authenticate(token)
    assert principal.subscribe == want_sub and principal.publish == want_pub


@settings(max_examples=150, deadline=None)
@given(json_values, json_values, json_values)
def test_any_claims_signed_right_give_a_principal_or_auth_failed(
    auths: Auths, sub: Any, exp: Any, extra: Any
) -> None:
    """Whatever an issuer signs (claim types PyJWT never checks included), the
    answer is a principal or AuthFailed, never another exception."""
    claims: dict[str, Any] = {"sub": sub, "exp": exp}
    if isinstance(extra, dict):
        claims.update(extra)
    elif extra is not None:
        claims["subscribe"] = extra
    try:
        principal = auths.hs.authenticate(hs256(claims))
    except AuthFailed as exc:
        assert SECRET not in exc.reason
        return
    assert principal.user == claims["sub"] and principal.method == "jwt"


@example(9_999_999_999)
@settings(deadline=None)
@given(st.integers(int(time.time()) + 3600, 2**40))
def test_every_accepted_jwt_has_its_expiry(auths: Auths, exp: int) -> None:
    # RFC 7519: exp is a JSON number; a numeric string (which PyJWT lets
    # through) would leave the connection without an enforced expiry
    principal = auths.hs.authenticate(hs256({"sub": "u", "exp": exp}))
    assert principal.expires_at == float(exp)
    with pytest.raises(AuthFailed, match="exp must be a number"):
        auths.hs.authenticate(hs256({"sub": "u", "exp": str(exp)}))


# ======================================================================= tokens: static, lengths


b64token = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=", min_size=16,
    max_size=120,
)  # fmt: skip


def test_the_static_token_is_its_user(auths: Auths) -> None:
    for auth in (auths.static, auths.all):
        principal = auth.authenticate(STATIC)
        assert principal == Principal(
            "token", auth.default_subscribe, auth.default_publish, "token", None
        )
        assert not principal.limited


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        b64token,
        st.builds(lambda a, b: a + STATIC + b, st.text(max_size=2), st.text(max_size=2)),
        st.integers(0, len(STATIC) - 1).map(lambda n: STATIC[:n]),
        st.integers(0, len(STATIC) - 1).map(lambda i: STATIC[:i] + "?" + STATIC[i + 1 :]),
        st.just(STATIC.upper()),
        st.just(STATIC + "\n"),
        st.just(f" {STATIC}"),
    )
)
def test_only_the_exact_static_token_passes(auths: Auths, token: str) -> None:
    if token == STATIC:
        return
    refused(auths.static, token)
    refused(auths.all, token)


@settings(deadline=None)
@given(b64token)
def test_auth_failed_reasons_never_contain_the_token(auths: Auths, token: str) -> None:
    for auth in (auths.hs, auths.static, auths.all, auths.rs):
        if token != STATIC:
            assert token not in refused(auth, token)


@settings(deadline=None)
@given(st.sampled_from([None, ""]))
def test_no_token_is_refused(auths: Auths, token: str | None) -> None:
    for auth in (auths.hs, auths.static, auths.all):
        assert refused(auth, token).startswith("no token")


@settings(deadline=None)
@given(st.integers(MAX_TOKEN_LENGTH + 1, MAX_TOKEN_LENGTH + 64), st.sampled_from("a.=-"))
def test_tokens_longer_than_the_limit_are_refused(auths: Auths, length: int, fill: str) -> None:
    reason = refused(auths.all, fill * length)
    assert str(MAX_TOKEN_LENGTH) in reason


def test_the_length_limit_holds_for_valid_tokens_too() -> None:
    long_static = "s" * (MAX_TOKEN_LENGTH + 1)
    auth = Authenticator(security(auth_token=long_static, jwt_secret=SECRET))
    refused(auth, long_static)
    base = {"sub": "u", "exp": int(time.time()) + FAR, "pad": ""}
    room = MAX_TOKEN_LENGTH - len(hs256(base))
    fits = hs256({**base, "pad": "p" * (room * 3 // 4 - 3)})
    assert len(fits) <= MAX_TOKEN_LENGTH
    assert auth.authenticate(fits).user == "u"
    too_long = hs256({**base, "pad": "p" * (room * 3 // 4 + 8)})
    assert len(too_long) > MAX_TOKEN_LENGTH
    refused(auth, too_long)


@example("\udcff")
@example("a.b.\udcff")
@settings(deadline=None)
@given(
    st.tuples(
        st.text(max_size=8),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.text(max_size=8),
    ).map("".join)
)
def test_any_text_token_is_refused_with_auth_failed(auths: Auths, token: str) -> None:
    for auth in (auths.static, auths.hs, auths.all):
        refused(auth, token)


# ======================================================================= token_from_request

tokens = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=", min_size=1,
    max_size=30,
)  # fmt: skip
other_protocols = st.text("abcdefghijklmnopqrstuvwxyz.0123456789", min_size=1, max_size=8).filter(
    lambda p: p != BEARER_PROTOCOL
)
bearer_words = st.sampled_from(["Bearer", "bearer", "BEARER", "BeArEr"])


@st.composite
def upgrade_requests(draw: st.DrawFn) -> tuple[Any, dict[str, str], tuple[str | None, str | None]]:
    """(headers, query, expected (token, subprotocol))."""
    pairs: list[tuple[str, str]] = []
    expected: tuple[str | None, str | None] = (None, None)
    # subprotocols, lowest priority: maybe 'bearer, <token>' among others,
    # spread over one to three header lines
    protos = draw(st.lists(other_protocols, max_size=3))
    if draw(st.booleans()):
        proto_token = draw(tokens)
        at = draw(st.integers(0, len(protos)))
        protos[at:at] = [draw(st.sampled_from(["bearer", "Bearer"])), proto_token]
        expected = (proto_token, BEARER_PROTOCOL)
    elif draw(st.booleans()):
        protos.append("bearer")  # with nothing after it: no token
    if protos:
        cuts = sorted(draw(st.lists(st.integers(1, len(protos)), max_size=2, unique=True)))
        bounds = [0, *[c for c in cuts if c < len(protos)], len(protos)]
        for lo, hi in itertools.pairwise(bounds):
            if lo < hi:
                pairs.append(("Sec-WebSocket-Protocol", ", ".join(protos[lo:hi])))
    query: dict[str, str] = {}
    roll = draw(st.integers(0, 2))
    if roll == 1:
        query["token"] = draw(tokens)
        expected = (query["token"], None)
    elif roll == 2:
        query["token"] = ""  # empty: not a token
    roll = draw(st.integers(0, 3))
    if roll == 1:
        auth_token = draw(tokens)
        pad = draw(st.sampled_from([" ", "  "]))
        pairs.append(("Authorization", f"{draw(bearer_words)}{pad}{auth_token} "))
        expected = (auth_token, None)
    elif roll == 2:
        pairs.append(("Authorization", f"Basic {draw(tokens)}"))
    elif roll == 3:
        pairs.append(("Authorization", draw(bearer_words)))  # no token after it
    # the Authorization line anywhere among the subprotocol lines
    if pairs and pairs[-1][0] == "Authorization":
        pairs.insert(draw(st.integers(0, len(pairs) - 1)), pairs.pop())
    return CIMultiDict(pairs), query, expected


@settings(max_examples=100, deadline=None)
@given(upgrade_requests())
def test_the_token_comes_from_header_then_query_then_subprotocol(
    case: tuple[Any, dict[str, str], tuple[str | None, str | None]],
) -> None:
    headers, query, expected = case
    assert token_from_request(headers, MultiDict(query)) == expected


@settings(deadline=None)
@given(tokens, st.lists(other_protocols, max_size=2))
def test_a_bearer_subprotocol_is_answered_with_bearer(token: str, before: list[str]) -> None:
    value = ", ".join([*before, "bearer", token])
    assert token_from_request({"Sec-WebSocket-Protocol": value}, {}) == (token, "bearer")


# ======================================================================= rate limits

rates = st.floats(0.01, 1000)
bursts = st.integers(1, 50)
steps = st.lists(
    st.tuples(st.one_of(st.floats(0, 3), st.floats(-1, 0)), st.integers(0, 6)), max_size=40
)


def allowed_times(
    bucket_take: Any, steps: list[tuple[float, int]], t0: float
) -> tuple[list[float], float]:
    """Run the steps (the clock may step back); at each allowed event, the
    latest clock reading the bucket has been given so far (its own notion of
    time), and that reading at the end."""
    now, latest, allowed = t0, t0, []
    for dt, takes in steps:
        now += dt
        if takes:
            latest = max(latest, now)
        for _ in range(takes):
            if bucket_take(now):
                allowed.append(latest)
    return allowed, latest


def check_window(allowed: list[float], rate: float, burst: float) -> None:
    for i in range(len(allowed)):
        for j in range(i, len(allowed)):
            bound = burst + rate * (allowed[j] - allowed[i])
            assert j - i + 1 <= bound * (1 + 1e-9) + 1e-9, (i, j, bound)


@settings(max_examples=150, deadline=None)
@given(rates, bursts, steps, st.floats(0, 1e6))
def test_a_bucket_allows_at_most_burst_plus_rate_times_the_window(
    rate: float, burst: int, steps: list[tuple[float, int]], t0: float
) -> None:
    bucket = TokenBucket(burst, t0)
    allowed, latest = allowed_times(lambda now: bucket.take(now, rate, burst), steps, t0)
    check_window(allowed, rate, burst)
    assert 0 <= bucket.tokens <= burst
    # and it never starves: a token is back 1/rate after the latest reading
    assert bucket.take(latest + 1.01 / rate, rate, burst)


@settings(deadline=None)
@given(st.lists(st.tuples(st.floats(-1, 3), bursts, rates), max_size=30), st.integers(1, 50))
def test_a_lowered_burst_caps_the_bucket_at_once(
    calls: list[tuple[float, int, float]], first: int
) -> None:
    bucket, now = TokenBucket(first, 0.0), 0.0
    for dt, burst, rate in calls:
        now += dt
        bucket.take(now, rate, burst)
        assert bucket.tokens <= burst
        assert bucket.tokens >= 0


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 8),
    rates,
    bursts,
    st.lists(st.tuples(st.integers(0, 12), st.floats(0, 2)), max_size=60),
)
def test_the_address_limiter_is_bounded_and_otherwise_one_bucket_per_address(
    max_entries: int, rate: float, burst: int, events: list[tuple[int, float]]
) -> None:
    limiter = AddressLimiter(max_entries)
    model: dict[str, TokenBucket] = {}
    now, refusals, saturated = 100.0, 0, False
    for who, dt in events:
        now += dt
        address = f"192.0.2.{who}"
        if address not in model and len(limiter) >= max_entries:
            saturated = True  # from here on buckets may be dropped
        got = limiter.allow(address, now, rate, burst)
        want = model.setdefault(address, TokenBucket(burst, now)).take(now, rate, burst)
        if not saturated:
            assert got == want
        refusals += not got
        assert len(limiter) <= max_entries
    assert limiter.refused == refusals


# ======================================================================= configuration

LIST_KEYS = {
    "security.allowed_origins": "ALLOWED_ORIGINS",
    "security.trusted_proxies": "TRUSTED_PROXIES",
    "security.default_subscribe": "DEFAULT_SUBSCRIBE",
    "security.default_publish": "DEFAULT_PUBLISH",
}
config_values = st.one_of(
    st.text(max_size=30),
    st.lists(st.text(max_size=15), max_size=4),
    st.lists(json_values, max_size=3),
    json_values,
)


def load_one(key: str, value: Any, via_env: bool = False) -> Any:
    if via_env:
        return load_config(None, env={LIST_KEYS[key]: value}, use_default_path=False)
    return load_config(None, env={}, overrides={key: value}, use_default_path=False)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(LIST_KEYS)), config_values, st.booleans())
def test_security_lists_load_or_raise_config_error_naming_the_key(
    key: str, value: Any, via_env: bool
) -> None:
    if via_env and not isinstance(value, str):
        via_env = False
    try:
        cfg = load_one(key, value, via_env)
    except ConfigError as exc:
        assert exc.problems and all(p.path == key for p in exc.problems)
        return
    # what loads can be put to use
    sec = cfg.security
    OriginPolicy(sec.allowed_origins)
    TrustedProxies(sec.trusted_proxies)
    TypePatterns(sec.default_subscribe)
    TypePatterns(sec.default_publish)


@st.composite
def config_origins(draw: st.DrawFn) -> tuple[str, str]:
    """(origin as written, an origin a browser there would send)."""
    scheme = draw(schemes)
    domain = draw(domains)
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    wildcard = draw(st.booleans())
    entry = render(scheme, ("*." if wildcard else "") + domain, port, draw)
    host = (draw(label) + "." if wildcard else "") + domain
    return entry, render(scheme, host, port, draw)


@settings(max_examples=60, deadline=None)
@given(st.lists(config_origins(), min_size=1, max_size=4), st.booleans())
def test_valid_origins_round_trip(cases: list[tuple[str, str]], as_string: bool) -> None:
    entries = [entry for entry, _ in cases]
    value: Any = " , ".join(entries) if as_string else entries
    cfg = load_one("security.allowed_origins", value)
    assert cfg.security.allowed_origins == tuple(e.lower() for e in entries)
    policy = OriginPolicy(cfg.security.allowed_origins)
    for _, origin in cases:
        assert policy.allows(origin)


networks = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.one_of(st.none(), st.integers(0, 32))),
    st.tuples(st.ip_addresses(v=6), st.one_of(st.none(), st.integers(0, 128))),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(networks, min_size=1, max_size=4), st.booleans())
def test_valid_networks_round_trip(
    nets: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]], as_string: bool
) -> None:
    texts = [str(ip) if prefix is None else f"{ip}/{prefix}" for ip, prefix in nets]
    value: Any = ",".join(texts) if as_string else texts
    cfg = load_one("security.trusted_proxies", value)
    want = tuple(str(ipaddress.ip_network(t, strict=False)) for t in texts)
    assert cfg.security.trusted_proxies == want
    assert load_one("security.trusted_proxies", list(want)).security.trusted_proxies == want
    proxies = TrustedProxies(cfg.security.trusted_proxies)
    for ip, _ in nets:
        assert proxies.trusts(str(ip))


@settings(deadline=None)
@given(
    st.sampled_from(["security.default_subscribe", "security.default_publish"]),
    st.lists(st.text("ab.*-_x", min_size=1, max_size=6), max_size=4),
    st.booleans(),
)
def test_valid_patterns_round_trip(key: str, pats: list[str], as_string: bool) -> None:
    value: Any = ", ".join(pats) if as_string else pats
    cfg = load_one(key, value)
    assert cfg.get(key) == tuple(pats)
    tp = TypePatterns(cfg.get(key))
    for p in pats:
        assert tp.allows(p.replace("*", "anything"))


@settings(deadline=None)
@given(
    st.sampled_from(["security.default_subscribe", "security.default_publish"]),
    st.text("ab", min_size=1, max_size=3),
    st.sampled_from([" ", "\t", "a b"]),
)
def test_patterns_with_spaces_are_refused(key: str, pat: str, space: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_one(key, [pat + space + pat])
    assert [p.path for p in info.value.problems] == [key]


def test_ipv4_mapped_peers_are_their_ipv4_address() -> None:
    """A dual-stack listener sees an IPv4 proxy as ::ffff:a.b.c.d: still trusted,
    and ::ffff:127.0.0.1 is still loopback."""
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.trusts("::ffff:10.0.0.1") and not proxies.trusts("::ffff:11.0.0.1")
    assert client_address("::ffff:10.0.0.1", {"X-Real-IP": "203.0.113.5"}, proxies) == (
        "203.0.113.5"
    )
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("::ffff:10.0.0.1")


def test_an_origin_that_is_itself_a_wildcard_is_refused() -> None:
    assert not OriginPolicy(["https://*.example.com"]).allows("https://*.example.com")
    assert OriginPolicy(["https://*.example.com"]).allows("https://a.example.com")
