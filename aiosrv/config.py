"""aiosrv configuration: one typed, validated, immutable :class:`Config`.

Load order (each layer overrides the one before it, key by key):

1. built-in defaults (the default of each dataclass field below);
2. a YAML file: the ``path`` argument, else the file named by ``$AIOSRV_CONFIG``,
   else ``config/deployment.yaml`` (relative to the working directory) if it exists;
3. environment variables (``WEBSOCKET_PORT``, ``LOG_LEVEL``, ... see :data:`ENV_VARS`);
   an empty variable counts as unset, except that it clears an optional string;
4. explicit overrides (command-line flags), as ``{"dotted.key": value}``.

Every problem in every layer is collected and reported together in one
:class:`ConfigError` (a ``ValueError``): bad values, unknown keys (with a
did-you-mean suggestion), YAML syntax errors with their line, a missing file.
Secret values (``api.token``, ``redis.password``) never appear in messages.

Hot reload (SIGHUP or ``POST /admin/reload-config``) re-runs the load and
calls :func:`apply_live`: *live* settings take their new value at once; the
others keep their running value and are reported as needing a restart.

Each key is declared once, as a field of :class:`Config` or of one of its
section dataclasses, with :func:`_key`: the field's type and default are the
key's, and its ``metadata[SPEC]`` is a :class:`FieldSpec` carrying the rest
(kind, environment variables, live or restart-only, secret, description,
bounds). :data:`FIELDS` is read off those fields once, at import; parsing,
environment variable names, live/restart, secrets and the documentation table
are all derived from it. ``docs/configuration.md`` carries
:func:`env_table_markdown`'s output.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import yaml

from aiosrv.errors import AiosrvError

__all__ = [
    "CONFIG_PATH_ENV",
    "DEFAULT_CONFIG_PATH",
    "ENV_VARS",
    "FIELDS",
    "PORT_KEYS",
    "SPEC",
    "ApiConfig",
    "BroadcastConfig",
    "BrokerConfig",
    "Change",
    "Config",
    "ConfigError",
    "DiagnosticsConfig",
    "FieldSpec",
    "HistoryConfig",
    "LoggingConfig",
    "MonitoringConfig",
    "Problem",
    "ProcessConfig",
    "RedisConfig",
    "ScalingConfig",
    "SecurityConfig",
    "ServiceDiscoveryConfig",
    "ShutdownConfig",
    "SourcesConfig",
    "WebSocketConfig",
    "apply_live",
    "check_file",
    "default_config",
    "diff_config",
    "env_table_markdown",
    "listeners",
    "load_config",
    "several_workers_problem",
]

DEFAULT_CONFIG_PATH = "config/deployment.yaml"
CONFIG_PATH_ENV = "AIOSRV_CONFIG"

#: Shown instead of a secret value, in ``to_dict()``, problems and changes.
REDACTED = "***"

#: The metadata key under which a configuration field carries its :class:`FieldSpec`.
SPEC = "aiosrv.config"

KiB = 1024
MiB = 1024 * KiB

Kind = Literal[
    "str", "optional_str", "int", "float", "duration", "size", "bool", "enum", "paths",
    "origins", "networks", "patterns",
]


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One configuration key: how it is parsed, checked, named and applied."""

    path: str  # dotted key path, e.g. "websocket.port" ("" until read off its field)
    # "duration" = float seconds, "size" = int bytes; "paths", "origins", "networks"
    # and "patterns" = tuple[str, ...] (a YAML list or a comma-separated string)
    type: Kind
    default: Any
    env: tuple[str, ...]  # environment variable names, highest priority first
    live: bool  # True: applied on hot reload; False: needs a restart
    secret: bool
    description: str
    constraint: str  # human-readable constraint, e.g. "1..65535", "> 0", "memory | redis"
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    case: Literal["upper", "lower"] | None = None  # enum input normalisation
    at_least: str | None = None  # dotted path of a key this one must not be below

    @property
    def section(self) -> str | None:
        """The section name, or None for a top-level key."""
        return self.path.split(".", 1)[0] if "." in self.path else None

    @property
    def key(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def _fmt_size(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def _fmt_number(value: float, kind: str) -> str:
    if kind == "size":
        return _fmt_size(int(value))
    if float(value).is_integer():
        return str(int(value))
    return repr(value)


def _constraint_text(
    kind: str,
    minimum: float | None,
    maximum: float | None,
    exclusive_minimum: bool,
    choices: tuple[str, ...],
    at_least: str | None,
) -> str:
    parts: list[str] = []
    if choices:
        parts.append(" | ".join(choices))
    if minimum is not None and maximum is not None:
        lo, hi = _fmt_number(minimum, kind), _fmt_number(maximum, kind)
        parts.append(f"{lo}..{hi}" if not exclusive_minimum else f"> {lo} and <= {hi}")
    elif minimum is not None:
        parts.append(f"{'>' if exclusive_minimum else '>='} {_fmt_number(minimum, kind)}")
    elif maximum is not None:
        parts.append(f"<= {_fmt_number(maximum, kind)}")
    if at_least is not None:
        parts.append(f">= {at_least}")
    if kind == "paths":
        parts.append("each starts with /")
    if kind == "origins":
        parts.append("scheme://host[:port], host may start with *.")
    if kind == "networks":
        parts.append("IP addresses or CIDR networks")
    if kind == "patterns":
        parts.append("type names, * matches any run of characters")
    if kind in ("str",):
        parts.append("non-empty")
    return ", ".join(parts)


def _key(
    kind: Kind,
    default: Any,
    env: str | tuple[str, ...] | None,
    live: bool,
    description: str,
    *,
    secret: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    choices: tuple[str, ...] = (),
    case: Literal["upper", "lower"] | None = None,
    at_least: str | None = None,
) -> Any:
    """A dataclass field that is a configuration key (its metadata: a :class:`FieldSpec`).

    *env* names the environment variables, highest priority first; *at_least*
    is the dotted path of a key whose value this one must not be below.
    """
    names: tuple[str, ...] = () if env is None else (env,) if isinstance(env, str) else env
    spec = FieldSpec(
        path="",
        type=kind,
        default=default,
        env=names,
        live=live,
        secret=secret,
        description=description,
        constraint=_constraint_text(kind, minimum, maximum, exclusive_minimum, choices, at_least),
        minimum=minimum,
        maximum=maximum,
        exclusive_minimum=exclusive_minimum,
        choices=choices,
        case=case,
        at_least=at_least,
    )
    return field(default=default, metadata={SPEC: spec})


LIVE = True
RESTART = False


# --------------------------------------------------------------------------- sections

# One field per key: _key(kind, default, env, LIVE | RESTART, description, bounds...).
# fmt: off


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    host: str = _key("str", "0.0.0.0", "WEBSOCKET_HOST", RESTART,
        "Address the WebSocket listener binds to.")
    port: int = _key("int", 8765, "WEBSOCKET_PORT", RESTART,
        "Port of the WebSocket listener (0: any free port).", minimum=0, maximum=65535)
    paths: tuple[str, ...] = _key("paths", ("/ws/realtime", "/ws", "/"), None, RESTART,
        "URL paths that accept WebSocket upgrades.")
    max_connections: int = _key("int", 10000, "MAX_CONNECTIONS", LIVE,
        "Most simultaneous WebSocket connections.", minimum=1)
    max_subscriptions_per_client: int = _key("int", 100, "MAX_SUBSCRIPTIONS_PER_CLIENT", LIVE,
        "Most subscriptions one client may hold.", minimum=1)
    heartbeat_interval: float = _key("duration", 30.0, "HEARTBEAT_INTERVAL", LIVE,
        "Seconds between server pings.", minimum=0, exclusive_minimum=True)
    heartbeat_timeout: float = _key("duration", 60.0, "HEARTBEAT_TIMEOUT", LIVE,
        "Seconds without client traffic before closing with 4000.",
        minimum=0, exclusive_minimum=True, at_least="websocket.heartbeat_interval")
    max_message_size: int = _key("size", MiB, "MAX_MESSAGE_SIZE", LIVE,
        "Largest client message in bytes (1009 beyond it); applies to new connections.",
        minimum=125, maximum=64 * MiB)
    send_buffer_limit: int = _key("size", MiB, "SEND_BUFFER_LIMIT", LIVE,
        "Per-connection pending output in bytes; a slower consumer is closed with 1013.",
        minimum=1024)
    socket_send_buffer: int = _key("size", 0, "SOCKET_SEND_BUFFER", LIVE,
        "SO_SNDBUF of each WebSocket connection (the kernel doubles it); 0 = the kernel's "
        "autotuning (up to tcp_wmem's maximum, 4 MiB). Caps what a client that stops "
        "reading holds in the kernel besides send_buffer_limit; applies to new connections.",
        minimum=0, maximum=64 * MiB)
    allow_client_publish: bool = _key("bool", False, "ALLOW_CLIENT_PUBLISH", LIVE,
        "Whether WebSocket clients may publish messages themselves.")
    compression: bool = _key("bool", False, "WEBSOCKET_COMPRESSION", LIVE,
        "Offer permessage-deflate to clients that ask; applies to new connections.")
    compression_threshold: int = _key("size", 1024, "COMPRESSION_THRESHOLD", LIVE,
        "Messages of at least this many bytes are compressed (once per message).", minimum=0)
    compression_level: int = _key("int", 6, "COMPRESSION_LEVEL", LIVE,
        "zlib level for compressed messages.", minimum=1, maximum=9)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    host: str = _key("str", "0.0.0.0", "API_HOST", RESTART, "Address the HTTP API binds to.")
    port: int = _key("int", 8080, "API_PORT", RESTART,
        "Port of the HTTP API; equal to websocket.port serves both on one listener.",
        minimum=0, maximum=65535)
    token: str | None = _key("optional_str", None, "API_TOKEN", LIVE,
        "Token the HTTP API requires from callers; unset = no token required.", secret=True)


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    enabled: bool = _key("bool", True, "MONITORING_ENABLED", RESTART,
        "Whether the metrics listener runs.")
    metrics_port: int = _key("int", 9090, "METRICS_PORT", RESTART,
        "Port of the metrics listener; equal to another port shares that listener.",
        minimum=0, maximum=65535)
    prometheus_enabled: bool = _key("bool", True, "PROMETHEUS_ENABLED", RESTART,
        "Whether /metrics serves the Prometheus text format.")


@dataclass(frozen=True, slots=True)
class BroadcastConfig:
    batch_size: int = _key("int", 100, "BROADCAST_BATCH_SIZE", LIVE,
        "Most messages fanned out per loop iteration before the loop serves other work.",
        minimum=1, maximum=100000)
    flush_interval: float = _key("duration", 0.05, "BROADCAST_FLUSH_INTERVAL", LIVE,
        "The longest a message waits for its flush while flushes are paced (light load: "
        "no wait).", minimum=0, maximum=10)
    write_share: float = _key("float", 0.5, "BROADCAST_WRITE_SHARE", LIVE,
        "Share of the loop's time writing to subscribers may take while messages keep "
        "coming; beyond it flushes are spaced and each carries more messages.",
        minimum=0.05, maximum=1.0)
    queue_limit: int = _key("int", 10000, ("QUEUE_LIMIT", "MAX_QUEUE_SIZE"), LIVE,
        "Most messages waiting for fan-out; publishes beyond it get queue_full.", minimum=1)


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    size: int = _key("int", 50, "HISTORY_SIZE", LIVE,
        "Messages kept per type for history and recovery with `since`; 0 disables it.",
        minimum=0, maximum=100000)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    engine: str = _key("enum", "memory", "BROKER", RESTART,
        "Message broker: embedded in-process, or Redis pub/sub for several instances.",
        choices=("memory", "redis"), case="lower")


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """For the Redis broker engine (``broker.engine: redis``)."""

    host: str = _key("str", "localhost", "REDIS_HOST", RESTART, "Redis server host.")
    port: int = _key("int", 6379, "REDIS_PORT", RESTART, "Redis server port.",
        minimum=1, maximum=65535)
    db: int = _key("int", 0, "REDIS_DB", RESTART, "Redis database number.",
        minimum=0, maximum=15)
    password: str | None = _key("optional_str", None, "REDIS_PASSWORD", RESTART,
        "Redis password; unset = no AUTH.", secret=True)
    channel_prefix: str = _key("str", "aiosrv", "REDIS_PREFIX", RESTART,
        "Prefix of the Redis channel names, to share one Redis between deployments.")
    timeout: float = _key("duration", 2.0, "REDIS_TIMEOUT", RESTART,
        "Longest wait for Redis to connect or answer one command; redis-py retries "
        "3 times within about a second before the engine counts as down.",
        minimum=0, exclusive_minimum=True)
    history_ttl: float = _key("duration", 86400.0, "REDIS_HISTORY_TTL", RESTART,
        "A type's history expires this long after its last publish; 0 = never.", minimum=0)
    tls: bool = _key("bool", False, "REDIS_TLS", RESTART, "Connect to Redis over TLS.")
    tls_ca_file: str | None = _key("optional_str", None, "REDIS_TLS_CA", RESTART,
        "CA bundle that signed the Redis server's certificate; unset = the system's.")
    tls_verify: bool = _key("bool", True, "REDIS_TLS_VERIFY", RESTART,
        "Verify the Redis server's certificate and host name.")
    sentinels: str | None = _key("optional_str", None, "REDIS_SENTINELS", RESTART,
        "Redis Sentinel addresses, host:port,host:port; set = find the master through "
        "them (redis.host and redis.port are then unused).")
    sentinel_master: str = _key("str", "mymaster", "REDIS_SENTINEL_MASTER", RESTART,
        "The master's name the sentinels monitor.")
    sentinel_password: str | None = _key("optional_str", None, "REDIS_SENTINEL_PASSWORD",
        RESTART, "Password of the sentinels themselves; unset = none.", secret=True)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may connect, subscribe and publish, and how fast (docs/security.md)."""

    enable_auth: bool = _key("bool", False, "ENABLE_AUTH", LIVE,
        "Require a token (static or JWT) on WebSocket upgrades; applies to new connections.")
    auth_token: str | None = _key("optional_str", None, "AUTH_TOKEN", LIVE,
        "Static token clients may present (user `auth_token_user`, default permissions); "
        "unset = only JWTs.", secret=True)
    auth_token_user: str = _key("str", "token", "AUTH_TOKEN_USER", LIVE,
        "User id of connections that present the static token.")
    jwt_secret: str | None = _key("optional_str", None, "JWT_SECRET", LIVE,
        "Shared secret of HS256 JWTs; unset = no HS256.", secret=True)
    jwt_public_key_file: str | None = _key("optional_str", None, "JWT_PUBLIC_KEY_FILE", LIVE,
        "PEM public key of RS256 (RSA key) or ES256 (P-256 key) JWTs; unset = neither.")
    jwt_audience: str | None = _key("optional_str", None, "JWT_AUDIENCE", LIVE,
        "Required `aud` of JWTs; unset = a token with an `aud` is refused.")
    jwt_issuer: str | None = _key("optional_str", None, "JWT_ISSUER", LIVE,
        "Required `iss` of JWTs; unset = not checked.")
    jwt_leeway: float = _key("duration", 0.0, "JWT_LEEWAY", LIVE,
        "Clock skew allowed when checking `exp` and `nbf`.", minimum=0, maximum=300)
    default_subscribe: tuple[str, ...] = _key("patterns", ("*",), "DEFAULT_SUBSCRIBE", LIVE,
        "Types a connection may subscribe to when its token (or no auth) says nothing.")
    default_publish: tuple[str, ...] = _key("patterns", ("*",), "DEFAULT_PUBLISH", LIVE,
        "Types a connection may publish to when its token says nothing (WebSocket "
        "publishing also needs websocket.allow_client_publish).")
    allowed_origins: tuple[str, ...] = _key("origins", (), "ALLOWED_ORIGINS", LIVE,
        "Origins browsers may connect from (403 for others); empty = any. A request "
        "without Origin (not a browser) is not checked.")
    trusted_proxies: tuple[str, ...] = _key("networks", (), "TRUSTED_PROXIES", LIVE,
        "Proxies whose X-Forwarded-For / X-Real-IP name the client; empty = none.")
    rate_limit_enabled: bool = _key("bool", False, "RATE_LIMIT_ENABLED", LIVE,
        "Limit connection attempts per client address and messages per connection.")
    connect_rate: float = _key("float", 10.0, "CONNECT_RATE", LIVE,
        "Connection attempts per second one client address may make (429 beyond).",
        minimum=0, exclusive_minimum=True)
    connect_burst: int = _key("int", 20, "CONNECT_BURST", LIVE,
        "Connection attempts one client address may make at once.", minimum=1)
    message_rate: float = _key("float", 100.0, "MESSAGE_RATE", LIVE,
        "Messages per second one connection may send (error rate_limited beyond).",
        minimum=0, exclusive_minimum=True)
    message_burst: int = _key("int", 200, "MESSAGE_BURST", LIVE,
        "Messages one connection may send at once.", minimum=1)
    flood_limit: int = _key("int", 50, "FLOOD_LIMIT", LIVE,
        "A connection with more messages refused than this within 10 seconds is "
        "closed with 1008.", minimum=1)
    max_connections_per_user: int = _key("int", 0, "MAX_CONNECTIONS_PER_USER", LIVE,
        "Most connections one user may hold on an instance; 0 = no limit.", minimum=0)
    user_limit_policy: str = _key("enum", "refuse", "USER_LIMIT_POLICY", LIVE,
        "At the per-user limit: refuse the new connection (429) or close the user's "
        "oldest with 1008.", choices=("refuse", "close_oldest"), case="lower")
    handshake_timeout: float = _key("duration", 10.0, "HANDSHAKE_TIMEOUT", LIVE,
        "Longest a client may take to send a complete HTTP request head (408 beyond).",
        minimum=0, exclusive_minimum=True, maximum=600)
    max_header_size: int = _key("size", 32 * KiB, "MAX_HEADER_SIZE", LIVE,
        "Largest HTTP request head (request line and headers; 431 beyond).",
        minimum=1 * KiB, maximum=1 * MiB)
    ssl_certfile: str | None = _key("optional_str", None, "SSL_CERTFILE", RESTART,
        "PEM certificate chain: serve TLS on every listener (wss://, https://).")
    ssl_keyfile: str | None = _key("optional_str", None, "SSL_KEYFILE", RESTART,
        "PEM private key of ssl_certfile (unset: the key is in ssl_certfile).")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = _key("enum", "INFO", "LOG_LEVEL", LIVE, "Log level (any case on input).",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), case="upper")
    file: str | None = _key("optional_str", None, "LOG_FILE", RESTART,
        "Log file path (e.g. logs/websocket-server.log); unset = standard error only.")
    access_log: bool = _key("bool", False, "ACCESS_LOG", LIVE,
        "Log one line per HTTP request and WebSocket upgrade (logger aiosrv.access).")
    audit_log: bool = _key("bool", True, "AUDIT_LOG", LIVE,
        "Log auth failures, permission refusals, rate-limit closes and admin calls "
        "(logger aiosrv.audit).")


@dataclass(frozen=True, slots=True)
class SourcesConfig:
    enabled: bool = _key("bool", True, "SOURCES_ENABLED", LIVE,
        "Whether the built-in data sources run.")
    interval: float = _key("duration", 1.0, "SOURCES_INTERVAL", LIVE,
        "Seconds between samples of the built-in status, stats and health types.",
        minimum=0, exclusive_minimum=True)
    max_silence: float = _key("duration", 5.0, "SOURCES_MAX_SILENCE", LIVE,
        "Longest a built-in type (status, stats, health) goes unpublished when unchanged.",
        minimum=0, exclusive_minimum=True)


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    grace_period: float = _key("duration", 10.0, "SHUTDOWN_GRACE_PERIOD", LIVE,
        "Seconds connections get to finish once shutdown begins.", minimum=0,
        at_least="shutdown.drain_window")
    drain_window: float = _key("duration", 0.0, "SHUTDOWN_DRAIN_WINDOW", LIVE,
        "Seconds over which shutdown spreads its 1001 closes, each client at a random "
        "moment, so they do not all reconnect at once; 0 closes everyone at once.",
        minimum=0)


@dataclass(frozen=True, slots=True)
class ProcessConfig:
    workers: int = _key("int", 1, "WORKERS", RESTART,
        "Worker processes sharing the listening ports (SO_REUSEPORT) under one supervisor; "
        "1 = one process, no supervisor. More than 1 needs broker.engine redis.",
        minimum=1, maximum=256)


@dataclass(frozen=True, slots=True)
class DiagnosticsConfig:
    tracemalloc: bool = _key("bool", False, "TRACEMALLOC", RESTART,
        "Trace memory allocations (slow; for debugging leaks).")


@dataclass(frozen=True, slots=True)
class ServiceDiscoveryConfig:
    """Informational: read by deployment tooling, not acted on by the server."""

    backend: str = _key("enum", "none", None, RESTART,
        "Informational, for deployment tooling: service registry in use.",
        choices=("none", "consul", "kubernetes"), case="lower")
    consul_host: str = _key("str", "localhost", "CONSUL_HOST", RESTART,
        "Informational, for deployment tooling: Consul agent host.")
    consul_port: int = _key("int", 8500, None, RESTART,
        "Informational, for deployment tooling: Consul agent port.", minimum=1, maximum=65535)


@dataclass(frozen=True, slots=True)
class ScalingConfig:
    """Informational: read by deployment tooling, not acted on by the server."""

    min_instances: int = _key("int", 1, None, RESTART,
        "Informational, for deployment tooling: fewest instances.", minimum=1)
    max_instances: int = _key("int", 1, None, RESTART,
        "Informational, for deployment tooling: most instances.",
        minimum=1, at_least="scaling.min_instances")
    target_cpu_utilization: float = _key("float", 70.0, None, RESTART,
        "Informational, for deployment tooling: autoscaling CPU target in percent.",
        minimum=0, maximum=100)
    target_memory_utilization: float = _key("float", 80.0, None, RESTART,
        "Informational, for deployment tooling: autoscaling memory target in percent.",
        minimum=0, maximum=100)


# fmt: on


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. Immutable; build it with :func:`load_config`."""

    environment: str = _key("str", "development", "ENVIRONMENT", LIVE,
        "Deployment name, e.g. development or production.")  # fmt: skip
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    broadcast: BroadcastConfig = field(default_factory=BroadcastConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    service_discovery: ServiceDiscoveryConfig = field(default_factory=ServiceDiscoveryConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    # The file this was loaded from, if any. Not a configuration key (no metadata).
    source_path: str | None = None

    def get(self, path: str) -> Any:
        """The value at a dotted key path, e.g. ``cfg.get("websocket.port")``."""
        if path not in FIELDS_BY_PATH:
            raise KeyError(path)
        obj: Any = self
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """A nested plain dict (tuples as lists); secrets that are set become ``"***"``."""
        out: dict[str, Any] = {}
        for spec in FIELDS:
            value = self.get(spec.path)
            if isinstance(value, tuple):
                value = list(value)
            if redact and spec.secret and value is not None:
                value = REDACTED
            if spec.section is None:
                out[spec.path] = value
            else:
                out.setdefault(spec.section, {})[spec.key] = value
        return out

    def replace(self, **dotted: Any) -> Config:
        """A copy with some keys changed, validated like overrides.

        ``cfg.replace(**{"websocket.port": 9000, "logging.level": "debug"})``;
        raises :class:`ConfigError` listing every problem.
        """
        builder = _Builder.from_config(self)
        builder.apply_overrides(dotted, "override", skip_none=False)
        return builder.build(self.source_path)


#: :class:`Config` fields that are not configuration keys.
_NOT_KEYS = frozenset({"source_path"})


def _bound(path: str, item: dataclasses.Field[Any]) -> FieldSpec:
    spec = item.metadata.get(SPEC)
    if not isinstance(spec, FieldSpec):
        raise TypeError(f"configuration field {path!r} must be declared with _key(...)")
    return dataclasses.replace(spec, path=path)


def _read_schema() -> tuple[tuple[FieldSpec, ...], dict[str, type[Any]]]:
    """Every key's :class:`FieldSpec` (with its path), in declaration order, and the
    section dataclasses by section name, read off :class:`Config`'s fields."""
    specs: list[FieldSpec] = []
    sections: dict[str, type[Any]] = {}
    for item in dataclasses.fields(Config):
        section = item.default_factory
        if dataclasses.is_dataclass(section) and isinstance(section, type):
            sections[item.name] = section
            specs.extend(_bound(f"{item.name}.{f.name}", f) for f in dataclasses.fields(section))
        elif item.name not in _NOT_KEYS:
            specs.append(_bound(item.name, item))
    return tuple(specs), sections


FIELDS: tuple[FieldSpec, ...]
SECTION_TYPES: dict[str, type[Any]]
FIELDS, SECTION_TYPES = _read_schema()

FIELDS_BY_PATH: dict[str, FieldSpec] = {spec.path: spec for spec in FIELDS}

#: Environment variable name -> dotted key path.
ENV_VARS: dict[str, str] = {name: spec.path for spec in FIELDS for name in spec.env}

SECTIONS: tuple[str, ...] = tuple(SECTION_TYPES)
TOP_LEVEL_KEYS: tuple[str, ...] = tuple(spec.path for spec in FIELDS if spec.section is None)


# --------------------------------------------------------------------------- problems


class _Missing:
    def __repr__(self) -> str:
        return "<no value>"


#: ``Problem.value`` of problems about no single value (unreadable file, bad YAML).
NO_VALUE: Any = _Missing()


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, and where it came from."""

    path: str  # dotted key path; "" for problems with the file as a whole
    value: object  # the value as given (REDACTED for secrets), or NO_VALUE
    reason: str
    source: str  # "defaults", "file <path>", "env NAME", "override"

    def __str__(self) -> str:
        if not self.path:
            return f"{self.source}: {self.reason}"
        if self.value is NO_VALUE:
            return f"{self.path} (from {self.source}): {self.reason}"
        return f"{self.path} = {_show(self.value)} (from {self.source}): {self.reason}"


def _show(value: object) -> str:
    if isinstance(value, str):
        return value if value and value.strip() == value else repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ConfigError(AiosrvError, ValueError):
    """The configuration is invalid; :attr:`problems` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    @classmethod
    def single(
        cls, path: str, value: object, reason: str, source: str = "configuration"
    ) -> ConfigError:
        """An error with one problem, e.g. found when the configuration is put to use."""
        spec = FIELDS_BY_PATH.get(path)
        if spec is not None and spec.secret and value is not None:
            value = REDACTED
        return cls([Problem(path, value, reason, source)])

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


# --------------------------------------------------------------------------- parsing


class _Invalid(Exception):
    """A value cannot be used; the message says why."""


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_DURATION_RE = re.compile(
    r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(ms|s|m|h)?$", re.IGNORECASE
)
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}  # fmt: skip


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _parse_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Invalid(f"must be an integer, not {_type_name(value)}")
    if isinstance(value, int):
        return value
    text = value.strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise _Invalid("must be an integer")
    return int(text)


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise _Invalid("must be a finite number")
    return number


def _parse_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(f"must be a number, not {_type_name(value)}")
    if isinstance(value, (int, float)):
        return _finite(float(value))
    try:
        return _finite(float(value.strip()))
    except ValueError:
        raise _Invalid("must be a number") from None


def _parse_duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(f"must be a duration in seconds, not {_type_name(value)}")
    if isinstance(value, (int, float)):
        return _finite(float(value))
    match = _DURATION_RE.fullmatch(value.strip())
    if match is None:
        raise _Invalid("must be a duration such as 1.5, 30s, 50ms or 2m")
    number, unit = match.groups()
    return _finite(float(number) * _DURATION_UNITS[(unit or "").lower()])


def _parse_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Invalid(f"must be a size in bytes, not {_type_name(value)}")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.fullmatch(value.strip())
    if match is None:
        raise _Invalid("must be a size in bytes such as 1048576, 512KiB, 1MiB or 1MB")
    number, unit = match.groups()
    size = Fraction(number) * _SIZE_UNITS[(unit or "").lower()]
    if size.denominator != 1:
        raise _Invalid("must be a whole number of bytes")
    return int(size)


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid("must be a boolean (true/false, yes/no, on/off, 1/0)")


def _parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {_type_name(value)} (quote it in YAML)")
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def _parse_optional_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Invalid(f"must be a string or null, not {_type_name(value)} (quote it in YAML)")
    return value


def _parse_paths(value: object) -> tuple[str, ...]:
    items: list[object]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _Invalid(f"must be a list of URL paths, not {_type_name(value)}")
    if not items:
        raise _Invalid("must list at least one URL path")
    for item in items:
        if not isinstance(item, str):
            raise _Invalid(f"must contain only strings, not {_type_name(item)}")
        if not item.startswith("/"):
            raise _Invalid(f"each path must start with '/' (got {item!r})")
    if len(set(items)) != len(items):
        raise _Invalid("must not list a path twice")
    return tuple(str(item) for item in items)


def _items(value: object, what: str) -> list[str]:
    """A list of strings from a YAML list or a comma-separated string (may be empty)."""
    items: list[object]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _Invalid(f"must be a list of {what}, not {_type_name(value)}")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise _Invalid(f"must contain only non-empty strings, not {_type_name(item)}")
    return [str(item).strip() for item in items]


_ORIGIN_RE = re.compile(r"(?i)(https?)://(\*\.)?([a-z0-9-]+(\.[a-z0-9-]+)*)(:\d{1,5})?")


def _parse_origins(value: object) -> tuple[str, ...]:
    out = []
    for item in _items(value, "origins"):
        if _ORIGIN_RE.fullmatch(item) is None:
            raise _Invalid(
                f"{item!r} is not an origin: write scheme://host or scheme://host:port "
                "(http or https, no path), or scheme://*.domain for its subdomains"
            )
        out.append(item.lower())
    return tuple(out)


def _parse_networks(value: object) -> tuple[str, ...]:
    import ipaddress

    out = []
    for item in _items(value, "networks"):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise _Invalid(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(out)


_PATTERN_RE = re.compile(r"[^\s,]+")


def _parse_patterns(value: object) -> tuple[str, ...]:
    out = _items(value, "type patterns")
    for item in out:
        if _PATTERN_RE.fullmatch(item) is None:
            raise _Invalid(f"{item!r} is not a type pattern (no spaces or commas)")
    return tuple(out)


_PARSERS: dict[str, Callable[[object], Any]] = {
    "int": _parse_int,
    "float": _parse_float,
    "duration": _parse_duration,
    "size": _parse_size,
    "bool": _parse_bool,
    "str": _parse_str,
    "optional_str": _parse_optional_str,
    "paths": _parse_paths,
    "origins": _parse_origins,
    "networks": _parse_networks,
    "patterns": _parse_patterns,
}


def _parse(spec: FieldSpec, value: object) -> Any:
    """The parsed, checked value for *spec*; raises :class:`_Invalid`."""
    if value is None and spec.type != "optional_str":
        raise _Invalid("must not be null")
    if spec.type == "enum":
        if not isinstance(value, str):
            raise _Invalid(f"must be one of {', '.join(spec.choices)}, not {_type_name(value)}")
        text = value.strip()
        text = text.upper() if spec.case == "upper" else text.lower() if spec.case else text
        if text not in spec.choices:
            raise _Invalid(f"must be one of {', '.join(spec.choices)}")
        return text
    parsed = _PARSERS[spec.type](value)
    if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        _check_range(spec, parsed)
    return parsed


def _check_range(spec: FieldSpec, number: float) -> None:
    lo, hi = spec.minimum, spec.maximum
    low_ok = lo is None or (number > lo if spec.exclusive_minimum else number >= lo)
    high_ok = hi is None or number <= hi
    if low_ok and high_ok:
        return
    if lo is not None and hi is not None and not spec.exclusive_minimum:
        lo_text, hi_text = _fmt_number(lo, spec.type), _fmt_number(hi, spec.type)
        raise _Invalid(f"must be between {lo_text} and {hi_text}")
    if not low_ok and lo is not None:
        bound = _fmt_number(lo, spec.type)
        if spec.exclusive_minimum:
            raise _Invalid(f"must be greater than {bound}")
        raise _Invalid(f"must be at least {bound}")
    raise _Invalid(f"must be at most {_fmt_number(hi or 0, spec.type)}")


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """A safe loader that also records duplicate mapping keys (YAML keeps the last)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    self.duplicates.append((key_node.value, key_node.start_mark.line + 1))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str, source: str) -> tuple[object, list[Problem]]:
    """The parsed document (None if empty or unreadable) and the problems found."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None, [Problem("", NO_VALUE, "file not found", source)]
    except IsADirectoryError:
        return None, [Problem("", NO_VALUE, "is a directory, not a file", source)]
    except UnicodeDecodeError as exc:
        return None, [Problem("", NO_VALUE, f"not valid UTF-8 ({exc.reason})", source)]
    except OSError as exc:
        return None, [Problem("", NO_VALUE, f"cannot be read: {exc.strerror or exc}", source)]
    loader = _Loader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = ": ".join(part for part in (exc.context, exc.problem) if part)
        return None, [Problem("", NO_VALUE, f"invalid YAML at {where}: {what}", source)]
    except yaml.YAMLError as exc:
        return None, [Problem("", NO_VALUE, f"invalid YAML: {exc}", source)]
    finally:
        loader.dispose()
    problems = [
        Problem(
            "", NO_VALUE, f"duplicate key {key!r} at line {line} (the last one would win)", source
        )
        for key, line in loader.duplicates
    ]
    return document, problems


# --------------------------------------------------------------------------- building


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def _did_you_mean(match: str | None) -> str:
    return f" (did you mean {match!r}?)" if match else ""


_SECRET_HINT = re.compile(r"pass|secret|token|key|auth|cred", re.IGNORECASE)


class _Builder:
    """Accumulates layers of values and every problem found in them."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {spec.path: spec.default for spec in FIELDS}
        self.sources: dict[str, str] = dict.fromkeys(self.values, "defaults")
        self.bad: set[str] = set()
        self.problems: list[Problem] = []

    @classmethod
    def from_config(cls, config: Config) -> _Builder:
        builder = cls()
        for spec in FIELDS:
            builder.values[spec.path] = config.get(spec.path)
            builder.sources[spec.path] = "current configuration"
        return builder

    def problem(self, path: str, value: object, reason: str, source: str) -> None:
        spec = FIELDS_BY_PATH.get(path)
        if spec is not None and spec.secret and value is not None and value is not NO_VALUE:
            value = REDACTED
        self.problems.append(Problem(path, value, reason, source))

    def set(self, spec: FieldSpec, value: object, source: str) -> None:
        try:
            parsed = _parse(spec, value)
        except _Invalid as exc:
            self.problem(spec.path, value, str(exc), source)
            self.bad.add(spec.path)
            return
        self.values[spec.path] = parsed
        self.sources[spec.path] = source

    def unknown(self, path: str, value: object, source: str) -> None:
        match = _closest(path, FIELDS_BY_PATH)
        spec = FIELDS_BY_PATH.get(match) if match else None
        if isinstance(value, (dict, list)):
            value = NO_VALUE
        elif (spec is not None and spec.secret) or _SECRET_HINT.search(path):
            value = REDACTED  # a misspelt secret is still a secret
        reason = f"unknown key {path!r}{_did_you_mean(match)}"
        self.problems.append(Problem(path, value, reason, source))

    def apply_file(self, path: str) -> None:
        source = f"file {path}"
        document, problems = _read_yaml(path, source)
        self.problems.extend(problems)
        if document is None:
            return
        if not isinstance(document, dict):
            self.problems.append(
                Problem(
                    "",
                    NO_VALUE,
                    f"the top level must be a mapping of sections, not {_type_name(document)}",
                    source,
                )
            )
            return
        for name, body in document.items():
            name = str(name)
            if name in TOP_LEVEL_KEYS:
                self.set(FIELDS_BY_PATH[name], body, source)
            elif name in SECTIONS:
                self._apply_section(name, body, source)
            else:
                hint = _did_you_mean(_closest(name, [*SECTIONS, *TOP_LEVEL_KEYS]))
                value = NO_VALUE if isinstance(body, (dict, list)) else body
                if _SECRET_HINT.search(name) and value is not NO_VALUE:
                    value = REDACTED
                self.problems.append(
                    Problem(name, value, f"unknown section {name!r}{hint}", source)
                )

    def _apply_section(self, section: str, body: object, source: str) -> None:
        if body is None:  # an empty section (every key commented out)
            return
        if not isinstance(body, dict):
            self.problems.append(
                Problem(
                    section,
                    body,
                    f"section {section!r} must be a mapping of keys, not {_type_name(body)}",
                    source,
                )
            )
            return
        for key, value in body.items():
            path = f"{section}.{key}"
            spec = FIELDS_BY_PATH.get(path)
            if spec is None:
                self.unknown(path, value, source)
            else:
                self.set(spec, value, source)

    def apply_env(self, env: Mapping[str, str]) -> None:
        for spec in FIELDS:
            # lowest priority first, so the primary name wins over its aliases
            for name in reversed(spec.env):
                raw = env.get(name)
                if raw is None or (raw == "" and spec.type != "optional_str"):
                    continue
                self.set(spec, raw, f"env {name}")

    def apply_overrides(
        self, overrides: Mapping[str, Any], source: str, *, skip_none: bool
    ) -> None:
        for path, value in overrides.items():
            if value is None and skip_none:
                continue
            spec = FIELDS_BY_PATH.get(path)
            if spec is None:
                self.unknown(path, value, source)
            else:
                self.set(spec, value, source)

    def cross_check(self) -> None:
        """Every key declared ``at_least`` another must not be below it; several
        workers need a broker they share (:func:`several_workers_problem`)."""
        if not {"process.workers", "broker.engine"} & self.bad:
            workers, engine = self.values["process.workers"], self.values["broker.engine"]
            reason = several_workers_problem(workers, engine)
            if reason is not None:
                self.problem("process.workers", workers, reason, self.sources["process.workers"])
        for spec in FIELDS:
            low = spec.at_least
            if low is None or low in self.bad or spec.path in self.bad:
                continue
            lo, hi = self.values[low], self.values[spec.path]
            if hi < lo:
                reason = f"must be at least {low} ({_show(lo)}, from {self.sources[low]})"
                self.problem(spec.path, hi, reason, self.sources[spec.path])

    def build(self, source_path: str | None) -> Config:
        self.cross_check()
        if self.problems:
            raise ConfigError(self.problems)
        return _make_config(self.values, source_path)


def several_workers_problem(workers: int, engine: str) -> str | None:
    """Why ``workers`` processes cannot run on broker ``engine``, or None if they can.

    Each worker is a process of its own: with the embedded broker each would
    number, keep and deliver only what was published to it, and a client would
    miss everything published through another worker.
    """
    if workers > 1 and engine == "memory":
        return (
            f"{workers} workers need a broker they share: with broker.engine=memory each "
            "worker would have its own embedded broker, and clients of one worker would not "
            "see messages published through another; use broker.engine=redis, or 1 worker"
        )
    return None


def listeners(config: Config) -> list[tuple[str, int, tuple[str, ...]]]:
    """(host, port, parts) for each listener the configuration asks for.

    Parts on the same port share a listener; port 0 ("any free port") is never
    shared: each part configured with 0 gets a free port of its own.
    """
    groups: dict[int | tuple[str], tuple[str, list[str]]] = {}
    wanted = [
        ("ws", config.websocket.host, config.websocket.port),
        ("api", config.api.host, config.api.port),
    ]
    if config.monitoring.enabled and config.monitoring.prometheus_enabled:
        wanted.append(("metrics", config.api.host, config.monitoring.metrics_port))
    ports: dict[int | tuple[str], int] = {}
    for part, host, port in wanted:
        group: int | tuple[str] = port if port else (part,)
        ports[group] = port
        if group in groups:
            groups[group][1].append(part)
        else:
            groups[group] = (host, [part])
    return [(host, ports[group], tuple(parts)) for group, (host, parts) in groups.items()]


#: The configuration key of each listener part's port.
PORT_KEYS = {"ws": "websocket.port", "api": "api.port", "metrics": "monitoring.metrics_port"}


def _make_config(values: Mapping[str, Any], source_path: str | None) -> Config:
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    top: dict[str, Any] = {}
    for spec in FIELDS:
        if spec.section is None:
            top[spec.path] = values[spec.path]
        else:
            sections[spec.section][spec.key] = values[spec.path]
    built = {name: SECTION_TYPES[name](**kwargs) for name, kwargs in sections.items()}
    return Config(**top, **built, source_path=source_path)


def _resolve_path(
    path: str | os.PathLike[str] | None, env: Mapping[str, str], use_default_path: bool
) -> str | None:
    if path is not None:
        return os.fspath(path)
    named = env.get(CONFIG_PATH_ENV)
    if named:
        return named
    if use_default_path and os.path.isfile(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH
    return None


# --------------------------------------------------------------------------- public API


def default_config() -> Config:
    """The built-in defaults, with no file, environment or overrides."""
    return _make_config({spec.path: spec.default for spec in FIELDS}, None)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    use_default_path: bool = True,
) -> Config:
    """Load defaults < YAML file < environment < overrides; raise :class:`ConfigError`.

    *path* None means ``env[AIOSRV_CONFIG]`` if set, else ``config/deployment.yaml``
    if it exists and *use_default_path*, else no file. *env* None means
    ``os.environ``. *overrides* maps dotted key paths to values (strings are parsed
    like environment values); None values are skipped (a flag not given).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    file_path = _resolve_path(path, environ, use_default_path)
    builder = _Builder()
    if file_path is not None:
        builder.apply_file(file_path)
    builder.apply_env(environ)
    if overrides:
        builder.apply_overrides(overrides, "override", skip_none=True)
    return builder.build(file_path)


def check_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem with a configuration file (plus *env*, default none); never raises."""
    builder = _Builder()
    builder.apply_file(os.fspath(path))
    builder.apply_env({} if env is None else env)
    builder.cross_check()
    return builder.problems


@dataclass(frozen=True, slots=True)
class Change:
    """One key whose value differs between two configurations."""

    path: str
    old: Any  # REDACTED for a secret that is set
    new: Any
    live: bool  # True: applied on reload; False: needs a restart

    def __str__(self) -> str:
        when = "live" if self.live else "restart needed"
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)} ({when})"


def _shown(spec: FieldSpec, value: Any) -> Any:
    if spec.secret and value is not None:
        return REDACTED
    return list(value) if isinstance(value, tuple) else value


def diff_config(old: Config, new: Config) -> list[Change]:
    """The keys whose values differ, in :data:`FIELDS` order."""
    changes: list[Change] = []
    for spec in FIELDS:
        before, after = old.get(spec.path), new.get(spec.path)
        if before != after:
            changes.append(Change(spec.path, _shown(spec, before), _shown(spec, after), spec.live))
    return changes


def apply_live(old: Config, new: Config) -> tuple[Config, list[Change]]:
    """The configuration to run with after a hot reload.

    Live keys take their value from *new*; restart-only keys keep their value
    from *old*. Returns ``(effective, changes_needing_a_restart)``.
    """
    values = {spec.path: (new if spec.live else old).get(spec.path) for spec in FIELDS}
    effective = _make_config(values, new.source_path)
    pending = [change for change in diff_config(old, new) if not change.live]
    return effective, pending


def _fmt_default(spec: FieldSpec) -> str:
    value = spec.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if spec.type == "size":
        return f"`{value}` ({_fmt_size(value)})"
    if spec.type == "duration":
        return f"`{value * 1000:g}ms`" if value < 1 else f"`{value:g}s`"
    if isinstance(value, tuple):
        return "`" + ", ".join(value) + "`"
    return f"`{value}`"


def inert_settings(config: Config) -> list[str]:
    """Warnings for settings the server accepts but does not act on, as an
    operator who set them would want to read them at start-up."""
    notes = []
    sd = config.service_discovery
    if sd.backend == "consul":
        notes.append(
            f"service_discovery.backend is consul ({sd.consul_host}:{sd.consul_port}): "
            "aiosrv does not register itself with Consul; register the service in the "
            "Consul agent's configuration, with GET /health as its check"
        )
    elif sd.backend == "kubernetes":
        notes.append(
            "service_discovery.backend is kubernetes: discovery is the Service's "
            "(k8s/); aiosrv needs nothing from it"
        )
    return notes


def env_table_markdown() -> str:
    """A markdown table of the environment variables, for the README and docs."""
    rows = [
        "| Env var | Key | Default | Live/restart | Description |",
        "|---|---|---|---|---|",
        f"| `{CONFIG_PATH_ENV}` | (config file) | `{DEFAULT_CONFIG_PATH}` if it exists | "
        "restart | Path of the YAML configuration file. |",
    ]
    for spec in FIELDS:
        for index, name in enumerate(spec.env):
            description = spec.description
            if spec.constraint:
                description += f" ({spec.constraint})"
            if spec.secret:
                description += " Secret: shown as `***`."
            if index:
                description = f"Alias of `{spec.env[0]}`, used when that is unset."
            when = "live" if spec.live else "restart"
            cells = [f"`{name}`", f"`{spec.path}`", _fmt_default(spec), when, description]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
