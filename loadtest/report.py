"""Sampling of the server's /metrics during a Locust run, and the report.

    python loadtest/report.py sample METRICS_URL OUT.csv   # once a second until killed
    python loadtest/report.py render REPORT_DIR [--title T]

``sample`` writes one CSV row a second: the time, ``active_connections``,
``aiosrv_messages_delivered_total``, ``aiosrv_messages_published_total``,
``cpu_usage_percent`` and ``memory_usage_mb`` (the names aiosrv/metrics.py
exports); a failed scrape is a row with empty values. ``render`` reads
Locust's CSVs (``locust_stats.csv``, ``locust_stats_history.csv`` from
``--csv-full-history``, ``locust_failures.csv``) and ``server_metrics.csv``
from REPORT_DIR and writes ``report.md`` with PNG plots (matplotlib). Nothing
here imports Locust or gevent.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import signal
import sys
import time
import urllib.request
from pathlib import Path

METRICS = {
    "active_connections": "connections",
    "aiosrv_messages_delivered_total": "delivered",
    "aiosrv_messages_published_total": "published",
    "cpu_usage_percent": "cpu_percent",
    "memory_usage_mb": "memory_mb",
}
SAMPLE_FIELDS = ["time", *METRICS.values()]


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode("utf-8", "replace")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, value = line.partition(" ")
        if name in METRICS:
            out[METRICS[name]] = float(value.split()[0])
    return out


def sample(url: str, path: Path, interval: float = 1.0) -> None:
    stop = False

    def _stop(*_a: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, SAMPLE_FIELDS)
        w.writeheader()
        next_t = time.time()
        while not stop:
            row: dict[str, object] = {"time": round(time.time(), 3)}
            try:
                row.update(scrape(url))
            except Exception:
                pass  # a missed scrape is an empty row
            w.writerow(row)
            f.flush()
            next_t += interval
            delay = next_t - time.time()
            while delay > 0 and not stop:
                time.sleep(min(delay, 0.2))
                delay = next_t - time.time()


# -- render --------------------------------------------------------------------


def _read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(text: str | None) -> float:
    try:
        v = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return v


def _ms(text: str | None) -> str:
    v = _num(text)
    if math.isnan(v):
        return "n/a"
    return f"{v:.1f}" if v < 10 else f"{v:.0f}"


def render(report_dir: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = _read(report_dir / "locust_stats.csv")
    history = _read(report_dir / "locust_stats_history.csv")
    failures = _read(report_dir / "locust_failures.csv")
    server = _read(report_dir / "server_metrics.csv")
    t0 = min(
        [_num(r["Timestamp"]) for r in history[:1]] + [_num(r["time"]) for r in server[:1]],
        default=0.0,
    )

    def rel(ts: str) -> float:
        return _num(ts) - t0

    pngs: list[tuple[str, str]] = []

    # latency percentiles over time, per receive name (and connect)
    fig, ax = plt.subplots(figsize=(9, 4))
    names = sorted({r["Name"] for r in history if r["Name"].startswith(("receive", "connect"))})
    for name in names:
        rows = [r for r in history if r["Name"] == name]
        xs = [rel(r["Timestamp"]) for r in rows]
        for pct, style in (("50%", ":"), ("95%", "--"), ("99%", "-")):
            ys = [_num(r.get(pct)) for r in rows]
            ax.plot(xs, ys, style, label=f"{name} p{pct[:-1]}")
    ax.set_xlabel("s")
    ax.set_ylabel("ms")
    ax.set_title("latency percentiles (Locust, current window)")
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(report_dir / "latency.png", dpi=90)
    plt.close(fig)
    pngs.append(("latency.png", "Publish-to-receive and connect latency percentiles"))

    # connections: Locust's users and the server's active_connections
    agg = [r for r in history if r["Name"] == "Aggregated"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot([rel(r["Timestamp"]) for r in agg], [_num(r["User Count"]) for r in agg],
            label="Locust users")  # fmt: skip
    ax.plot([rel(r["time"]) for r in server], [_num(r.get("connections")) for r in server],
            label="server active_connections")  # fmt: skip
    ax.set_xlabel("s")
    ax.set_title("connections")
    ax.legend()
    fig.tight_layout()
    fig.savefig(report_dir / "connections.png", dpi=90)
    plt.close(fig)
    pngs.append(("connections.png", "Locust users and the server's open connections"))

    # deliveries per second: the server's counter and Locust's receive events
    fig, ax = plt.subplots(figsize=(9, 4))
    xs, ys = [], []
    for a, b in itertools.pairwise(server):
        d = _num(b.get("delivered")) - _num(a.get("delivered"))
        dt = _num(b["time"]) - _num(a["time"])
        if dt > 0 and not math.isnan(d):
            xs.append(rel(b["time"]))
            ys.append(d / dt)
    ax.plot(xs, ys, label="server aiosrv_messages_delivered/s")
    # Locust's Requests/s column is a moving average: difference the totals instead
    totals: dict[str, float] = {}
    for r in history:
        if r["Name"].startswith(("receive", "recover")):
            ts = r["Timestamp"]
            totals[ts] = totals.get(ts, 0.0) + _num(r["Total Request Count"])
    stamps = sorted(totals, key=_num)
    rx = [rel(b) for b in stamps[1:]]
    ry = [
        (totals[b] - totals[a]) / max(1e-9, _num(b) - _num(a))
        for a, b in itertools.pairwise(stamps)
    ]
    ax.plot(rx, ry, label="Locust receive events/s")
    ax.set_xlabel("s")
    ax.set_title("deliveries per second")
    ax.legend()
    fig.tight_layout()
    fig.savefig(report_dir / "deliveries.png", dpi=90)
    plt.close(fig)
    pngs.append(("deliveries.png", "Frames the server queued and data messages Locust received"))

    # server CPU and memory
    fig, ax = plt.subplots(figsize=(9, 4))
    sx = [rel(r["time"]) for r in server]
    ax.plot(sx, [_num(r.get("cpu_percent")) for r in server], color="C3", label="CPU %")
    ax.set_ylabel("CPU % of one core")
    ax.set_xlabel("s")
    ax2 = ax.twinx()
    ax2.plot(sx, [_num(r.get("memory_mb")) for r in server], color="C0", label="memory MiB")
    ax2.set_ylabel("RSS MiB")
    ax.set_title("server CPU (red) and memory (blue)")
    fig.tight_layout()
    fig.savefig(report_dir / "server.png", dpi=90)
    plt.close(fig)
    pngs.append(("server.png", "Server CPU and resident memory (/metrics)"))

    lines = [f"# {title}", ""]
    meta = report_dir / "run.txt"
    if meta.exists():
        lines += ["```", meta.read_text().strip(), "```", ""]
    lines += [
        "Locust's HTML report: [report.html](report.html). Latencies in ms; `receive` is",
        "publish-to-receive (publisher's send time to the subscriber's read).",
        "",
        "| type | name | requests | failures | median | p95 | p99 | max | req/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in stats:
        lines.append(
            f"| {r['Type']} | {r['Name']} | {r['Request Count']} | {r['Failure Count']} | "
            f"{_ms(r['Median Response Time'])} | {_ms(r['95%'])} | {_ms(r['99%'])} | "
            f"{_ms(r['Max Response Time'])} | {_num(r['Requests/s']):.1f} |"
        )
    lines += ["", "## Failures", ""]
    if failures:
        lines += ["| method | name | error | occurrences |", "|---|---|---|---:|"]
        for r in failures:
            err = r["Error"].replace("|", "\\|")
            lines.append(f"| {r['Method']} | {r['Name']} | {err} | {r['Occurrences']} |")
    else:
        lines.append("None.")
    if server:
        cpu = [_num(r.get("cpu_percent")) for r in server]
        mem = [_num(r.get("memory_mb")) for r in server]
        conns = [_num(r.get("connections")) for r in server]

        def peak(v: list[float]) -> str:
            v = [x for x in v if not math.isnan(x)]
            return f"{max(v):.0f}" if v else "n/a"

        lines += [
            "",
            "## Server",
            "",
            f"Peak active_connections {peak(conns)}, peak CPU {peak(cpu)} % of a core, "
            f"peak memory {peak(mem)} MiB, peak deliveries {peak(ys)} /s "
            f"({len(server)} samples of /metrics).",
        ]
    lines += ["", "## Plots", ""]
    for png, caption in pngs:
        lines += [f"### {caption}", "", f"![{caption}]({png})", ""]
    out = report_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("url")
    s.add_argument("out", type=Path)
    s.add_argument("--interval", type=float, default=1.0)
    r = sub.add_parser("render")
    r.add_argument("dir", type=Path)
    r.add_argument("--title", default="aiosrv load test")
    a = p.parse_args(argv)
    if a.cmd == "sample":
        sample(a.url, a.out, a.interval)
    else:
        print(render(a.dir, a.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
