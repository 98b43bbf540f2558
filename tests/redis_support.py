"""Real ``redis-server`` processes for tests: single servers and Sentinel setups.

How Redis tests work
--------------------
* **Real processes.** Every server is ``/usr/bin/redis-server`` (Debian's
  package; ``make system-deps`` / ``scripts/system-deps.sh`` installs it),
  started by the test and killed by it. Nothing is mocked, and the shared
  Redis on 6379 is never touched.
* **Free ports.** The port comes from the OS (bind port 0 on 127.0.0.1, read
  it, close), then ``redis-server --port P --bind 127.0.0.1 --save ""
  --appendonly no --dir <tmpdir>`` starts on it. If something took the port
  in between, Redis fails to bind and the start is retried on a new port.
* **Pid-checked.** A server counts as started when it answers PING *and*
  ``INFO server``'s ``process_id`` is the pid of the process we started: a
  test can never talk to some other Redis by accident.
* **Always cleaned up.** The fixtures (and ``with RedisServer() as r:``) kill
  the process (SIGKILL, then wait) and remove its temporary directory, even
  when the test fails; anything still running at interpreter exit is killed.
* **Never skipped.** A missing ``redis-server`` fails the test with a message
  that names ``make system-deps``.

Fixtures (registered in ``tests/conftest.py``, so every test directory has
them):

``redis_server``
    a started :class:`RedisServer` (function scope).
``redis_factory``
    ``redis_factory(**kwargs) -> RedisServer``: start as many as the test
    needs (``kwargs`` as for :class:`RedisServer`).
``redis_sentinel``
    a started :class:`RedisSentinelSetup`: master, one replica, one sentinel.
``redis_sentinel_factory``
    ``redis_sentinel_factory(sentinels=3, ...) -> RedisSentinelSetup``.

Failure modes a test can produce::

    redis_server.kill()                   # crash: connection refused from now on
    redis_server.stop()                   # clean shutdown (SIGTERM)
    redis_server.restart()                # back on the same port, empty
    redis_server.restart(keep_data=True)  # back with its data (see restart())
    redis_server.freeze(); ...; redis_server.thaw()   # hung: connects, no replies
    with redis_server.frozen(): ...       # the same, as a block
    redis_server.pause(2.0)               # hung for 2 s, returns at once
    redis_sentinel.failover()             # master killed, replica promoted

The methods are synchronous and take milliseconds, except ``restart`` (a few
tens of ms) and ``failover`` (2 to 4 s). An async test whose event loop must
keep running meanwhile (an engine reconnecting while Redis restarts) uses
``await server.arestart()`` / ``await setup.afailover()``, which run them in a
thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

HOST = "127.0.0.1"
#: The shared Redis of the machine: never used by tests.
SHARED_PORT = 6379

MISSING = (
    "{name} is not installed: run `make system-deps` (scripts/system-deps.sh), "
    "which installs Debian's redis-server package"
)


def find_program(name: str) -> str | None:
    """``name`` on PATH, else in /usr/bin (PATH may lack it under sudo or CI)."""
    fallback = f"/usr/bin/{name}"
    return shutil.which(name) or (fallback if os.access(fallback, os.X_OK) else None)


def redis_binary(name: str = "redis-server") -> str:
    """The path of ``redis-server`` (or ``redis-cli``); fails the test (never
    skips) when it is not installed."""
    path = find_program(name)
    if path is None:
        pytest.fail(MISSING.format(name=name), pytrace=False)
    return path


def free_port() -> int:
    """A port the OS says is free on 127.0.0.1 now (never 6379)."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port != SHARED_PORT:
            return port


# --- a minimal RESP client (the helper must not depend on aiosrv or redis-py) ---


class RedisReplyError(Exception):
    """Redis answered with an error reply (``-ERR ...``)."""


def _encode(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_reply(f: Any) -> Any:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by Redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("connection closed by Redis")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply from Redis: {line!r}")


def resp_command(
    host: str, port: int, *args: Any, timeout: float = 2.0, password: str | None = None
) -> Any:
    """Send one command on a new connection and return the reply (strings,
    ints, None, lists). An error reply raises :class:`RedisReplyError`; no
    answer within ``timeout`` raises ``TimeoutError`` (``socket.timeout``);
    nothing listening raises ``ConnectionRefusedError``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        with sock.makefile("rb") as f:
            if password is not None:
                sock.sendall(_encode(["AUTH", password]))
                reply = _read_reply(f)
                if isinstance(reply, RedisReplyError):
                    raise reply
            sock.sendall(_encode(args))
            reply = _read_reply(f)
    if isinstance(reply, RedisReplyError):
        raise reply
    return reply


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` output as a dict (``role`` -> ``master``, ...)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def _pairs(flat: list[Any]) -> dict[str, Any]:
    return {str(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _without_replicaof(args: list[str]) -> list[str]:
    """``args`` without a ``--replicaof HOST PORT``."""
    if "--replicaof" not in args:
        return list(args)
    i = args.index("--replicaof")
    return args[:i] + args[i + 3 :]


def _wait(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Call ``check`` until it returns something truthy (connection errors and
    error replies count as not yet); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, RedisReplyError) as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s (last error: {last!r})")
        time.sleep(interval)


# --- processes ---

_live: weakref.WeakSet[RedisServer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.close()


class _PortTaken(Exception):
    pass


class RedisServer:
    """One ``redis-server`` process on a free port of 127.0.0.1.

    ``RedisServer()`` only prepares; ``start()`` (or ``with RedisServer() as
    r``, or the fixtures) starts it and waits until it answers PING and its
    ``INFO server`` process_id is our pid.

    ``appendonly=True`` runs with ``--appendonly yes --appendfsync always``:
    every write is on disk before Redis acknowledges it, so even ``kill()``
    (SIGKILL) keeps the data for ``restart(keep_data=True)``.
    ``password`` sets ``--requirepass`` (``url`` carries it). ``args`` are
    more ``redis-server`` options, e.g. ``["--maxmemory", "10mb"]``.
    """

    def __init__(
        self,
        *,
        args: Sequence[str] = (),
        appendonly: bool = False,
        password: str | None = None,
        directory: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.extra_args = list(args)
        self.appendonly = appendonly
        self.password = password
        self.start_timeout = start_timeout
        self._own_dir = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="aiosrv-redis-")
        os.makedirs(self.dir, exist_ok=True)
        self._port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._thaw_timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._closed = False
        _live.add(self)

    # addresses

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("RedisServer not started yet")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> str:
        """Where the process's stdout/stderr (Redis's log) go."""
        return os.path.join(self.dir, "redis.log")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {HOST}:{self._port} pid={self.pid} {state}>"

    # the command line

    def _argv(self, port: int) -> list[str]:
        argv = [
            redis_binary(),
            "--port", str(port),
            "--bind", HOST,
            "--dir", self.dir,
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
            # a replica's first full sync starts at once (default: after 5 s)
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        if self.password is not None:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        return argv + self.extra_args

    # lifecycle

    def start(self) -> RedisServer:
        """Start on a free port (a new one on each retry when the port was
        taken meanwhile); return self once it answers and the pid matches.
        If it cannot start, it is closed (its directory removed) and the
        error raised."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        try:
            for _ in range(8):
                port = free_port()
                try:
                    self._launch(port)
                    return self
                except _PortTaken:
                    continue
            raise RuntimeError(
                "could not start redis-server: 8 free ports were all taken meanwhile"
            )
        except BaseException:
            self.close()
            raise

    def _launch(self, port: int) -> None:
        argv = self._argv(port)
        log_start = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
            )  # fmt: skip
        self._port = port
        proc = self.proc
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                log_text = self.log()[log_start:]
                if (
                    "Address already in use" in log_text
                    or "Could not create server TCP" in log_text
                ):
                    raise _PortTaken()
                raise RuntimeError(
                    f"redis-server exited with {proc.returncode} at start "
                    f"({' '.join(argv)}); its log:\n{log_text[-3000:]}"
                )
            try:
                if self.command("PING", timeout=0.5) == "PONG":
                    break
            except (OSError, RedisReplyError):
                pass  # not listening yet, or LOADING
            if time.monotonic() > deadline:
                self._kill_proc()
                raise RuntimeError(
                    f"redis-server on port {port} did not answer PING within "
                    f"{self.start_timeout}s; its log:\n{self.log()[-3000:]}"
                )
            time.sleep(0.005)
        answered = int(parse_info(self.command("INFO", "server"))["process_id"])
        if answered != proc.pid:
            # another Redis holds the port and ours failed to bind (or will)
            self._kill_proc()
            raise _PortTaken()

    def _kill_proc(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        self._cancel_thaw()
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
                if sig != signal.SIGKILL:
                    # a frozen process handles SIGTERM only once thawed
                    proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        else:
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone: a crash. Connections are reset
        and new ones refused; unsaved data is lost (unless ``appendonly``)."""
        self._kill_proc(signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown: Redis closes its clients), and wait."""
        self._kill_proc(signal.SIGTERM, timeout)

    def restart(self, keep_data: bool = False) -> RedisServer:
        """Start again on the same port (stopping it first if running).

        ``keep_data=False``: it comes back empty (its files are deleted).
        ``keep_data=True``: it comes back with its data. If it is running, it
        is ``SAVE``d and then killed, so this holds whatever the options; if it
        was already killed, it comes back with what was on disk: everything
        with ``appendonly=True``, else the last ``save()`` (or nothing).
        """
        if self._port is None:
            raise RuntimeError("restart() of a RedisServer that never started")
        if self.running:
            if keep_data:
                self.save()
            self.kill()
        if not keep_data:
            self._wipe()
        try:
            self._launch(self._port)
        except _PortTaken:
            raise RuntimeError(
                f"port {self._port} was taken by another process while Redis was down"
            ) from None
        return self

    async def arestart(self, keep_data: bool = False) -> RedisServer:
        """``restart`` in a thread, so the test's event loop keeps running."""
        return await asyncio.to_thread(self.restart, keep_data)

    def _wipe(self) -> None:
        for name in os.listdir(self.dir):
            if name == "redis.log" or name.endswith(".conf"):
                continue
            path = os.path.join(self.dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def save(self) -> None:
        """``SAVE``: write the data to disk now (dump.rdb in its directory)."""
        self.command("SAVE", timeout=10.0)

    # hung Redis

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections (into the listen
        backlog) and buffers what clients send, but nothing is answered: a hung
        or very slow Redis. ``thaw()`` resumes it, and it then answers
        everything that waited."""
        self._cancel_thaw()
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT (see ``freeze``)."""
        self._cancel_thaw()
        self._signal(signal.SIGCONT)

    def pause(self, seconds: float) -> None:
        """Freeze now and thaw after ``seconds``, from a timer thread: returns
        at once, so a sync or async test goes on while Redis hangs."""
        self.freeze()
        timer = threading.Timer(seconds, self._signal, (signal.SIGCONT,))
        timer.daemon = True
        with self._lock:
            self._thaw_timer = timer
        timer.start()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[RedisServer]:
        """``with server.frozen(): ...``: frozen inside the block, thawed after."""
        self.freeze()
        try:
            yield self
        finally:
            if self.running:
                self.thaw()

    def _signal(self, sig: int) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{self!r} is not running")
        proc.send_signal(sig)

    def _cancel_thaw(self) -> None:
        with self._lock:
            timer, self._thaw_timer = self._thaw_timer, None
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join()

    # commands

    def command(self, *args: Any, timeout: float = 2.0) -> Any:
        """Run one command over a raw socket and return the parsed reply
        (``"PONG"``, ``"OK"``, ints, strings, None, lists); an error reply
        raises :class:`RedisReplyError`."""
        return resp_command(HOST, self.port, *args, timeout=timeout, password=self.password)

    def cli(self, *args: str, timeout: float = 5.0) -> str:
        """Run ``redis-cli -p PORT args...`` and return its output (raw mode:
        one line per element, no trailing newline). An error reply raises
        :class:`RedisReplyError`."""
        argv = [redis_binary("redis-cli"), "-h", HOST, "-p", str(self.port)]
        if self.password is not None:
            argv += ["--no-auth-warning", "-a", self.password]
        done = subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        out = done.stdout.rstrip("\n")
        if done.returncode != 0 or out.startswith(("ERR ", "WRONGTYPE ", "NOAUTH ")):
            raise RedisReplyError((out + "\n" + done.stderr).strip())
        return out

    def info(self, section: str = "") -> dict[str, str]:
        """``INFO [section]`` as a dict."""
        return parse_info(self.command("INFO", *([section] if section else [])))

    def ping(self, timeout: float = 2.0) -> bool:
        return bool(self.command("PING", timeout=timeout) == "PONG")

    # cleanup

    def close(self) -> None:
        """Kill the process (if any) and remove its directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._kill_proc(signal.SIGKILL)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        _live.discard(self)

    def __enter__(self) -> RedisServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisSentinelProcess(RedisServer):
    """``redis-server <conf> --sentinel`` monitoring one master. Sentinel
    rewrites its config file as it learns; ``restart()`` writes a fresh one
    unless ``keep_data=True``."""

    def __init__(
        self,
        master_name: str,
        master: tuple[str, int],
        quorum: int,
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        directory: str | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(directory=directory)
        self.master_name = master_name
        self.monitored = master
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master_password = password
        self._keep_conf = False

    @property
    def conf_path(self) -> str:
        return os.path.join(self.dir, "sentinel.conf")

    def _argv(self, port: int) -> list[str]:
        if not (self._keep_conf and os.path.exists(self.conf_path)):
            name = self.master_name
            lines = [
                f"port {port}",
                f"bind {HOST}",
                f"dir {self.dir}",
                'logfile ""',
                "sentinel resolve-hostnames no",
                f"sentinel monitor {name} {self.monitored[0]} {self.monitored[1]} {self.quorum}",
                f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
            ]
            if self.master_password is not None:
                lines.append(f"sentinel auth-pass {name} {self.master_password}")
            with open(self.conf_path, "w") as f:
                f.write("\n".join(lines) + "\n")
        return [redis_binary(), self.conf_path, "--sentinel"]

    def restart(self, keep_data: bool = False) -> RedisServer:
        self._keep_conf = keep_data
        try:
            return super().restart(keep_data)
        finally:
            self._keep_conf = False

    def save(self) -> None:
        """Sentinel has no dataset; its state is its config file."""

    def _wipe(self) -> None:
        """Nothing to delete: a fresh conf is written at the next start."""

    def master_addr(self, name: str | None = None) -> tuple[str, int] | None:
        """``SENTINEL get-master-addr-by-name``."""
        reply = self.command("SENTINEL", "get-master-addr-by-name", name or self.master_name)
        return None if reply is None else (reply[0], int(reply[1]))

    def master_state(self) -> dict[str, Any]:
        """``SENTINEL master <name>`` as a dict (flags, num-slaves, ...)."""
        return _pairs(self.command("SENTINEL", "master", self.master_name))

    def replicas_state(self) -> list[dict[str, Any]]:
        """``SENTINEL replicas <name>``, one dict per replica."""
        return [_pairs(r) for r in self.command("SENTINEL", "replicas", self.master_name)]


class RedisSentinelSetup:
    """A master, one replica (``--replicaof``) and ``sentinels`` sentinels
    (1 or 3; quorum 1 or 2), all on free ports of 127.0.0.1, under one
    temporary directory.

    ``start()`` returns once the replica is in sync (``master_link_status:up``)
    and every sentinel knows the master, the replica and the other sentinels,
    so a failover can start at once. About 1 to 3 s.

    ``master`` / ``replica`` are the :class:`RedisServer` currently in each
    role (``failover()`` swaps them); ``sentinels`` is the list of ``(host,
    port)`` to give a Sentinel client, ``master_name`` the monitored name.
    """

    def __init__(
        self,
        sentinels: int = 1,
        *,
        master_name: str = "aiosrv-test",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        password: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        if sentinels not in (1, 3):
            raise ValueError("sentinels must be 1 or 3")
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password
        self.start_timeout = start_timeout
        self.n_sentinels = sentinels
        self.quorum = 1 if sentinels == 1 else 2
        self.dir = tempfile.mkdtemp(prefix="aiosrv-redis-sentinel-")
        self.master = RedisServer(directory=os.path.join(self.dir, "a"), password=password)
        self.replica = RedisServer(directory=os.path.join(self.dir, "b"), password=password)
        self.sentinel_servers: list[RedisSentinelProcess] = []
        self._closed = False

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The sentinels' addresses, e.g. for ``redis.asyncio.Sentinel``."""
        return [s.address for s in self.sentinel_servers]

    @property
    def sentinel(self) -> RedisSentinelProcess:
        """The first sentinel."""
        return self.sentinel_servers[0]

    def start(self) -> RedisSentinelSetup:
        try:
            self.master.start()
            self.replica.extra_args = ["--replicaof", HOST, str(self.master.port)]
            self.replica.start()
            self.wait_replica_in_sync()
            # the sentinels start after the replica is attached: a sentinel
            # INFOs the master at once, then only every 10 s
            for i in range(self.n_sentinels):
                s = RedisSentinelProcess(
                    self.master_name, self.master.address, self.quorum,
                    down_after_ms=self.down_after_ms,
                    failover_timeout_ms=self.failover_timeout_ms,
                    directory=os.path.join(self.dir, f"sentinel-{i}"),
                    password=self.password,
                )  # fmt: skip
                self.sentinel_servers.append(s)
                s.start()
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _ready(self, s: RedisSentinelProcess) -> bool:
        state = s.master_state()
        if (
            state.get("flags") != "master"
            or int(state.get("num-other-sentinels", 0)) != self.n_sentinels - 1
        ):
            return False
        return any(
            int(r["port"]) == self.replica.port and r.get("flags") == "slave"
            and r.get("master-link-status") == "ok"
            for r in s.replicas_state()
        )  # fmt: skip

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until the replica is in sync and every sentinel sees the master, the
        replica (in sync) and the other sentinels: a failover can start. After
        ``start()``, call it when the replica was restarted."""
        timeout = timeout or self.start_timeout
        self.wait_replica_in_sync(timeout)
        for s in self.sentinel_servers:
            _wait(
                f"{s!r} knows the master, the replica and the others",
                lambda s=s: self._ready(s),
                timeout,
            )

    def wait_replica_in_sync(self, timeout: float | None = None) -> None:
        """Until the replica reports ``master_link_status:up``."""
        _wait(
            "replica in sync",
            lambda: self.replica.info("replication").get("master_link_status") == "up",
            timeout or self.start_timeout,
        )

    def wait_replicated(self, timeout: float = 5.0) -> None:
        """Until the replica has every write the master has acknowledged
        (``WAIT 1``). Replication is asynchronous: a failover right after a
        write loses it unless the test waits for this first."""
        acked = self.master.command("WAIT", 1, int(timeout * 1000), timeout=timeout + 2)
        if acked < 1:
            raise TimeoutError(f"the replica did not acknowledge the writes within {timeout}s")

    def master_addr(self) -> tuple[str, int] | None:
        """The master's address as the first sentinel reports it."""
        return self.sentinel.master_addr()

    def failover(self, kill: bool = True, timeout: float = 20.0) -> tuple[str, int]:
        """Make the replica the master and return its address.

        ``kill=True``: the master is SIGKILLed (a crash); the sentinels detect
        it (``down-after-milliseconds``), elect a leader and promote the
        replica: 3 to 5 s. The old master stays down until the test
        ``restart()``s it; it then comes back as a replica of the new master
        (``wait_ready()`` waits until it is in sync and the sentinels see it).
        ``kill=False``: ``SENTINEL FAILOVER``, a planned switch (about 1 s);
        the old master keeps running and is made a replica of the new one
        at once (``REPLICAOF``: the sentinels themselves would do it only
        some 20 s later), in sync when this returns.

        Returns when every sentinel has switched to the new master (``SENTINEL
        master``, not just get-master-addr-by-name, which already answers the
        promoted replica mid-failover) and it says ``role:master``;
        ``master`` and ``replica`` are then swapped.
        """
        old, new = self.master, self.replica
        if kill:
            old.kill()
        else:
            self.sentinel.command("SENTINEL", "FAILOVER", self.master_name)
        for s in self.sentinel_servers:
            _wait(
                f"{s!r} reports {new.address} as master, failover over",
                lambda s=s: self._switched(s, new),
                timeout,
                interval=0.05,
            )
        _wait(
            "promoted replica says role:master",
            lambda: new.info("replication")["role"] == "master",
            timeout,
        )
        self.master, self.replica = new, old
        # a restart() brings each back in its new role
        new.extra_args = _without_replicaof(new.extra_args)
        old.extra_args = [*_without_replicaof(old.extra_args), "--replicaof", HOST, str(new.port)]
        if not kill:
            old.command("REPLICAOF", HOST, new.port)
            self.wait_replica_in_sync(timeout)
        return new.address

    def _switched(self, s: RedisSentinelProcess, new: RedisServer) -> bool:
        # get-master-addr-by-name gives the promoted replica already while the
        # failover is still in progress; SENTINEL master only after +switch-master
        state = s.master_state()
        return state.get("flags") == "master" and int(state["port"]) == new.port

    async def afailover(self, kill: bool = True, timeout: float = 20.0) -> tuple[str, int]:
        """``failover`` in a thread, so the test's event loop keeps running."""
        return await asyncio.to_thread(self.failover, kill, timeout)

    def close(self) -> None:
        """Kill every process and remove the directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for s in self.sentinel_servers:
            s.close()
        self.replica.close()
        self.master.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinelSetup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- fixtures (registered in tests/conftest.py) ---


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started RedisServer on a free port, killed and removed after the test."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """``redis_factory(**kwargs)`` starts a RedisServer(**kwargs); all are
    killed and removed after the test."""
    made: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.close()


@pytest.fixture
def redis_sentinel_factory() -> Iterator[Callable[..., RedisSentinelSetup]]:
    """``redis_sentinel_factory(sentinels=1|3, **kwargs)`` starts a
    RedisSentinelSetup; all are killed and removed after the test."""
    made: list[RedisSentinelSetup] = []

    def make(sentinels: int = 1, **kwargs: Any) -> RedisSentinelSetup:
        setup = RedisSentinelSetup(sentinels, **kwargs)
        made.append(setup)
        return setup.start()

    yield make
    for setup in made:
        setup.close()


@pytest.fixture
def redis_sentinel(
    redis_sentinel_factory: Callable[..., RedisSentinelSetup],
) -> RedisSentinelSetup:
    """A started RedisSentinelSetup: master, one replica, one sentinel."""
    return redis_sentinel_factory(1)
