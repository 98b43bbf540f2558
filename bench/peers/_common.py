"""What the Python peers share: the bench protocol, in a few lines.

A client sends ``{"action": "subscribe", ...}`` and is then sent every data
message; a publisher sends
``{"action": "publish", "id": ID, "payload": {"type": T, "payload": P}}`` and
gets ``{"type": "ack", "id": ID, ...}`` back. Each published item becomes the
data message aiosrv would send: ``{"id", "type", "timestamp", "seq",
"payload"}``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

seqs: dict[str, int] = {}


def data_message(item: dict[str, Any]) -> dict[str, Any]:
    t = item["type"]
    seq = seqs[t] = seqs.get(t, 0) + 1
    return {"id": f"{t}:{seq}", "type": t, "timestamp": int(time.time() * 1000), "seq": seq,
            "payload": item.get("payload")}


def ack(msg: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {"type": "ack", "id": msg.get("id"), "timestamp": int(time.time() * 1000),
            "payload": {"action": msg.get("action"), **extra}}


def args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18765)
    return ap.parse_args()
