"""``aiosrv doctor`` and the open-files limit ``aiosrv serve`` takes at start.

The doctor runs against this machine (reading only); its judgement is tested
on crafted readings through ``aiosrv.doctor.evaluate``.
"""

from __future__ import annotations

import re
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosrv.doctor import HEADROOM, evaluate, nofile_warning

from .conftest import StartServer, clean_env, run_aiosrv

CHECKS = [
    "nofile hard (RLIMIT_NOFILE)",
    "nofile soft (RLIMIT_NOFILE)",
    "somaxconn",
    "tcp_max_syn_backlog",
    "ip_local_port_range",
    "fs.file-max",
]

#: a host tuned with sysctl/profiles/10k.conf and 10k.limits
TUNED: dict[str, Any] = {
    "nofile_soft": 65536,
    "nofile_hard": 65536,
    "somaxconn": 65535,
    "tcp_max_syn_backlog": 65535,
    "ip_local_port_range": (10240, 65535),
    "file_max": 200000,
}


def by_name(readings: dict[str, Any], max_connections: int = 10000) -> dict[str, Any]:
    return {check.name: check for check in evaluate(readings, max_connections)}


def test_doctor_on_this_machine_prints_every_check(tmp_path: Path) -> None:
    result = run_aiosrv("doctor", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "aiosrv doctor: max_connections 10000"
    assert len(lines) == 1 + len(CHECKS)
    for line, name in zip(lines[1:], CHECKS, strict=True):
        assert re.match(rf"(OK  |WARN) {re.escape(name)}: \S", line), line
    assert result.returncode == (1 if any(line.startswith("WARN") for line in lines) else 0)


def test_doctor_takes_max_connections_from_config_env_and_flags(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("websocket:\n  max_connections: 300\n")
    out = run_aiosrv("doctor", "--config", "c.yaml", cwd=tmp_path).stdout
    assert out.startswith("aiosrv doctor: max_connections 300\n")
    assert "(wanted >= 400: max_connections 300 + 100)" in out
    out = run_aiosrv("doctor", cwd=tmp_path, env=clean_env(MAX_CONNECTIONS="200")).stdout
    assert out.startswith("aiosrv doctor: max_connections 200\n")
    out = run_aiosrv("doctor", "-c", "c.yaml", "--max-connections", "50", cwd=tmp_path).stdout
    assert out.startswith("aiosrv doctor: max_connections 50\n")
    bad = run_aiosrv("doctor", "--max-connections", "many", cwd=tmp_path)
    assert bad.returncode == 2
    assert "websocket.max_connections" in bad.stderr


def test_a_tuned_host_is_ok() -> None:
    checks = evaluate(TUNED, 10000)
    assert [c.name for c in checks] == CHECKS
    assert all(c.ok for c in checks), [c.line() for c in checks]
    assert checks[0].line() == (
        "OK   nofile hard (RLIMIT_NOFILE): 65536 (wanted >= 10100: max_connections 10000 + 100)"
    )


def test_a_stock_host_warns_with_what_to_do() -> None:
    stock = {
        "nofile_soft": 1024,
        "nofile_hard": 4096,
        "somaxconn": 128,
        "tcp_max_syn_backlog": 512,
        "ip_local_port_range": (32768, 60999),
        "file_max": 9000,
    }
    checks = by_name(stock)
    assert not checks["nofile hard (RLIMIT_NOFILE)"].ok
    assert not checks["nofile soft (RLIMIT_NOFILE)"].ok
    assert not checks["somaxconn"].ok
    assert not checks["tcp_max_syn_backlog"].ok
    assert checks["ip_local_port_range"].ok  # 28232 ports
    assert not checks["fs.file-max"].ok
    line = checks["somaxconn"].line()
    assert line.startswith("WARN somaxconn: 128 (wanted >= 4096")
    assert line.endswith("run sudo sysctl/apply.sh --profile 10k")
    assert "LimitNOFILE=65536" in checks["nofile hard (RLIMIT_NOFILE)"].line()
    # 100k connections: the 100k profile
    assert checks["somaxconn"].advice.endswith("10k")
    big = by_name(stock, 100_000)
    assert big["somaxconn"].advice.endswith("--profile 100k")
    assert big["ip_local_port_range"].ok  # the stock range, whatever the count
    narrow = by_name({**stock, "ip_local_port_range": (40000, 44999)})
    assert not narrow["ip_local_port_range"].ok
    assert narrow["ip_local_port_range"].current == "40000 44999 (5000 ports)"


def test_a_low_soft_limit_is_ok_when_the_hard_one_suffices() -> None:
    checks = by_name({**TUNED, "nofile_soft": 1024})
    soft = checks["nofile soft (RLIMIT_NOFILE)"]
    assert soft.ok
    assert "serve raises it to the hard limit" in soft.current


def test_unlimited_and_unreadable_readings() -> None:
    checks = by_name({**TUNED, "nofile_soft": -1, "nofile_hard": -1, "somaxconn": None})
    assert checks["nofile hard (RLIMIT_NOFILE)"].ok
    assert not checks["somaxconn"].ok
    assert checks["somaxconn"].current == "unreadable"
    missing = by_name({})
    assert not any(c.ok for c in missing.values())


def test_limits_scale_with_max_connections() -> None:
    readings = {**TUNED, "nofile_hard": 5000, "nofile_soft": 5000, "somaxconn": 1000}
    small = by_name(readings, 1000)
    assert all(c.ok for c in small.values()), [c.line() for c in small.values()]
    assert not by_name(readings, 4901)["nofile hard (RLIMIT_NOFILE)"].ok
    assert by_name(readings, 5000 - HEADROOM)["nofile hard (RLIMIT_NOFILE)"].ok
    assert nofile_warning(5000, 4900) is None
    assert nofile_warning(-1, 10**6) is None
    warning = nofile_warning(5000, 10000)
    assert warning is not None and "about 4900" in warning


# --------------------------------------------------------------------------- serve


def nofile(soft: int, hard: int) -> Callable[[], None]:
    def set_it() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return set_it


def limits_of(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/limits").read_text()
    m = re.search(r"^Max open files\s+(\d+)\s+(\d+)", text, re.M)
    assert m, text
    return int(m.group(1)), int(m.group(2))


HARD = min(2048, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def test_serve_raises_its_soft_nofile_limit_to_the_hard_one(serve: StartServer) -> None:
    srv = serve("--max-connections", str(HARD - HEADROOM), preexec_fn=nofile(256, HARD))
    assert limits_of(srv.pid) == (HARD, HARD)
    logged = (
        f"INFO aiosrv.runner: open files limit: soft {HARD} (raised from 256), "
        f"hard {HARD}; max_connections {HARD - HEADROOM} needs {HARD}"
    )
    assert srv.count(logged) == 1
    assert srv.count("open-files limit") == 0  # no warning: it fits


def test_serve_warns_when_max_connections_exceeds_the_hard_limit(serve: StartServer) -> None:
    srv = serve("--max-connections", "10000", preexec_fn=nofile(256, HARD))
    assert limits_of(srv.pid)[0] == HARD
    line = srv.wait_for(r"WARNING aiosrv\.runner: open-files limit \d+ is below .*").group(0)
    assert f"open-files limit {HARD} is below max_connections 10000 + {HEADROOM}" in line
    assert "sysctl/apply.sh --profile 10k" in line
