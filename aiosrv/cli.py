"""Command line: ``aiosrv serve``, ``aiosrv check-config FILE``, ``aiosrv doctor``,
``aiosrv health``, ``aiosrv version``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .config import Config

EPILOG = """\
configuration is read from defaults, then the YAML file (--config, else
$AIOSRV_CONFIG, else config/deployment.yaml when it exists), then environment
variables (WEBSOCKET_HOST, WEBSOCKET_PORT, MAX_CONNECTIONS, LOG_LEVEL, ... see
docs/configuration.md), then these flags.

signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the config file;
SIGUSR1 logs a memory report and reopens the log file. With --workers N > 1 a
supervisor process runs N workers sharing the ports (SO_REUSEPORT; needs
--broker redis) and passes these signals to every worker.
AIOSRV_NO_EXTENSIONS=1 runs the pure-Python core instead of the compiled one.
"""

#: serve flag -> config key
FLAG_KEYS = {
    "host": "websocket.host",
    "port": "websocket.port",
    "api_host": "api.host",
    "api_port": "api.port",
    "metrics_port": "monitoring.metrics_port",
    "max_connections": "websocket.max_connections",
    "max_subscriptions": "websocket.max_subscriptions_per_client",
    "log_level": "logging.level",
    "log_file": "logging.file",
    "broker": "broker.engine",
    "redis_host": "redis.host",
    "redis_port": "redis.port",
    "workers": "process.workers",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aiosrv",
        description="Real-time WebSocket data push server (aiohttp + uvloop, Cython fan-out core).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"aiosrv {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "serve",
        help="run the server (WebSocket 8765, HTTP API 8080, metrics 9090)",
        description="Run the server: the WebSocket endpoint, the HTTP API and /metrics, "
        "on the embedded broker unless --broker redis. Logs one line when ready.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("-c", "--config", metavar="FILE", help="YAML config file")
    s.add_argument("--host", help="WebSocket bind address (websocket.host)")
    s.add_argument("--port", help="WebSocket port (websocket.port)")
    s.add_argument("--api-host", help="HTTP API bind address (api.host)")
    s.add_argument("--api-port", help="HTTP API port; equal to --port serves both on one port")
    s.add_argument("--metrics-port", help="Prometheus /metrics port (monitoring.metrics_port)")
    s.add_argument("--max-connections", help="connection limit (websocket.max_connections)")
    s.add_argument("--max-subscriptions", help="per-client subscription limit")
    s.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    s.add_argument("--log-file", help="also log to this file, e.g. logs/websocket-server.log")
    s.add_argument("--broker", help="memory (embedded, default) or redis")
    s.add_argument("--redis-host", help="Redis host (redis.host)")
    s.add_argument("--redis-port", help="Redis port (redis.port)")
    s.add_argument(
        "--workers",
        metavar="N",
        help="worker processes sharing the ports under one supervisor (process.workers; "
        "default 1: one process, no supervisor); more than 1 needs --broker redis",
    )
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key, e.g. --set broadcast.batch_size=200 (repeatable)",
    )

    c = sub.add_parser(
        "check-config",
        help="validate a config file and print every problem with its key path",
        description="Validate FILE (alone, without environment variables) and print every "
        "problem with its key path. Exit status 0 when valid, 1 when not.",
    )
    c.add_argument("file", metavar="FILE")
    c.add_argument(
        "--with-env", action="store_true", help="also apply the current environment variables"
    )

    d = sub.add_parser(
        "doctor",
        help="check the host's limits (open files, somaxconn, ...) against max_connections",
        description="Check this host's limits (RLIMIT_NOFILE, somaxconn, tcp_max_syn_backlog, "
        "ip_local_port_range, fs.file-max) against websocket.max_connections, configured as "
        "for serve. One line per check, OK or WARN with what to do. Exit status 0 when all "
        "are OK, 1 when one is not.",
    )
    d.add_argument("-c", "--config", metavar="FILE", help="YAML config file")
    d.add_argument("--max-connections", help="connection limit (websocket.max_connections)")
    d.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="set any config key"
    )

    h = sub.add_parser(
        "health",
        help="ask the local server's /health (the container healthcheck)",
        description="GET /health of the server configured as for serve (the file, the "
        "environment, these flags: its api.port at its api.host, loopback for 0.0.0.0 or ::; "
        "https when security.ssl_certfile is set), or of --url. Prints the status and, when "
        "unhealthy, why. Exit status 0 when healthy, 1 when not or when nothing answers, 2 on "
        "a configuration problem.",
    )
    h.add_argument("-c", "--config", metavar="FILE", help="YAML config file")
    h.add_argument("--url", help="the API's base URL or its /health, instead of the config's")
    h.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    h.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="set any config key"
    )

    sub.add_parser("version", help="print the version and which core is installed")
    return p


def health_url(config: Config) -> str:
    """Where the server configured by ``config`` answers /health on this host."""
    host = config.api.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.security.ssl_certfile else "http"
    return f"{scheme}://{host}:{config.api.port}/health"


def cmd_health(args: argparse.Namespace) -> int:
    import json
    import ssl
    import urllib.error
    import urllib.request

    url = args.url
    if url is None:
        config = load_or_report(args.config, overrides_from(args))
        if config is None:
            return 2
        if config.api.port == 0:
            print("aiosrv health: api.port is 0 (chosen at start): give --url", file=sys.stderr)
            return 2
        url = health_url(config)
    elif not url.rstrip("/").endswith("/health"):
        url = url.rstrip("/") + "/health"
    # our own server on this host: no proxies from the environment, and its
    # certificate is not checked (it may be for the public name, or self-signed)
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls)
    )
    try:
        with opener.open(url, timeout=args.timeout) as resp:
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"unhealthy: no answer from {url}: {reason}")
        return 1
    try:
        body = json.loads(raw)
        status = body.get("status", "?")
    except (ValueError, AttributeError):
        print(f"unhealthy: {url} answered {code} with something that is not /health's JSON")
        return 1
    if code == 200 and status == "healthy":
        print(f"healthy: {url}")
        return 0
    why = body.get("reason") or "no reason given"
    print(f"{status}: {url} answered {code}: {why}")
    return 1


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # a usage error, like argparse's own and a bad value: status 2
            print(f"aiosrv: --set needs KEY=VALUE, got {item!r}", file=sys.stderr)
            raise SystemExit(2)
        out[key.strip()] = value
    return out


def load_or_report(path: str | None, overrides: dict[str, Any]) -> Config | None:
    """The configuration as serve loads it (file, environment, ``overrides``),
    or None after printing every problem to standard error."""
    from .config import ConfigError, load_config

    try:
        return load_config(path, None, overrides)
    except ConfigError as exc:
        print("aiosrv: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``argv``: the command line after ``aiosrv`` (what each worker runs)."""
    import os

    from .identity import from_env

    overrides = overrides_from(args)
    try:
        identity = from_env(os.environ)
    except ValueError as exc:
        print(f"aiosrv: {exc} (it is set by the supervisor for its workers)", file=sys.stderr)
        return 2
    config = load_or_report(args.config, overrides)
    if config is None:
        return 2
    if config.process.workers > 1 and not identity.supervised:
        from .workers import supervise

        return supervise(config, argv, config_path=args.config, overrides=overrides)
    from .runner import serve

    return serve(config, env=dict(os.environ), overrides=overrides, identity=identity)


def cmd_check_config(args: argparse.Namespace) -> int:
    import os

    from .config import check_file

    problems = check_file(args.file, dict(os.environ) if args.with_env else None)
    if problems:
        print(f"{args.file}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"{args.file}: OK")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import evaluate, read_host

    config = load_or_report(args.config, overrides_from(args))
    if config is None:
        return 2
    max_connections = config.websocket.max_connections
    checks = evaluate(read_host(), max_connections)
    print(f"aiosrv doctor: max_connections {max_connections}")
    for check in checks:
        print(check.line())
    return 0 if all(check.ok for check in checks) else 1


def cmd_version() -> int:
    from .fanout import IMPLEMENTATION

    print(f"aiosrv {__version__} (core: {IMPLEMENTATION}, Python {sys.version.split()[0]})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    if args.command == "serve":
        return cmd_serve(args, given)
    if args.command == "check-config":
        return cmd_check_config(args)
    if args.command == "doctor":
        return cmd_doctor(args)
    if args.command == "health":
        return cmd_health(args)
    if args.command == "version":
        return cmd_version()
    parser.print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
