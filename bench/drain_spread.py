"""How shutdown's closes are spread over ``shutdown.drain_window``.

Starts ``aiosrv serve`` (a child process, free ports), connects N WebSocket
clients from this process (raw sockets on one asyncio loop: a client only
completes the upgrade and then waits for the close frame), sends SIGTERM and
records when each client sees its close frame. Reports, per window, the
spread of the closes (first to last), the most closes in any 100 ms (what the
instances left behind would see as a reconnect burst), the close codes, and
how long the process took to exit.

    .venv/bin/python bench/drain_spread.py --clients 2000 --windows 0,5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serverproc import ServerProcess, start_server

REQUEST = (
    "GET /ws/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def client(port: int, ready: asyncio.Event, out: list[tuple[float, int]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(REQUEST.format(key=key).encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:60]
    ready.set()
    code = -1
    try:
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            body = await reader.readexactly(n)
            if b0 & 0x0F == 0x8:
                code = int.from_bytes(body[:2], "big")
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    out.append((time.monotonic(), code))
    writer.close()


async def one_run(clients: int, window: float, grace: float) -> dict[str, float | str]:
    srv: ServerProcess = start_server(
        settings={
            "shutdown.grace_period": str(grace),
            "shutdown.drain_window": str(window),
            "websocket.max_connections": str(clients + 100),
        },
        log_level="INFO",
    )
    try:
        closes: list[tuple[float, int]] = []
        tasks = []
        for _ in range(clients):
            ready = asyncio.Event()
            tasks.append(asyncio.create_task(client(srv.ws_port, ready, closes)))
            await ready.wait()
        t0 = time.monotonic()
        os.kill(srv.pid, signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), grace + 30)
        rc = await asyncio.to_thread(srv.proc.wait, grace + 30)
        exited = time.monotonic() - t0
    finally:
        srv.cleanup()
    times = sorted(t - t0 for t, _ in closes)
    buckets: dict[int, int] = {}
    for t in times:
        buckets[int(t * 10)] = buckets.get(int(t * 10), 0) + 1
    codes = {c for _, c in closes}
    return {
        "window_s": window,
        "first_ms": times[0] * 1000,
        "last_ms": times[-1] * 1000,
        "max_per_100ms": max(buckets.values()),
        "codes": ",".join(map(str, sorted(codes))),
        "exit_s": exited,
        "rc": rc if rc is not None else -1,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--windows", default="0,5", help="drain windows in seconds, comma-separated")
    args = p.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.clients * 2 + 200)), hard))
    print(
        f"# drain spread, {args.clients} clients, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print("| window s | first close ms | last close ms | most closes in 100 ms | codes | exit s |")
    print("|---|---|---|---|---|---|")
    for w in (float(x) for x in args.windows.split(",")):
        r = asyncio.run(one_run(args.clients, w, max(10.0, w * 2)))
        print(
            f"| {r['window_s']:g} | {r['first_ms']:.0f} | {r['last_ms']:.0f} | "
            f"{r['max_per_100ms']} | {r['codes']} | {r['exit_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
