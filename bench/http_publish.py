"""The HTTP publish path alone: how many ``POST /api/publish`` per second a server accepts.

One message per request, no subscribers. Measured in the same run, with the
same client (``bench/publisher --mode http``), for:

* ``aiosrv``: its own ``POST /api/publish`` (parse, sequence, history, hand to
  the fan-out, which has nobody to deliver to);
* ``aiohttp-202``: ``bench/peers/aiohttp_202.py``, a minimal aiohttp app on
  uvloop whose handler reads the body and answers 202, the floor of any
  aiohttp-based publish endpoint.

Two ways:

* closed loop: K keep-alive connections, each with one request outstanding
  (the next is sent when the reply came): publishes/s accepted, reply time;
* open loop (``--ramp``): 50 connections, rate doubling from 1,000/s, each
  message on its own deadline (one request outstanding per connection; a
  message due while all 50 wait is late): the highest rate the publisher got
  (>= 97%) with every request answered and p99 reply time under 50 ms.

Server pinned to CPU 0, publisher to CPU 1; reported with the server's CPU
(fraction of its core, microseconds per publish).

    .venv/bin/python bench/http_publish.py                # about 3 minutes
    .venv/bin/python bench/http_publish.py --quick        # under a minute
    .venv/bin/python bench/http_publish.py --conns 1,8,50 --seconds 5 --no-ramp

Writes bench/results/http_publish.{json,md} (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    AIOSRV, BENCH, CLIENT_CPU, PUBLISHER, RAW, RESULTS, VENV_PY, Proc, build_tools, free_ports, machine,
    proc_cpu, tree_cpu, wait_listening,
)

SERVERS: dict[str, tuple[str, list[str], str]] = {
    # name: (label, command, which port the publisher uses)
    "aiosrv": ("aiosrv POST /api/publish", AIOSRV, "api"),
    "aiohttp-202": ("minimal aiohttp handler answering 202 (peers/aiohttp_202.py)",
                    [str(VENV_PY), str(BENCH / "peers" / "aiohttp_202.py"), "--port", "{port}"], "port"),
}


def start(name: str, tag: str) -> tuple[Proc, int] | str:
    _label, cmd, which = SERVERS[name]
    names = [k for k in ("port", "api", "metrics") if any("{" + k + "}" in c for c in cmd)]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    srv = Proc([c.format(**ports) for c in cmd], None, RAW / f"http-{tag}-server.log")
    err = wait_listening(list(ports.values()), srv)
    if err:
        srv.stop()
        return err
    time.sleep(1.0)
    return srv, ports[which]


def measure(srv: Proc, port: int, conns: int, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    pub = Proc([str(PUBLISHER), "--mode", "http", "-p", str(port), "--conns", str(conns), "--depth", "1",
                "--control"], None, RAW / f"http-{tag}-publisher.log", stdin=True, cpu=CLIENT_CPU)
    try:
        ready = pub.read_json(30)
        if not ready or ready.get("open") != conns:
            return {"error": f"publisher did not connect: {ready}"}
        s0, p0, t0 = tree_cpu(srv.pid), proc_cpu(pub.pid), time.monotonic()
        pub.send(f"step 1 {rate} {seconds} 100 5")
        res = pub.read_json(seconds + 40)
        s1, p1, t1 = tree_cpu(srv.pid), proc_cpu(pub.pid), time.monotonic()
        if res is None:
            return {"error": "no answer from the publisher"}
        wall = t1 - t0
        res["server_cpu_fraction"] = round((s1 - s0) / wall, 3)
        res["publisher_cpu_fraction_measured"] = round((p1 - p0) / wall, 3)
        res["server_cpu_us_per_publish"] = round((s1 - s0) / res["acked"] * 1e6, 1) if res["acked"] else None
        res["client_bound"] = res["publisher_cpu_fraction_measured"] >= 0.9
        pub.send("quit")
        pub.read_json(5)
        return res
    finally:
        pub.stop()


def line(name: str, what: str, r: dict[str, Any]) -> None:
    if r.get("error"):
        print(f"[{name}] {what}: {r['error']}", flush=True)
        return
    rm = r["response_ms"]
    print(f"[{name}] {what}: {r['acked_per_second']:,.0f} acked/s (sent at {r['publish_rate']:,.0f}/s), "
          f"reply p50 {rm['p50']:.2f} p99 {rm['p99']:.2f} ms, refused {r['refused']}, unanswered "
          f"{r['unanswered']}, server cpu {r['server_cpu_fraction']:.2f} ({r['server_cpu_us_per_publish']} µs/publish), "
          f"publisher cpu {r['publisher_cpu_fraction_measured']:.2f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="aiosrv,aiohttp-202")
    ap.add_argument("--conns", default="1,8,50", help="closed loop: connections, one request outstanding each")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--no-ramp", action="store_true", help="skip the open-loop rate ramp")
    ap.add_argument("--ramp-conns", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="2 s steps, conns 1,50, a short ramp")
    ap.add_argument("--out", default=str(RESULTS / "http_publish"))
    args = ap.parse_args()
    import os
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    build_tools()
    RAW.mkdir(parents=True, exist_ok=True)
    secs = 2.0 if args.quick else args.seconds
    conns_list = [int(x) for x in ("1,50" if args.quick and args.conns == "1,8,50" else args.conns).split(",")]
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    report: dict[str, Any] = {"machine": machine(), "seconds_per_step": secs, "servers": {}}
    t0 = time.monotonic()
    for name in names:
        out: dict[str, Any] = {"label": SERVERS[name][0], "closed_loop": {}, "ramp": []}
        report["servers"][name] = out
        st = start(name, name)
        if isinstance(st, str):
            out["error"] = st
            print(f"[{name}] {st}", flush=True)
            continue
        srv, port = st
        try:
            for k in conns_list:
                r = measure(srv, port, k, 0, secs, f"{name}-closed{k}")
                out["closed_loop"][str(k)] = r
                line(name, f"closed loop, {k} conns", r)
            if not args.no_ramp:
                rate = 1000.0
                best = None
                for _ in range(4 if args.quick else 8):
                    r = measure(srv, port, args.ramp_conns, rate, secs, f"{name}-open{rate:g}")
                    ok = (not r.get("error") and r["publish_rate"] >= 0.97 * rate and not r["unanswered"]
                          and not r["refused"] and r["response_ms"]["p99"] < 50)
                    r["pass"] = ok
                    out["ramp"].append(r)
                    line(name, f"open loop {rate:g}/s, {args.ramp_conns} conns, {'PASS' if ok else 'fail'}", r)
                    if not ok:
                        break
                    best = r
                    rate *= 2
                out["ramp_best"] = best
        finally:
            srv.stop()
    report["seconds"] = time.monotonic() - t0
    outp = Path(args.out)
    outp.parent.mkdir(parents=True, exist_ok=True)
    outp.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    outp.with_suffix(".md").write_text(markdown(report, conns_list, args.ramp_conns))
    print(f"done in {report['seconds'] / 60:.1f} min: {outp}.json, {outp}.md", flush=True)
    return 0


def markdown(report: dict[str, Any], conns_list: list[int], ramp_conns: int) -> str:
    m = report["machine"]
    lines = [
        "# HTTP publish path: publishes per second accepted, one message per request, no subscribers",
        "",
        f"Run {m['date']}; aiosrv at {m.get('aiosrv_commit', '?')}"
        f"{' with uncommitted changes' if m.get('aiosrv_dirty') else ''}. Machine: {m['cpu_model']}, {m['cpus']} "
        f"vCPUs, Linux {m['kernel']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if k in ("aiohttp", "uvloop", "orjson"))
        + f". Server on CPU 0, `bench/publisher --mode http` on CPU 1; {report['seconds_per_step']:g} s per step.",
        "",
        "Closed loop: K keep-alive connections, each with one request outstanding. Cell: acked publishes/s; "
        "reply p50 / p99 ms; server CPU (share of its core; µs per publish). † = the publisher was ≥ 90% busy.",
        "",
        "| server | " + " | ".join(f"{k} connection{'s' if k > 1 else ''}" for k in conns_list) + " |",
        "|---|" + "---|" * len(conns_list),
    ]
    for _name, s in report["servers"].items():
        cells = []
        for k in conns_list:
            r = s.get("closed_loop", {}).get(str(k))
            if not r or r.get("error"):
                cells.append((r or s).get("error", "–"))
                continue
            cells.append(f"**{r['acked_per_second']:,.0f}/s**{'†' if r.get('client_bound') else ''}; "
                         f"{r['response_ms']['p50']:.2f} / {r['response_ms']['p99']:.2f} ms; "
                         f"{100 * r['server_cpu_fraction']:.0f}% ({r['server_cpu_us_per_publish']} µs)")
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    lines.append("")
    if any(s.get("ramp") for s in report["servers"].values()):
        lines += [f"Open loop: {ramp_conns} connections, paced rate doubling from 1,000/s; highest rate at which "
                  "the publisher got ≥ 97% of it, every request answered 202, p99 reply < 50 ms.", "",
                  "| server | highest rate passed | reply p50 / p99 there | server CPU there | first rate failed |",
                  "|---|---|---|---|---|"]
        for _name, s in report["servers"].items():
            b = s.get("ramp_best")
            fails = [r for r in s.get("ramp", []) if not r.get("pass")]
            f = fails[0] if fails else None
            fdesc = "–"
            if f:
                fdesc = (f"{f.get('rate', 0):,.0f}/s (got {f.get('publish_rate', 0):,.0f}/s, p99 "
                         f"{f.get('response_ms', {}).get('p99', 0):.1f} ms)")
            if b:
                lines.append(f"| {s['label']} | **{b['rate']:,.0f}/s** | {b['response_ms']['p50']:.2f} / "
                             f"{b['response_ms']['p99']:.2f} ms | {100 * b['server_cpu_fraction']:.0f}% "
                             f"({b['server_cpu_us_per_publish']} µs/publish) | {fdesc} |")
            else:
                lines.append(f"| {s['label']} | none | – | – | {fdesc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
