"""End-to-end benchmark: aiosrv against the servers a user would pick instead.

Every server runs pinned to CPU 0 (``taskset -c 0``). The load runs pinned to
CPU 1, in two kinds of process, and so does this script (it mostly sleeps):

* ``bench/loadclient``: the subscribers (one C epoll loop; ``--sub-procs K``
  splits them over K processes), measuring publish-to-receive latency, loss and
  gaps;
* ``bench/publisher``: the independent publisher, its own process on its own
  clock (absolute CLOCK_MONOTONIC deadlines), one message per ``POST
  /api/publish`` (aiosrv) or per WebSocket frame (every peer), never merging
  messages when late; ``--pub-conns 1,50`` for 1 or 50 publisher connections.

The old publisher, inside the subscribers' loop (all due messages in one write,
or one JSON list per POST), is kept as labelled extra rows
(``aiosrv-batched``, ``aiosrv-http-batched``): when that loop is busy its
bursts grow and the server gets batches independent publishers never send.

Scenarios (``--scenarios``, comma-separated):

* ``rss``: server memory per idle connection;
* ``latency``: 10,000 subscribers at 10 publishes/s and 1,000 at 100/s, 10 s;
* ``saturation``: the highest publish rate at which, over a few seconds, the
  publisher got its rate (>= 97% of the target, nothing refused or unanswered),
  >= 99% of the deliveries arrived (within a grace period after the last
  publish), no connection was closed, no gap appeared in any (subscriber,
  publisher connection) sequence and p99 stayed under 100 ms (1k subscribers)
  or 1 s (10k). Found by multiplying the rate by 4 from 50,000 deliveries/s
  until a step fails, then bisecting geometrically;
* ``sweep``: fixed publish rates, doubling: 50 to 6,400/s at 1,000
  subscribers and 5 to 320/s at 10,000, for each payload size; p50/p99/p99.9,
  share delivered, server CPU per million deliveries and whether the load side
  was the limit, per step. A step that collapses (delivered < 50%, p99 >= 2 s,
  the publisher held below half its rate, or stopped because a delivery was
  5 s late) ends that (server, N, size) ladder.

    .venv/bin/python bench/run.py --quick                          # smoke test, a few minutes
    .venv/bin/python bench/run.py                                  # rss, latency, saturation
    .venv/bin/python bench/run.py --scenarios sweep --out bench/results/sweep
    .venv/bin/python bench/run.py --scenarios saturation --pub-conns 1,50

Writes OUT.json and OUT.md (default bench/results/latest; raw logs in
bench/results/raw/). bench/http_publish.py measures the HTTP publish path alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"
VENV_PY = ROOT / ".venv" / "bin" / "python"
CLIENT = BENCH / "loadclient"
PUBLISHER = BENCH / "publisher"
SERVER_CPU, CLIENT_CPU = "0", "1"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
UWS_PKG = BENCH / "peers" / "node_uws" / "node_modules" / "@trufflesuite" / "uws-js-unofficial"
# unanswered publish requests allowed per publisher connection (HTTP: pipelined requests, each
# its own send(); WS: publish frames awaiting their ack); a message due while every connection
# is at its depth waits, late, and is never merged with another
DEFAULT_DEPTH = {"http": 64, "ws": 256}
_step_ids = itertools.count(1)


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    label: str
    cmd: list[str]  # {port}, {api} and {metrics} are filled in with free ports
    env: dict[str, str] = field(default_factory=dict)
    path: str = "/ws/realtime"
    # the publisher: "http" (bench/publisher, one message per POST /api/publish), "ws" (bench/publisher,
    # one frame per message), or "inloop-ws" / "inloop-http" (the old publisher inside the
    # subscribers' loop: all due messages in one write / one JSON list per POST)
    pub: str = "ws"
    scenarios: tuple[str, ...] = ("rss", "latency", "saturation", "sweep")
    needs: str = ""  # a file that must exist, else the server is skipped
    probe: list[str] = field(default_factory=list)  # a command that must succeed, else skipped
    # broker.engine=redis: the run's own redis-server is started (once, pid-checked) and its CPU is
    # measured over every step; {redis_port} and {prefix} (unique per stage) are filled in
    redis: bool = False
    workers: int = 1  # > 1: a supervisor and its worker processes (CPU summed over the tree)

    @property
    def inloop(self) -> bool:
        return self.pub.startswith("inloop")

    @property
    def port_names(self) -> list[str]:
        return [k for k in ("port", "api", "metrics") if any("{" + k + "}" in c for c in self.cmd)]


AIOSRV = [
    str(ROOT / ".venv" / "bin" / "aiosrv"), "serve", "--host", "127.0.0.1", "--port", "{port}",
    "--api-host", "127.0.0.1", "--api-port", "{api}", "--metrics-port", "{metrics}",
    "--log-level", "WARNING",
    "--set", "websocket.allow_client_publish=true", "--set", "sources.enabled=false",
    "--set", "websocket.max_connections=20000",
]


AIOSRV_REDIS = AIOSRV + [
    "--set", "broker.engine=redis", "--set", "redis.host=127.0.0.1", "--set", "redis.port={redis_port}",
    "--set", "redis.channel_prefix={prefix}",
]


def _py_peer(name: str) -> list[str]:
    return [str(VENV_PY), str(BENCH / "peers" / name), "--port", "{port}"]


SERVERS = {
    s.name: s
    for s in [
        Server("aiosrv", "aiosrv (compiled core), HTTP publisher", AIOSRV, pub="http"),
        Server("aiosrv-ws", "aiosrv (compiled core), WebSocket publisher", AIOSRV, pub="ws",
               scenarios=("latency", "saturation", "sweep")),
        Server("aiosrv-batched", "aiosrv (compiled), batched publisher, in the subscribers' loop (old)", AIOSRV,
               pub="inloop-ws", scenarios=("latency", "saturation", "sweep")),
        Server("aiosrv-http-batched",
               "aiosrv (compiled), batched HTTP publisher (JSON lists), in the subscribers' loop (old)", AIOSRV,
               pub="inloop-http", scenarios=("saturation", "sweep")),
        Server("aiosrv-pure", "aiosrv, pure-Python core (AIOSRV_NO_EXTENSIONS=1), HTTP publisher", AIOSRV,
               pub="http", env={"AIOSRV_NO_EXTENSIONS": "1"}),
        Server("aiosrv-redis", "aiosrv through Redis, 1 worker, HTTP publisher", AIOSRV_REDIS, pub="http",
               scenarios=("latency", "saturation", "sweep"), redis=True, probe=["redis-server", "--version"]),
        Server("aiosrv-redis-2w", "aiosrv through Redis, 2 workers, HTTP publisher", AIOSRV_REDIS + ["--workers", "2"],
               pub="http", scenarios=("latency", "saturation", "sweep"), redis=True, workers=2,
               probe=["redis-server", "--version"]),
        Server("aiohttp-naive", "obvious aiohttp loop", _py_peer("aiohttp_naive.py")),
        Server("websockets", "websockets.broadcast", _py_peer("websockets_broadcast.py")),
        Server("picows", "picows", _py_peer("picows_server.py"),
               probe=[str(VENV_PY), "-c", "import picows"]),
        Server("uws", "uWebSockets.js (native)",
               ["node", str(BENCH / "peers" / "node_uws" / "server.js"), "--port", "{port}"],
               needs=str(UWS_PKG),
               probe=["node", str(BENCH / "peers" / "node_uws" / "server.js"), "--check"]),
        Server("uws-socketify", "uWebSockets (C++) via socketify.py", _py_peer("socketify_server.py"),
               probe=[str(VENV_PY), "-c", "import socketify"]),
        Server("node-ws", "Node ws",
               ["node", str(BENCH / "peers" / "node_ws" / "server.js"), "--port", "{port}"],
               needs=str(BENCH / "peers" / "node_ws" / "node_modules" / "ws")),
    ]
}
# opt-in: aiosrv-http-batched, aiosrv-redis, aiosrv-redis-2w
DEFAULT_SERVERS = ["aiosrv", "aiosrv-ws", "aiosrv-batched", "aiosrv-pure", "aiohttp-naive", "websockets",
                   "picows", "node-ws", "uws", "uws-socketify"]
SWEEP_SERVERS = ["aiosrv", "aiosrv-ws", "uws", "picows"]


@dataclass
class Row:
    """One row of the tables: a server with its publisher (and, for bench/publisher, K connections)."""
    server: Server
    pub_conns: int = 1

    @property
    def key(self) -> str:
        return self.server.name + (f"@{self.pub_conns}" if self.pub_conns > 1 else "")

    @property
    def label(self) -> str:
        if self.server.inloop:
            return self.server.label
        return self.server.label + (f", {self.pub_conns} publisher connections" if self.pub_conns > 1 else "")


@dataclass
class Plan:
    quick: bool
    stages: list[int]  # subscriber counts, one fresh server each
    scenarios: list[str]
    sizes: list[int]
    latency: dict[int, tuple[float, float]]  # subscribers -> (rate, seconds)
    step_seconds: float
    max_steps: int
    ramp: int
    sweep_stages: list[int] = field(default_factory=list)
    sweep_seconds: float = 6.0
    sweep_max_steps: int = 99
    sub_procs: int = 1
    client_cpus: list[str] = field(default_factory=lambda: [CLIENT_CPU])
    pub_depth: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_DEPTH))


def stage_bound_ms(n: int) -> float:
    return 100.0 if n <= 1000 else 1000.0


def sweep_rates(n: int) -> list[float]:
    """50, 100, ..., 6,400/s at 1,000 subscribers; 5, 10, ..., 320/s at 10,000 (doubling)."""
    lo = 50000.0 / n
    hi = (6.4e6 if n <= 1000 else 3.2e6) / n
    out = []
    r = lo
    while r <= hi * 1.0001:
        out.append(round(r, 3))
        r *= 2
    return out


# ---------------------------------------------------------------- /proc


def proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def tree_cpu(pid: int) -> float:
    """CPU seconds of pid and its live descendants (a server that forks workers)."""
    return sum(proc_cpu(p) for p in descendants(pid))


def cpu_times() -> dict[str, dict[str, int]]:
    """Per-CPU ticks from /proc/stat: busy (user+nice+system+irq+softirq), softirq, steal."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                p = line.split()
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, p[1:9])
                out[p[0]] = {"busy": user + nice + system + irq + softirq, "softirq": softirq, "steal": steal}
    return out


def proc_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------- ports


def free_ports(k: int) -> list[int]:
    """k distinct ports the OS hands out now (bound to 127.0.0.1:0, then released)."""
    socks, ports = [], []
    try:
        for _ in range(k):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in socks:
            s.close()
    return ports


def free_port() -> int:
    return free_ports(1)[0]


def descendants(pid: int) -> list[int]:
    out, i = [pid], 0
    while i < len(out):
        p = out[i]
        i += 1
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def listening_inodes(port: int) -> set[int]:
    """Socket inodes of every TCP listener on port (IPv4 and IPv6, any address)."""
    found = set()
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            p = ln.split()
            if len(p) > 9 and p[3] == "0A" and int(p[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(p[9]))
    return found


def port_owner(port: int, pid: int) -> tuple[int | None, str]:
    """(the pid in pid's process tree that holds the listener on port, why not)."""
    inodes = listening_inodes(port)
    if not inodes:
        return None, f"nothing listens on {port}"
    mine: dict[int, int] = {}
    for p in descendants(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                mine[int(link[8:-1])] = p
    if not mine:
        return None, f"port {port} is held by a process that is not the server started (pid {pid})"
    if set(mine) != inodes:
        return None, f"port {port} has {len(inodes) - len(mine)} listener(s) besides the server started"
    return next(iter(mine.values())), ""


def wait_listening(ports: list[int], proc: "Proc", timeout: float = 30.0) -> str:
    """Wait until every port accepts and is the started server's; '' or the error."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if not proc.alive():
                return "server exited (see its raw log)"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    return f"server did not listen on {port} within {timeout:.0f} s"
                time.sleep(0.1)
        owner, why = port_owner(port, proc.pid)
        if owner is None:
            return why
    return ""


def wait_ready_line(proc: "Proc", timeout: float) -> str:
    """Wait for the supervisor's `aiosrv ready:` line (printed once every worker is ready)."""
    deadline = time.monotonic() + timeout
    path = Path(proc.log.name)
    while time.monotonic() < deadline:
        if "aiosrv ready:" in path.read_text(errors="replace"):
            return ""
        if not proc.alive():
            return "server exited (see its raw log)"
        time.sleep(0.1)
    return f"no 'aiosrv ready:' line within {timeout:.0f} s"


def established_on(pid: int, port: int) -> int:
    """Established TCP connections to local port held by pid (its subscribers)."""
    inodes = set()
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                for ln in f.read().splitlines()[1:]:
                    p = ln.split()
                    if len(p) > 9 and p[3] == "01" and int(p[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(p[9]))
        except OSError:
            pass
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                n += 1
    except OSError:
        pass
    return n


# ---------------------------------------------------------------- processes


class Proc:
    def __init__(self, cmd: list[str], env: dict[str, str] | None, log: Path, stdin: bool = False,
                 cpu: str = SERVER_CPU) -> None:
        self.log = log.open("wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        # taskset execs the command: self.pid is the command's own pid
        self.p = subprocess.Popen(
            ["taskset", "-c", cpu, *cmd], env=full_env, cwd=ROOT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin else self.log, stderr=self.log,
        )
        self.cpu = cpu
        self.buf = b""

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write((line + "\n").encode())
        self.p.stdin.flush()

    def read_json(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line on stdout, or None after timeout or on exit."""
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return None
                self.buf += chunk
            elif not self.alive():
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        shown = line if len(line) < 4000 else line[:4000] + b"..."
        self.log.write(b"# " + shown + b"\n")
        self.log.flush()
        return json.loads(line)

    def stop(self, grace: float = 3.0) -> None:
        tree = descendants(self.p.pid)[1:] if self.alive() else []  # a supervisor's workers
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        for pid in tree:  # still alive after their supervisor: killed by pid (they were its children)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.p.stdin:
            try:
                self.p.stdin.close()
            except OSError:
                pass
        if self.p.stdout:
            self.p.stdout.close()
        self.log.close()


def build_tools() -> None:
    for exe, src in ((CLIENT, BENCH / "loadclient.c"), (PUBLISHER, BENCH / "publisher.c")):
        newest = max(src.stat().st_mtime, (BENCH / "benchutil.h").stat().st_mtime)
        if not exe.exists() or exe.stat().st_mtime < newest:
            cc = os.environ.get("CC", "cc")
            subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(src)], check=True)


build_client = build_tools  # the old name


# ---------------------------------------------------------------- redis


def resp(port: int, *args: str, timeout: float = 5.0) -> Any:
    """One command to the Redis on 127.0.0.1:port (RESP2, a fresh connection): its decoded reply."""
    out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(out)
        f = c.makefile("rb")
        line = f.readline()
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind in (b"+", b":"):
            return rest.decode()
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2].decode()
        raise RuntimeError(f"unexpected reply {line!r}")


def redis_info(port: int, section: str = "") -> dict[str, str]:
    text = resp(port, "INFO", *([section] if section else []))
    return dict(ln.split(":", 1) for ln in text.splitlines() if ":" in ln and not ln.startswith("#"))


class RedisServer:
    """The run's own redis-server: a free port, no persistence, pinned; what answers is checked to be it."""

    def __init__(self, cpu: str) -> None:
        self.cpu = cpu
        self.port = free_port()
        self.proc = Proc(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--protected-mode", "yes"], None,
                         RAW / f"redis-{self.port}.log", cpu=cpu)
        self.info: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        last = ""
        while True:
            if not self.proc.alive():
                raise RuntimeError(f"redis-server exited (see {self.proc.log.name})")
            try:
                if resp(self.port, "PING", timeout=1.0) == "PONG":
                    break
            except (OSError, RuntimeError) as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on {self.port}: {last}")
            time.sleep(0.1)
        srv = redis_info(self.port, "server")
        if int(srv.get("process_id", -1)) != self.proc.pid:
            raise RuntimeError(f"the Redis answering on {self.port} is pid {srv.get('process_id')}, "
                               f"not the redis-server started (pid {self.proc.pid})")
        owner, why = port_owner(self.port, self.proc.pid)
        if owner is None:
            raise RuntimeError(why)
        self.info = {"port": self.port, "pid": self.proc.pid, "cpu": cpu, "version": srv.get("redis_version"),
                     "command": "redis-server --port P --bind 127.0.0.1 --save '' --appendonly no"}
        print(f"redis-server {self.info['version']} on 127.0.0.1:{self.port}, pid {self.proc.pid} "
              f"(checked), CPU {cpu}", flush=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> tuple[float, float]:
        """redis-server's CPU seconds: (utime + stime from /proc/<pid>/stat, in clock ticks of 10 ms;
        the same time in ns from /proc/<pid>/task/*/schedstat, summed over its threads)."""
        ns = 0
        try:
            for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
                try:
                    with open(f"/proc/{self.proc.pid}/task/{tid}/schedstat") as f:
                        ns += int(f.read().split()[0])
                except OSError:
                    pass
        except OSError:
            pass
        return proc_cpu(self.proc.pid), ns / 1e9

    def counters(self) -> dict[str, int]:
        """Commands processed so far (all, and per command of interest)."""
        try:
            st = redis_info(self.port, "stats")
            cs = redis_info(self.port, "commandstats")
        except (OSError, RuntimeError):
            return {}
        out = {"commands": int(st.get("total_commands_processed", 0))}
        for k, v in cs.items():
            name = k.removeprefix("cmdstat_")
            fields = dict(x.split("=", 1) for x in v.split(","))
            out[name] = int(fields.get("calls", 0))
        return out

    def stop(self) -> None:
        if self.proc.alive():
            try:
                resp(self.port, "SHUTDOWN", "NOSAVE", timeout=2.0)
            except (OSError, RuntimeError):
                pass
            try:
                self.proc.p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.proc.stop(3)


REDIS: RedisServer | None = None  # started by the first stage that needs it, stopped by main
REDIS_CPU = SERVER_CPU  # --redis-cpu


def redis_server() -> RedisServer:
    global REDIS
    if REDIS is None:
        REDIS = RedisServer(REDIS_CPU)
    return REDIS


# ---------------------------------------------------------------- histograms


def bucket_value(b: int) -> float:
    """The middle of loadclient's log-scale bucket b, in ns (64 buckets per power of two)."""
    e, f = divmod(b, 64)
    return float(1 << e) * (1.0 + (f + 0.5) / 64.0)


def merged_latency(results: list[dict[str, Any]]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in ms over several loadclient step results (their sparse histograms)."""
    counts: dict[int, int] = {}
    total = 0
    mx = 0
    sm = 0
    for r in results:
        for b, c in r.get("hist", []):
            counts[b] = counts.get(b, 0) + c
            total += c
        mx = max(mx, r.get("hist_max_ns", 0))
        sm += r.get("hist_sum_ns", 0)
    out: dict[str, float] = {"count": total, "mean": round(sm / total / 1e6, 3) if total else 0.0}
    order = sorted(counts)
    for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
        if not total:
            out[name] = 0.0
            continue
        want = min(int(p * total), total - 1)
        seen = 0
        v = float(mx)
        for b in order:
            seen += counts[b]
            if seen > want:
                v = min(bucket_value(b), float(mx))
                break
        out[name] = round(v / 1e6, 3)
    out["max"] = round(mx / 1e6, 3)
    return out


# ---------------------------------------------------------------- one stage


class Stage:
    """One fresh server, its subscribers (one or more loadclient processes) and its publisher."""

    def __init__(self, row: Row, n: int, plan: Plan, tag: str) -> None:
        self.row, self.server, self.n, self.plan, self.tag = row, row.server, n, plan, tag
        self.srv: Proc | None = None
        self.clis: list[Proc] = []
        self.pub: Proc | None = None
        self.ports: dict[str, int] = {}
        self.info: dict[str, Any] = {}

    @property
    def cli(self) -> Proc | None:  # the in-loop publisher's (only) client
        return self.clis[0] if self.clis else None

    def start(self) -> bool:
        s = self.server
        names = s.port_names
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        fill: dict[str, Any] = dict(self.ports)
        if s.redis:
            try:
                r = redis_server()
            except RuntimeError as e:
                self.info["error"] = f"redis-server: {e}"
                return False
            # a channel prefix of this stage's own: nothing left by an earlier stage is seen
            fill.update(redis_port=r.port, prefix=f"bench-{os.getpid()}-{self.tag}-{time.time_ns() % 10**9}")
            self.info["redis"] = dict(r.info, channel_prefix=fill["prefix"])
        cmd = [c.format(**fill) for c in s.cmd]
        self.srv = Proc(cmd, s.env, RAW / f"{self.tag}-server.log")
        err = wait_listening(list(self.ports.values()), self.srv)
        if not err and s.workers > 1:
            err = wait_ready_line(self.srv, 60.0)
        if err:
            self.info["error"] = f"server did not start: {err}"
            return False
        self.info["ports"] = dict(self.ports)
        time.sleep(1.0)
        rss0 = proc_rss_kib(self.srv.pid)
        port = self.ports["port"]
        k = 1 if s.inloop else max(1, min(self.plan.sub_procs, self.n))
        cpus = self.plan.client_cpus
        share = [self.n // k + (1 if i < self.n % k else 0) for i in range(k)]
        for i in range(k):
            ccmd = [str(CLIENT), "-p", str(port), "-P", s.path, "-n", str(share[i]),
                    "-r", str(max(1, self.plan.ramp // k)), "--control"]
            if s.inloop:
                mode = s.pub.split("-", 1)[1]
                ccmd += ["--pub", mode]
                if mode == "http":
                    ccmd += ["--pub-port", str(self.ports["api"])]
            self.clis.append(Proc(ccmd, None, RAW / f"{self.tag}-client{i}.log", stdin=True,
                                  cpu=cpus[i % len(cpus)]))
        readies = [c.read_json(self.n / self.plan.ramp + 90) for c in self.clis]
        if not all(r and r.get("event") == "ready" for r in readies):
            self.info["error"] = f"load client not ready: {readies}"
            return False
        opened = sum(r["open"] for r in readies)  # type: ignore[index]
        time.sleep(2.0)  # let the server settle (and its allocator)
        rss1 = proc_rss_kib(self.srv.pid)
        self.info.update({
            "connect": {"open": opened, "seconds": max(r["seconds"] for r in readies),  # type: ignore[index]
                        "processes": k},
            "rss_before_kib": rss0, "rss_connected_kib": rss1,
            "rss_per_connection_bytes": round((rss1 - rss0) * 1024 / max(1, opened)),
        })
        if opened < self.n:
            self.info["error"] = f"only {opened} of {self.n} subscribers connected"
            return False
        if s.workers > 1:
            # the supervisor and its workers; how the subscribers spread over the workers (SO_REUSEPORT)
            kids = descendants(self.srv.pid)[1:]
            self.info["workers"] = {"supervisor_pid": self.srv.pid, "worker_pids": kids,
                                    "subscribers_per_worker": {str(k): established_on(k, port) for k in kids}}
            if len(kids) != s.workers:
                self.info["error"] = f"{len(kids)} worker processes under the supervisor, expected {s.workers}"
                return False
        if s.inloop:
            if not readies[0].get("publisher"):  # type: ignore[union-attr]
                self.info["error"] = "the in-loop publisher did not connect"
                return False
            return True
        mode = s.pub
        pport = self.ports["api"] if mode == "http" else port
        depth = self.plan.pub_depth[mode]
        pcmd = [str(PUBLISHER), "--mode", mode, "-p", str(pport), "-P",
                "/api/publish" if mode == "http" else s.path, "--conns", str(self.row.pub_conns),
                "--depth", str(depth), "--control"]
        self.pub = Proc(pcmd, None, RAW / f"{self.tag}-publisher.log", stdin=True, cpu=cpus[0])
        ready = self.pub.read_json(30)
        if not ready or ready.get("open") != self.row.pub_conns:
            self.info["error"] = f"publisher did not connect: {ready}"
            return False
        self.info["publisher"] = {"mode": mode, "conns": self.row.pub_conns, "depth": depth}
        return True

    def _client_pids(self) -> list[tuple[Proc, str]]:
        return [(c, "subscribers") for c in self.clis] + ([(self.pub, "publisher")] if self.pub else [])

    def step(self, rate: float, seconds: float, size: int, grace: float, abort_ms: float) -> dict[str, Any]:
        assert self.srv and self.clis
        procs = self._client_pids()
        c0 = {p.pid: proc_cpu(p.pid) for p, _ in procs}
        rds = REDIS if self.server.redis else None
        rc0 = rds.counters() if rds else {}
        r0 = rds.cpu_seconds() if rds else (0.0, 0.0)
        cpu0, t0, st0 = tree_cpu(self.srv.pid), time.monotonic(), cpu_times()
        if self.server.inloop:
            self.cli.send(f"step {rate:.4f} {seconds} {size} {grace} {abort_ms}")  # type: ignore[union-attr]
            res = self.cli.read_json(seconds + grace + 30)  # type: ignore[union-attr]
            if res is None:
                return {"error": "no answer from the load client", "rate": rate, "size": size, "pass": False,
                        "why": "client gone"}
            res["latency_ms"] = merged_latency([res]) if res.get("hist") else res["latency_ms"]
            res["publisher_kind"] = self.server.pub
        else:
            res = self._independent_step(rate, seconds, size, grace, abort_ms)
            if res.get("error"):
                return res
        cpu1, t1, st1 = tree_cpu(self.srv.pid), time.monotonic(), cpu_times()
        r1 = rds.cpu_seconds() if rds else (0.0, 0.0)
        rc1 = rds.counters() if rds else {}
        wall = max(1e-9, t1 - t0)
        # the load side's CPU: each process, and each client CPU in total (they may share one)
        per_cpu: dict[str, float] = {}
        loads = []
        for p, role in procs:
            f = (proc_cpu(p.pid) - c0[p.pid]) / wall
            loads.append({"role": role, "cpu": p.cpu, "fraction": round(f, 3)})
            per_cpu[p.cpu] = per_cpu.get(p.cpu, 0.0) + f
        res["load_processes"] = loads
        res["subscriber_cpu_fraction"] = round(max(x["fraction"] for x in loads if x["role"] == "subscribers"), 3)
        res["publisher_cpu_fraction"] = round(sum(x["fraction"] for x in loads if x["role"] == "publisher"), 3)
        res["client_core_fraction"] = round(max(per_cpu.values()), 3)
        res["client_cpu_fraction"] = res["client_core_fraction"]  # the old key: the load side's busiest CPU
        res["client_bound"] = bool(res["client_core_fraction"] >= 0.9 or res["subscriber_cpu_fraction"] >= 0.9
                                   or res["publisher_cpu_fraction"] >= 0.9)
        d = {k: {f: (st1[k][f] - st0[k][f]) / TICK for f in st1[k]} for k in st1 if k in st0}
        res["steal_ms"] = {k: round(v["steal"] * 1000) for k, v in d.items()}
        core = d.get(f"cpu{SERVER_CPU}", {"busy": 0.0, "softirq": 0.0})
        # the server's core in total: its process, plus the kernel's softirq work (on loopback
        # that is the TCP path of the packets it sends, the receivers' side included)
        res["server_core_busy_seconds"] = round(core["busy"], 3)
        res["server_core_busy_fraction"] = round(core["busy"] / wall, 3)
        res["server_core_softirq_fraction"] = round(core["softirq"] / wall, 3)
        res["server_cpu_seconds"] = round(cpu1 - cpu0, 3)
        res["server_cpu_fraction"] = round((cpu1 - cpu0) / wall, 3)
        res["server_rss_kib"] = proc_rss_kib(self.srv.pid)
        rec = res["received"]
        res["server_cpu_s_per_million"] = round((cpu1 - cpu0) / rec * 1e6, 3) if rec else None
        res["server_core_s_per_million"] = round(core["busy"] / rec * 1e6, 3) if rec else None
        # CPU time on the machine not accounted for by the server, Redis, the load processes or softirq:
        # other programs (a shared machine: anything here took CPU from the measured processes)
        known = (cpu1 - cpu0) + sum(x["fraction"] for x in loads) * wall
        if rds:
            known += (r1[1] - r0[1]) if r1[1] > 0 else (r1[0] - r0[0])
        allbusy = sum(v["busy"] - v["softirq"] for v in d.values())
        res["other_cpu_fraction"] = round(max(0.0, allbusy - known) / wall, 3)
        if rds:
            # Redis' own CPU over the step, per delivery and per publish; its commands over the step
            # (the 2 INFO calls framing it included). /proc/<pid>/stat counts 10 ms ticks, too coarse
            # for a few hundred publishes: the figures use the ns run time of /proc/<pid>/task/*/schedstat
            # (the same CPU time, precisely), and the stat figure is kept beside it as a check
            rcpu = r1[1] - r0[1] if r1[1] > 0 else r1[0] - r0[0]
            pub = res.get("published", 0)
            res["redis_cpu_seconds"] = round(rcpu, 4)
            res["redis_cpu_seconds_stat"] = round(r1[0] - r0[0], 3)
            res["redis_cpu_fraction"] = round(rcpu / wall, 3)
            res["redis_cpu_s_per_million"] = round(rcpu / rec * 1e6, 3) if rec else None
            res["redis_us_per_publish"] = round(rcpu / pub * 1e6, 2) if pub else None
            res["redis_commands"] = {k: rc1[k] - rc0.get(k, 0) for k in rc1 if rc1[k] != rc0.get(k, 0)}
            res["server_and_redis_cpu_s_per_million"] = (
                round((cpu1 - cpu0 + rcpu) / rec * 1e6, 3) if rec else None)
        return res

    def _independent_step(self, rate: float, seconds: float, size: int, grace: float,
                          abort_ms: float) -> dict[str, Any]:
        assert self.pub
        sid = next(_step_ids)
        k = self.row.pub_conns
        for c in self.clis:
            c.send(f"begin {sid} {abort_ms} {self.pub.pid} {k}")
        for c in self.clis:
            b = c.read_json(30)
            if not b or b.get("event") != "begun":
                return {"error": f"load client did not begin: {b}", "rate": rate, "size": size, "pass": False,
                        "why": "client gone"}
        drain = max(5.0, grace)
        self.pub.send(f"step {sid} {rate:.4f} {seconds} {size} {drain}")
        pres = self.pub.read_json(seconds + 2 + drain + 30)
        if pres is None:
            for c in self.clis:  # finish the clients' step all the same
                c.send(f"end 0 0 {rate:.4f} {seconds} {size}")
                c.read_json(30)
            return {"error": "no answer from the publisher", "rate": rate, "size": size, "pass": False,
                    "why": "publisher gone"}
        for c in self.clis:
            c.send(f"end {pres['acked']} {grace} {rate:.4f} {seconds} {size}")
        parts = [c.read_json(grace + 60) for c in self.clis]
        if not all(parts):
            return {"error": "no answer from the load client", "rate": rate, "size": size, "pass": False,
                    "why": "client gone"}
        ps: list[dict[str, Any]] = parts  # type: ignore[assignment]

        def tot(key: str) -> int:
            return sum(int(p.get(key, 0)) for p in ps)

        expected, received = tot("expected"), tot("received")
        del_secs = max(p["delivery_seconds"] for p in ps)
        res: dict[str, Any] = {
            "event": "step", "step": sid, "rate": rate, "seconds": seconds, "size": size,
            "subscribers": tot("subscribers"), "publisher_kind": self.server.pub, "publisher_conns": k,
            "sent": pres["sent"], "published": pres["acked"], "refused": pres["refused"],
            "unanswered": pres["unanswered"], "publisher_closed": pres["closed"],
            "publish_rate": pres["publish_rate"], "publisher": pres,
            "aborted": bool(pres["aborted"] or any(p["aborted"] for p in ps)),
            "expected": expected, "received": received,
            "delivered_fraction": round(received / expected, 5) if expected else 0.0,
            "missing": max(0, expected - received), "gaps": tot("gaps"), "lost": tot("gaps"),
            "disorder": tot("disorder"), "bad_c": tot("bad_c"), "stale": tot("stale"),
            "other_frames": tot("other_frames"), "closed": tot("closed"),
            "min_per_conn": min(p["min_per_conn"] for p in ps), "max_per_conn": max(p["max_per_conn"] for p in ps),
            "delivery_seconds": del_secs, "delivered_per_second": round(received / del_secs) if del_secs else 0,
            "elapsed": max(p["elapsed"] for p in ps),
            "latency_ms": merged_latency(ps),
            "subscriber_processes": [{k2: p[k2] for k2 in ("subscribers", "received", "expected", "gaps",
                                                            "client_cpu_fraction")} for p in ps],
        }
        return res

    def quiet(self, max_s: float = 10.0) -> dict[str, Any] | None:
        """Wait until no data frame came for 300 ms (on every subscriber process)."""
        for c in self.clis:
            c.send(f"quiet 300 {max_s}")
        rs = [c.read_json(max_s + 10) for c in self.clis]
        if not all(rs):
            return None
        return {"quiet": all(r.get("quiet") for r in rs), "frames": sum(r.get("frames", 0) for r in rs)}  # type: ignore[union-attr]

    def stop(self) -> None:
        for p in ([self.pub] if self.pub else []) + self.clis:
            if p.alive():
                try:
                    p.send("quit")
                    p.read_json(5)
                except (BrokenPipeError, OSError, ValueError):
                    pass
            p.stop(3)
        if self.srv:
            self.srv.stop(3 if self.server.workers <= 1 else 15)


def judge(res: dict[str, Any], rate: float, bound_ms: float) -> tuple[bool, str]:
    why = []
    if res.get("error"):
        return False, res["error"]
    if res["aborted"]:
        why.append("stopped early: deliveries seconds late")
    if res["refused"]:
        why.append(f"{res['refused']} publishes refused")
    if res.get("unanswered"):
        why.append(f"{res['unanswered']} publishes unanswered")
    if res.get("publisher_closed"):
        why.append(f"{res['publisher_closed']} publisher connections closed")
    if res["publish_rate"] < 0.97 * rate:
        why.append(f"publisher got {res['publish_rate']:.0f}/s of {rate:g}/s")
    if res["delivered_fraction"] < 0.99:
        why.append(f"delivered {100 * res['delivered_fraction']:.1f}%")
    if res["lost"]:
        why.append(f"{res['lost']} lost (gaps)")
    if res["closed"]:
        why.append(f"{res['closed']} connections closed")
    if res["latency_ms"]["p99"] > bound_ms:
        why.append(f"p99 {res['latency_ms']['p99']:.0f} ms > {bound_ms:.0f} ms")
    return not why, "; ".join(why)


# ---------------------------------------------------------------- scenarios


def fresh(stage: Stage, st: dict[str, Any], log: list[str]) -> Stage | None:
    """Stop stage and start the same server afresh (new free ports); None if that fails."""
    stage.stop()
    st["restarts"] += 1
    new = Stage(stage.row, stage.n, stage.plan, stage.tag.split("-r")[0] + f"-r{st['restarts']}")
    if not new.start():
        log.append(f"{stage.row.key} {stage.n}: restart failed: {new.info.get('error')}")
        st["error"] = f"restart failed: {new.info.get('error')}"
        new.stop()
        return None
    return new


def run_row(row: Row, plan: Plan, log: list[str]) -> dict[str, Any]:
    server = row.server
    out: dict[str, Any] = {"name": row.key, "server": server.name, "label": row.label, "publisher": server.pub,
                           "publisher_conns": 1 if server.inloop else row.pub_conns, "stages": {}}
    if server.needs and not Path(server.needs).exists():
        out["skipped"] = f"not installed ({Path(server.needs).relative_to(BENCH)} missing; see bench/setup.sh)"
        print(f"[{row.key}] skipped: {out['skipped']}", flush=True)
        return out
    if server.probe:
        pr = subprocess.run(server.probe, cwd=ROOT, capture_output=True, text=True, timeout=60)
        if pr.returncode:
            err = [ln for ln in pr.stderr.splitlines() if ln.strip().startswith("Error")]
            out["skipped"] = "does not load here: " + (err[-1].strip() if err else pr.stderr.strip()[-300:])
            print(f"[{row.key}] skipped: {out['skipped']}", flush=True)
            return out
    stages = sorted(set(plan.stages) | set(plan.sweep_stages), reverse=True)
    for n in stages:
        wanted = [sc for sc in plan.scenarios if sc in server.scenarios
                  and (n in plan.sweep_stages if sc == "sweep" else n in plan.stages)]
        if not wanted:
            continue
        tag = f"{row.key}-{n}"
        st: dict[str, Any] = {"subscribers": n, "restarts": 0}
        out["stages"][str(n)] = st
        stage: Stage | None = Stage(row, n, plan, tag)
        print(f"[{row.key}] {n} subscribers: starting", flush=True)
        assert stage is not None
        ok = stage.start()
        st.update(stage.info)
        if not ok:
            print(f"[{row.key}] {n}: {stage.info.get('error')}", flush=True)
            stage.stop()
            continue
        print(f"[{row.key}] {n}: connected in {stage.info['connect']['seconds']:.1f}s, "
              f"RSS {stage.info['rss_before_kib'] // 1024} -> {stage.info['rss_connected_kib'] // 1024} MiB "
              f"({stage.info['rss_per_connection_bytes']} B/conn), ports {stage.ports}", flush=True)
        bound = stage_bound_ms(n)
        try:
            if "latency" in wanted and n in plan.latency:
                rate, secs = plan.latency[n]
                res = stage.step(rate, secs, 100, 3.0, 10000)
                res["pass"], res["why"] = judge(res, rate, 1e12)
                res.pop("hist", None)
                st["latency"] = res
                lat = res.get("latency_ms", {})
                print(f"[{row.key}] {n}: latency @{rate:g}/s: p50 {lat.get('p50', 0):.1f} "
                      f"p99 {lat.get('p99', 0):.1f} p99.9 {lat.get('p999', 0):.1f} ms, delivered "
                      f"{100 * res.get('delivered_fraction', 0):.1f}%, server cpu "
                      f"{res.get('server_cpu_s_per_million')} s/M {res['why']}", flush=True)
                q = stage.quiet(10.0)
                if len(wanted) > 1 and (res.get("closed") or not (q and q.get("quiet"))):
                    stage = fresh(stage, st, log)  # a backlog left over
            if stage is not None and "saturation" in wanted:
                st["saturation"] = {}
                for size in plan.sizes:
                    st["saturation"][str(size)], stage = saturate(stage, size, bound, plan, st, log)
                    if stage is None:
                        break
            if stage is not None and "sweep" in wanted:
                st["sweep"] = {}
                for size in plan.sizes:
                    st["sweep"][str(size)], stage = sweep(stage, size, plan, st, log)
                    if stage is None:
                        break
        finally:
            if stage is not None:
                stage.stop()
    return out


def show(name: str, n: int, size: int, rate: float, res: dict[str, Any], verdict: str | None = None) -> None:
    lat = res.get("latency_ms", {})
    steal = res.get("steal_ms", {})
    pub = res.get("publisher") or {}
    late = pub.get("late_ms", {})
    v = verdict if verdict is not None else ("PASS" if res.get("pass") else "fail")
    print(f"[{name}] {n} x {size} B @{rate:g}/s: {v} "
          f"delivered {res.get('delivered_per_second', 0):,.0f}/s ({100 * res.get('delivered_fraction', 0):.1f}%) "
          f"p50 {lat.get('p50', 0):.1f} p99 {lat.get('p99', 0):.1f} ms "
          f"srv cpu {res.get('server_cpu_fraction', 0):.2f} core0 {res.get('server_core_busy_fraction', 0):.2f} "
          f"subs cpu {res.get('subscriber_cpu_fraction', 0):.2f} pub cpu {res.get('publisher_cpu_fraction', 0):.2f}"
          f"{' redis cpu %.2f (%.1f us/pub)' % (res['redis_cpu_fraction'], res.get('redis_us_per_publish') or 0) if 'redis_cpu_fraction' in res else ''}"
          f"{' pub late p99 %.1f ms' % late.get('p99', 0) if late else ''} "
          f"steal {steal.get('cpu0', 0)}/{steal.get('cpu1', 0)} ms other {res.get('other_cpu_fraction', 0):.2f}"
          f"{' - ' + res['why'] if res.get('why') else ''}", flush=True)


def saturate(stage: Stage, size: int, bound_ms: float, plan: Plan, st: dict[str, Any],
             log: list[str]) -> tuple[dict[str, Any], Stage | None]:
    n = stage.n
    name = stage.row.key
    grace = 1.0 if bound_ms <= 100 else 2.0
    abort_ms = max(2000.0, 5 * bound_ms)
    rate = 50000.0 / n
    max_rate = 12e6 / n  # past the client's ceiling
    lo: float | None = None
    hi: float | None = None
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    retried: set[float] = set()
    for _ in range(plan.max_steps):
        res = stage.step(rate, plan.step_seconds, size, grace, abort_ms)
        ok, why = judge(res, rate, bound_ms)
        res["pass"], res["why"] = ok, why
        res.pop("hist", None)
        steps.append(res)
        show(name, n, size, rate, res)
        if not ok and why.startswith("p99") and ";" not in why and rate not in retried:
            # only the latency bound failed: this machine has stalls of 100-200 ms now and then
            # (a shared VM), so a step failing on p99 alone is run again once, and the second counts
            retried.add(rate)
            print(f"[{name}] {n} x {size} B @{rate:.1f}/s: failed on p99 alone ({why}); once more", flush=True)
            stage.quiet(10.0)
            res = stage.step(rate, plan.step_seconds, size, grace, abort_ms)
            ok, why = judge(res, rate, bound_ms)
            res["pass"], res["why"], res["retry"] = ok, why, True
            res.pop("hist", None)
            steps.append(res)
            show(name, n, size, rate, res)
        if ok:
            lo = rate
            if best is None or res["delivered_per_second"] > best["delivered_per_second"]:
                best = res
        else:
            hi = rate
        # the next rate
        if hi is None:
            nxt = rate * 4
            if nxt > max_rate:
                nxt = max_rate if rate < max_rate else None
        elif lo is None:
            nxt = rate / 4 if rate / 4 >= 1000.0 / n else None
        else:
            nxt = math.sqrt(lo * hi) if hi / lo > 1.2 else None
        # a failed step may leave a backlog or closed connections: a fresh stage then
        q = stage.quiet(10.0) if nxt is not None else None
        need_fresh = res.get("closed", 0) > 0 or res.get("error") or (q is not None and not q.get("quiet"))
        if nxt is None:
            break
        if need_fresh:
            new = fresh(stage, st, log)
            if new is None:
                return {"steps": steps, "best": best, "error": "restart failed"}, None
            stage = new
        rate = nxt
    result: dict[str, Any] = {"steps": steps, "best": best, "bound_ms": bound_ms}
    if best is not None:
        fail_above = [s for s in steps if not s.get("pass") and s.get("rate", 0) > best["rate"]]
        result["client_bound"] = bool(
            best.get("client_bound")
            or any(s.get("client_bound") and s.get("server_core_busy_fraction", 1) < 0.9 for s in fail_above))
    return result, stage


def collapsed(res: dict[str, Any]) -> str:
    """Why a sweep step collapsed ('' if it did not): the rest of that ladder is not run."""
    if res.get("error"):
        return res["error"]
    if res.get("aborted"):
        return "stopped: a delivery was 5 s late"
    if res.get("delivered_fraction", 0) < 0.5:
        return f"delivered {100 * res.get('delivered_fraction', 0):.0f}%"
    if res.get("latency_ms", {}).get("p99", 0) >= 2000:
        return f"p99 {res['latency_ms']['p99'] / 1000:.1f} s"
    if res.get("publish_rate", 0) < 0.5 * res.get("rate", 0):
        # the server held the publisher back (replies late, every connection at its depth)
        return f"publisher got {res.get('publish_rate', 0):.0f}/s of {res.get('rate', 0):g}/s"
    return ""


def sweep(stage: Stage, size: int, plan: Plan, st: dict[str, Any],
          log: list[str]) -> tuple[dict[str, Any], Stage | None]:
    n = stage.n
    name = stage.row.key
    rates = sweep_rates(n)[: plan.sweep_max_steps]
    steps: list[dict[str, Any]] = []
    stopped = ""
    for i, rate in enumerate(rates):
        res = stage.step(rate, plan.sweep_seconds, size, 2.0, 5000.0)
        res.pop("hist", None)
        res["pass"], res["why"] = judge(res, rate, stage_bound_ms(n))
        res["publisher_behind"] = bool(res.get("publish_rate", 0) < 0.97 * rate or res.get("unanswered")
                                       or (res.get("publisher") or {}).get("gave_up"))
        why = collapsed(res)
        res["collapsed"] = why
        steps.append(res)
        show(name, n, size, rate, res, "COLLAPSED" if why else ("ok" if res["pass"] else "degraded"))
        if why:
            left = len(rates) - i - 1
            stopped = f"collapsed at {rate:g}/s ({why})" + (f"; {left} higher rates not run" if left else "")
            if left:
                print(f"[{name}] {n} x {size} B: {stopped}", flush=True)
        q = stage.quiet(10.0)
        if why or res.get("closed", 0) > 0 or res.get("error") or not (q and q.get("quiet")):
            new = fresh(stage, st, log)  # a backlog or closed connections left over
            if new is None:
                return {"rates": rates, "steps": steps, "stopped": stopped or "restart failed"}, None
            stage = new
        if why:
            break
    return {"rates": rates, "steps": steps, "stopped": stopped}, stage


# ---------------------------------------------------------------- machine


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, Any]:
    model = hyper = ""
    for line in sh(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("Hypervisor vendor:"):
            hyper = line.split(":", 1)[1].strip()
    with open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    pkgs = sh([str(VENV_PY), "-c", (
        "import importlib.metadata as m\n"
        "for p in ('aiohttp','uvloop','orjson','websockets','picows','socketify'):\n"
        "    try: print(p, m.version(p))\n"
        "    except Exception: print(p, '-')\n")])
    versions = dict(line.split(" ", 1) for line in pkgs.splitlines() if " " in line)
    ws_pkg = BENCH / "peers" / "node_ws" / "node_modules" / "ws" / "package.json"
    if ws_pkg.exists():
        versions["ws (node)"] = json.loads(ws_pkg.read_text())["version"]
    if (UWS_PKG / "package.json").exists():
        versions["uWebSockets.js (@trufflesuite/uws-js-unofficial)"] = json.loads(
            (UWS_PKG / "package.json").read_text())["version"]
    core = sh([str(ROOT / ".venv" / "bin" / "aiosrv"), "version"])
    return {
        "cpu_model": model, "hypervisor": hyper, "cpus": os.cpu_count(), "memory": mem,
        "kernel": platform.release(), "os": sh(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
        "python": platform.python_version(), "node": sh(["node", "--version"]),
        "redis_server": sh(["redis-server", "--version"]),
        "cc": sh(["cc", "--version"]).splitlines()[0] if shutil.which("cc") else "",
        "aiosrv": core, "aiosrv_commit": sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "aiosrv_dirty": bool(sh(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])),
        "packages": versions, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ---------------------------------------------------------------- report


def fmt_rate(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e3:
        return f"{v / 1e3:.0f} k"
    return f"{v:.0f}"


def cpu_cell(r: dict[str, Any]) -> str:
    """server CPU s per million deliveries: the process / its whole core (with kernel softirq)"""
    a, b = r.get("server_cpu_s_per_million"), r.get("server_core_s_per_million")
    f = (lambda v: "–" if v is None else f"{v:.2f}")
    return f"{f(a)} / {f(b)} s"


def redis_cell(r: dict[str, Any]) -> str:
    """Redis' own CPU: seconds per million deliveries, µs per publish ('' for a server without Redis)."""
    if r.get("redis_cpu_s_per_million") is None:
        return ""
    us = r.get("redis_us_per_publish")
    return (f"; Redis {r['redis_cpu_s_per_million']:.2f} s/M, "
            f"{'–' if us is None else '%.0f' % us} µs/publish")


def pub_desc(report: dict[str, Any]) -> str:
    d = report["plan"]["pub_depth"]
    return (
        "Publisher: `bench/publisher`, its own process on the load CPU, paced by its own clock (absolute "
        "CLOCK_MONOTONIC deadlines, a timerfd); one message per `POST /api/publish` (HTTP rows) or per "
        "WebSocket frame (WS rows), each in its own send(), never merged when late; K connections with the "
        f"messages spread round-robin, at most {d['http']} pipelined requests (HTTP) or {d['ws']} unacknowledged "
        "frames (WS) outstanding per connection: a message due while every connection is at that depth waits "
        "(and is late). Rows marked \"in the subscribers' loop (old)\" use the old publisher, which shares the "
        "subscribers' epoll loop and sends every due message in one write (or one JSON list per POST): it "
        "hands a busy server batches that independent publishers never send, so those rows flatter the server."
    )


def sweep_cell(r: dict[str, Any]) -> str:
    la = r.get("latency_ms", {})
    if r.get("error"):
        return f"error: {r['error']}"
    marks = ("†" if r.get("client_bound") else "") + ("‡" if r.get("publisher_behind") else "")
    cell = (f"{la.get('p50', 0):.1f} / {la.get('p99', 0):.1f} / {la.get('p999', 0):.1f}; "
            f"{100 * r.get('delivered_fraction', 0):.1f}%; "
            f"{'–' if r.get('server_cpu_s_per_million') is None else '%.2f' % r['server_cpu_s_per_million']}"
            f"{redis_cell(r)}{marks}")
    if r.get("publisher_behind") and not r.get("collapsed"):
        cell += f" (got {r.get('publish_rate', 0):.0f}/s)"
    if r.get("collapsed"):
        cell = f"✗ {cell} (collapsed: {r['collapsed']})"
    return cell


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    plan = report["plan"]
    lines = [
        "# aiosrv end-to-end benchmark",
        "",
        f"Run {m['date']}{' (quick mode: small and short, for smoke testing only)' if report['quick'] else ''}; "
        f"took {report['seconds'] / 60:.1f} min; aiosrv at {m.get('aiosrv_commit', '?')}"
        f"{' with uncommitted changes' if m.get('aiosrv_dirty') else ''}.",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus']} vCPUs ({m['hypervisor'] or 'bare metal'}"
        f"{' guest' if m['hypervisor'] else ''}), {m['memory']}, "
        f"Linux {m['kernel']} ({m['os']}); Python {m['python']}, Node {m['node']}; {m['cc']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + f"; {m['aiosrv']}.",
        "",
        f"Server pinned to CPU {plan['server_cpu']}; the load (subscribers: {plan['sub_procs']} `bench/loadclient` "
        f"process(es); the publisher) pinned to CPU {','.join(plan['client_cpus'])}.",
        "",
        pub_desc(report),
        "",
        "† = the load side was the limit there: a subscriber process, the publisher, or the load CPU in total "
        "was ≥ 90% busy; the figure is a floor, not the server's limit.",
        "",
    ]
    if report.get("redis"):
        rd = report["redis"]
        lines += [
            f"Redis rows: the run's own redis-server {rd.get('version')} (127.0.0.1:{rd.get('port')}, pid "
            f"{rd.get('pid')}, checked to be what answers: INFO process_id and the listening socket), no "
            f"persistence, pinned to CPU {rd.get('cpu')}; each server stage has its own channel prefix. Server CPU "
            "is the process tree (the supervisor and its workers with `--workers 2`). \"Redis … s/M\" = "
            "redis-server's CPU seconds (its run time from /proc/<pid>/task/*/schedstat, checked against /proc/<pid>/stat) per million deliveries; \"µs/publish\" = its CPU per "
            "acknowledged publish. With Redis on the server's CPU, the \"whole core\" figure includes Redis.",
            "",
        ]
    ceil = report.get("client_ceiling") or {}
    if ceil:
        parts = [f"{c['payload_bytes']} B payloads: {fmt_rate(c['frames_per_second'])} frames/s"
                 for c in ceil.get("ceiling", [])]
        lines.append("Subscriber client's ceiling, parsing from memory: " + "; ".join(parts) + ".")
        sc = ceil.get("socket_ceiling", [])
        batched = [c for c in sc if c.get("sender_writes") != "one frame"]
        single = [c for c in sc if c.get("sender_writes") == "one frame"]
        if batched:
            lines.append("Through loopback TCP from an ideal C sender on CPU 0 writing 64 KiB at a time "
                         "(the most any server could get delivered here): " + "; ".join(
                             f"{c['connections']:,} conns × {c['payload_bytes']} B: "
                             f"{fmt_rate(c['frames_per_second'])} frames/s" for c in batched) + ".")
        if single:
            lines.append("The same sender writing one frame per system call, round-robin over the "
                         "connections (the floor of a pass that writes every subscriber once: "
                         "connections ÷ this rate): " + "; ".join(
                             f"{c['connections']:,} conns × {c['payload_bytes']} B: "
                             f"{fmt_rate(c['frames_per_second'])} frames/s, a pass "
                             f"{c['connections'] / c['frames_per_second'] * 1000:.1f} ms"
                             for c in single) + ".")
        lines.append("")
    rows = report["servers"]

    def stage(srv: dict[str, Any], n: int) -> dict[str, Any]:
        return srv.get("stages", {}).get(str(n), {})

    def has(srv: dict[str, Any], scenario: str) -> bool:
        return not srv.get("skipped") and scenario in SERVERS[srv["server"]].scenarios

    stages, sizes = plan["stages"], plan["sizes"]
    if "sweep" in plan["scenarios"]:
        sw_rows = [r for r in rows if has(r, "sweep")]
        lines += ["## Rate sweep", "",
                  f"Fixed publish rates, doubling, {plan['sweep_seconds']:g} s each. Cell: p50 / p99 / p99.9 latency "
                  "in ms; share of the deliveries that arrived; server CPU seconds per million deliveries (the "
                  "server process). ‡ = the publisher did not get its rate (below 97%, or replies missing). "
                  "✗ = collapsed (delivered < 50%, p99 ≥ 2 s, the publisher held below half its rate, or stopped "
                  "because a delivery was 5 s late): the higher rates of that column were not run (–). "
                  "Latency runs from each message's actual send; how late the publisher ran against its "
                  "deadlines (a server that answers slowly holds it back) is in the .json "
                  "(publisher.late_ms).", ""]
        for n in plan["sweep_stages"]:
            for size in sizes:
                per_row = {r["name"]: stage(r, n).get("sweep", {}).get(str(size)) for r in sw_rows}
                rates = sweep_rates(n)[: plan["sweep_max_steps"]]
                lines += [f"### {n:,} subscribers × {size} B", ""]
                lines.append("| publishes/s (deliveries/s) | " + " | ".join(r["label"] for r in sw_rows) + " |")
                lines.append("|---|" + "---|" * len(sw_rows))
                for rate in rates:
                    cells = []
                    for r in sw_rows:
                        sw = per_row[r["name"]]
                        if not sw:
                            cells.append(stage(r, n).get("error", "–") if stage(r, n) else "–")
                            continue
                        hit = [s for s in sw["steps"] if abs(s.get("rate", 0) - rate) < 1e-6]
                        cells.append(sweep_cell(hit[0]) if hit else "–")
                    lines.append(f"| {rate:g} ({fmt_rate(rate * n)}) | " + " | ".join(cells) + " |")
                notes = [f"{r['label']}: {per_row[r['name']]['stopped']}" for r in sw_rows
                         if per_row[r["name"]] and per_row[r["name"]].get("stopped")]
                lines.append("")
                if notes:
                    lines += ["Stopped early: " + "; ".join(notes) + ".", ""]
    if "saturation" in plan["scenarios"]:
        lines += ["## Delivered messages per second at saturation", "",
                  "Highest rate passing: publisher at its rate, ≥ 99% delivered, no gap, no connection closed, "
                  "p99 < 100 ms (1k subscribers) or < 1 s (10k). Cell: delivered/s (publishes/s; p99; "
                  "server CPU seconds per million deliveries: the server process / its whole core, with the "
                  "kernel's softirq work). † = the load side was ≥ 90% busy there or just above: "
                  "a floor, not the server's limit.", ""]
        cols = [(n, s) for n in stages for s in sizes]
        lines.append("| server | " + " | ".join(f"{n:,} subs × {s} B" for n, s in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for srv in rows:
            if not has(srv, "saturation"):
                continue
            cells = []
            for n, s in cols:
                sat = stage(srv, n).get("saturation", {}).get(str(s))
                if not sat:
                    cells.append(stage(srv, n).get("error", "–") if stage(srv, n) else "–")
                    continue
                b = sat.get("best")
                if not b:
                    first = sat["steps"][0] if sat.get("steps") else {}
                    cells.append(f"none passed ({first.get('why', sat.get('error', ''))})")
                    continue
                cells.append(
                    f"**{fmt_rate(b['delivered_per_second'])}**{'†' if sat.get('client_bound') else ''} "
                    f"({b['rate']:.0f}/s; {b['latency_ms']['p99']:.0f} ms; {cpu_cell(b)}{redis_cell(b)})")
            lines.append(f"| {srv['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "latency" in plan["scenarios"]:
        lines += ["## Publish-to-receive latency", "",
                  "100 B payloads. Cell: p50 / p99 / p99.9 / max in ms; delivered; "
                  "server CPU seconds per million deliveries (process / whole core).", ""]
        lat_cols = [n for n in stages if n in plan["latency_n"]]
        lines.append("| server | " + " | ".join(
            f"{n:,} subs @ {plan['latency_n'][n][0]:g}/s" for n in lat_cols) + " |")
        lines.append("|---|" + "---|" * len(lat_cols))
        for srv in rows:
            if not has(srv, "latency"):
                continue
            cells = []
            for n in lat_cols:
                r = stage(srv, n).get("latency")
                if not r or r.get("error"):
                    cells.append((r or stage(srv, n)).get("error", "–") if (r or stage(srv, n)) else "–")
                    continue
                la = r["latency_ms"]
                extra = f" ({r['why']})" if r.get("why") else ""
                cells.append(f"{la['p50']:.1f} / {la['p99']:.1f} / {la['p999']:.1f} / {la['max']:.1f}; "
                             f"{100 * r['delivered_fraction']:.1f}%; {cpu_cell(r)}{redis_cell(r)}"
                             f"{'†' if r.get('client_bound') else ''}{extra}")
            lines.append(f"| {srv['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "rss" in plan["scenarios"]:
        lines += ["## Server memory per idle connection", "",
                  "(RSS after the subscribers connected and subscribed − RSS before) / subscribers.", ""]
        lines.append("| server | " + " | ".join(f"{n:,} connections" for n in stages) + " |")
        lines.append("|---|" + "---|" * len(stages))
        for srv in rows:
            if not has(srv, "rss"):
                continue
            cells = []
            for n in stages:
                s = stage(srv, n)
                if "rss_per_connection_bytes" in s:
                    cells.append(f"{s['rss_per_connection_bytes'] / 1024:.1f} KiB "
                                 f"({s['rss_before_kib'] / 1024:.0f} → {s['rss_connected_kib'] / 1024:.0f} MiB)")
                else:
                    cells.append(s.get("error", "–"))
            lines.append(f"| {srv['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    skipped = [s for s in rows if s.get("skipped")]
    if skipped or report["notes"]:
        lines += ["## Not measured", ""]
        lines += [f"* {s['label']}: {s['skipped']}" for s in skipped]
        lines += [f"* {n}" for n in report["notes"]]
        lines.append("")
    lines += ["Every step (rate, delivered, loss, latency, the publisher's lateness and reply times, CPU of every "
              "process) is in the .json beside this file.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def n_of(s: str) -> int:
    s = s.strip().lower()
    return int(float(s[:-1]) * 1000) if s.endswith("k") else int(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small N, short steps: a smoke test")
    ap.add_argument("--servers", default=None,
                    help=f"comma-separated, from: {', '.join(SERVERS)} (default: {','.join(DEFAULT_SERVERS)}; "
                         f"for --scenarios sweep alone: {','.join(SWEEP_SERVERS)})")
    ap.add_argument("--stages", default=None, help="subscriber counts, e.g. 10000,1000 (default) or 1k")
    ap.add_argument("--scenarios", default="rss,latency,saturation", help="rss, latency, saturation, sweep")
    ap.add_argument("--sizes", default="100,1000", help="payload bytes (saturation and sweep)")
    ap.add_argument("--step-seconds", type=float, default=None, help="saturation step length")
    ap.add_argument("--max-steps", type=int, default=None, help="saturation steps per (server, N, size)")
    ap.add_argument("--sweep-stages", default=None, help="subscriber counts of the sweep (default 1000,10000)")
    ap.add_argument("--sweep-seconds", type=float, default=None, help="sweep step length (default 6)")
    ap.add_argument("--sweep-steps", type=int, default=None, help="at most this many rates per sweep ladder")
    ap.add_argument("--pub-conns", default="1",
                    help="publisher connections of bench/publisher, e.g. 50, or 1,50 for a row of each")
    ap.add_argument("--pub-depth", default=None, metavar="HTTP,WS",
                    help=f"outstanding requests per publisher connection (default "
                         f"{DEFAULT_DEPTH['http']},{DEFAULT_DEPTH['ws']})")
    ap.add_argument("--sub-procs", type=int, default=1, help="subscriber client processes (N split among them)")
    ap.add_argument("--client-cpus", default=CLIENT_CPU,
                    help="CPUs of the load processes, e.g. 1 or 1,2,3 (subscriber processes round-robin; "
                         "the publisher on the first)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the load client's own ceiling")
    ap.add_argument("--redis-cpu", default=SERVER_CPU,
                    help=f"CPU of the redis-server of the Redis rows (default {SERVER_CPU}, the server's)")
    ap.add_argument("--out", default=str(RESULTS / "latest"), help="writes OUT.json and OUT.md")
    args = ap.parse_args()

    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("needs 2 CPUs (server on CPU 0, load on CPU 1)", file=sys.stderr)
        return 2
    client_cpus = [c.strip() for c in args.client_cpus.split(",") if c.strip()]
    if SERVER_CPU in client_cpus:
        print(f"--client-cpus must not include the server's CPU {SERVER_CPU}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {int(client_cpus[0])})
    global REDIS_CPU
    REDIS_CPU = args.redis_cpu.strip()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop servers
    build_tools()
    RAW.mkdir(parents=True, exist_ok=True)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for sc in scenarios:
        if sc not in ("rss", "latency", "saturation", "sweep"):
            print(f"unknown scenario {sc!r}", file=sys.stderr)
            return 2

    if args.quick:
        sizes = [int(x) for x in (args.sizes if args.sizes != "100,1000" else "100").split(",")]
        plan = Plan(True, [n_of(x) for x in (args.stages or "500").split(",")], scenarios, sizes,
                    {}, args.step_seconds or 1.0, args.max_steps or 2, 2000,
                    sweep_stages=[n_of(x) for x in (args.sweep_stages or "500").split(",")],
                    sweep_seconds=args.sweep_seconds or 2.0, sweep_max_steps=args.sweep_steps or 3)
        plan.latency = {n: (50.0, 2.0) for n in plan.stages}
    else:
        plan = Plan(False, [n_of(x) for x in (args.stages or "10000,1000").split(",")], scenarios,
                    [int(x) for x in args.sizes.split(",")],
                    {10000: (10.0, 10.0), 1000: (100.0, 10.0)}, args.step_seconds or 3.0,
                    args.max_steps or 7, 2000,
                    sweep_stages=[n_of(x) for x in (args.sweep_stages or "1000,10000").split(",")],
                    sweep_seconds=args.sweep_seconds or 6.0, sweep_max_steps=args.sweep_steps or 99)
        for n in plan.stages:
            plan.latency.setdefault(n, (1e5 / n, 10.0))
    if "sweep" not in scenarios:
        plan.sweep_stages = []
    if not any(s in scenarios for s in ("rss", "latency", "saturation")):
        plan.stages = []
    plan.sub_procs = max(1, args.sub_procs)
    plan.client_cpus = client_cpus
    if args.pub_depth:
        h, w = (int(x) for x in args.pub_depth.split(","))
        plan.pub_depth = {"http": h, "ws": w}

    default = SWEEP_SERVERS if scenarios == ["sweep"] else DEFAULT_SERVERS
    names = [s.strip() for s in (args.servers or ",".join(default)).split(",") if s.strip()]
    for nm in names:
        if nm not in SERVERS:
            print(f"unknown server {nm!r}; known: {', '.join(SERVERS)}", file=sys.stderr)
            return 2
    pub_conns = [int(x) for x in args.pub_conns.split(",") if x.strip()]
    rows: list[Row] = []
    for nm in names:
        srv = SERVERS[nm]
        for k in ([1] if srv.inloop else pub_conns):
            rows.append(Row(srv, k))
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "quick": plan.quick, "machine": machine(), "notes": [],
        "plan": {"stages": plan.stages, "scenarios": plan.scenarios, "sizes": plan.sizes,
                 "latency_n": plan.latency, "step_seconds": plan.step_seconds, "max_steps": plan.max_steps,
                 "sweep_stages": plan.sweep_stages, "sweep_seconds": plan.sweep_seconds,
                 "sweep_max_steps": plan.sweep_max_steps, "sweep_rates": {str(n): sweep_rates(n)[
                     : plan.sweep_max_steps] for n in plan.sweep_stages},
                 "ramp_per_second": plan.ramp, "server_cpu": SERVER_CPU, "client_cpus": plan.client_cpus,
                 "redis_cpu": REDIS_CPU,
                 "sub_procs": plan.sub_procs, "pub_conns": pub_conns, "pub_depth": plan.pub_depth},
        "servers": [],
    }
    if not args.no_ceiling:
        cmd = ["taskset", "-c", client_cpus[0], str(CLIENT), "--ceiling"]
        if plan.quick:
            cmd = [str(CLIENT), "--ceiling-memory"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        try:
            report["client_ceiling"] = json.loads(out.stdout)
        except json.JSONDecodeError:
            report["notes"].append(f"load client ceiling failed: {out.stderr.strip()}")
        print(f"load client ceiling: {out.stdout.strip()}", flush=True)
    try:
        for row in rows:
            res = run_row(row, plan, report["notes"])
            report["servers"].append(res)
            if REDIS is not None:
                report["redis"] = dict(REDIS.info)
            report["seconds"] = time.monotonic() - t0
            write(report, Path(args.out))  # after each row, so a partial run leaves results
    finally:
        if REDIS is not None:
            REDIS.stop()
    report["seconds"] = time.monotonic() - t0
    write(report, Path(args.out))
    print(f"done in {report['seconds'] / 60:.1f} min: {args.out}.json, {args.out}.md", flush=True)
    return 0


def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    rep = dict(report)
    rep["plan"] = dict(report["plan"])
    rep["plan"]["latency_n"] = {str(k): v for k, v in report["plan"]["latency_n"].items()}
    out.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
