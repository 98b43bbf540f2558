"""Several ``aiosrv serve`` processes on one real Redis (``tests/redis_support.py``
starts it on a free port): one ordered stream per type across instances,
recovery on another instance, the cluster view, and Redis faults (killed,
restarted, failed over by Sentinel) with clients that stay connected."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tests.redis_support import RedisSentinelSetup, RedisServer

from .conftest import (
    Served,
    StartServer,
    assert_alive,
    http,
    recv_json,
    request,
    subscribe,
    wait_until,
    ws_connect,
)


def on_redis(r: RedisServer, prefix: str = "cluster") -> tuple[str, ...]:
    return (
        "--set", "broker.engine=redis",
        "--set", f"redis.host={r.host}",
        "--set", f"redis.port={r.port}",
        "--set", f"redis.channel_prefix={prefix}",
        "--set", "redis.timeout=0.5",
        "--set", "sources.enabled=false",
        "--set", "websocket.allow_client_publish=true",
    )  # fmt: skip


def publish(srv: Served, type_: str, payload: Any) -> tuple[int, Any]:
    return http("POST", srv.api("/api/publish"), {"type": type_, "payload": payload})


def recv_data(ws: Any, n: int) -> list[dict[str, Any]]:
    out = []
    while len(out) < n:
        msg = recv_json(ws)
        if "seq" in msg:
            out.append(msg)
    return out


def test_two_instances_share_one_ordered_stream_per_type(
    serve: StartServer, redis_server: RedisServer
) -> None:
    a = serve(*on_redis(redis_server))
    b = serve(*on_redis(redis_server))
    ca, cb = ws_connect(a.ws_url()), ws_connect(b.ws_url())
    try:
        subscribe(ca, "t")
        subscribe(cb, "t")

        def publisher(srv: Served, name: str) -> None:
            for i in range(40):
                assert publish(srv, "t", f"{name}{i}")[0] == 202

        threads = [threading.Thread(target=publisher, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got_a, got_b = recv_data(ca, 80), recv_data(cb, 80)
    finally:
        ca.close()
        cb.close()
    # every message once, in seq order, the same stream on both instances
    assert [m["seq"] for m in got_a] == list(range(1, 81))
    assert [(m["seq"], m["payload"]) for m in got_a] == [(m["seq"], m["payload"]) for m in got_b]
    # each publisher's own messages keep their order
    for name in "ab":
        mine = [m["payload"] for m in got_a if m["payload"].startswith(name)]
        assert mine == [f"{name}{i}" for i in range(40)]


def test_a_client_recovers_on_another_instance(
    serve: StartServer, redis_server: RedisServer
) -> None:
    a = serve(*on_redis(redis_server))
    b = serve(*on_redis(redis_server))
    ws = ws_connect(a.ws_url())
    try:
        subscribe(ws, "t")
        for i in range(5):
            publish(a, "t", i)
        last = recv_data(ws, 5)[-1]["seq"]
    finally:
        ws.close()
    for i in range(5, 10):  # missed while away, published through the other instance
        publish(b, "t", i)
    ws = ws_connect(b.ws_url())
    try:
        ack = request(ws, "subscribe", "r1", types=["t"], since={"t": last})
        assert ack["payload"]["recovered"] == {"t": True}
        missed = recv_data(ws, 5)
        assert [m["payload"] for m in missed] == [5, 6, 7, 8, 9]
        publish(a, "t", 10)  # and live again, from either instance
        assert recv_data(ws, 1)[0]["seq"] == 11
        # history answers the same on both
        hist = request(ws, "history", "h1", type="t", limit=3)
        assert [m["seq"] for m in hist["payload"]["messages"]] == [9, 10, 11]
    finally:
        ws.close()


def test_the_cluster_view_lists_live_instances(
    serve: StartServer, redis_server: RedisServer
) -> None:
    a = serve(*on_redis(redis_server))
    b = serve(*on_redis(redis_server))
    ws = ws_connect(b.ws_url())
    try:
        subscribe(ws, "t")

        def count(n: int) -> Callable[[], bool]:
            return lambda: http("GET", a.api("/stats"))[1]["cluster"]["count"] == n

        wait_until(count(2), what="two instances in the cluster view")
        # records are refreshed every REGISTRY_INTERVAL: B's comes with its client
        wait_until(
            lambda: http("GET", a.api("/stats"))[1]["cluster"]["totals"]["connections"] == 1,
            what="B's client in the totals",
        )
        cluster = http("GET", a.api("/stats"))[1]["cluster"]
        assert {i["pid"] for i in cluster["instances"]} == {a.pid, b.pid}
        ws_stats = http("GET", a.api("/ws/stats"))[1]
        assert ws_stats["active_connections"] == 0
        assert ws_stats["cluster"]["active_connections"] == 1
        b.kill()  # no goodbye: its record expires
        wait_until(count(1), timeout=15, what="the killed instance's record to expire")
    finally:
        ws.close()


def test_redis_killed_and_back_clients_stay_and_publishers_are_told(
    serve: StartServer, redis_server: RedisServer
) -> None:
    srv = serve(*on_redis(redis_server))
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "t")
        publish(srv, "t", "before")
        assert recv_data(ws, 1)[0]["payload"] == "before"

        redis_server.kill()
        status, body = publish(srv, "t", "during")
        assert status == 503
        assert body["error"]["code"] == "broker_unavailable"
        assert "redis" in body["error"]["message"].lower()
        status, health = http("GET", srv.api("/health"))
        assert status == 503 and health["status"] == "degraded"
        assert "redis" in health["reason"].lower()
        assert_alive(ws)  # the client keeps its connection
        reply = request(ws, "publish", "p1", type="t", payload="ws-during")
        assert reply["type"] == "error"
        assert reply["payload"]["code"] == "broker_unavailable"

        redis_server.restart()  # back, empty: numbering starts again
        wait_until(lambda: http("GET", srv.api("/health"))[0] == 200, what="healthy again")
        assert publish(srv, "t", "after")[0] == 202
        after = recv_data(ws, 1)[0]
        assert after["payload"] == "after"
        assert after["seq"] == 1
        stats = http("GET", srv.api("/ws/queue"))[1]["broker"]
        assert stats["reconnects"] >= 1 and stats["resets"] >= 1
    finally:
        ws.close()
    assert "lost its data" in srv.stderr


def test_a_short_outage_is_bridged_and_nothing_is_lost(
    serve: StartServer, redis_factory: Callable[..., RedisServer]
) -> None:
    redis = redis_factory(appendonly=True)  # comes back with its data
    srv = serve(*on_redis(redis), "--set", "redis.timeout=2")
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "t")
        for i in range(3):
            publish(srv, "t", i)
        redis.kill()
        restarter = threading.Timer(0.15, lambda: redis.restart(keep_data=True))
        restarter.start()
        t0 = time.monotonic()
        status, _ = publish(srv, "t", 3)  # redis-py's retries carry it over the gap
        restarter.join()
        assert status == 202, f"not bridged ({time.monotonic() - t0:.2f}s)"
        for i in range(4, 8):
            assert publish(srv, "t", i)[0] == 202
        got = recv_data(ws, 8)
    finally:
        ws.close()
    # the messages published while the subscription was being re-made came
    # from the history: none lost, none twice, in order
    assert [m["seq"] for m in got] == list(range(1, 9))
    assert [m["payload"] for m in got] == list(range(8))


def test_a_subscription_to_a_new_type_while_redis_is_down_is_refused(
    serve: StartServer, redis_server: RedisServer
) -> None:
    srv = serve(*on_redis(redis_server))
    ws = ws_connect(srv.ws_url())
    try:
        redis_server.kill()
        wait_until(lambda: http("GET", srv.api("/health"))[0] == 503, what="degraded")
        reply = request(ws, "subscribe", "s1", types=["fresh"])
        assert reply["type"] == "error"
        assert reply["payload"]["code"] == "broker_unavailable"
        assert_alive(ws)
    finally:
        ws.close()


def test_sentinel_failover_keeps_publishing(
    serve: StartServer, redis_sentinel: RedisSentinelSetup
) -> None:
    s = redis_sentinel
    sentinels = ",".join(f"{h}:{p}" for h, p in s.sentinels)
    srv = serve(
        "--set", "broker.engine=redis",
        "--set", f"redis.sentinels={sentinels}",
        "--set", f"redis.sentinel_master={s.master_name}",
        "--set", "redis.timeout=0.5",
        "--set", "sources.enabled=false",
    )  # fmt: skip
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "t")
        assert publish(srv, "t", "on the master")[0] == 202
        assert recv_data(ws, 1)[0]["seq"] == 1
        s.wait_replicated()  # replication is asynchronous: unreplicated writes die with the master
        s.failover()  # the master dies; the sentinel promotes the replica
        wait_until(
            lambda: publish(srv, "t", "after failover")[0] == 202,
            timeout=20,
            what="a publish through the promoted replica",
        )
        got = recv_data(ws, 1)[0]
        assert got["payload"] == "after failover"
        # Either the replica had the counter (seq goes on), or it came up
        # without the data (replication is asynchronous; on this VM it happens
        # now and then even after WAIT) and the engine said so: numbering
        # restarted with the epoch. Never a silent step back.
        broker = http("GET", srv.api("/ws/queue"))[1]["broker"]
        assert got["seq"] >= 2 or (got["seq"] == 1 and broker["resets"] >= 1), (got, broker)
        assert_alive(ws)
    finally:
        ws.close()


def test_a_hung_redis_bounds_what_waits_and_publishers_are_told(
    serve: StartServer, redis_server: RedisServer
) -> None:
    srv = serve(*on_redis(redis_server), "--set", "broadcast.queue_limit=4")
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "t")
        assert publish(srv, "t", "before")[0] == 202
        assert recv_data(ws, 1)[0]["seq"] == 1
        redis_server.freeze()  # SIGSTOP: connections stay open, nothing answers
        results: list[tuple[int, Any]] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            r = publish(srv, "t", i)
            with lock:
                results.append(r)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        # while they wait on Redis, no more than the limit waits
        wait_until(
            lambda: http("GET", srv.api("/ws/queue"))[1]["in_flight"] >= 1, what="waiting"
        )
        queue = http("GET", srv.api("/ws/queue"))[1]
        assert queue["in_flight"] + queue["depth"] <= 4
        for t in threads:
            t.join()
        codes = sorted({status for status, _ in results})
        assert codes == [503], results  # nobody waits forever
        errors = [body["error"] for _, body in results]
        assert {e["code"] for e in errors} == {"queue_full", "broker_unavailable"}
        # the ones sent to Redis are not called lost: their outcome is unknown;
        # the ones that waited behind them were never sent, and say so
        unavailable = [e for e in errors if e["code"] == "broker_unavailable"]
        timed_out = [e for e in unavailable if "may still be published" in e["message"]]
        assert timed_out and len(unavailable) <= 4
        assert all("not published" in e["message"] for e in unavailable if e not in timed_out)
        assert_alive(ws)
        redis_server.thaw()
        wait_until(lambda: http("GET", srv.api("/health"))[0] == 200, what="healthy again")
        assert publish(srv, "t", "after")[0] == 202
        got = []
        while not got or got[-1]["payload"] != "after":
            got += recv_data(ws, 1)
        # what Redis ran once thawed arrives once each, in order, before "after"
        assert [m["seq"] for m in got] == list(range(2, len(got) + 2))
        assert len(got) - 1 <= len(timed_out)
    finally:
        redis_server.thaw()
        ws.close()
