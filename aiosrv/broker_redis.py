"""The Redis engine: several processes and hosts share one ordered stream per type.

``broker.engine: redis``. Every instance talks to one Redis (directly, over
TLS, or found through Redis Sentinel):

* **Publishing** runs one Lua script (:data:`PUBLISH_LUA`), at most once
  per publish even when redis-py resends it: ``INCR`` the type's counter,
  add the message to the type's history (a sorted set scored by ``seq``,
  trimmed to the window, with a TTL) and ``PUBLISH`` it, in one atomic step.
  So instances publishing to one type never reuse or reorder a ``seq``, the
  history holds a message before ``publish`` returns, and the channel
  carries the messages in ``seq`` order. The data message is built in the
  script from pieces encoded here, byte for byte what the embedded engine
  makes. A publish that times out may still run once Redis answers again:
  the caller is told the outcome is unknown, not that it was lost.
* **Receiving.** One pub/sub connection per instance, subscribed to the
  channels of the types its local clients subscribe to (the hub calls
  :meth:`RedisBroker.listen` before it acknowledges a type's first local
  subscriber and :meth:`RedisBroker.unlisten` when the last one leaves), so a
  message crosses Redis once per interested instance and is framed once there.
  Own publications come back the same way: one path, one order.
* **Gaps.** The engine remembers the last ``seq`` it delivered per type. A
  message further ahead (the connection was lost and redis-py bridged it, or
  the engine reconnected) first fetches what is missing from the history and
  delivers it in order; after a reconnect every listened type is caught up at
  once. What the history no longer holds stays missing: clients that recover
  across it get ``recovered: false``. A counter lower than what was delivered
  means Redis lost its data: numbering starts again, and the engine says so.
* **Faults.** Commands time out (``redis.timeout``) and are retried by
  redis-py a few times within about a second (short outages are bridged);
  beyond that the engine is *down*: :meth:`RedisBroker.health` says why,
  publishing and history raise :class:`~aiosrv.errors.BrokerUnavailable`
  (HTTP 503 / a ``broker_unavailable`` error reply), and the receiving task
  reconnects with backoff, resubscribes and catches up by itself. The
  pub/sub connection is pinged when quiet, so a Redis that hangs is noticed
  too.
* **Cluster view.** Each instance writes a small record of itself
  (``<prefix>:instance:<id>``, with an expiry, refreshed every
  :data:`REGISTRY_INTERVAL`); :meth:`RedisBroker.instances` reads them all.

Keys, under ``redis.channel_prefix`` (``P``): ``P:seq:<type>`` (the counter,
no expiry), ``P:hist:<type>`` (the history, expires ``redis.history_ttl``
after the last publish), channel ``P:ch:<type>``, ``P:ctl`` (a channel
every instance subscribes to, so the pub/sub connection always exists),
``P:instances`` and ``P:instance:<id>``, ``P:epoch``, and
``P:pub:<instance>:<n>`` (a publish's seq, for a minute, so a resent script
does not publish twice). Entries of the history and
messages on the channels are ``<seq> <[timestamp, key] as JSON>\\n<data>``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .broker import Broker, BrokerHealth, HistoryPage, Publication
from .config import Config
from .errors import BrokerUnavailable
from .protocol import encode_payload, now_ms

log = logging.getLogger("aiosrv.broker")

#: One publish: counter, history and fan-out in one atomic step, at most once:
#: KEYS[4] names this publish (instance and a number); a retry that finds it
#: (redis-py resends a command whose answer was lost) gets the seq it got.
#: KEYS: counter, history, channel, the publish's id. ARGV: the data
#: message's pieces around the two places its seq goes (3), the header's
#: JSON, the window, the TTL.
PUBLISH_LUA = """
local done = redis.call('GET', KEYS[4])
if done then return tonumber(done) end
local seq = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[4], seq, 'EX', 60)
local data = ARGV[1] .. seq .. ARGV[2] .. seq .. ARGV[3]
local entry = seq .. ' ' .. ARGV[4] .. '\\n' .. data
local size = tonumber(ARGV[5])
if size > 0 then
  redis.call('ZADD', KEYS[2], seq, entry)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -size - 1)
  local ttl = tonumber(ARGV[6])
  if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
else
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', KEYS[3], entry)
return seq
"""

#: The connections a user holds on the other live instances: KEYS[1] the
#: instance index (a sorted set scored by expiry), ARGV: the key prefix of the
#: per-instance user counts, this instance, the user, now in ms.
USER_COUNT_LUA = """
local total = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[4], '+inf')) do
  if id ~= ARGV[2] then
    total = total + (tonumber(redis.call('HGET', ARGV[1] .. id, ARGV[3])) or 0)
  end
end
return total
"""

#: Seconds between the records an instance writes of itself (they expire after three).
REGISTRY_INTERVAL = 2.0
#: The pub/sub connection is pinged when it has been quiet this long (seconds).
PING_AFTER = 1.0
#: Most connections to Redis besides the pub/sub one (publishes use one at a time).
POOL_SIZE = 8
#: Reconnection backoff of the receiving task (seconds): first, most.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


#: A publish_many call waiting to be sent: its (keys, args) per message, and
#: the future of their seqs.
_Pending = tuple[list[tuple[list[str], list[Any]]], "asyncio.Future[list[Any]]"]


def data_pieces(type_: str, timestamp: int, payload: Any, key: str | None) -> tuple[bytes, ...]:
    """The data message (``protocol.encode_data``) cut where its seq goes, and
    the entry header's JSON. ``payload`` is a JSON value or bytes of JSON."""
    body = payload if isinstance(payload, bytes) else encode_payload(payload)
    head = b'{"id":' + orjson.dumps(type_ + ":")[:-1]
    middle = b'","type":' + orjson.dumps(type_) + b',"timestamp":%d,"seq":' % timestamp
    keyed = b',"key":' + orjson.dumps(key) if key is not None else b""
    tail = keyed + b',"payload":' + body + b"}"
    return head, middle, tail, orjson.dumps([timestamp, key])


def parse_entry(type_: str, entry: bytes) -> Publication:
    """A history entry or channel message back into a publication."""
    header, _, data = entry.partition(b"\n")
    seq, _, meta = header.partition(b" ")
    timestamp, key = orjson.loads(meta)
    return Publication(type_, int(seq), timestamp, key, data)


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, config: Config, instance_id: str = "", *, retries: int = 3) -> None:
        super().__init__()
        cfg = config.redis
        self._cfg = cfg
        self._history_size = config.history.size
        self._prefix = cfg.channel_prefix
        self.instance_id = instance_id or f"{time.time_ns():x}"
        self._retries = retries
        self._client: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._sha: str | None = None  # the publish script's SHA1, once loaded
        self._reader: asyncio.Task[None] | None = None
        self._registry: asyncio.Task[None] | None = None
        self._started = False
        self._up = False
        self._reason = "not started"
        #: types listened to, and the last seq delivered of each (0: none yet)
        self._listened: dict[str, int] = {}
        self._latest: dict[str, int] = {}  # the highest seq seen of each type
        self._filling: dict[str, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()  # the pub/sub connection is open
        self._epoch: str | None = None  # the epoch key's value (see _check_epoch)
        self._record: Callable[[], dict[str, Any]] = dict
        # the per-user connection counts of this instance, and those not yet in Redis
        self._users: dict[str, int] = {}
        self._users_dirty: set[str] = set()
        self._users_sync: asyncio.Task[None] | None = None
        # counters for /stats and the metrics
        self._publishes = 0  # numbers each publish (its id, for retries)
        self._outbox: list[_Pending] = []
        self._sender: asyncio.Task[None] | None = None
        self.batches = 0  # pipelines sent
        self.published = 0
        self.received = 0
        self.gaps_filled = 0
        self.gaps_lost = 0
        self.reconnects = 0
        self.errors = 0
        self.resets = 0
        self.rtt = 0.0  # smoothed round trip of a publish, seconds

    # -- connections ------------------------------------------------------------------

    def _where(self) -> str:
        cfg = self._cfg
        if cfg.sentinels:
            return f"sentinel {cfg.sentinel_master} via {cfg.sentinels}"
        return f"{cfg.host}:{cfg.port}"

    def _connect(self) -> aioredis.Redis:
        cfg = self._cfg
        kwargs: dict[str, Any] = {
            "db": cfg.db,
            "password": cfg.password,
            "socket_timeout": cfg.timeout,
            "socket_connect_timeout": cfg.timeout,
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), self._retries),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
            "decode_responses": False,
        }
        if cfg.tls:
            kwargs["ssl"] = True
            kwargs["ssl_ca_certs"] = cfg.tls_ca_file
            kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED if cfg.tls_verify else ssl.CERT_NONE
            if not cfg.tls_verify:
                kwargs["ssl_check_hostname"] = False
        if cfg.sentinels:
            sentinels = [_host_port(a) for a in cfg.sentinels.split(",") if a.strip()]
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                sentinels,
                sentinel_kwargs={"socket_timeout": cfg.timeout, "password": cfg.sentinel_password},
                **kwargs,
            )
            client: aioredis.Redis = sentinel.master_for(cfg.sentinel_master, **kwargs)
            return client
        # bounded: a burst of history calls waits for a connection instead
        # of opening one each (publishes share one pipeline, see _send)
        conn = dict(kwargs)  # the connections' own settings, retries included
        if cfg.tls:
            conn.pop("ssl", None)
            conn["connection_class"] = aioredis.SSLConnection
        pool = aioredis.BlockingConnectionPool(
            max_connections=POOL_SIZE, timeout=cfg.timeout, host=cfg.host, port=cfg.port, **conn
        )
        return aioredis.Redis(connection_pool=pool)

    async def start(self) -> None:
        if self._started:
            return
        self._client = self._connect()
        self._sha = None
        self._started = True
        try:
            await self._client.ping()
            await self._check_epoch()
            await asyncio.wait_for(self._open_pubsub(), self._cfg.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            # start anyway: the receiving task connects when Redis comes
            self._up = False
            self._reason = f"cannot reach Redis at {self._where()}: {exc}"
            log.error("broker redis: %s; retrying in the background", self._reason)
        else:
            self._up = True
            self._reason = ""
        self._reader = asyncio.get_running_loop().create_task(self._receive(), name="redis-reader")
        self._registry = asyncio.get_running_loop().create_task(
            self._register(), name="redis-registry"
        )

    async def close(self) -> None:
        was = self._started
        self._started = False
        self._up = False
        self._reason = "closed"
        for task in (self._reader, self._registry, self._sender, self._users_sync):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._reader = self._registry = self._sender = self._users_sync = None
        for _, fut in self._outbox:
            if not fut.done():
                fut.set_exception(BrokerUnavailable("broker redis is closed"))
        self._outbox = []
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception:
                pass
            self._pubsub = None
        self._connected.clear()
        if self._client is not None:
            if was:
                try:
                    await asyncio.wait_for(
                        self._client.delete(self._instance_key()), self._cfg.timeout
                    )
                except Exception:
                    pass
            await self._client.aclose(close_connection_pool=True)
            self._client = None

    def _down(self, reason: str) -> None:
        if self._up or self._reason != reason:
            log.warning("broker redis: down: %s", reason)
        self._up = False
        self._reason = reason

    def _key(self, kind: str, type_: str) -> str:
        return f"{self._prefix}:{kind}:{type_}"

    def _command_failed(self, what: str, exc: Exception) -> BrokerUnavailable:
        self.errors += 1
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
            self._down(f"{what}: Redis at {self._where()} did not answer: {exc}")
        return BrokerUnavailable(f"broker redis is unavailable ({what}): {exc}")

    def _check(self) -> aioredis.Redis:
        if not self._started or self._client is None:
            raise BrokerUnavailable("broker redis is closed")
        if not self._up:
            raise BrokerUnavailable(f"broker redis is unavailable: {self._reason}")
        return self._client

    # -- publishing -------------------------------------------------------------------

    def _args(self, type_: str, payload: Any, key: str | None) -> tuple[list[str], list[Any]]:
        head, middle, tail, meta = data_pieces(type_, now_ms(), payload, key)
        self._publishes += 1
        keys = [
            self._key("seq", type_),
            self._key("hist", type_),
            self._key("ch", type_),
            f"{self._prefix}:pub:{self.instance_id}:{self._publishes}",
        ]
        ttl = math.ceil(self._cfg.history_ttl)
        return keys, [head, middle, tail, meta, self._history_size, ttl]

    async def publish(self, type_: str, payload: Any, key: str | None = None) -> Publication:
        return (await self.publish_many([(type_, payload, key)]))[0]

    async def publish_many(self, items: Sequence[tuple[str, Any, str | None]]) -> list[Publication]:
        self._check()
        if not items:
            return []
        calls = [self._args(t, p, k) for t, p, k in items]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._outbox.append((calls, fut))
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send(), name="redis-publisher")
        try:
            seqs = await fut
        except RedisTimeoutError as exc:
            error = self._command_failed("publish", exc)
            error.message = (
                f"broker redis did not answer in {self._cfg.timeout:g}s: the message may still "
                "be published (at most once); check with history before publishing it again"
            )
            raise error from None
        except RedisError as exc:
            raise self._command_failed("publish", exc) from None
        out = []
        for (type_, _, key), (_, args), seq in zip(items, calls, seqs, strict=True):
            seq = int(seq)
            head, middle, tail, meta = args[:4]
            data = b"%s%d%s%d%s" % (head, seq, middle, seq, tail)
            out.append(Publication(type_, seq, orjson.loads(meta)[0], key, data))
            if seq > self._latest.get(type_, 0):
                self._latest[type_] = seq
        self.published += len(out)
        return out

    async def _evalsha(self, batch: list[_Pending]) -> list[Any]:
        """EVALSHA every publish of ``batch``: one command alone, a pipeline
        (one round trip, no SCRIPT EXISTS) for several."""
        client = self._client
        assert client is not None
        if self._sha is None:
            self._sha = await client.script_load(PUBLISH_LUA)
        sha = self._sha
        calls = [call for calls, _ in batch for call in calls]
        if len(calls) == 1:
            keys, args = calls[0]
            return [await client.evalsha(sha, len(keys), *keys, *args)]
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(sha, len(keys), *keys, *args)
            return list(await pipe.execute())

    async def _send(self) -> None:
        """Send every publish waiting, as one pipeline, until none waits.

        Publishes made while a pipeline is out go in the next one, so under
        load they batch by themselves (one round trip and one connection for
        many), and at light load each goes at once."""
        while self._outbox and self._client is not None:
            batch, self._outbox = self._outbox, []
            batch = [(calls, fut) for calls, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                try:
                    results = await self._evalsha(batch)
                except NoScriptError:  # Redis restarted: load it again (publishes are idempotent)
                    self._sha = None
                    results = await self._evalsha(batch)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                # what waits behind was never sent: refuse it now, not after
                # its own round of timeouts and retries
                waiting, self._outbox = self._outbox, []
                for _, fut in waiting:
                    if not fut.done():
                        fut.set_exception(
                            BrokerUnavailable(f"broker redis is unavailable (not published): {exc}")
                        )
                continue
            rtt = time.perf_counter() - started
            self.rtt = rtt if not self.rtt else self.rtt * 0.9 + rtt * 0.1
            self.batches += 1
            i = 0
            for calls, fut in batch:
                if not fut.done():
                    fut.set_result(results[i : i + len(calls)])
                i += len(calls)

    # -- history ----------------------------------------------------------------------

    async def history(self, type_: str, limit: int, since: int | None = None) -> HistoryPage:
        client = self._check()
        size = self._history_size
        hist = self._key("hist", type_)
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._key("seq", type_))
                pipe.zrange(hist, 0, 0, withscores=True)
                if limit > 0 and size > 0:
                    if since is None:
                        pipe.zrange(hist, -min(limit, size), -1)
                    else:
                        pipe.zrangebyscore(hist, f"({since}", "+inf", start=0, num=limit)
                raw = await pipe.execute()
        except RedisError as exc:
            raise self._command_failed("history", exc) from None
        latest = int(raw[0] or 0)
        if latest > self._latest.get(type_, 0):
            self._latest[type_] = latest
        oldest = int(raw[1][0][1]) if raw[1] else 0
        floor = latest - size  # the window: what a smaller history_size still shows
        if oldest and oldest <= floor:
            oldest = floor + 1 if size else 0
        messages = []
        if len(raw) > 2:
            messages = [p for p in (parse_entry(type_, e) for e in raw[2]) if p.seq > floor]
        if size == 0:
            oldest = 0
        return HistoryPage(messages, oldest, latest)

    def latest_seq(self, type_: str) -> int:
        return self._latest.get(type_, 0)

    def set_history_size(self, size: int) -> None:
        # reads show the new window at once; publishes trim each type's set
        self._history_size = size

    # -- interest and receiving -----------------------------------------------------------

    def listening(self, types: Iterable[str]) -> bool:
        listened = self._listened
        return all(t in listened for t in types)

    def listened(self) -> frozenset[str]:
        return frozenset(self._listened)

    async def listen(self, types: Iterable[str]) -> dict[str, int]:
        new = [t for t in dict.fromkeys(types) if t not in self._listened]
        if not new:
            return {}
        client = self._check()
        try:
            # the counters before subscribing: what is published after them
            # and before the subscription holds comes from the history
            counters = await client.mget([self._key("seq", t) for t in new])
            baseline = {t: int(c or 0) for t, c in zip(new, counters, strict=True)}
            for t, c in baseline.items():
                self._listened.setdefault(t, c)
                self._latest[t] = max(self._latest.get(t, 0), c)
            await self._subscribe(new)
            return baseline
        except (RedisError, asyncio.TimeoutError) as exc:
            for t in new:
                self._listened.pop(t, None)
            raise self._command_failed("subscribe", exc) from None

    def unlisten(self, types: Iterable[str]) -> None:
        gone = [t for t in types if self._listened.pop(t, None) is not None]
        if gone and self._pubsub is not None and self._up:
            channels = [self._key("ch", t) for t in gone]
            task = asyncio.ensure_future(self._pubsub.unsubscribe(*channels))
            task.add_done_callback(_ignore_result)

    async def _subscribe(self, types: list[str]) -> None:
        """Subscribe the pub/sub connection to ``types`` and wait until Redis
        confirmed it (from then on their messages arrive)."""
        if self._pubsub is None:
            try:
                await asyncio.wait_for(self._connected.wait(), self._cfg.timeout)
            except asyncio.TimeoutError:
                raise RedisConnectionError("the pub/sub connection is not open") from None
        pubsub = self._pubsub
        assert pubsub is not None
        loop = asyncio.get_running_loop()
        waits = []
        for t in types:
            fut = self._filling.get(t)
            if fut is None or fut.done():
                fut = self._filling[t] = loop.create_future()
            waits.append(fut)
        await pubsub.subscribe(*[self._key("ch", t) for t in types])
        # the reader sees the confirmations; bounded like any command
        await asyncio.wait_for(asyncio.gather(*waits), self._cfg.timeout)

    async def _open_pubsub(self) -> PubSub:
        """A pub/sub connection subscribed to the control channel and every
        listened type (their confirmations start the catch-up)."""
        client = self._client
        assert client is not None
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(f"{self._prefix}:ctl")
            if self._listened:
                await pubsub.subscribe(*[self._key("ch", t) for t in self._listened])
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self._pubsub = pubsub
        self._connected.set()
        return pubsub

    async def _receive(self) -> None:
        """The receiving task: one pub/sub connection, reconnected with backoff."""
        backoff = BACKOFF_FIRST
        while self._started:
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    pubsub = await self._open_pubsub()
                    self.reconnects += 1
                    log.warning("broker redis: reconnected to %s", self._where())
                self._up = True
                self._reason = ""
                backoff = BACKOFF_FIRST
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                self._down(f"Redis at {self._where()} lost: {exc}")
            finally:
                self._connected.clear()
                if pubsub is not None:
                    if self._pubsub is pubsub:
                        self._pubsub = None
                    try:
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                    except Exception:
                        pass
                for fut in self._filling.values():
                    if not fut.done():
                        fut.set_exception(RedisConnectionError("the pub/sub connection was lost"))
                        fut.exception()  # retrieved: nobody may be waiting
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _read(self, pubsub: PubSub) -> None:
        quiet_since = time.monotonic()
        pinged = 0.0
        while self._started:
            msg = await pubsub.get_message(timeout=PING_AFTER)
            now = time.monotonic()
            if msg is None:
                if pinged and now - pinged > max(self._cfg.timeout, PING_AFTER):
                    raise RedisTimeoutError(f"no answer to a ping in {now - pinged:.1f}s")
                if not pinged and now - quiet_since >= PING_AFTER:
                    await pubsub.ping()
                    pinged = now
                continue
            quiet_since = now
            pinged = 0.0
            if not self._up:  # Redis answers again (a command had failed meanwhile)
                log.warning("broker redis: %s answers again", self._where())
                self._up = True
                self._reason = ""
            kind = msg["type"]
            if kind == b"message" or kind == "message":
                await self._on_message(_text(msg["channel"]), msg["data"])
            elif kind in ("subscribe", b"subscribe"):
                await self._on_subscribed(_text(msg["channel"]))

    def _type_of(self, channel: str) -> str | None:
        prefix = f"{self._prefix}:ch:"
        return channel[len(prefix) :] if channel.startswith(prefix) else None

    async def _on_subscribed(self, channel: str) -> None:
        type_ = self._type_of(channel)
        if type_ is None or type_ not in self._listened:
            return
        # caught up at once: after a reconnect what was published meanwhile,
        # after a first subscribe what came between the counter and now
        try:
            await self._check_epoch()
        except RedisError as exc:
            log.warning("broker redis: reading the epoch failed: %s", exc)
        await self._catch_up(type_, None)
        fut = self._filling.get(type_)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _on_message(self, channel: str, entry: bytes) -> None:
        type_ = self._type_of(channel)
        if type_ is None:
            return
        done = self._listened.get(type_)
        if done is None:
            return  # unlistened meanwhile
        pub = parse_entry(type_, entry)
        self.received += 1
        if pub.seq > done + 1:
            await self._catch_up(type_, pub.seq)
            done = self._listened.get(type_)
            if done is None:
                return
        if pub.seq <= done:
            return  # delivered already (caught up from the history)
        self._deliver_one(pub)

    def _reset(self, type_: str, seq: int) -> None:
        self.resets += 1
        log.error(
            "broker redis: %s's counter is back at %d after %d was delivered here: Redis lost "
            "its data; numbering starts again (recovering clients get recovered: false)",
            type_,
            seq - 1,
            self._listened.get(type_, 0),
        )
        self._listened[type_] = seq - 1
        self._latest[type_] = seq - 1

    async def _check_epoch(self) -> None:
        """Notice that Redis lost its data (restarted empty, or a replica
        without it was promoted): the epoch key this engine saw is gone. Every
        listened type then starts again from 0, and the catch-up that follows
        delivers what was published since."""
        client = self._client
        if client is None:
            return
        mine = f"{self.instance_id}:{time.time_ns()}"
        old = await client.set(f"{self._prefix}:epoch", mine, nx=True, get=True)
        epoch = _text(old) if old is not None else mine
        if self._epoch is not None and epoch != self._epoch:
            self.resets += 1
            log.error(
                "broker redis: Redis at %s lost its data (its epoch changed); numbering "
                "starts again for %d listened types (recovering clients get recovered: false)",
                self._where(),
                len(self._listened),
            )
            for t in self._listened:
                self._listened[t] = 0
                self._latest[t] = 0
        self._epoch = epoch

    def _deliver_one(self, pub: Publication) -> None:
        self._listened[pub.type] = pub.seq
        if pub.seq > self._latest.get(pub.type, 0):
            self._latest[pub.type] = pub.seq
        if self._deliver is not None:
            self._deliver(pub)

    async def _catch_up(self, type_: str, before: int | None) -> None:
        """Deliver from the history what came after the last delivered seq
        (and before ``before``, when given)."""
        done = self._listened.get(type_)
        client = self._client
        if done is None or client is None:
            return
        upper = "+inf" if before is None else f"({before}"
        try:
            raw: Any = await asyncio.gather(
                client.zrangebyscore(self._key("hist", type_), f"({done}", upper),
                client.get(self._key("seq", type_)),
            )
        except RedisError as exc:
            log.warning("broker redis: catching up %s failed: %s", type_, exc)
            return
        entries: list[bytes] = raw[0]
        counter = int(raw[1] or 0)
        if counter < done:
            self._reset(type_, counter + 1)
            done = counter
        pubs = [parse_entry(type_, e) for e in entries]
        expected = done + 1
        for pub in pubs:
            if pub.seq < expected:
                continue
            if pub.seq > expected:
                self.gaps_lost += pub.seq - expected
            self.gaps_filled += 1
            self._deliver_one(pub)
            expected = pub.seq + 1
        if before is not None and before > expected:
            self.gaps_lost += before - expected
            log.warning(
                "broker redis: %s:%d..%d are no longer in the history; this instance's "
                "clients miss them (recovering ones get recovered: false)",
                type_,
                expected,
                before - 1,
            )
            self._listened[type_] = before - 1

    # -- the cluster view -------------------------------------------------------------

    def _instance_key(self, instance: str | None = None) -> str:
        return f"{self._prefix}:instance:{instance or self.instance_id}"

    async def _register(self) -> None:
        ttl = int(REGISTRY_INTERVAL * 3 * 1000)
        while self._started:
            client = self._client
            if client is not None and self._up:
                try:
                    record = {"instance": self.instance_id, "seen": now_ms(), **self._record()}
                    users = self._users_key()
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.set(self._instance_key(), orjson.dumps(record), px=ttl)
                        pipe.zadd(f"{self._prefix}:instances", {self.instance_id: now_ms() + ttl})
                        pipe.pexpire(users, ttl)
                        pipe.hlen(users)
                        *_, held = await pipe.execute()
                    if held != len(self._users):  # Redis lost them (a restart): again
                        self._users_dirty.update(self._users)
                        self._sync_users_soon()
                except Exception as exc:
                    log.debug("broker redis: registering failed: %s", exc)
            await asyncio.sleep(REGISTRY_INTERVAL)

    def set_instance_record(self, record: Callable[[], dict[str, Any]]) -> None:
        self._record = record

    # -- per-user connection counts, across instances ----------------------------------

    def _users_key(self, instance: str | None = None) -> str:
        return f"{self._prefix}:users:{instance or self.instance_id}"

    def set_user_connections(self, user: str, count: int) -> None:
        if count > 0:
            self._users[user] = count
        else:
            self._users.pop(user, None)
        self._users_dirty.add(user)
        self._sync_users_soon()

    def _sync_users_soon(self) -> None:
        if self._users_sync is None and self._started:
            self._users_sync = asyncio.get_running_loop().create_task(
                self._sync_users(), name="redis-users"
            )

    async def _sync_users(self) -> None:
        """Write the changed counts, one pipeline at a time (so they batch)."""
        try:
            while self._users_dirty and self._started:
                client = self._client
                if client is None or not self._up:
                    return  # the registry rewrites them once Redis is back
                dirty, self._users_dirty = self._users_dirty, set()
                key = self._users_key()
                counts = {u: self._users[u] for u in dirty if u in self._users}
                gone = [u for u in dirty if u not in self._users]
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        if counts:
                            pipe.hset(key, mapping=counts)  # type: ignore[arg-type]
                        if gone:
                            pipe.hdel(key, *gone)
                        pipe.pexpire(key, int(REGISTRY_INTERVAL * 3 * 1000))
                        await pipe.execute()
                except RedisError as exc:
                    self._users_dirty |= dirty
                    log.debug("broker redis: writing user counts failed: %s", exc)
                    return
        finally:
            self._users_sync = None

    async def user_connections_elsewhere(self, user: str) -> int:
        client = self._check()
        try:
            total = await client.eval(
                USER_COUNT_LUA,
                1,
                f"{self._prefix}:instances",
                f"{self._prefix}:users:",
                self.instance_id,
                user,
                now_ms(),
            )
        except RedisError as exc:
            raise self._command_failed("user count", exc) from None
        return int(total)

    async def instances(self) -> list[dict[str, Any]]:
        """Every instance's latest record (this one's included), live ones only."""
        client = self._check()
        index = f"{self._prefix}:instances"
        try:
            await client.zremrangebyscore(index, "-inf", now_ms())
            ids = [_text(i) for i in await client.zrange(index, 0, -1)]
            raw = await client.mget([self._instance_key(i) for i in ids]) if ids else []
        except RedisError as exc:
            raise self._command_failed("instances", exc) from None
        return [orjson.loads(r) for r in raw if r]

    # -- health and stats -------------------------------------------------------------

    def health(self) -> BrokerHealth:
        details = {"engine": self.name, "redis": self._where()}
        if not self._started:
            return BrokerHealth(False, self._reason or "closed", details)
        if not self._up:
            return BrokerHealth(False, self._reason, details)
        return BrokerHealth(True, "", details)

    def stats(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "redis": self._where(),
            "connected": self._up,
            "instance": self.instance_id,
            "types": len(self._latest),
            "listened_types": len(self._listened),
            "history_size": self._history_size,
            "published": self.published,
            "received": self.received,
            "gaps_filled": self.gaps_filled,
            "gaps_lost": self.gaps_lost,
            "reconnects": self.reconnects,
            "errors": self.errors,
            "resets": self.resets,
            "publish_rtt_ms": round(self.rtt * 1000, 3),
            "publish_batches": self.batches,
        }


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host or "localhost", int(port or 26379)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
