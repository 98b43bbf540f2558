"""Tests of aiosrv.config: defaults, layering, parsing, problems, reload helpers."""

from __future__ import annotations

import dataclasses
import pickle
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from aiosrv.config import (
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_PATH,
    ENV_VARS,
    FIELDS,
    FIELDS_BY_PATH,
    SECTION_TYPES,
    SPEC,
    ApiConfig,
    Change,
    Config,
    ConfigError,
    FieldSpec,
    Problem,
    RedisConfig,
    WebSocketConfig,
    _bound,
    apply_live,
    check_file,
    default_config,
    diff_config,
    env_table_markdown,
    load_config,
)
from aiosrv.errors import AiosrvError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "config" / "deployment.yaml"
DOCS = REPO_ROOT / "docs" / "configuration.md"

OPERATIONS_GUIDE_EXAMPLE = (REPO_ROOT / "tests" / "data" / "ops-guide-deployment.yaml").read_text()


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def load(path: str | None = None, env: dict[str, str] | None = None, **kw: Any) -> Config:
    """load_config isolated from the process environment and the working directory."""
    return load_config(path, env={} if env is None else env, use_default_path=False, **kw)


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, Problem]:
    return {p.path: p for p in exc.value.problems}


# --------------------------------------------------------------------------- defaults

EXPECTED_DEFAULTS: dict[str, Any] = {
    "environment": "development",
    "websocket.host": "0.0.0.0",
    "websocket.port": 8765,
    "websocket.paths": ("/ws/realtime", "/ws", "/"),
    "websocket.max_connections": 10000,
    "websocket.max_subscriptions_per_client": 100,
    "websocket.heartbeat_interval": 30.0,
    "websocket.heartbeat_timeout": 60.0,
    "websocket.max_message_size": 1048576,
    "websocket.send_buffer_limit": 1048576,
    "websocket.socket_send_buffer": 0,
    "websocket.allow_client_publish": False,
    "websocket.compression": False,
    "websocket.compression_threshold": 1024,
    "websocket.compression_level": 6,
    "api.host": "0.0.0.0",
    "api.port": 8080,
    "api.token": None,
    "monitoring.enabled": True,
    "monitoring.metrics_port": 9090,
    "monitoring.prometheus_enabled": True,
    "broadcast.batch_size": 100,
    "broadcast.flush_interval": 0.05,
    "broadcast.write_share": 0.5,
    "broadcast.queue_limit": 10000,
    "history.size": 50,
    "broker.engine": "memory",
    "redis.host": "localhost",
    "redis.port": 6379,
    "redis.db": 0,
    "redis.password": None,
    "redis.channel_prefix": "aiosrv",
    "redis.timeout": 2.0,
    "redis.history_ttl": 86400.0,
    "redis.tls": False,
    "redis.tls_ca_file": None,
    "redis.tls_verify": True,
    "redis.sentinels": None,
    "redis.sentinel_master": "mymaster",
    "redis.sentinel_password": None,
    "security.enable_auth": False,
    "security.auth_token": None,
    "security.auth_token_user": "token",
    "security.jwt_secret": None,
    "security.jwt_public_key_file": None,
    "security.jwt_audience": None,
    "security.jwt_issuer": None,
    "security.jwt_leeway": 0.0,
    "security.default_subscribe": ("*",),
    "security.default_publish": ("*",),
    "security.allowed_origins": (),
    "security.trusted_proxies": (),
    "security.rate_limit_enabled": False,
    "security.connect_rate": 10.0,
    "security.connect_burst": 20,
    "security.message_rate": 100.0,
    "security.message_burst": 200,
    "security.flood_limit": 50,
    "security.max_connections_per_user": 0,
    "security.user_limit_policy": "refuse",
    "security.handshake_timeout": 10.0,
    "security.max_header_size": 32768,
    "security.ssl_certfile": None,
    "security.ssl_keyfile": None,
    "logging.level": "INFO",
    "logging.file": None,
    "logging.access_log": False,
    "logging.audit_log": True,
    "sources.enabled": True,
    "sources.interval": 1.0,
    "sources.max_silence": 5.0,
    "shutdown.grace_period": 10.0,
    "shutdown.drain_window": 0.0,
    "process.workers": 1,
    "diagnostics.tracemalloc": False,
    "service_discovery.backend": "none",
    "service_discovery.consul_host": "localhost",
    "service_discovery.consul_port": 8500,
    "scaling.min_instances": 1,
    "scaling.max_instances": 1,
    "scaling.target_cpu_utilization": 70.0,
    "scaling.target_memory_utilization": 80.0,
}


def test_fields_cover_exactly_the_schema() -> None:
    assert [spec.path for spec in FIELDS] == list(EXPECTED_DEFAULTS)


@pytest.mark.parametrize(("path", "expected"), list(EXPECTED_DEFAULTS.items()))
def test_default_value(path: str, expected: Any) -> None:
    cfg = default_config()
    value = cfg.get(path)
    assert value == expected
    assert type(value) is type(expected)


def test_defaults_attribute_access_and_dataclass_defaults() -> None:
    cfg = default_config()
    assert cfg.websocket.port == 8765
    assert cfg.broadcast.flush_interval == 0.05
    assert cfg.logging.level == "INFO"
    assert cfg.source_path is None
    # FIELDS takes its defaults from the dataclasses' fields
    assert Config() == cfg
    assert WebSocketConfig().heartbeat_timeout == 60.0
    assert RedisConfig().channel_prefix == "aiosrv"


# The annotation each kind of key must have, as written in config.py.
ANNOTATION_OF_KIND = {
    "str": "str",
    "enum": "str",
    "optional_str": "str | None",
    "int": "int",
    "size": "int",
    "float": "float",
    "duration": "float",
    "bool": "bool",
    "paths": "tuple[str, ...]",
    "origins": "tuple[str, ...]",
    "networks": "tuple[str, ...]",
    "patterns": "tuple[str, ...]",
}


def _key_fields() -> list[tuple[str, dataclasses.Field[Any]]]:
    """(dotted path, dataclass field) of every field of Config and its sections."""
    out: list[tuple[str, dataclasses.Field[Any]]] = []
    for item in dataclasses.fields(Config):
        if item.name == "source_path":
            continue
        section = SECTION_TYPES.get(item.name)
        if section is None:
            out.append((item.name, item))
        else:
            out.extend((f"{item.name}.{f.name}", f) for f in dataclasses.fields(section))
    return out


def test_every_field_carries_its_spec() -> None:
    fields = _key_fields()
    assert [path for path, _ in fields] == [spec.path for spec in FIELDS]
    for path, item in fields:
        carried = item.metadata[SPEC]
        assert isinstance(carried, FieldSpec), path
        # FIELDS is the carried spec with its path filled in; nothing else differs
        assert FIELDS_BY_PATH[path] == dataclasses.replace(carried, path=path)
        assert item.default == carried.default, path
        assert item.type == ANNOTATION_OF_KIND[carried.type], path
        assert carried.description.strip(), path


def test_sections_are_the_config_fields_holding_dataclasses() -> None:
    by_name = {item.name: item for item in dataclasses.fields(Config)}
    holding = {
        name: item.default_factory
        for name, item in by_name.items()
        if name not in ("environment", "source_path")
    }
    assert holding == SECTION_TYPES
    assert SECTION_TYPES["websocket"] is WebSocketConfig
    # source_path is the one field that is not a key
    assert SPEC not in by_name["source_path"].metadata
    assert "source_path" not in FIELDS_BY_PATH


def test_a_field_without_a_spec_is_refused() -> None:
    expected = re.escape("'websocket.extra' must be declared with _key(...)")
    with pytest.raises(TypeError, match=expected):
        _bound("websocket.extra", dataclasses.field(default=1))


def test_every_default_passes_its_own_checks() -> None:
    cfg = default_config()
    for spec in FIELDS:
        # replace() validates like an override: a default outside its own
        # bounds or choices, or of the wrong type, would be refused here
        assert cfg.replace(**{spec.path: spec.default}) == cfg, spec.path


def test_cross_key_bounds_name_keys_of_the_same_kind() -> None:
    bounded = {spec.path: spec.at_least for spec in FIELDS if spec.at_least is not None}
    assert bounded == {
        "websocket.heartbeat_timeout": "websocket.heartbeat_interval",
        "scaling.max_instances": "scaling.min_instances",
        "shutdown.grace_period": "shutdown.drain_window",
    }
    for path, low in bounded.items():
        assert FIELDS_BY_PATH[low].type == FIELDS_BY_PATH[path].type
        assert FIELDS_BY_PATH[path].constraint.endswith(f">= {low}")


def test_each_env_var_names_one_key() -> None:
    names = [name for spec in FIELDS for name in spec.env]
    assert len(names) == len(set(names)) == len(ENV_VARS)
    assert CONFIG_PATH_ENV not in ENV_VARS


def test_config_is_frozen() -> None:
    cfg = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.websocket.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.environment = "x"  # type: ignore[misc]


def test_no_file_when_nothing_names_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg == default_config()
    assert cfg.source_path is None


# --------------------------------------------------------------------------- files


def test_operations_guide_example_loads(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, OPERATIONS_GUIDE_EXAMPLE))
    assert cfg.environment == "production"
    assert cfg.websocket.host == "0.0.0.0"
    assert cfg.websocket.port == 8765
    assert cfg.websocket.max_connections == 2000
    assert cfg.websocket.max_subscriptions_per_client == 200
    assert cfg.websocket.heartbeat_interval == 30.0
    assert cfg.service_discovery.backend == "consul"
    assert cfg.service_discovery.consul_host == "consul.example.com"
    assert cfg.service_discovery.consul_port == 8500
    assert cfg.scaling.min_instances == 3
    assert cfg.scaling.max_instances == 10
    assert cfg.scaling.target_cpu_utilization == 70.0
    assert cfg.scaling.target_memory_utilization == 80.0
    assert cfg.monitoring.enabled is True
    assert cfg.monitoring.metrics_port == 9090
    assert cfg.monitoring.prometheus_enabled is True
    # everything else stays at its default
    assert cfg.websocket.heartbeat_timeout == 60.0
    assert cfg.broker.engine == "memory"


def test_shipped_deployment_yaml_is_the_defaults_plus_a_log_file() -> None:
    assert check_file(str(SHIPPED)) == []
    cfg = load(str(SHIPPED))
    assert cfg.source_path == str(SHIPPED)
    assert cfg.logging.file == "logs/websocket-server.log"
    expected = default_config().replace(**{"logging.file": "logs/websocket-server.log"})
    assert cfg.to_dict(redact=False) == expected.to_dict(redact=False)
    assert [c.path for c in diff_config(default_config(), cfg)] == ["logging.file"]


def test_shipped_file_is_found_by_default_from_the_repository_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cfg = load_config(env={})
    assert cfg.source_path == DEFAULT_CONFIG_PATH
    assert cfg.logging.file == "logs/websocket-server.log"
    assert load_config(env={}, use_default_path=False).source_path is None


def test_config_path_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # where the default file would otherwise be found
    path = write(tmp_path, "history:\n  size: 7\n")
    cfg = load_config(env={CONFIG_PATH_ENV: path})
    assert cfg.history.size == 7
    assert cfg.source_path == path
    # an explicit path wins over the variable
    other = write(tmp_path, "history:\n  size: 8\n", "other.yaml")
    assert load_config(other, env={CONFIG_PATH_ENV: path}).history.size == 8


def test_empty_file_and_empty_sections_are_fine(tmp_path: Path) -> None:
    assert load(write(tmp_path, "")) == dataclasses.replace(
        default_config(), source_path=str(tmp_path / "config.yaml")
    )
    cfg = load(write(tmp_path, "# only comments\nwebsocket:\nhistory: {}\n"))
    assert cfg.websocket == WebSocketConfig()


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as exc:
        load(missing)
    [problem] = exc.value.problems
    assert problem.source == f"file {missing}"
    assert problem.reason == "file not found"
    assert str(problem) == f"file {missing}: file not found"
    with pytest.raises(ConfigError, match="file not found"):
        load_config(env={CONFIG_PATH_ENV: missing})


def test_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "websocket:\n  port: 8765\n  host: [unclosed\napi:\n  port: 1\n")
    [problem] = check_file(path)
    assert problem.path == ""
    assert problem.source == f"file {path}"
    assert "invalid YAML at line " in problem.reason
    assert "column" in problem.reason
    bad = write(tmp_path, "websocket:\n  port: 8765\n   host: x\n", "bad2.yaml")
    [problem] = check_file(bad)
    assert "invalid YAML at line 3, column" in problem.reason


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, "- websocket\n- api\n"))
    [problem] = exc.value.problems
    assert "top level must be a mapping" in problem.reason
    assert "a list" in problem.reason
    [problem] = check_file(write(tmp_path, "just a string\n", "s.yaml"))
    assert "top level must be a mapping" in problem.reason


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, "websocket: 8765\n"))
    [problem] = exc.value.problems
    assert problem.path == "websocket"
    assert problem.value == 8765
    assert "section 'websocket' must be a mapping" in problem.reason


def test_every_problem_is_collected_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        websocket:
          port: 70000
          prot: 8765
          max_connections: zero
        broadcast:
          flush_interval: 99s
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load(path)
    problems = problems_of(exc)
    assert len(exc.value.problems) == 4
    assert set(problems) == {
        "websocket.port",
        "websocket.prot",
        "websocket.max_connections",
        "broadcast.flush_interval",
    }
    assert problems["websocket.port"].reason == "must be between 0 and 65535"
    assert problems["websocket.max_connections"].reason == "must be an integer"
    assert problems["broadcast.flush_interval"].reason == "must be between 0 and 10"
    assert problems["websocket.prot"].reason == (
        "unknown key 'websocket.prot' (did you mean 'websocket.port'?)"
    )
    assert all(p.source == f"file {path}" for p in exc.value.problems)
    text = str(exc.value)
    assert len(text.splitlines()) == 4
    assert f"websocket.port = 70000 (from file {path}): must be between 0 and 65535" in text
    assert isinstance(exc.value, ValueError)
    assert isinstance(exc.value, AiosrvError)
    # check_file reports the same problems without raising
    assert [str(p) for p in check_file(path)] == [str(p) for p in exc.value.problems]


def test_unknown_section_suggests_the_right_one(tmp_path: Path) -> None:
    [problem] = check_file(write(tmp_path, "websocet:\n  port: 1\n"))
    assert problem.path == "websocet"
    assert problem.reason == "unknown section 'websocet' (did you mean 'websocket'?)"
    [problem] = check_file(write(tmp_path, "zzz: 1\n", "z.yaml"))
    assert problem.reason == "unknown section 'zzz'"


def test_duplicate_keys_are_reported(tmp_path: Path) -> None:
    [problem] = check_file(write(tmp_path, "history:\n  size: 1\nhistory:\n  size: 2\n"))
    assert problem.reason == "duplicate key 'history' at line 3 (the last one would win)"


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, "websocket:\n  port: true\n  max_message_size: false\n"))
    problems = problems_of(exc)
    assert problems["websocket.port"].reason == "must be an integer, not a boolean"
    assert problems["websocket.max_message_size"].reason == (
        "must be a size in bytes, not a boolean"
    )
    with pytest.raises(ConfigError, match="not a boolean"):
        load(overrides={"history.size": True})


def test_wrong_types_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        websocket:
          max_connections: 10.5
          paths: ["/ok", "nope"]
          host: 12
        logging:
          level: LOUD
        broker:
          engine: kafka
        """,
    )
    problems = {p.path: p.reason for p in check_file(path)}
    assert problems == {
        "websocket.max_connections": "must be an integer, not a number",
        "websocket.paths": "each path must start with '/' (got 'nope')",
        "websocket.host": "must be a string, not an integer (quote it in YAML)",
        "logging.level": "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        "broker.engine": "must be one of memory, redis",
    }


def test_null_for_a_required_key_is_refused(tmp_path: Path) -> None:
    [problem] = check_file(write(tmp_path, "websocket:\n  port:\n"))
    assert (problem.path, problem.value, problem.reason) == (
        "websocket.port",
        None,
        "must not be null",
    )


def test_heartbeat_timeout_below_interval_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "websocket:\n  heartbeat_interval: 90s\n")
    with pytest.raises(ConfigError) as exc:
        load(path)
    [problem] = exc.value.problems
    assert problem.path == "websocket.heartbeat_timeout"
    assert problem.value == 60.0
    assert problem.source == "defaults"
    assert problem.reason == (
        f"must be at least websocket.heartbeat_interval (90.0, from file {path})"
    )
    # equal is fine, and raising both together is fine
    assert load(env={"HEARTBEAT_INTERVAL": "60"}).websocket.heartbeat_timeout == 60.0
    cfg = load(path, env={"HEARTBEAT_TIMEOUT": "3m"})
    assert (cfg.websocket.heartbeat_interval, cfg.websocket.heartbeat_timeout) == (90.0, 180.0)


def test_scaling_max_below_min_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        load(overrides={"scaling.min_instances": 3})
    [problem] = exc.value.problems
    assert problem.path == "scaling.max_instances"
    assert problem.reason == "must be at least scaling.min_instances (3, from override)"


# --------------------------------------------------------------------------- layering


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "websocket:\n  port: 9001\n")
    assert load().websocket.port == 8765
    assert load(path).websocket.port == 9001
    assert load(path, env={"WEBSOCKET_PORT": "9002"}).websocket.port == 9002
    cfg = load(path, env={"WEBSOCKET_PORT": "9002"}, overrides={"websocket.port": 9003})
    assert cfg.websocket.port == 9003
    # an override given as a string is parsed like an environment value
    assert load(path, overrides={"websocket.port": "9004"}).websocket.port == 9004
    # None means "flag not given"
    assert load(path, overrides={"websocket.port": None}).websocket.port == 9001


def test_env_none_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSOCKET_PORT", "9100")
    monkeypatch.delenv(CONFIG_PATH_ENV, raising=False)
    assert load_config(use_default_path=False).websocket.port == 9100


def test_problem_sources_name_the_layer(tmp_path: Path) -> None:
    path = write(tmp_path, "history:\n  size: -1\n")
    with pytest.raises(ConfigError) as exc:
        load(path, env={"REDIS_DB": "16"}, overrides={"broadcast.batch_size": 0, "api.prot": 1})
    problems = problems_of(exc)
    assert problems["history.size"].source == f"file {path}"
    assert problems["redis.db"].source == "env REDIS_DB"
    assert problems["broadcast.batch_size"].source == "override"
    assert str(problems["redis.db"]) == (
        "redis.db = 16 (from env REDIS_DB): must be between 0 and 15"
    )
    assert str(problems["broadcast.batch_size"]) == (
        "broadcast.batch_size = 0 (from override): must be between 1 and 100000"
    )
    assert problems["api.prot"].reason == "unknown key 'api.prot' (did you mean 'api.port'?)"


def test_env_port_problem_message() -> None:
    with pytest.raises(ConfigError) as exc:
        load(env={"WEBSOCKET_PORT": "70000"})
    assert str(exc.value) == (
        "websocket.port = 70000 (from env WEBSOCKET_PORT): must be between 0 and 65535"
    )


ENV_SAMPLES: list[tuple[str, str, str, Any]] = [
    ("ENVIRONMENT", "staging", "environment", "staging"),
    ("WEBSOCKET_HOST", "127.0.0.1", "websocket.host", "127.0.0.1"),
    ("WEBSOCKET_PORT", "9000", "websocket.port", 9000),
    ("MAX_CONNECTIONS", "50", "websocket.max_connections", 50),
    ("MAX_SUBSCRIPTIONS_PER_CLIENT", "7", "websocket.max_subscriptions_per_client", 7),
    ("HEARTBEAT_INTERVAL", "15s", "websocket.heartbeat_interval", 15.0),
    ("HEARTBEAT_TIMEOUT", "2m", "websocket.heartbeat_timeout", 120.0),
    ("MAX_MESSAGE_SIZE", "512KiB", "websocket.max_message_size", 524288),
    ("SEND_BUFFER_LIMIT", "2MB", "websocket.send_buffer_limit", 2000000),
    ("SOCKET_SEND_BUFFER", "256KiB", "websocket.socket_send_buffer", 262144),
    ("ALLOW_CLIENT_PUBLISH", "yes", "websocket.allow_client_publish", True),
    ("WEBSOCKET_COMPRESSION", "on", "websocket.compression", True),
    ("COMPRESSION_THRESHOLD", "2KiB", "websocket.compression_threshold", 2048),
    ("COMPRESSION_LEVEL", "9", "websocket.compression_level", 9),
    ("API_HOST", "127.0.0.2", "api.host", "127.0.0.2"),
    ("API_PORT", "8081", "api.port", 8081),
    ("API_TOKEN", "s3cret", "api.token", "s3cret"),
    ("MONITORING_ENABLED", "off", "monitoring.enabled", False),
    ("METRICS_PORT", "9191", "monitoring.metrics_port", 9191),
    ("PROMETHEUS_ENABLED", "0", "monitoring.prometheus_enabled", False),
    ("BROADCAST_BATCH_SIZE", "250", "broadcast.batch_size", 250),
    ("BROADCAST_FLUSH_INTERVAL", "10ms", "broadcast.flush_interval", 0.01),
    ("BROADCAST_WRITE_SHARE", "0.3", "broadcast.write_share", 0.3),
    ("QUEUE_LIMIT", "500", "broadcast.queue_limit", 500),
    ("MAX_QUEUE_SIZE", "600", "broadcast.queue_limit", 600),
    ("HISTORY_SIZE", "0", "history.size", 0),
    ("BROKER", "redis", "broker.engine", "redis"),
    ("REDIS_HOST", "redis.internal", "redis.host", "redis.internal"),
    ("REDIS_PORT", "6380", "redis.port", 6380),
    ("REDIS_DB", "3", "redis.db", 3),
    ("REDIS_PASSWORD", "pw", "redis.password", "pw"),
    ("REDIS_PREFIX", "prod", "redis.channel_prefix", "prod"),
    ("REDIS_TIMEOUT", "500ms", "redis.timeout", 0.5),
    ("REDIS_HISTORY_TTL", "1h", "redis.history_ttl", 3600.0),
    ("REDIS_TLS", "true", "redis.tls", True),
    ("REDIS_TLS_CA", "/etc/ssl/redis-ca.pem", "redis.tls_ca_file", "/etc/ssl/redis-ca.pem"),
    ("REDIS_TLS_VERIFY", "false", "redis.tls_verify", False),
    ("REDIS_SENTINELS", "s1:26379,s2:26379", "redis.sentinels", "s1:26379,s2:26379"),
    ("REDIS_SENTINEL_MASTER", "ws", "redis.sentinel_master", "ws"),
    ("REDIS_SENTINEL_PASSWORD", "spw", "redis.sentinel_password", "spw"),
    ("ENABLE_AUTH", "true", "security.enable_auth", True),
    ("AUTH_TOKEN", "t0k", "security.auth_token", "t0k"),
    ("AUTH_TOKEN_USER", "svc", "security.auth_token_user", "svc"),
    ("JWT_SECRET", "k3y", "security.jwt_secret", "k3y"),
    ("JWT_PUBLIC_KEY_FILE", "/etc/jwt.pem", "security.jwt_public_key_file", "/etc/jwt.pem"),
    ("JWT_AUDIENCE", "ws", "security.jwt_audience", "ws"),
    ("JWT_ISSUER", "https://id.example", "security.jwt_issuer", "https://id.example"),
    ("JWT_LEEWAY", "5s", "security.jwt_leeway", 5.0),
    ("DEFAULT_SUBSCRIBE", "status, market.*", "security.default_subscribe",
     ("status", "market.*")),
    ("DEFAULT_PUBLISH", "chat.*", "security.default_publish", ("chat.*",)),
    ("ALLOWED_ORIGINS", "https://app.example, https://*.example.com",
     "security.allowed_origins", ("https://app.example", "https://*.example.com")),
    ("TRUSTED_PROXIES", "127.0.0.1,10.0.0.0/8", "security.trusted_proxies",
     ("127.0.0.1/32", "10.0.0.0/8")),
    ("RATE_LIMIT_ENABLED", "on", "security.rate_limit_enabled", True),
    ("CONNECT_RATE", "2.5", "security.connect_rate", 2.5),
    ("CONNECT_BURST", "5", "security.connect_burst", 5),
    ("MESSAGE_RATE", "20", "security.message_rate", 20.0),
    ("MESSAGE_BURST", "40", "security.message_burst", 40),
    ("FLOOD_LIMIT", "10", "security.flood_limit", 10),
    ("MAX_CONNECTIONS_PER_USER", "3", "security.max_connections_per_user", 3),
    ("USER_LIMIT_POLICY", "CLOSE_OLDEST", "security.user_limit_policy", "close_oldest"),
    ("HANDSHAKE_TIMEOUT", "2s", "security.handshake_timeout", 2.0),
    ("MAX_HEADER_SIZE", "16KiB", "security.max_header_size", 16384),
    ("SSL_CERTFILE", "/etc/ssl/ws.pem", "security.ssl_certfile", "/etc/ssl/ws.pem"),
    ("SSL_KEYFILE", "/etc/ssl/ws.key", "security.ssl_keyfile", "/etc/ssl/ws.key"),
    ("LOG_LEVEL", "debug", "logging.level", "DEBUG"),
    ("ACCESS_LOG", "yes", "logging.access_log", True),
    ("AUDIT_LOG", "no", "logging.audit_log", False),
    ("LOG_FILE", "/var/log/aiosrv.log", "logging.file", "/var/log/aiosrv.log"),
    ("SOURCES_ENABLED", "false", "sources.enabled", False),
    ("SOURCES_INTERVAL", "250ms", "sources.interval", 0.25),
    ("SOURCES_MAX_SILENCE", "30", "sources.max_silence", 30.0),
    ("SHUTDOWN_GRACE_PERIOD", "0", "shutdown.grace_period", 0.0),
    ("SHUTDOWN_DRAIN_WINDOW", "5s", "shutdown.drain_window", 5.0),
    ("WORKERS", "3", "process.workers", 3),
    ("TRACEMALLOC", "TRUE", "diagnostics.tracemalloc", True),
    ("CONSUL_HOST", "consul.example.com", "service_discovery.consul_host", "consul.example.com"),
]


def test_env_samples_cover_every_env_var() -> None:
    assert {name for name, *_ in ENV_SAMPLES} == set(ENV_VARS)
    assert ENV_VARS["MAX_QUEUE_SIZE"] == "broadcast.queue_limit"
    assert ENV_VARS["QUEUE_LIMIT"] == "broadcast.queue_limit"
    assert ENV_VARS["LOG_LEVEL"] == "logging.level"


@pytest.mark.parametrize(("name", "raw", "path", "expected"), ENV_SAMPLES)
def test_env_var(name: str, raw: str, path: str, expected: Any) -> None:
    env = {name: raw}
    if name == "HEARTBEAT_INTERVAL":
        env["HEARTBEAT_TIMEOUT"] = "60"
    if name == "WORKERS":  # several workers need a shared broker
        env["BROKER"] = "redis"
    cfg = load(env=env)
    assert ENV_VARS[name] == path
    if isinstance(expected, float):
        assert cfg.get(path) == pytest.approx(expected)
    else:
        assert cfg.get(path) == expected
    assert type(cfg.get(path)) is type(expected)


def test_queue_limit_wins_over_its_alias() -> None:
    cfg = load(env={"QUEUE_LIMIT": "500", "MAX_QUEUE_SIZE": "600"})
    assert cfg.broadcast.queue_limit == 500
    with pytest.raises(ConfigError) as exc:
        load(env={"MAX_QUEUE_SIZE": "0"})
    assert exc.value.problems[0].source == "env MAX_QUEUE_SIZE"


def test_empty_env_values() -> None:
    # an empty optional string clears it; an empty required value counts as unset
    cfg = load(env={"API_TOKEN": "", "WEBSOCKET_PORT": "", "LOG_FILE": ""})
    assert cfg.api.token is None
    assert cfg.websocket.port == 8765
    assert cfg.logging.file is None
    cfg = load(env={"LOG_FILE": ""}, path=str(SHIPPED))
    assert cfg.logging.file is None


def test_env_vars_outside_the_table_are_ignored() -> None:
    assert load(env={"PORT": "1", "HOME": "/root", "websocket_port": "1"}) == default_config()


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("50ms", 0.05),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1.5", 1.5),
        ("1h", 3600.0),
        ("  2 s ", 2.0),
        ("0.5S", 0.5),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_duration_parsing(raw: object, seconds: float) -> None:
    cfg = load(overrides={"shutdown.grace_period": raw})
    assert cfg.shutdown.grace_period == pytest.approx(seconds)
    assert isinstance(cfg.shutdown.grace_period, float)


@pytest.mark.parametrize("raw", ["soon", "5 minutes", "1d", "", "nan", "inf", [1]])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ConfigError) as exc:
        load(overrides={"sources.interval": raw})
    [problem] = exc.value.problems
    assert problem.path == "sources.interval"
    assert "duration" in problem.reason or "finite" in problem.reason


def test_duration_ranges() -> None:
    with pytest.raises(ConfigError) as exc:
        load(overrides={"sources.interval": "0s", "shutdown.grace_period": "-1"})
    problems = problems_of(exc)
    assert problems["sources.interval"].reason == "must be greater than 0"
    assert problems["shutdown.grace_period"].reason == "must be at least 0"
    assert load(overrides={"broadcast.flush_interval": 0}).broadcast.flush_interval == 0.0


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("1MiB", 1048576),
        ("512KiB", 524288),
        ("1MB", 1000000),
        ("1mb", 1000000),
        ("1048576", 1048576),
        ("2 KiB", 2048),
        ("1.5MiB", 1572864),
        ("4096B", 4096),
        ("64MiB", 64 * 1024 * 1024),
        (4096, 4096),
    ],
)
def test_size_parsing(raw: object, size: int) -> None:
    cfg = load(overrides={"websocket.max_message_size": raw})
    assert cfg.websocket.max_message_size == size
    assert type(cfg.websocket.max_message_size) is int


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError) as exc:
        load(
            overrides={
                "websocket.max_message_size": "65MiB",
                "websocket.send_buffer_limit": "1000",
            }
        )
    problems = problems_of(exc)
    assert problems["websocket.max_message_size"].reason == "must be between 125 B and 64 MiB"
    assert problems["websocket.send_buffer_limit"].reason == "must be at least 1 KiB"
    for raw in ("big", "1.5", "-1KiB", 1.5):
        with pytest.raises(ConfigError, match=r"websocket\.max_message_size"):
            load(overrides={"websocket.max_message_size": raw})


def test_sizes_in_yaml(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "websocket:\n  max_message_size: 2MiB\n  send_buffer_limit: 4096\n"))
    assert cfg.websocket.max_message_size == 2 * 1024 * 1024
    assert cfg.websocket.send_buffer_limit == 4096


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True), ("FALSE", False), ("1", True), ("0", False), ("yes", True),
        ("No", False), ("on", True), ("OFF", False), (True, True), (False, False),
    ],
)  # fmt: skip
def test_bool_parsing(raw: object, value: bool) -> None:
    assert load(overrides={"diagnostics.tracemalloc": raw}).diagnostics.tracemalloc is value


def test_bad_bool() -> None:
    with pytest.raises(ConfigError) as exc:
        load(env={"TRACEMALLOC": "maybe"})
    [problem] = exc.value.problems
    assert problem.reason == "must be a boolean (true/false, yes/no, on/off, 1/0)"


def test_int_strings() -> None:
    assert load(overrides={"history.size": " 12 "}).history.size == 12
    with pytest.raises(ConfigError, match="must be an integer"):
        load(overrides={"history.size": "12.0"})


def test_yaml_bool_words_and_case_normalisation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        websocket:
          allow_client_publish: yes
        logging:
          level: warning
        broker:
          engine: Redis
        service_discovery:
          backend: Kubernetes
        """,
    )
    cfg = load(path)
    assert cfg.websocket.allow_client_publish is True
    assert cfg.logging.level == "WARNING"
    assert cfg.broker.engine == "redis"
    assert cfg.service_discovery.backend == "kubernetes"


def test_paths(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "websocket:\n  paths: [/a, /b/c]\n"))
    assert cfg.websocket.paths == ("/a", "/b/c")
    assert load(overrides={"websocket.paths": "/x, /y"}).websocket.paths == ("/x", "/y")
    for bad in ([], "", ["/a", "/a"], "x", [1]):
        with pytest.raises(ConfigError, match=r"websocket\.paths"):
            load(overrides={"websocket.paths": bad})


def test_optional_strings(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "api:\n  token: abc\nlogging:\n  file: ~\n"))
    assert cfg.api.token == "abc"
    assert cfg.logging.file is None
    [problem] = check_file(write(tmp_path, "logging:\n  file: 5\n", "n.yaml"))
    assert problem.reason == "must be a string or null, not an integer (quote it in YAML)"


# --------------------------------------------------------------------------- secrets


def test_secrets_redacted_in_to_dict() -> None:
    cfg = load(env={"API_TOKEN": "tok-123", "REDIS_PASSWORD": "hunter2"})
    assert cfg.api.token == "tok-123"
    assert cfg.redis.password == "hunter2"
    redacted = cfg.to_dict()
    assert redacted["api"]["token"] == "***"
    assert redacted["redis"]["password"] == "***"
    assert "tok-123" not in repr(redacted) and "hunter2" not in repr(redacted)
    plain = cfg.to_dict(redact=False)
    assert plain["api"]["token"] == "tok-123"
    assert plain["redis"]["password"] == "hunter2"
    # unset secrets stay None; tuples become lists; source_path is not a key
    assert default_config().to_dict()["api"]["token"] is None
    assert plain["websocket"]["paths"] == ["/ws/realtime", "/ws", "/"]
    assert "source_path" not in plain


def test_secrets_never_appear_in_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        api:
          token: 12345678
        redis:
          password: [hunter2]
          pasword: hunter3
        """,
    )
    problems = check_file(path)
    text = "\n".join(str(p) for p in problems) + repr(problems)
    for secret in ("12345678", "hunter2", "hunter3"):
        assert secret not in text
    by_path = {p.path: p for p in problems}
    assert str(by_path["api.token"]) == (
        f"api.token = *** (from file {path}): "
        "must be a string or null, not an integer (quote it in YAML)"
    )
    assert by_path["redis.password"].value == "***"
    assert by_path["redis.pasword"].value == "***"
    assert "did you mean 'redis.password'" in by_path["redis.pasword"].reason


def test_change_redacts_secrets() -> None:
    old = default_config()
    new = old.replace(**{"api.token": "abc"})
    [change] = diff_config(old, new)
    assert change == Change("api.token", None, "***", True)
    [change] = diff_config(new, new.replace(**{"api.token": "xyz"}))
    assert (change.old, change.new) == ("***", "***")


# --------------------------------------------------------------------------- replace / reload


def test_replace_validates() -> None:
    cfg = default_config()
    changed = cfg.replace(**{"websocket.port": 9999, "logging.level": "debug"})
    assert changed.websocket.port == 9999
    assert changed.logging.level == "DEBUG"
    assert cfg.websocket.port == 8765  # the original is untouched
    with pytest.raises(ConfigError) as exc:
        cfg.replace(**{"websocket.port": 70000, "websocket.prot": 1})
    problems = problems_of(exc)
    assert problems["websocket.port"].reason == "must be between 0 and 65535"
    assert problems["websocket.port"].source == "override"
    assert "did you mean 'websocket.port'" in problems["websocket.prot"].reason
    with pytest.raises(ConfigError, match=r"heartbeat_timeout = 60\.0 \(from current"):
        cfg.replace(**{"websocket.heartbeat_interval": 61})
    # replace keeps the source path and may clear an optional key with None
    loaded = load(str(SHIPPED))
    assert loaded.replace(**{"logging.file": None}).logging.file is None
    assert loaded.replace(**{"history.size": 1}).source_path == str(SHIPPED)


def test_diff_config_lists_changes_in_order() -> None:
    old = default_config()
    new = old.replace(**{"websocket.port": 9000, "history.size": 5, "websocket.paths": "/a"})
    changes = diff_config(old, new)
    assert changes == [
        Change("websocket.port", 8765, 9000, False),
        Change("websocket.paths", ["/ws/realtime", "/ws", "/"], ["/a"], False),
        Change("history.size", 50, 5, True),
    ]
    assert str(changes[0]) == "websocket.port: 8765 -> 9000 (restart needed)"
    assert diff_config(old, old) == []


def test_apply_live_takes_live_changes_and_keeps_restart_ones() -> None:
    old = default_config()
    new = old.replace(
        **{
            "websocket.port": 9000,
            "redis.host": "elsewhere",
            "websocket.max_connections": 20,
            "logging.level": "debug",
            "api.token": "t",
        }
    )
    new = dataclasses.replace(new, source_path="new.yaml")
    effective, restart = apply_live(old, new)
    assert effective.websocket.max_connections == 20
    assert effective.logging.level == "DEBUG"
    assert effective.api.token == "t"
    assert effective.websocket.port == 8765
    assert effective.redis.host == "localhost"
    assert effective.source_path == "new.yaml"
    assert restart == [
        Change("websocket.port", 8765, 9000, False),
        Change("redis.host", "localhost", "elsewhere", False),
    ]
    # reloading the same thing again changes nothing
    again, restart_again = apply_live(effective, new)
    assert again == effective
    assert [c.path for c in restart_again] == ["websocket.port", "redis.host"]


def test_live_flags_match_the_schema() -> None:
    live = {spec.path for spec in FIELDS if spec.live}
    assert live == {
        "environment",
        "websocket.max_connections",
        "websocket.max_subscriptions_per_client",
        "websocket.heartbeat_interval",
        "websocket.heartbeat_timeout",
        "websocket.max_message_size",
        "websocket.send_buffer_limit",
        "websocket.socket_send_buffer",
        "websocket.allow_client_publish",
        "websocket.compression",
        "websocket.compression_threshold",
        "websocket.compression_level",
        "api.token",
        "broadcast.batch_size",
        "broadcast.flush_interval",
        "broadcast.write_share",
        "broadcast.queue_limit",
        "history.size",
        *(f"security.{k}" for k in (
            "enable_auth", "auth_token", "auth_token_user", "jwt_secret",
            "jwt_public_key_file", "jwt_audience", "jwt_issuer", "jwt_leeway",
            "default_subscribe", "default_publish", "allowed_origins", "trusted_proxies",
            "rate_limit_enabled", "connect_rate", "connect_burst", "message_rate",
            "message_burst", "flood_limit", "max_connections_per_user", "user_limit_policy",
            "handshake_timeout", "max_header_size",
        )),
        "logging.level",
        "logging.access_log",
        "logging.audit_log",
        "sources.enabled",
        "sources.interval",
        "sources.max_silence",
        "shutdown.grace_period",
        "shutdown.drain_window",
    }
    assert {spec.path for spec in FIELDS if spec.secret} == {
        "api.token",
        "redis.password",
        "redis.sentinel_password",
        "security.auth_token",
        "security.jwt_secret",
    }


# --------------------------------------------------------------------------- misc


def test_env_table_markdown() -> None:
    table = env_table_markdown()
    lines = table.splitlines()
    assert lines[0] == "| Env var | Key | Default | Live/restart | Description |"
    assert any(
        line.startswith("| `WEBSOCKET_PORT` | `websocket.port` | `8765` | restart |")
        for line in lines
    )
    assert any(line.startswith("| `MAX_QUEUE_SIZE` | `broadcast.queue_limit` |") for line in lines)
    assert any(
        line.startswith("| `LOG_LEVEL` | `logging.level` | `INFO` | live |") for line in lines
    )
    for name in ENV_VARS:
        assert f"| `{name}` |" in table
    # every row has the same number of cells (pipes in text are escaped)
    assert {line.replace("\\|", "").count("|") for line in lines} == {6}


def test_env_table_lists_every_variable_once() -> None:
    rows = [line.split(" | ") for line in env_table_markdown().splitlines()[2:]]
    names = [row[0].removeprefix("| ").strip("`") for row in rows]
    keys = [row[1].strip("`") for row in rows]
    assert names == [CONFIG_PATH_ENV, *(name for spec in FIELDS for name in spec.env)]
    # each key with a variable has one row per variable, the primary name first;
    # a key without one has no row
    for spec in FIELDS:
        assert [names[i] for i, key in enumerate(keys) if key == spec.path] == list(spec.env)


def test_docs_name_every_key_without_a_variable() -> None:
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("Keys without a variable")
    paragraph = text[start : text.index("\n\n", start)]
    for spec in FIELDS:
        named = f"`{spec.path}`" in paragraph or f"`{spec.section}.*`" in paragraph
        assert named == (not spec.env), spec.path


def test_docs_carry_the_current_env_table() -> None:
    assert env_table_markdown() in DOCS.read_text(encoding="utf-8")


def test_config_error_pickles_and_lists_problems() -> None:
    error = ConfigError([Problem("a.b", 1, "bad", "override"), Problem("", None, "x", "file f")])
    assert str(error) == "a.b = 1 (from override): bad\nfile f: x"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert copy.problems == error.problems


def test_config_error_single() -> None:
    error = ConfigError.single("broker.engine", "redis", "the Redis engine is not available")
    assert str(error) == (
        "broker.engine = redis (from configuration): the Redis engine is not available"
    )
    assert ConfigError.single("redis.password", "pw", "refused", "redis").problems == [
        Problem("redis.password", "***", "refused", "redis")
    ]


def test_api_config_defaults() -> None:
    assert ApiConfig() == default_config().api


def test_settings_not_acted_on_are_named_at_start_up() -> None:
    from aiosrv.config import inert_settings

    assert inert_settings(default_config()) == []
    consul = default_config().replace(
        **{"service_discovery.backend": "consul", "service_discovery.consul_host": "c.example"}
    )
    (note,) = inert_settings(consul)
    assert "c.example:8500" in note and "does not register" in note
    k8s = default_config().replace(**{"service_discovery.backend": "kubernetes"})
    (note,) = inert_settings(k8s)
    assert "kubernetes" in note


# --------------------------------------------------------------------------- process.workers


def test_workers_default_to_one_and_come_from_env_file_and_flag(tmp_path: Path) -> None:
    from aiosrv.config import several_workers_problem

    assert default_config().process.workers == 1
    assert (
        load_config(
            None, {"WORKERS": "3", "BROKER": "redis"}, use_default_path=False
        ).process.workers
        == 3
    )
    path = write(tmp_path, "process:\n  workers: 2\nbroker:\n  engine: redis\n")
    assert load_config(path, {}).process.workers == 2
    assert load_config(path, {}, {"process.workers": "4"}).process.workers == 4
    assert several_workers_problem(1, "memory") is None
    assert several_workers_problem(2, "redis") is None
    reason = several_workers_problem(2, "memory")
    assert reason is not None and "use broker.engine=redis" in reason


@pytest.mark.parametrize("value", ["0", "257", "two"])
def test_workers_out_of_range_are_refused(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"WORKERS": value, "BROKER": "redis"}, use_default_path=False)
    assert [p.path for p in info.value.problems] == ["process.workers"]


def test_several_workers_on_the_embedded_broker_are_one_problem_naming_both_keys(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"WORKERS": "2"}, use_default_path=False)
    (problem,) = info.value.problems
    assert problem.path == "process.workers"
    assert problem.source == "env WORKERS"
    assert "broker.engine=memory" in problem.reason and "broker.engine=redis" in problem.reason
    path = write(tmp_path, "process:\n  workers: 2\n")
    assert [p.path for p in check_file(path)] == ["process.workers"]
    # a bad engine is reported once, as itself
    with pytest.raises(ConfigError) as info:
        load_config(None, {"WORKERS": "2", "BROKER": "kafka"}, use_default_path=False)
    assert [p.path for p in info.value.problems] == ["broker.engine"]


def test_listeners_group_parts_by_port() -> None:
    from aiosrv.config import listeners

    cfg = default_config()
    assert listeners(cfg) == [
        ("0.0.0.0", 8765, ("ws",)),
        ("0.0.0.0", 8080, ("api",)),
        ("0.0.0.0", 9090, ("metrics",)),
    ]
    one = cfg.replace(**{"api.port": 8765, "monitoring.metrics_port": 8765})
    assert listeners(one) == [("0.0.0.0", 8765, ("ws", "api", "metrics"))]
    zero = cfg.replace(**{"websocket.port": 0, "api.port": 0, "monitoring.enabled": False})
    assert listeners(zero) == [("0.0.0.0", 0, ("ws",)), ("0.0.0.0", 0, ("api",))]


def test_worker_identity_from_the_environment() -> None:
    from aiosrv import identity

    assert identity.from_env({}) == identity.ALONE
    who = identity.from_env({identity.WORKER_ENV: "2/4:1234:7"})
    assert (who.index, who.count, who.supervisor_pid, who.ready_fd) == (2, 4, 1234, 7)
    assert who.supervised and who.label == "worker 2/4"
    assert identity.parse(who.env_value()) == who
    assert identity.ALONE.snapshot()["index"] == 0
    assert identity.ALONE.snapshot()["supervisor_pid"] is None
    for bad in ("2/4", "5/4:1:2", "0/1:1:2", "x"):
        with pytest.raises(ValueError, match="AIOSRV_WORKER"):
            identity.parse(bad)


def test_drain_window_longer_than_the_grace_period_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "shutdown:\n  grace_period: 5s\n  drain_window: 8s\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    problem = problems_of(info)["shutdown.grace_period"]
    assert "must be at least shutdown.drain_window (8" in problem.reason
    assert load(path, env={"SHUTDOWN_GRACE_PERIOD": "10s"}).shutdown.drain_window == 8.0
