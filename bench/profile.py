"""Profile the server under one load, and say where its time goes.

Starts aiosrv pinned to CPU 0 and the C load client (N subscribers and the
publisher) pinned to CPU 1, lets the load run, records the server with
py-spy (``--native``, so system calls and Cython frames show), and prints the
share of samples per part of the server: the write system calls, the
fan-out core, frame parsing, the event loop, aiohttp, the rest of Python.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py -n 1000 --rate 3000          # 1k subscribers
    .venv/bin/python bench/profile.py -n 10000 --rate 10           # 10k at 10/s
    .venv/bin/python bench/profile.py --set broadcast.write_share=0.3     # a server setting
    AIOSRV_NO_EXTENSIONS=1 .venv/bin/python bench/profile.py ...   # the pure twin

The raw samples stay in ``bench/results/raw/profile-*.txt`` (py-spy's raw
format: one stack per line, then its count) for a closer look.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RAW = BENCH / "results" / "raw"
VENV = ROOT / ".venv" / "bin"

#: (part, substrings of a frame's name): the first part whose substring is in
#: the innermost frames of a stack gets the sample.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("write system calls (writev/write/send)", ("writev", "__libc_write", "libc_write", "__send",
                                                 "uv__write", "uv_try_write", "do_writev")),
    ("read system calls", ("__libc_read", "uv__read", "recv")),
    ("epoll / loop waiting", ("epoll_wait", "epoll_pwait")),
    ("fan-out core (publish, append, flush)", ("_fanout_c", "_fanout_py", "FanOut", "Subscriber",
                                               "_append", "_write")),
    ("frame parsing (FrameReader)", ("FrameReader", "feed")),
    ("hub (drain, encode, deflate)", ("hub.py", "encode_frame", "encode_data")),
    ("connection and protocol (replies, actions)", ("connection.py", "protocol.py")),
    ("aiohttp (HTTP API, upgrade)", ("aiohttp",)),
    ("event loop (uvloop)", ("uvloop", "uv__", "uv_run")),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def classify(stack: list[str]) -> str:
    # innermost first: a sample in writev called from the core is a write
    for frame in reversed(stack):
        for part, needles in PARTS:
            if any(n in frame for n in needles):
                return part
    return "other Python and C"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="subscribers")
    ap.add_argument("--rate", type=float, default=3000, help="publishes per second")
    ap.add_argument("--size", type=int, default=100, help="payload bytes")
    ap.add_argument("--seconds", type=float, default=8, help="py-spy recording time")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a server setting, e.g. broadcast.write_share=0.3 (repeatable)")
    args = ap.parse_args()
    spy = VENV / "py-spy"
    client = BENCH / "loadclient"
    if not spy.exists():
        print("bench/profile.py: py-spy missing; run: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    if not client.exists():
        print("bench/profile.py: bench/loadclient missing; run: bash bench/setup.sh", file=sys.stderr)
        return 2
    RAW.mkdir(parents=True, exist_ok=True)
    port, api, metrics = free_port(), free_port(), free_port()
    srv = subprocess.Popen(
        ["taskset", "-c", "0", str(VENV / "aiosrv"), "serve", "--host", "127.0.0.1", "--port", str(port),
         "--api-host", "127.0.0.1", "--api-port", str(api), "--metrics-port", str(metrics),
         "--log-level", "WARNING", "--set", "websocket.allow_client_publish=true",
         "--set", "sources.enabled=false", "--set", "websocket.max_connections=20000",
         *[a for kv in args.set for a in ("--set", kv)]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    core = "pure" if os.environ.get("AIOSRV_NO_EXTENSIONS", "") in {"1", "true", "yes"} else "compiled"
    tag = f"profile-{core}-{args.n}-{args.rate:g}-{args.size}"
    out = RAW / f"{tag}.txt"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or srv.poll() is not None:
                    print("bench/profile.py: the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        # the port came from the OS: check that what answers is the server started here
        sys.path.insert(0, str(BENCH))
        from run import port_owner

        owner, why = port_owner(port, srv.pid)
        if owner is None:
            print(f"bench/profile.py: {why}", file=sys.stderr)
            return 1
        run_for = args.seconds + 6 + args.n / 2000
        cli = subprocess.Popen(
            ["taskset", "-c", "1", str(client), "-p", str(port), "-P", "/ws/realtime", "-n", str(args.n),
             "-d", f"{run_for:g}", "--pub", "ws", "--rate", f"{args.rate:g}", "--size", str(args.size)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        time.sleep(3 + args.n / 2000)  # connected and publishing
        cpu0, t0 = cpu_seconds(srv.pid), time.monotonic()
        rec = subprocess.run(
            ["taskset", "-c", "1", str(spy), "record", "-p", str(srv.pid), "-d", f"{args.seconds:g}",
             "-r", "200", "--native", "--format", "raw", "-o", str(out)],
            capture_output=True, text=True,
        )
        busy = (cpu_seconds(srv.pid) - cpu0) / (time.monotonic() - t0)
        if rec.returncode != 0:
            print(f"bench/profile.py: py-spy failed: {rec.stderr.strip()}", file=sys.stderr)
            return 1
        report_line = cli.communicate(timeout=run_for + 60)[0].strip().splitlines()
    finally:
        srv.terminate()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        total += count
        parts[classify(stack)] += count
        leaves[stack[-1].split(" (")[0]] += count
    print(f"{args.n} subscribers, {args.rate:g} publishes/s, {args.size} B, core {core}: "
          f"{total} samples over {args.seconds:g} s ({out.relative_to(ROOT)}); "
          f"server CPU {100 * busy:.0f}% busy")
    for part, n in parts.most_common():
        print(f"  {100 * n / total:5.1f}%  {part}")
    print("  innermost frames:")
    for leaf, n in leaves.most_common(8):
        print(f"  {100 * n / total:5.1f}%  {leaf}")
    if report_line:
        try:
            r = json.loads(report_line[-1])
            lat = r.get("latency_ms", {})
            print(f"  load client: {r.get('delivered_per_second', 0):,.0f} delivered/s "
                  f"({100 * r.get('delivered_fraction', 0):.1f}%), latency p50 {lat.get('p50', 0):.1f} "
                  f"p99 {lat.get('p99', 0):.1f} ms; server CPU µs per delivery: "
                  f"{1e6 * busy / max(r.get('delivered_per_second', 0), 1):.2f}")
        except (json.JSONDecodeError, TypeError):
            pass
    return 0


if __name__ == "__main__":
    if shutil.which("taskset") is None:
        sys.exit("bench/profile.py: taskset (util-linux) is needed")
    sys.exit(main())
