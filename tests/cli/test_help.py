"""``aiosrv --help``, ``serve --help``, ``check-config --help``, ``version``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from aiosrv import __version__
from aiosrv.cli import FLAG_KEYS
from aiosrv.fanout import IMPLEMENTATION

from .conftest import clean_env, run_aiosrv

SIGNAL_LINES = (
    "SIGTERM/SIGINT drain and exit 0",
    "SIGHUP reloads the config file",
    "SIGUSR1 logs a memory report and reopens the log file",
)


def squash(text: str) -> str:
    """Help text with line wrapping undone."""
    return re.sub(r"\s+", " ", text)


def assert_precedence(text: str) -> None:
    flat = squash(text)
    order = [
        flat.index("defaults"),
        flat.index("then the YAML file"),
        flat.index("then environment variables"),
        flat.index("then these flags"),
    ]
    assert order == sorted(order), flat
    assert "$AIOSRV_CONFIG" in flat
    assert "config/deployment.yaml" in flat
    for name in ("WEBSOCKET_PORT", "MAX_CONNECTIONS", "LOG_LEVEL"):
        assert name in flat


def test_top_level_help_lists_commands_precedence_and_signals(tmp_path: Path) -> None:
    result = run_aiosrv("--help", cwd=tmp_path)
    assert result.returncode == 0
    out = result.stdout
    assert out.startswith("usage: aiosrv ")
    for command in ("serve", "check-config", "version"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), command
    assert_precedence(out)
    for line in SIGNAL_LINES:
        assert line in squash(out)
    assert "AIOSRV_NO_EXTENSIONS=1" in out


def test_the_console_script_is_the_same_command(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "aiosrv"
    assert script.exists(), f"the aiosrv console script is not installed next to {sys.executable}"
    import subprocess

    result = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == run_aiosrv("--help", cwd=tmp_path).stdout


def test_serve_help_documents_every_flag(tmp_path: Path) -> None:
    result = run_aiosrv("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0
    out = result.stdout
    assert out.startswith("usage: aiosrv serve ")
    for flag in FLAG_KEYS:
        assert "--" + flag.replace("_", "-") in out, flag
    for flag in ("--config", "--set", "KEY=VALUE"):
        assert flag in out
    flat = squash(out)
    assert "equal to --port serves both on one port" in flat
    assert "logs/websocket-server.log" in flat
    assert "Logs one line when ready" in flat
    assert_precedence(out)
    for line in SIGNAL_LINES:
        assert line in flat


def test_check_config_help_documents_file_and_exit_status(tmp_path: Path) -> None:
    result = run_aiosrv("check-config", "--help", cwd=tmp_path)
    assert result.returncode == 0
    flat = squash(result.stdout)
    assert result.stdout.startswith("usage: aiosrv check-config ")
    assert "FILE" in flat
    assert "--with-env" in flat
    assert "key path" in flat
    assert "Exit status 0 when valid, 1 when not" in flat


def test_version_command_names_the_core(tmp_path: Path) -> None:
    result = run_aiosrv("version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith(f"aiosrv {__version__} (core: {IMPLEMENTATION}, Python ")
    pure = run_aiosrv("version", cwd=tmp_path, env=clean_env(AIOSRV_NO_EXTENSIONS="1"))
    assert f"(core: pure-python, Python {sys.version.split()[0]})" in pure.stdout


def test_version_flag(tmp_path: Path) -> None:
    result = run_aiosrv("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"aiosrv {__version__}"


def test_no_command_prints_help(tmp_path: Path) -> None:
    result = run_aiosrv(cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == run_aiosrv("--help", cwd=tmp_path).stdout


def test_an_unknown_command_or_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run_aiosrv("start", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'start'" in result.stderr
    flag = run_aiosrv("serve", "--prot", "1", cwd=tmp_path)
    assert flag.returncode == 2
    assert "unrecognized arguments: --prot" in flag.stderr
