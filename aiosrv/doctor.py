"""The host's limits against ``websocket.max_connections``: ``aiosrv doctor``.

``evaluate`` is pure: it judges a dict of readings (what ``read_host`` takes
from getrlimit and /proc/sys) and returns one ``Check`` per limit. The
server itself uses ``raise_nofile`` at start (``runner.serve``).
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Descriptors the server needs besides its connections (listeners, logs,
#: the event loop, Redis, imports): what a full house adds.
HEADROOM = 100
#: The listen backlog the server asks for (runner.Runner); somaxconn caps it.
LISTEN_BACKLOG = 4096
#: What the whole host should be able to open per connection the server takes.
FILE_MAX_FACTOR = 2
#: ip_local_port_range: ports for outgoing connections (Redis, a load test on
#: this host) wanted per connection, up to this many.
PORT_RANGE_CAP = 28000

PROC_SYS = {
    "somaxconn": "net/core/somaxconn",
    "tcp_max_syn_backlog": "net/ipv4/tcp_max_syn_backlog",
    "ip_local_port_range": "net/ipv4/ip_local_port_range",
    "file_max": "fs/file-max",
    "nr_open": "fs/nr_open",
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    current: str
    wanted: str
    advice: str = ""

    def line(self) -> str:
        text = f"{'OK  ' if self.ok else 'WARN'} {self.name}: {self.current} (wanted {self.wanted})"
        return f"{text}: {self.advice}" if self.advice and not self.ok else text


def needed_fds(max_connections: int) -> int:
    return max_connections + HEADROOM


def profile_for(max_connections: int) -> str:
    return "10k" if max_connections <= 10_000 else "100k"


def _num(value: Any) -> str:
    return "unreadable" if value is None else str(value)


def evaluate(readings: Mapping[str, Any], max_connections: int) -> list[Check]:
    """One check per limit. ``readings``: ``nofile_soft``, ``nofile_hard``
    (ints, -1 for unlimited), ``somaxconn``, ``tcp_max_syn_backlog``,
    ``file_max`` (ints) and ``ip_local_port_range`` (a (low, high) pair);
    a missing or None reading gives a WARN."""
    need = needed_fds(max_connections)
    apply = f"run sudo sysctl/apply.sh --profile {profile_for(max_connections)}"
    checks: list[Check] = []

    def fits(value: Any, wanted: int) -> bool:
        return value is not None and (value == -1 or value >= wanted)

    soft, hard = readings.get("nofile_soft"), readings.get("nofile_hard")
    nofile_fix = (
        f"{apply} and log in again, or set LimitNOFILE={max(need, 65536)} in the systemd unit"
    )
    checks.append(Check(
        "nofile hard (RLIMIT_NOFILE)", fits(hard, need), _num(hard),
        f">= {need}: max_connections {max_connections} + {HEADROOM}", nofile_fix,
    ))  # fmt: skip
    soft_ok = fits(soft, need)
    soft_note = ""
    if not soft_ok and fits(hard, need):
        soft_ok, soft_note = True, " (serve raises it to the hard limit)"
    checks.append(Check(
        "nofile soft (RLIMIT_NOFILE)", soft_ok, _num(soft) + soft_note, f">= {need}", nofile_fix,
    ))  # fmt: skip
    backlog = min(LISTEN_BACKLOG, max_connections)
    for key in ("somaxconn", "tcp_max_syn_backlog"):
        value = readings.get(key)
        checks.append(Check(
            key, fits(value, backlog), _num(value),
            f">= {backlog}: clients reconnecting at once wait in the listen backlog", apply,
        ))  # fmt: skip
    ports = readings.get("ip_local_port_range")
    want_ports = min(max_connections, PORT_RANGE_CAP)
    width = None if ports is None else ports[1] - ports[0] + 1
    checks.append(Check(
        "ip_local_port_range", fits(width, want_ports),
        "unreadable" if ports is None else f"{ports[0]} {ports[1]} ({width} ports)",
        f">= {want_ports} ports for outgoing connections", apply,
    ))  # fmt: skip
    file_max = readings.get("file_max")
    want_files = FILE_MAX_FACTOR * need
    checks.append(Check(
        "fs.file-max", fits(file_max, want_files), _num(file_max),
        f">= {want_files} system-wide", apply,
    ))  # fmt: skip
    return checks


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_host(proc_sys: Path = Path("/proc/sys")) -> dict[str, Any]:
    """The readings ``evaluate`` judges, from this process and this host."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    readings: dict[str, Any] = {
        "nofile_soft": -1 if soft == resource.RLIM_INFINITY else soft,
        "nofile_hard": -1 if hard == resource.RLIM_INFINITY else hard,
    }
    for key, rel in PROC_SYS.items():
        if key == "ip_local_port_range":
            try:
                low, high = (int(v) for v in (proc_sys / rel).read_text().split())
                readings[key] = (low, high)
            except (OSError, ValueError):
                readings[key] = None
        else:
            readings[key] = _read_int(proc_sys / rel)
    return readings


def raise_nofile(proc_sys: Path = Path("/proc/sys")) -> tuple[int, int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (to fs.nr_open
    when the hard limit is unlimited). Returns (soft before, soft now, hard),
    -1 meaning unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = _read_int(proc_sys / PROC_SYS["nr_open"]) or 1048576
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass

    def plain(v: int) -> int:
        return -1 if v == resource.RLIM_INFINITY else v

    return plain(before), plain(soft), plain(hard)


def nofile_warning(soft: int, max_connections: int) -> str | None:
    """The warning when ``soft`` (after raising) cannot hold max_connections."""
    need = needed_fds(max_connections)
    if soft == -1 or soft >= need:
        return None
    return (
        f"open-files limit {soft} is below max_connections {max_connections} + {HEADROOM}: "
        f"connections beyond about {max(soft - HEADROOM, 0)} will fail (EMFILE); raise the "
        f"hard limit (sysctl/apply.sh --profile {profile_for(max_connections)}, LimitNOFILE= "
        "in the systemd unit, ulimit -Hn) or lower max_connections"
    )
