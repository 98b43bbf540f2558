"""Locust stress test of aiosrv: WebSocket subscribers and HTTP publishers.

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8765 \\
        -u 200 -r 100 -t 25s --csv out

``-H`` is the server (http:// or https://, or ws:// / wss://): subscribers
connect to ``-H`` + ``--ws-path``; publishers POST to ``--api-url`` (default:
``-H``, the single-port mode). A scenario is a load shape picked with the
``LOADTEST_SCENARIO`` environment variable (``steady``, ``ramp``, ``storm``,
``churn``, ``slow``, ``reconnect``); without it ``-u``/``-r``/``-t`` drive the
run as usual. The shapes read ``-u`` (peak users), ``-r`` and ``-t``.

What is reported (request type ``WS``):

* ``connect``: the WebSocket handshake; a refusal (401, 429, 503...) or a
  network error is a failure with its reason.
* ``subscribe``: the subscribe round trip (until its ack).
* ``receive <type>``: one per data message, response time = receive time
  minus the publisher's send time (``payload.sent_ms``; the server's
  ``timestamp`` when absent), so the end-to-end publish-to-receive latency.
  ``receive <type> (slow)`` for the slow readers of the ``slow`` scenario.
* ``recover <type>``: a message replayed after a reconnect with ``since``
  (published before the re-subscribe; its latency includes the time away).
* ``ping``: the application ping/pong round trip.
* ``reconnect``: a re-subscribe with ``since``; failure when the server
  answers ``recovered: false`` for a type (history no longer reached back).
* failures ``gap <type>`` (a ``seq`` skipped in a type subscribed without
  keys; response_length = the number missing), ``close`` (the server closed
  the connection: code and reason), ``error`` (an error reply).

Publishers (``POST /api/publish``) send one message per request at
``--publish-rate`` messages per second each; ``--publishers`` of them.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from urllib.parse import urlsplit, urlunsplit

import gevent
import websocket
from locust import LoadTestShape, User, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.user.task import LOCUST_STATE_STOPPING

try:
    import orjson

    loads = orjson.loads

    def dumps(obj: object) -> str:
        return orjson.dumps(obj).decode()
except ImportError:  # pragma: no cover - orjson comes with aiosrv
    loads = json.loads

    def dumps(obj: object) -> str:
        return json.dumps(obj, separators=(",", ":"))


SCENARIO = os.environ.get("LOADTEST_SCENARIO", "").strip().lower()

#: what each scenario changes in the subscribers' behaviour (options win)
SCENARIO_DEFAULTS: dict[str, dict[str, object]] = {
    "churn": {"churn_lifetime": "2,8"},
    "slow": {"slow_fraction": 0.25, "slow_delay": 0.05},
    "reconnect": {"reconnect_every": "3,8"},
}


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    g = parser.add_argument_group("aiosrv")
    g.add_argument("--api-url", default="", help="HTTP API base URL (default: -H)")
    g.add_argument("--ws-path", default="/ws/realtime", help="WebSocket path")
    g.add_argument("--token", default="", help="token sent as ?token= (and API bearer)")
    g.add_argument("--types", default="prices,news", help="comma-separated message types")
    g.add_argument("--keys", default="", help="comma-separated keys (empty: no keys)")
    g.add_argument(
        "--key-fraction", type=float, default=0.5,
        help="share of a subscriber's types narrowed to some --keys",
    )  # fmt: skip
    g.add_argument("--publishers", type=int, default=1, help="HTTP publisher users")
    g.add_argument(
        "--ws-publishers", type=int, default=0,
        help="WebSocket publisher users (the server needs websocket.allow_client_publish)",
    )  # fmt: skip
    g.add_argument("--publish-rate", type=float, default=20.0, help="messages/s per publisher")
    g.add_argument("--payload-bytes", type=int, default=0, help="padding added to each payload")
    g.add_argument("--ping-interval", type=float, default=10.0, help="client ping every N s")
    g.add_argument("--slow-fraction", type=float, default=None, help="share of slow readers")
    g.add_argument("--slow-delay", type=float, default=None, help="slow reader sleep per read, s")
    g.add_argument(
        "--churn-lifetime", default=None, help="'min,max' seconds a connection lives (churn)"
    )
    g.add_argument(
        "--reconnect-every", default=None,
        help="'min,max' seconds between a subscriber's drops and since-recoveries",
    )  # fmt: skip


def _opt(env, name: str, default: object = None) -> object:
    value = getattr(env.parsed_options, name, None) if env.parsed_options else None
    if value is None:
        value = SCENARIO_DEFAULTS.get(SCENARIO, {}).get(name, default)
    return value


def _range(text: object) -> tuple[float, float] | None:
    if not text:
        return None
    lo, _, hi = str(text).partition(",")
    return float(lo), float(hi or lo)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def now_ms() -> float:
    return time.time() * 1000.0


@events.init.add_listener
def _init(environment, **_kw) -> None:
    if environment.parsed_options is not None:
        opts = environment.parsed_options
        # A publisher class is in the run only with a count: Locust would
        # otherwise weigh a fixed_count of 0 like a subscriber's weight and
        # make half the users publishers.
        for cls, count in ((Publisher, opts.publishers), (WsPublisher, opts.ws_publishers)):
            cls.fixed_count = max(0, count)
            cls.wait_time = constant_throughput(opts.publish_rate)
            present = cls in environment.user_classes
            if cls.fixed_count and not present:
                environment.user_classes.append(cls)
            elif not cls.fixed_count and present:
                environment.user_classes.remove(cls)


class Closed(Exception):
    """The server closed the connection (code and reason in the message)."""


class Refused(Exception):
    """The upgrade was refused (HTTP status in the message)."""


class Gap(Exception):
    """A seq was skipped."""


class NotRecovered(Exception):
    """A since-recovery answered recovered: false."""


class ErrorReply(Exception):
    """The server answered an error."""


def ws_url(environment, host: str | None) -> str:
    """The WebSocket URL of -H (http -> ws), --ws-path and --token."""
    opts = environment.parsed_options
    parts = urlsplit((environment.host or host or "").rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = f"token={opts.token}" if opts and opts.token else ""
    path = opts.ws_path if opts else "/ws/realtime"
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def publication(types: list[str], keys: list[str], n: int, pad: str) -> dict[str, object]:
    """One message to publish: a type of --types, a key of --keys if any, and
    the send time the subscribers measure latency from."""
    body: dict[str, object] = {
        "type": random.choice(types),
        "payload": {"sent_ms": now_ms(), "n": n, "pad": pad},
    }
    if keys:
        body["key"] = random.choice(keys)
    return body


class Subscriber(User):
    """One WebSocket connection, subscribed to a random mix of --types/--keys."""

    weight = 1

    def __init__(self, environment) -> None:
        super().__init__(environment)
        opts = environment.parsed_options
        self.url = ws_url(environment, self.host)
        types = _csv(opts.types) if opts else ["prices"]
        keys = _csv(opts.keys) if opts else []
        n = random.randint(1, len(types))
        self.types = random.sample(types, n)
        self.keys: dict[str, list[str]] = {}
        for t in self.types:
            if keys and random.random() < opts.key_fraction:
                self.keys[t] = random.sample(keys, random.randint(1, len(keys)))
        self.last_seq: dict[str, int] = {}
        self.ws: websocket.WebSocket | None = None
        self.ping_interval = float(_opt(environment, "ping_interval", 10.0))
        slow_fraction = float(_opt(environment, "slow_fraction", 0.0))
        self.slow_delay = float(_opt(environment, "slow_delay", 0.0))
        self.slow = random.random() < slow_fraction
        self.suffix = " (slow)" if self.slow else ""
        self.lifetime = _range(_opt(environment, "churn_lifetime"))
        self.reconnect_every = _range(_opt(environment, "reconnect_every"))
        self.ids = itertools.count(1)
        self.fire = environment.events.request.fire

    def event(self, name: str, rt: float, length: int = 0, exc: Exception | None = None) -> None:
        self.fire(
            request_type="WS", name=name, response_time=rt, response_length=length,
            exception=exc, context={},
        )  # fmt: skip

    # -- connection life ---------------------------------------------------

    def connect(self) -> bool:
        t0 = time.perf_counter()
        try:
            ws = websocket.create_connection(
                self.url, timeout=10, skip_utf8_validation=True, enable_multithread=False
            )
        except websocket.WebSocketBadStatusException as e:
            self.event("connect", (time.perf_counter() - t0) * 1000, 0,
                       Refused(f"HTTP {e.status_code}"))  # fmt: skip
            return False
        except Exception as e:  # network errors, timeouts
            self.event("connect", (time.perf_counter() - t0) * 1000, 0, e)
            return False
        self.event("connect", (time.perf_counter() - t0) * 1000)
        self.ws = ws
        return True

    def subscribe(self, recovering: bool) -> float:
        """Send the subscribe (with since when recovering); return its send time (ms)."""
        payload: dict[str, object] = {"types": self.types}
        if self.keys:
            payload["keys"] = self.keys
        if recovering:
            payload["since"] = {t: s for t, s in self.last_seq.items() if t in self.types}
        sent = now_ms()
        self.sub_id = f"s{next(self.ids)}"
        self.sub_sent = sent
        self.recovering = recovering and bool(payload.get("since"))
        self.ws.send(dumps({"id": self.sub_id, "action": "subscribe", "payload": payload}))
        return sent

    def stopping(self) -> bool:
        """Locust asked this user to stop (fewer users, end of the run)."""
        return self._state == LOCUST_STATE_STOPPING

    def close(self) -> None:
        """The close handshake: our close frame, then read until the server's
        (at most a second), then the socket. Not ``WebSocket.close()``: its bare
        ``except`` swallows the GreenletExit with which Locust kills a user."""
        ws, self.ws = self.ws, None
        if ws is None:
            return
        try:
            if ws.connected:
                ws.send_close()
                ws.sock.settimeout(1)
                while ws.recv_frame().opcode != websocket.ABNF.OPCODE_CLOSE:
                    pass
        except Exception:
            pass
        finally:
            ws.shutdown()

    def on_stop(self) -> None:
        self.close()

    @task
    def live(self) -> None:
        recovering = False
        while not self.stopping():
            if not self.connect():
                gevent.sleep(random.uniform(0.5, 1.5))
                continue
            try:
                self.subscribe(recovering)
                ended = self.read_loop()
            except Exception as e:  # the connection broke
                self.event("close", 0, 0, Closed(f"connection lost: {type(e).__name__}"))
                ended = "lost"
            self.close()
            if ended == "stop":
                return  # Locust then calls on_stop and ends the user
            if ended == "churn":
                # a new client: fresh subscriptions, no recovery
                self.last_seq.clear()
                recovering = False
            else:
                recovering = True
                if ended != "planned":
                    gevent.sleep(random.uniform(0.2, 1.0))  # backoff after a server close

    def read_loop(self) -> str:
        """Read until the connection ends; return why: planned, churn, closed,
        stop (Locust is stopping this user: checked at least once a second)."""
        ws = self.ws
        start = time.monotonic()
        end_at = stop_reason = None
        if self.lifetime:
            end_at, stop_reason = start + random.uniform(*self.lifetime), "churn"
        elif self.reconnect_every:
            end_at, stop_reason = start + random.uniform(*self.reconnect_every), "planned"
        next_ping = start + random.uniform(0, self.ping_interval)
        ping_sent: dict[str, float] = {}
        last_seq = self.last_seq
        event = self.event
        slow = self.slow
        while True:
            now = time.monotonic()
            if self.stopping():
                return "stop"
            if end_at is not None and now >= end_at:
                return stop_reason
            if now >= next_ping:
                pid = f"p{next(self.ids)}"
                ping_sent[pid] = time.perf_counter()
                ws.send(dumps({"id": pid, "action": "ping"}))
                next_ping = now + self.ping_interval
            wait = min(1.0, next_ping - now)
            if end_at is not None:
                wait = min(wait, end_at - now)
            ws.sock.settimeout(max(0.01, wait))
            try:
                opcode, frame = ws.recv_data_frame()
            except websocket.WebSocketTimeoutException:
                continue
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                reason = data[2:].decode("utf-8", "replace")
                event("close", 0, 0, Closed(f"closed by server: {code} {reason}".strip()))
                return "closed"
            raw = frame.data
            msg = loads(raw)
            mtype = msg.get("type")
            if "seq" in msg:
                t_recv = now_ms()
                seq = msg["seq"]
                payload = msg.get("payload")
                sent = payload.get("sent_ms") if isinstance(payload, dict) else None
                if sent is None:
                    sent = msg.get("timestamp", t_recv)
                last = last_seq.get(mtype)
                if last is not None:
                    if mtype not in self.keys and seq != last + 1 and seq > last:
                        event(f"gap {mtype}", 0, seq - last - 1,
                              Gap(f"seq gap in {mtype} (missing count in length)"))  # fmt: skip
                    elif seq <= last:
                        event(f"gap {mtype}", 0, 0, Gap(f"seq went back in {mtype}"))
                last_seq[mtype] = seq
                if self.recovering and sent < self.sub_sent:
                    event(f"recover {mtype}", t_recv - sent, len(raw))
                else:
                    event(f"receive {mtype}{self.suffix}", t_recv - sent, len(raw))
                if slow:
                    gevent.sleep(self.slow_delay)
                continue
            if mtype == "pong":
                t0 = ping_sent.pop(msg.get("id"), None)
                if t0 is not None:
                    event(f"ping{self.suffix}", (time.perf_counter() - t0) * 1000, len(raw))
            elif mtype == "ack" and msg.get("id") == getattr(self, "sub_id", None):
                p = msg.get("payload") or {}
                rt = now_ms() - self.sub_sent
                rec = p.get("recovered")
                if rec is not None:
                    lost = sorted(t for t, ok in rec.items() if not ok)
                    exc = NotRecovered(f"recovered false: {','.join(lost)}") if lost else None
                    event("reconnect", rt, 0, exc)
                else:
                    event("subscribe", rt)
            elif mtype == "error":
                p = msg.get("payload") or {}
                event("error", 0, 0, ErrorReply(f"{p.get('code')}: {p.get('message', '')[:80]}"))


class Publisher(FastHttpUser):
    """POST /api/publish, one message per request, at --publish-rate per user."""

    fixed_count = 1
    weight = 0  # never weighed against subscribers: see _init
    wait_time = constant_throughput(20)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.api = (opts.api_url if opts and opts.api_url else self.host or "").rstrip("/")
        if self.api.startswith(("ws://", "wss://")):
            self.api = "http" + self.api[2:]
        self.types = _csv(opts.types) if opts else ["prices"]
        self.keys = _csv(opts.keys) if opts else []
        self.pad = "x" * (opts.payload_bytes if opts else 0)
        self.headers = {"Content-Type": "application/json"}
        if opts and opts.token:
            self.headers["Authorization"] = f"Bearer {opts.token}"
        self.n = 0

    @task
    def publish(self) -> None:
        self.n += 1
        body = publication(self.types, self.keys, self.n, self.pad)
        with self.client.post(
            self.api + "/api/publish", data=dumps(body), headers=self.headers,
            name="/api/publish", catch_response=True,
        ) as resp:  # fmt: skip
            if resp.status_code != 202:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:80]}")


class WsPublisher(User):
    """The publish action over one WebSocket, one message per frame, at
    --publish-rate per user; each ack is a WS event "publish" (its round
    trip), an error reply or a close a failure. --ws-publishers of them."""

    fixed_count = 0
    weight = 0  # in the run only with --ws-publishers: see _init
    wait_time = constant_throughput(20)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.url = ws_url(self.environment, self.host)
        self.types = _csv(opts.types) if opts else ["prices"]
        self.keys = _csv(opts.keys) if opts else []
        self.pad = "x" * (opts.payload_bytes if opts else 0)
        self.ws: websocket.WebSocket | None = None
        self.n = 0
        self.fire = self.environment.events.request.fire

    def event(self, name: str, rt: float, length: int = 0, exc: Exception | None = None) -> None:
        self.fire(
            request_type="WS", name=name, response_time=rt, response_length=length,
            exception=exc, context={},
        )  # fmt: skip

    def on_stop(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            ws.shutdown()

    @task
    def publish(self) -> None:
        if self.ws is None:
            t0 = time.perf_counter()
            try:
                self.ws = websocket.create_connection(self.url, timeout=10)
            except Exception as e:
                self.event("publisher connect", (time.perf_counter() - t0) * 1000, 0, e)
                gevent.sleep(1)
                return
            self.event("publisher connect", (time.perf_counter() - t0) * 1000)
        self.n += 1
        rid = f"p{self.n}"
        body = publication(self.types, self.keys, self.n, self.pad)
        t0 = time.perf_counter()
        try:
            self.ws.send(dumps({"id": rid, "action": "publish", "payload": body}))
            while True:  # not subscribed: only replies come, the ack among them
                reply = json.loads(self.ws.recv())
                if reply.get("id") == rid:
                    break
        except Exception as e:  # closed or broken: reconnect on the next task
            self.event("publish", (time.perf_counter() - t0) * 1000, 0, Closed(str(e)))
            self.on_stop()
            return
        rt = (time.perf_counter() - t0) * 1000
        if reply.get("type") == "ack":
            self.event("publish", rt)
        else:
            p = reply.get("payload") or {}
            self.event("publish", rt, 0, ErrorReply(f"{p.get('code')}: {p.get('message')}"))


# -- scenarios (load shapes) ---------------------------------------------------


class _Shape(LoadTestShape):
    """Reads -u (peak users), -r (spawn rate) and -t (duration, default 60 s)."""

    abstract = True
    use_common_options = True

    def params(self) -> tuple[int, float, float]:
        o = self.runner.environment.parsed_options
        users = int(o.num_users or 100)
        rate = float(o.spawn_rate or max(1, users / 10))
        duration = float(o.run_time or 60)
        return users, rate, duration


class Steady(_Shape):
    """Ramp to -u at -r, hold until -t. Also the base of churn, slow, reconnect."""

    abstract = True

    def tick(self):
        users, rate, duration = self.params()
        if self.get_run_time() >= duration:
            return None
        return users, rate


class Ramp(_Shape):
    """Linear ramp to -u (e.g. 10000) over 80% of -t, then hold; -r is ignored."""

    abstract = True

    def tick(self):
        users, _rate, duration = self.params()
        t = self.get_run_time()
        if t >= duration:
            return None
        return users, max(1.0, users / (0.8 * duration))


class Storm(_Shape):
    """Connect storm: all -u users at once, hold a third of -t, all leave at
    once, and all come back at once at the half."""

    abstract = True

    def tick(self):
        users, _rate, duration = self.params()
        t = self.get_run_time()
        if t >= duration:
            return None
        pubs = Publisher.fixed_count + WsPublisher.fixed_count
        if duration / 3 <= t < duration / 2:
            return pubs, users  # everyone but the publishers disconnects
        return users, users


SHAPES = {
    "steady": Steady,
    "ramp": Ramp,
    "storm": Storm,
    "churn": Steady,
    "slow": Steady,
    "reconnect": Steady,
}

if SCENARIO:
    if SCENARIO not in SHAPES:
        raise SystemExit(f"LOADTEST_SCENARIO={SCENARIO!r}: one of {', '.join(SHAPES)}")
    # the one non-abstract shape class in this module is the one Locust uses
    Scenario = type(f"{SCENARIO.capitalize()}Scenario", (SHAPES[SCENARIO],), {"abstract": False})
