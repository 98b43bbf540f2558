"""Publish benchmark messages to aiosrv at a fixed rate over HTTP batches.

Each message's payload carries ``t`` (CLOCK_MONOTONIC ns at publish, the
clock the C load client reads) and ``n`` (its number, for loss checks):

    .venv/bin/python bench/publisher.py --port 8080 --rate 100 --seconds 10 --size 100
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import orjson


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--rate", type=float, default=100.0, help="messages per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=100, help="approximate payload bytes")
    ap.add_argument("--type", default="bench")
    ap.add_argument("--tick", type=float, default=0.005, help="seconds between batches")
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}/api/publish"
    pad = "x" * max(0, args.size - 40)
    sent = 0
    refused = 0
    start = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= args.seconds:
                break
            due = int(elapsed * args.rate) + 1 - sent
            if due > 0:
                batch = [
                    {"type": args.type, "payload": {"t": time.monotonic_ns(), "n": sent + i, "p": pad}}
                    for i in range(min(due, 1000))
                ]
                async with http.post(url, data=orjson.dumps(batch)) as resp:
                    if resp.status == 202:
                        sent += len(batch)
                    else:
                        refused += len(batch)
                        await resp.read()
            await asyncio.sleep(args.tick)
    took = time.monotonic() - start
    print(orjson.dumps({"sent": sent, "refused": refused, "seconds": round(took, 3),
                        "rate": round(sent / took, 1)}).decode())


if __name__ == "__main__":
    asyncio.run(main())
