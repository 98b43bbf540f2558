"""``aiosrv serve --workers N``: a supervisor and N worker processes sharing the ports.

The workers run on the Redis engine (a real ``redis-server`` on a free port,
``tests/redis_support.py``): with the embedded broker more than one worker is
refused. The supervisor's restart policy is also driven with stand-in worker
programs (``supervise(command=...)``), so giving up is tested in a second,
not after minutes of real crashes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiosrv.workers import Record, RestartPolicy, after_exit

from .conftest import (
    Served,
    StartServer,
    clean_env,
    free_ports,
    http,
    recv_until,
    run_aiosrv,
    subscribe,
    wait_until,
    ws_connect,
)

WATCHDOG = 30.0  # not a time limit: a stuck supervisor (workers drain within their 10 s grace)


def redis_args(redis: Any) -> list[str]:
    return ["--broker", "redis", "--redis-host", "127.0.0.1", "--redis-port", str(redis.port)]


def status_of(srv: Served) -> dict[str, Any]:
    code, body = http("GET", srv.api("/status"))
    assert code == 200, body
    return body  # type: ignore[no-any-return]


def worker_pids(srv: Served, tries: int = 40) -> dict[int, int]:
    """index -> pid of the workers that answered ``tries`` fresh connections."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        w = status_of(srv)["worker"]
        seen[w["index"]] = w["pid"]
    return seen


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.fixture
def two_workers(serve: StartServer, redis_server: Any) -> Iterator[Served]:
    """Two workers on port 0 for every listener (the supervisor picks the ports)."""
    srv = serve(
        "--workers", "2", *redis_args(redis_server),
        "--host", "127.0.0.1", "--port", "0",
        "--api-host", "127.0.0.1", "--api-port", "0", "--metrics-port", "0",
        ports=False,
    )  # fmt: skip
    yield srv
    if srv.proc.poll() is None:
        pids = children(srv.pid)
        srv.send(signal.SIGTERM)
        try:
            srv.wait_exit(WATCHDOG)
        finally:
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- refusal


@pytest.mark.parametrize("how", ["flag", "env"])
def test_several_workers_on_the_embedded_broker_are_refused_with_exit_2(
    tmp_path: Path, how: str
) -> None:
    ws, api, metrics = free_ports(3)
    args = ["serve", "--host", "127.0.0.1", "--port", str(ws), "--api-port", str(api)]
    args += ["--metrics-port", str(metrics)]
    if how == "flag":
        result = run_aiosrv(*args, "--workers", "2", cwd=tmp_path)
    else:
        result = run_aiosrv(*args, cwd=tmp_path, env=clean_env(WORKERS="2"))
    assert result.returncode == 2
    source = "override" if how == "flag" else "env WORKERS"
    assert f"process.workers = 2 (from {source})" in result.stderr
    assert "with broker.engine=memory each worker would have its own embedded broker" in (
        result.stderr
    )
    assert "use broker.engine=redis" in result.stderr
    assert "aiosrv ready:" not in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_names_several_workers_on_the_embedded_broker(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("process:\n  workers: 3\n")
    result = run_aiosrv("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "process.workers = 3" in result.stdout and "broker.engine=redis" in result.stdout
    path.write_text("process:\n  workers: 3\nbroker:\n  engine: redis\n")
    assert run_aiosrv("check-config", str(path), cwd=tmp_path).returncode == 0


def test_one_worker_is_the_single_process_without_a_supervisor(serve: StartServer) -> None:
    srv = serve("--workers", "1")
    assert status_of(srv)["worker"] == {
        "index": 0,
        "of": 1,
        "pid": srv.pid,
        "supervisor_pid": None,
    }
    assert children(srv.pid) == set()
    assert "aiosrv.workers" not in srv.stderr
    assert "worker=" not in srv.stderr
    assert title(srv.pid).startswith(f"websocket-server ws:{srv.ws_port} ")


def test_a_port_in_use_is_refused_by_the_supervisor_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    ws, api, metrics = free_ports(3)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", api))
        blocker.listen()
        result = run_aiosrv(
            "serve", "--workers", "2", "--broker", "redis",
            "--host", "127.0.0.1", "--port", str(ws),
            "--api-host", "127.0.0.1", "--api-port", str(api), "--metrics-port", str(metrics),
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{api} for api" in result.stderr
    assert "started" not in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- real workers


def test_workers_share_the_ports_and_say_who_they_are(two_workers: Served) -> None:
    srv = two_workers
    # one ready line, with real ports, after both workers listen
    assert srv.count("aiosrv ready:") == 1
    assert 0 not in {srv.ws_port, srv.api_port, srv.metrics_port}
    assert re.search(r"; 2 workers, pids \d+, \d+$", srv.ready.string if srv.ready else "")
    pids = children(srv.pid)
    assert len(pids) == 2
    # fresh connections are spread over both workers, which share every port
    seen = worker_pids(srv)
    assert set(seen) == {1, 2}, seen
    assert set(seen.values()) == pids
    status = status_of(srv)
    assert status["broker"] == "redis"
    assert status["worker"]["of"] == 2
    assert status["worker"]["supervisor_pid"] == srv.pid
    assert http("GET", f"http://127.0.0.1:{srv.metrics_port}/metrics")[0] == 200
    # titles and log lines tell them apart
    assert title(srv.pid).startswith(f"websocket-server supervisor of 2 workers ws:{srv.ws_port} ")
    for index, pid in seen.items():
        assert title(pid).startswith(f"websocket-server worker {index}/2 ws:{srv.ws_port} ")
        assert re.search(rf"INFO worker={index} aiosrv\.runner: worker {index}/2 \(pid {pid}\)"
                         r" listening", srv.stderr)  # fmt: skip


def test_a_message_published_through_one_worker_reaches_clients_of_the_other(
    two_workers: Served,
) -> None:
    srv = two_workers
    clients: list[Any] = []

    def per_worker(path: str) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for _ in range(20):
            body = http("GET", srv.api(path))[1]
            out[body["worker"]["index"]] = body
        return out

    try:
        # clients on both workers
        for _ in range(40):
            ws = ws_connect(srv.ws_url())
            clients.append(ws)
            subscribe(ws, "prices")
            counts = {i: s["connections"] for i, s in per_worker("/status").items()}
            if len(counts) == 2 and all(counts.values()):
                break
        assert len(counts) == 2 and all(counts.values()), counts
        # publishes through both workers
        published = 0
        for _ in range(40):
            code, body = http(
                "POST", srv.api("/api/publish"), {"type": "prices", "payload": published}
            )
            assert code == 202, body
            published += 1
            stats = per_worker("/stats")
            if (
                published >= 4
                and len(stats) == 2
                and all(s["messages"]["published_by_origin"]["http"] for s in stats.values())
            ):
                break
        # every client, whichever worker it is on, gets every message, in order
        for ws in clients:
            got = [recv_until(ws, lambda m: m.get("type") == "prices") for _ in range(published)]
            assert [m["payload"] for m in got] == list(range(published))
            assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
    finally:
        for ws in clients:
            ws.close()


def test_a_killed_worker_is_restarted_with_a_new_pid(two_workers: Served) -> None:
    srv = two_workers
    before = worker_pids(srv)
    mark = srv.mark()
    os.kill(before[1], signal.SIGKILL)
    srv.wait_for(rf"worker 1/2 \(pid {before[1]}\) killed by SIGKILL after [\d.]+s; "
                 r"restarting it in 0\.5s", start=mark)  # fmt: skip
    m = srv.wait_for(r"worker 1/2 ready again, pid (\d+)", start=mark)
    new = int(m[1])
    assert new != before[1] and alive(new)
    assert not alive(before[1])
    assert children(srv.pid) == {new, before[2]}
    wait_until(lambda: worker_pids(srv, 10) == {1: new, 2: before[2]}, what="the new worker")
    assert srv.count("aiosrv ready:") == 1


def test_sighup_reloads_every_worker_and_sigterm_stops_them_all_with_exit_0(
    two_workers: Served,
) -> None:
    srv = two_workers
    pids = children(srv.pid)
    mark = srv.mark()
    srv.send(signal.SIGHUP)
    srv.wait_for(r"INFO aiosrv\.workers: SIGHUP received: every worker reloads", start=mark)
    for index in (1, 2):
        srv.wait_for(rf"worker={index} aiosrv\.runner: SIGHUP received: reloading", start=mark)
    assert status_of(srv)["status"] == "running"
    srv.send(signal.SIGTERM)
    assert srv.wait_exit(WATCHDOG) == 0
    for index in (1, 2):
        assert re.search(rf"worker={index} aiosrv\.runner: SIGTERM received: draining",
                         srv.stderr)  # fmt: skip
        assert re.search(rf"worker={index} aiosrv\.runner: aiosrv stopped", srv.stderr)
    assert srv.stderr.rstrip().endswith("aiosrv stopped: every worker exited (exit status 0)")
    assert not any(alive(pid) for pid in pids)
    assert "Traceback" not in srv.stderr


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(two_workers: Served) -> None:
    srv = two_workers
    pids = children(srv.pid)
    srv.proc.kill()
    wait_until(lambda: not any(alive(pid) for pid in pids), WATCHDOG, "the orphaned workers")
    srv.wait_exit(WATCHDOG)
    assert srv.count("the supervisor (pid") == 2
    assert srv.count("supervisor gone received: draining") == 2


# --------------------------------------------------------------------------- restart policy


def test_restart_backoff_doubles_and_resets_after_a_stable_run() -> None:
    policy = RestartPolicy(first=0.5, maximum=4.0, stable_after=10.0, start_failures=3)
    rec = Record()
    delays = [after_exit(policy, rec, ready=True, ran=1.0) for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert after_exit(policy, rec, ready=True, ran=60.0) == 0.5  # it had recovered
    assert after_exit(policy, rec, ready=False, ran=0.2) == 1.0
    assert after_exit(policy, rec, ready=False, ran=0.2) == 2.0
    assert after_exit(policy, rec, ready=False, ran=0.2) is None  # 3 in a row: give up
    # a worker that got ready in between starts the count again
    rec = Record()
    delays = []
    for _ in range(2):
        delays.append(after_exit(policy, rec, ready=False, ran=0.1))
        delays.append(after_exit(policy, rec, ready=True, ran=0.1))
    assert delays == [0.5, 1.0, 2.0, 4.0]  # never None: the failures were not in a row
    assert rec.start_failures == 0


#: A stand-in for a worker: reports ready as the real one does (or not), per
#: the behaviour listed for its start in FAKE_PLAN ("ready-die", "die", "ready").
FAKE_WORKER = textwrap.dedent(
    """
    import os, sys, time
    index, rest = os.environ["AIOSRV_WORKER"].split("/", 1)
    fd = int(rest.rsplit(":", 1)[1])
    count_file = os.path.join(os.environ["FAKE_DIR"], "starts-" + index)
    n = int(open(count_file).read()) if os.path.exists(count_file) else 0
    open(count_file, "w").write(str(n + 1))
    plan = os.environ["FAKE_PLAN"].split(",")
    what = plan[min(n, len(plan) - 1)]
    if what == "die":
        sys.exit(3)
    os.write(fd, b"aiosrv ready: websocket ws://127.0.0.1:1/ws (fake)\\n")
    os.close(fd)
    if what == "ready-die":
        time.sleep(0.5)
        sys.exit(1)
    time.sleep(60)
    """
)

SUPERVISE = textwrap.dedent(
    """
    import sys
    from aiosrv.config import load_config
    from aiosrv.workers import RestartPolicy, supervise
    config = load_config(None, {}, {
        "process.workers": 2, "broker.engine": "redis", "websocket.host": "127.0.0.1",
        "websocket.port": 0, "api.host": "127.0.0.1", "api.port": 0,
        "monitoring.enabled": "false",
    }, use_default_path=False)
    policy = RestartPolicy(first=0.05, maximum=0.2, stable_after=10.0, start_failures=3)
    sys.exit(supervise(config, ["serve"], policy=policy, command=[sys.executable, sys.argv[1]]))
    """
)


def run_supervisor(tmp_path: Path, plan: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "fake_worker.py"
    fake.write_text(FAKE_WORKER)
    env = clean_env(FAKE_DIR=str(tmp_path), FAKE_PLAN=plan)
    return subprocess.run(
        [sys.executable, "-c", SUPERVISE, str(fake)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_worker_that_keeps_dying_at_start_up_makes_the_supervisor_give_up(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    result = run_supervisor(tmp_path, "ready-die,die")
    assert time.monotonic() - started < 15
    err = result.stderr
    assert result.returncode == 1, err
    assert err.count("aiosrv ready:") == 1
    # each worker: ready, died, then 3 start-up deaths with growing waits, then the end
    assert re.search(
        r"worker \d/2 \(pid \d+\) exit status 1 after [\d.]+s; restarting it in 0\.05s", err
    )
    assert re.search(r"exit status 3 before it was ready; restarting it in 0\.1s", err)
    assert re.search(r"exit status 3 before it was ready; restarting it in 0\.2s", err)
    assert re.search(
        r"ERROR aiosrv\.workers: aiosrv: worker \d/2 \(pid \d+\) exit status 3 before it was "
        r"ready, 3 times in a row: giving up, stopping the other workers",
        err,
    )
    assert err.rstrip().endswith("aiosrv stopped: every worker exited (exit status 1)")


def test_a_worker_that_cannot_start_the_first_time_stops_everything(tmp_path: Path) -> None:
    result = run_supervisor(tmp_path, "die")
    assert result.returncode == 3, result.stderr
    assert "before it was ready, at the first start: giving up" in result.stderr
    assert "aiosrv ready:" not in result.stderr
    assert "restarting" not in result.stderr
