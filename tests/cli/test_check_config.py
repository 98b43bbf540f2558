"""``aiosrv check-config FILE``: OK and exit 0, or every problem with its key path and exit 1."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .conftest import REPO, StartServer, clean_env, run_aiosrv

#: The operations guide's example ``config/deployment.yaml``, copied verbatim
#: from /work/shared/seeds/operations-guide.md ("主配置文件").
GUIDE_DEPLOYMENT_YAML = (REPO / "tests" / "data" / "ops-guide-deployment.yaml").read_text()


def check(
    tmp_path: Path, text: str | None, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Write ``app.yaml`` (unless ``text`` is None) and run ``check-config app.yaml``."""
    if text is not None:
        (tmp_path / "app.yaml").write_text(text, encoding="utf-8")
    return run_aiosrv("check-config", "app.yaml", *extra, cwd=tmp_path, env=env)


def test_a_valid_file_prints_ok_and_exits_0(tmp_path: Path) -> None:
    result = check(tmp_path, "websocket:\n  port: 9000\n  max_connections: 5\n")
    assert result.returncode == 0
    assert result.stdout == "app.yaml: OK\n"
    assert result.stderr == ""


def test_an_empty_file_is_valid(tmp_path: Path) -> None:
    result = check(tmp_path, "# nothing set\n")
    assert result.returncode == 0
    assert result.stdout == "app.yaml: OK\n"


def test_every_problem_is_printed_with_its_key_path(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        "websocket:\n"
        "  port: 70000\n"
        "  prot: 8765\n"
        "  heartbeat_interval: 30\n"
        "  heartbeat_timeout: 10\n"
        "api:\n"
        "  token: 12345\n"
        "logging:\n"
        "  level: LOUD\n"
        "brokr:\n"
        "  engine: memory\n",
    )
    assert result.returncode == 1
    out = result.stdout
    lines = out.splitlines()
    assert lines[0] == "app.yaml: 6 problem(s)"
    assert len(lines) == 7
    assert "  websocket.port = 70000 (from file app.yaml): must be between 0 and 65535" in lines
    assert (
        "  websocket.prot = 8765 (from file app.yaml): unknown key 'websocket.prot' "
        "(did you mean 'websocket.port'?)" in lines
    )
    assert any(
        line.startswith(
            "  websocket.heartbeat_timeout = 10.0 (from file app.yaml): must be at "
            "least websocket.heartbeat_interval"
        )
        for line in lines
    ), out
    assert any(
        line.startswith("  logging.level = LOUD (from file app.yaml): must be one of")
        for line in lines
    ), out
    assert any(
        line.startswith("  brokr (from file app.yaml): unknown section 'brokr'")
        and "did you mean 'broker'" in line
        for line in lines
    ), out
    # a secret's value is never printed
    token_line = next(line for line in lines if "api.token" in line)
    assert "12345" not in out
    assert "api.token = ***" in token_line


def test_a_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    result = check(tmp_path, "websocket:\n  port: 8765\n  host: [unclosed\napi:\n  port: 1\n")
    assert result.returncode == 1
    assert result.stdout.startswith("app.yaml: 1 problem(s)\n")
    m = re.search(r"file app\.yaml: invalid YAML at line (\d+), column \d+", result.stdout)
    assert m, result.stdout
    assert int(m[1]) in (3, 4)


def test_a_duplicate_key_is_a_problem_with_its_line(tmp_path: Path) -> None:
    result = check(tmp_path, "websocket:\n  port: 1\n  port: 2\n")
    assert result.returncode == 1
    assert "duplicate key 'port' at line 3" in result.stdout


def test_a_missing_file_is_a_problem(tmp_path: Path) -> None:
    result = check(tmp_path, None)
    assert result.returncode == 1
    assert "file app.yaml: file not found" in result.stdout


def test_the_repository_deployment_yaml_is_valid(tmp_path: Path) -> None:
    result = run_aiosrv("check-config", str(REPO / "config" / "deployment.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.rstrip().endswith("deployment.yaml: OK")


def test_the_operations_guide_example_is_valid(tmp_path: Path) -> None:
    result = check(tmp_path, GUIDE_DEPLOYMENT_YAML)
    assert result.returncode == 0, result.stdout
    assert result.stdout == "app.yaml: OK\n"


def test_the_operations_guide_example_runs(serve: StartServer, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "deployment.yaml").write_text(GUIDE_DEPLOYMENT_YAML)
    srv = serve()  # the flags move it to 127.0.0.1 and free ports
    assert srv.ready is not None and srv.ready["max"] == "2000"
    cfg = srv.config()
    assert cfg["environment"] == "production"
    assert cfg["websocket"]["max_subscriptions_per_client"] == 200
    assert cfg["service_discovery"]["backend"] == "consul"
    assert cfg["scaling"]["max_instances"] == 10
    assert cfg["heartbeat"] == {"interval": 30.0, "timeout": 60.0}


def test_the_environment_is_ignored_unless_with_env(tmp_path: Path) -> None:
    env = clean_env(WEBSOCKET_PORT="eighty", AIOSRV_CONFIG="elsewhere.yaml")
    plain = check(tmp_path, "websocket:\n  port: 9000\n", env=env)
    assert plain.returncode == 0
    assert plain.stdout == "app.yaml: OK\n"
    with_env = check(tmp_path, None, "--with-env", env=env)
    assert with_env.returncode == 1
    assert (
        "websocket.port = eighty (from env WEBSOCKET_PORT): must be an integer" in with_env.stdout
    )


def test_check_config_does_not_read_the_default_file(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "deployment.yaml", tmp_path / "config" / "deployment.yaml")
    (tmp_path / "config" / "deployment.yaml").write_text("websocket:\n  port: -1\n")
    result = check(tmp_path, "websocket:\n  port: 9000\n")
    assert result.returncode == 0
    assert result.stdout == "app.yaml: OK\n"
