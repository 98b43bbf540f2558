"""``aiosrv serve`` as a child process, for the hostile-input tools.

Used by the fuzzer (:mod:`tests.fuzzing`) and the never-reading-client check
(:mod:`tests.slow_reader`), from the suite and from their ``bench/`` scripts.
Nothing here imports pytest.

The server binds its three listeners to port 0 on 127.0.0.1 and the ports it
got are read off its ready line (``aiosrv ready: websocket ws://127.0.0.1:P/...,
api http://127.0.0.1:Q, metrics ...``), so there is no window in which another
process can take a port. It runs in a fresh temporary directory (so it never
reads the repository's ``config/deployment.yaml``) with an environment
stripped of ``AIOSRV_CONFIG`` and of every variable the configuration reads,
plus what the caller adds. Its standard error goes to a file, which the
caller greps afterwards (tracebacks). ``cpu`` pins it with ``taskset``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosrv.config import CONFIG_PATH_ENV, ENV_VARS

READY_RE = re.compile(
    r"aiosrv ready: websocket ws://(?P<host>[\d.]+):(?P<ws>\d+)(?P<path>/\S*), "
    r"api http://[\d.]+:(?P<api>\d+)"
    r"(?:, metrics http://[\d.]+:(?P<metrics>\d+)/metrics)? "
    r"\(core=(?P<core>[\w-]+), broker=(?P<broker>\w+)"
)

#: What must never appear in the server's log: an exception that escaped a
#: handler (aiohttp's "Error handling request" comes with a traceback), the
#: session's "unexpected error", an asyncio callback or task that failed.
LOG_PROBLEMS = (
    "Traceback",
    "unexpected error",
    "Exception in callback",
    "exception was never retrieved",
)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the server's configuration variables."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and k != CONFIG_PATH_ENV}
    env.update(extra or {})
    return env


def read_status_kib(pid: int, field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM), or None if gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def taskset_prefix(cpu: str | None) -> list[str]:
    if not cpu:
        return []
    if shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpu]


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    ws_port: int = 0
    api_port: int = 0
    core: str = ""
    _owned_dir: bool = field(default=False, repr=False)
    _log_file: object = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ws_url(self, path: str = "/ws/realtime") -> str:
        return f"ws://127.0.0.1:{self.ws_port}{path}"

    def api(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def rss_kib(self) -> int | None:
        return read_status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int | None:
        """The peak resident set size the kernel recorded for the process."""
        return read_status_kib(self.pid, "VmHWM")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_problems(self, limit: int = 20) -> list[str]:
        """Logged problems (a traceback, an unexpected error), at most
        ``limit``: each the log line that announced it and its traceback, up
        to the exception's line."""
        lines = self.log_text().splitlines()
        out: list[str] = []
        i = 0
        while i < len(lines) and len(out) < limit:
            line = lines[i]
            if not any(p in line for p in LOG_PROBLEMS):
                i += 1
                continue
            # the announcing line is this one, or the one before a bare "Traceback"
            first = i - 1 if line.startswith("Traceback") and i > 0 else i
            j = i + 1
            while j < len(lines) and lines[j].startswith((" ", "Traceback")):
                j += 1  # a traceback's frames are indented
            last = j if j < len(lines) and "Traceback" in "".join(lines[i:j]) else j - 1
            out.append("\n".join(lines[first : last + 1]))
            i = last + 1
        return out

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (drain and exit), then SIGKILL after ``timeout``; the exit status."""
        rc: int | None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                rc = None  # did not exit by itself
        else:
            rc = self.proc.returncode
        self._close_log()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_log()

    def cleanup(self) -> None:
        self.kill()
        if self._owned_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _close_log(self) -> None:
        f = self._log_file
        self._log_file = None
        if f is not None:
            f.close()  # type: ignore[attr-defined]


def start_server(
    *,
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
    settings: dict[str, str] | None = None,
    log_level: str = "WARNING",
    cpu: str | None = None,
    timeout: float = 30.0,
) -> ServerProcess:
    """Start ``python -m aiosrv serve`` on 127.0.0.1, ports chosen by the OS;
    return once its ready line is logged. ``settings`` are ``--set KEY=VALUE``
    pairs, ``env`` adds environment variables (``SEND_BUFFER_LIMIT=64KiB``)."""
    owned = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="aiosrv-hostile-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    log_path = wd / "server-stderr.log"
    argv = [
        *taskset_prefix(cpu),
        sys.executable, "-m", "aiosrv", "serve",
        "--host", "127.0.0.1", "--port", "0",
        "--api-host", "127.0.0.1", "--api-port", "0",
        "--metrics-port", "0",
        "--log-level", log_level,
    ]  # fmt: skip
    for key, value in (settings or {}).items():
        argv += ["--set", f"{key}={value}"]
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by stop()/kill()
    proc = subprocess.Popen(
        argv,
        cwd=wd,
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    srv = ServerProcess(proc, wd, log_path, _owned_dir=owned, _log_file=log_file)
    deadline = time.monotonic() + timeout
    while True:
        m = READY_RE.search(srv.log_text())
        if m:
            srv.ws_port = int(m["ws"])
            srv.api_port = int(m["api"])
            srv.core = m["core"]
            return srv
        if proc.poll() is not None or time.monotonic() > deadline:
            text = srv.log_text()
            srv.cleanup()
            why = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
            raise RuntimeError(f"aiosrv serve {why} before its ready line; stderr:\n{text}")
        time.sleep(0.05)
