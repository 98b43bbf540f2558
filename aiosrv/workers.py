"""``aiosrv serve --workers N``: a supervisor process and N worker processes.

Each worker is a process of its own running the ordinary ``serve`` path
(``python -m aiosrv serve`` with the supervisor's arguments, started with
fork+exec, never a fork of a running event loop), told who it is by the
environment variable ``AIOSRV_WORKER`` (:mod:`aiosrv.identity`). The workers
bind every listener with SO_REUSEPORT, so they share the ports and the kernel
spreads new connections over them.

The supervisor (this module; it imports neither aiohttp nor the core):

* binds each listener's address itself first, with SO_REUSEPORT and without
  listening: a port taken by another program is refused before any worker
  starts, a port 0 becomes one free port that every worker (and every
  restarted worker) then binds, and the ports stay reserved while workers
  restart. A bound socket that does not listen receives no connections;
* logs the one ``aiosrv ready:`` line once every worker has reported its own
  (over a pipe), with the real ports;
* restarts a worker that dies, after a backoff that doubles while it keeps
  dying soon after starting (:class:`RestartPolicy`); gives up, stopping the
  others, when a worker dies before it was ready ``start_failures`` times in a
  row, or when one does so at the first start (a deployment that cannot start);
* forwards SIGTERM and SIGINT (every worker drains; the supervisor exits 0
  once all have exited cleanly), SIGHUP (every worker reloads) and SIGUSR1
  (memory report, log files reopened) to the workers.

With the embedded broker the configuration refuses more than one worker
(:func:`aiosrv.config.several_workers_problem`): each worker would have a
broker of its own.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import PORT_KEYS, Config, ConfigError, listeners, load_config
from .identity import WORKER_ENV, Identity
from .logs import LogFileError, reopen_files, setup_logging

log = logging.getLogger("aiosrv.workers")

#: Signals the supervisor forwards to its workers.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
#: After the grace period, how long stopping workers get before SIGKILL.
STOP_MARGIN = 30.0


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a worker that died, and when to give up.

    A worker that ran ``stable_after`` seconds past its start-up is restarted
    after ``first`` seconds; each further death sooner than that doubles the
    wait, up to ``maximum``. Deaths before the worker was ready count apart:
    ``start_failures`` of them in a row and the supervisor gives up.
    """

    first: float = 0.5
    maximum: float = 30.0
    stable_after: float = 10.0
    start_failures: int = 5


@dataclass(slots=True)
class Record:
    """One worker slot's recent deaths."""

    streak: int = 0  # deaths in a row, each soon after its start
    start_failures: int = 0  # deaths in a row before the worker was ready


def after_exit(policy: RestartPolicy, record: Record, *, ready: bool, ran: float) -> float | None:
    """Seconds to wait before restarting a worker that died (updating
    ``record``), or None to give up. ``ready``: it had reported ready;
    ``ran``: seconds since it was started."""
    if ready:
        record.start_failures = 0
    else:
        record.start_failures += 1
        if record.start_failures >= policy.start_failures:
            return None
    record.streak = 1 if ready and ran >= policy.stable_after else record.streak + 1
    return float(min(policy.first * 2 ** (record.streak - 1), policy.maximum))


def exit_text(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


# --------------------------------------------------------------------------- ports


def reserve_ports(config: Config) -> tuple[list[socket.socket], dict[str, int]]:
    """Bind (without listening) each listener's address with SO_REUSEPORT.

    Returns the sockets (kept open while the supervisor runs) and the port of
    each part (``ws``, ``api``, ``metrics``) as bound: a port 0 is now a real
    one. Raises SystemExit naming host, port and part when an address cannot
    be bound, as the single process does.
    """
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for host, port, parts in listeners(config):
            try:
                family, kind, proto, _, addr = socket.getaddrinfo(
                    host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )[0]
                sock = socket.socket(family, kind, proto)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
            except OSError as exc:
                raise SystemExit(
                    f"aiosrv: cannot listen on {host}:{port} for {'+'.join(parts)}: {exc}"
                ) from None
            for part in parts:
                ports[part] = int(sock.getsockname()[1])
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held, ports


def port_overrides(config: Config, ports: Mapping[str, int]) -> list[str]:
    """``--set`` arguments giving the workers the ports chosen for port 0."""
    out: list[str] = []
    for part, port in ports.items():
        key = PORT_KEYS[part]
        if config.get(key) != port:
            out += ["--set", f"{key}={port}"]
    return out


# --------------------------------------------------------------------------- workers


@dataclass(slots=True)
class Worker:
    index: int
    record: Record = field(default_factory=Record)
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # the read end of its ready pipe
    output: bytes = b""
    ready_line: str | None = None
    started: float = 0.0
    restart_at: float | None = None
    starts: int = 0
    reload_when_ready: bool = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    def __init__(
        self,
        config: Config,
        worker_argv: Sequence[str],
        *,
        config_path: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        policy: RestartPolicy | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.config = config
        self.count = config.process.workers
        self.worker_argv = list(worker_argv)
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.policy = policy or RestartPolicy()
        self.command = list(command or [sys.executable, "-m", "aiosrv"])
        self.workers = [Worker(i) for i in range(1, self.count + 1)]
        self.selector = selectors.DefaultSelector()
        self.all_ready = False
        self.stopping = False
        self.status = 0
        self.kill_at: float | None = None
        self.killed = False
        self.stop_signal = signal.SIGTERM
        self._wake_r, self._wake_w = socket.socketpair()

    # ----------------------------------------------------------------- processes

    def spawn(self, w: Worker) -> None:
        r, wfd = os.pipe()
        who = Identity(w.index, self.count, os.getpid(), wfd)
        env = dict(os.environ)
        env[WORKER_ENV] = who.env_value()
        try:
            w.proc = subprocess.Popen(
                [*self.command, *self.worker_argv],
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(wfd,),
            )
        except OSError:
            os.close(r)
            raise
        finally:
            os.close(wfd)
        os.set_blocking(r, False)
        w.ready_fd, w.output, w.ready_line = r, b"", None
        w.started, w.restart_at = time.monotonic(), None
        w.starts += 1
        self.selector.register(r, selectors.EVENT_READ, w)
        verb = "started" if w.starts == 1 else "restarted"
        log.info("worker %d/%d %s, pid %d", w.index, self.count, verb, w.proc.pid)

    def _close_pipe(self, w: Worker) -> None:
        if w.ready_fd is not None:
            self.selector.unregister(w.ready_fd)
            os.close(w.ready_fd)
            w.ready_fd = None

    def _read_pipe(self, w: Worker) -> None:
        assert w.ready_fd is not None
        try:
            chunk = os.read(w.ready_fd, 4096)
        except BlockingIOError:
            return
        w.output += chunk
        if b"\n" in w.output and w.ready_line is None:
            w.ready_line = w.output.split(b"\n", 1)[0].decode("utf-8", "replace")
            self._on_ready(w)
        if not chunk or w.ready_line is not None:
            self._close_pipe(w)

    def _on_ready(self, w: Worker) -> None:
        assert w.proc is not None
        if w.reload_when_ready:
            w.reload_when_ready = False
            self._send(w, signal.SIGHUP)
        if self.stopping:
            return
        if self.all_ready:
            log.info("worker %d/%d ready again, pid %d", w.index, self.count, w.proc.pid)
            return
        if all(x.ready_line is not None for x in self.workers):
            self.all_ready = True
            pids = ", ".join(str(x.proc.pid) for x in self.workers if x.proc)
            line = w.ready_line or ""
            announce(f"{line}; {self.count} workers, pids {pids}")

    def _send(self, w: Worker, sig: int) -> None:
        if w.proc is not None and w.alive:
            try:
                w.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _reap(self, now: float) -> None:
        for w in self.workers:
            if w.proc is None or w.proc.returncode is not None:
                continue
            status = w.proc.poll()
            if status is None:
                continue
            if w.ready_fd is not None:  # what it wrote before it died
                self._read_pipe(w)
                if w.ready_fd is not None:
                    self._close_pipe(w)
            self._on_exit(w, status, now)

    def _on_exit(self, w: Worker, status: int, now: float) -> None:
        ready = w.ready_line is not None
        pid = w.proc.pid if w.proc else 0
        what = f"worker {w.index}/{self.count} (pid {pid}) {exit_text(status)}"
        if self.stopping:
            clean = status == 0 or (not ready and status == -self.stop_signal)
            if clean:
                log.info("%s", what)
            else:
                log.error("%s while stopping", what)
                self.status = self.status or 1
            return
        if not self.all_ready and not ready:
            announce(
                f"aiosrv: {what} before it was ready, at the first start: giving up",
                logging.ERROR,
            )
            self.begin_stop(None, status if status > 0 else 1)
            return
        delay = after_exit(self.policy, w.record, ready=ready, ran=now - w.started)
        if delay is None:
            announce(
                f"aiosrv: {what} before it was ready, {w.record.start_failures} times in a "
                "row: giving up, stopping the other workers",
                logging.ERROR,
            )
            self.begin_stop(None, 1)
            return
        when = "before it was ready" if not ready else f"after {now - w.started:.1f}s"
        log.error("%s %s; restarting it in %.3gs", what, when, delay)
        w.restart_at = now + delay

    # ----------------------------------------------------------------- signals

    def begin_stop(self, sig: signal.Signals | None, status: int = 0) -> None:
        """Stop every worker (``sig``, or SIGTERM when giving up) and exit once
        all have exited."""
        if sig is not None:
            log.info("%s received: stopping %d workers (each drains)", sig.name, self.count)
        if not self.stopping:
            self.stopping = True
            self.status = status
            self.stop_signal = sig or signal.SIGTERM
            grace = self.config.shutdown.grace_period
            self.kill_at = time.monotonic() + grace + STOP_MARGIN
        for w in self.workers:
            w.restart_at = None
            self._send(w, sig or signal.SIGTERM)

    def on_signal(self, sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.begin_stop(sig)
        elif sig == signal.SIGHUP:
            log.info("SIGHUP received: every worker reloads its configuration")
            self._reload_own()
            for w in self.workers:
                if w.ready_line is not None:
                    self._send(w, sig)
                elif w.alive:  # its handlers are not installed yet
                    w.reload_when_ready = True
        elif sig == signal.SIGUSR1:
            log.info("SIGUSR1 received: passing it to every worker")
            reopen_files()
            for w in self.workers:
                if w.ready_line is not None:
                    self._send(w, sig)

    def _reload_own(self) -> None:
        """The supervisor's own use of the configuration: the grace period it
        gives stopping workers. The workers report problems with the file."""
        try:
            self.config = load_config(self.config_path, None, self.overrides)
        except ConfigError:
            pass

    def _drain_wakeups(self) -> None:
        try:
            data = self._wake_r.recv(4096)
        except BlockingIOError:
            return
        for number in data:
            if number in {int(s) for s in FORWARDED}:
                self.on_signal(signal.Signals(number))

    # ----------------------------------------------------------------- the loop

    def run(self) -> int:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(self._wake_w.fileno())
        old = {sig: signal.signal(sig, _noop) for sig in (*FORWARDED, signal.SIGCHLD)}
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            for w in self.workers:
                if not self.stopping:
                    self.spawn(w)
            return self._loop()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_fd)
            for w in self.workers:
                self._close_pipe(w)
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            if self.stopping and not any(w.alive for w in self.workers):
                return self.status
            wake = [w.restart_at for w in self.workers if w.restart_at is not None]
            if self.kill_at is not None:
                wake.append(self.kill_at)
            timeout = min([0.5, *(t - now for t in wake)])
            for key, _ in self.selector.select(max(timeout, 0.0)):
                if key.data is None:
                    self._drain_wakeups()
                else:
                    self._read_pipe(key.data)
            now = time.monotonic()
            self._reap(now)
            for w in self.workers:
                if w.restart_at is not None and w.restart_at <= now and not self.stopping:
                    self.spawn(w)
            if self.kill_at is not None and now >= self.kill_at and not self.killed:
                self.killed = True
                for w in self.workers:
                    if w.alive:
                        log.error("worker %d/%d did not stop in time: SIGKILL", w.index, self.count)
                        self._send(w, signal.SIGKILL)
                self.status = self.status or 1


def _noop(signum: int, frame: object) -> None:
    """Installed so that the signal is caught (and reaches the wake-up socket)."""


def announce(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` whatever the configured level (the ready line, giving up)."""
    log.handle(log.makeRecord(log.name, level, __file__, 0, "%s", (message,), None))


def set_title(config: Config, ports: Mapping[str, int]) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    ws = ports.get("ws", config.websocket.port)
    api = ports.get("api", config.api.port)
    setproctitle.setproctitle(
        f"websocket-server supervisor of {config.process.workers} workers ws:{ws} api:{api} "
        "aiosrv " + " ".join(sys.argv[1:])
    )


def supervise(
    config: Config,
    serve_argv: Sequence[str],
    *,
    config_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    policy: RestartPolicy | None = None,
    command: Sequence[str] | None = None,
) -> int:
    """Run ``config.process.workers`` workers of ``aiosrv <serve_argv>``
    under this process until they are stopped; the exit status."""
    try:
        setup_logging(config.logging.level, config.logging.file)
    except LogFileError as exc:
        announce(f"aiosrv: {exc}", logging.ERROR)
        return 2
    try:
        held, ports = reserve_ports(config)
    except SystemExit as exc:
        announce(str(exc.code), logging.ERROR)
        return 1
    try:
        set_title(config, ports)
        log.info(
            "supervisor pid %d starting %d workers (broker %s)",
            os.getpid(),
            config.process.workers,
            config.broker.engine,
        )
        supervisor = Supervisor(
            config,
            [*serve_argv, *port_overrides(config, ports)],
            config_path=config_path,
            overrides=overrides,
            policy=policy,
            command=command,
        )
        status = supervisor.run()
    finally:
        for sock in held:
            sock.close()
    log.info("aiosrv stopped: every worker exited (exit status %d)", status)
    return status
