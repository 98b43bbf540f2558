"""The Prometheus alert rules, their unit tests, the scrape config and the
Grafana dashboard under ``deploy/``: promtool accepts them, the alerts fire
and stay quiet as their tests say, and every metric they name is one a real
running aiosrv exports.

promtool is Debian's ``prometheus`` package (``scripts/system-deps.sh``
installs it). A missing promtool fails these tests; they never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.redis_support import RedisServer
from tests.serverproc import start_server

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"
PROM_CONFIG = PROM / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "aiosrv-dashboard.json"

#: Metrics Prometheus makes itself rather than scraping them.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed: run `sh scripts/system-deps.sh` as root "
            "(it installs Debian's prometheus package, which provides /usr/bin/promtool)"
        )
    return subprocess.run(
        [exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords,
    label matchers, grouping labels, durations and numbers left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_names_parser() -> None:
    assert metric_names(
        'sum by (instance, code) (rate(aiosrv_errors_total{instance=~"$instance"}[5m]))'
    ) == {"aiosrv_errors_total"}
    assert metric_names("increase(a_total[5m]) + increase(b_total[5m]) > 0") == {
        "a_total",
        "b_total",
    }
    assert metric_names('up{job="aiosrv"} == 0') == {"up"}
    assert metric_names("error_rate > 0.05") == {"error_rate"}


def alert_rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "WARNING" not in (r.stdout + r.stderr).upper()


def test_promtool_test_rules() -> None:
    r = promtool("test", "rules", str(ALERTS_TEST))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_check_config() -> None:
    r = promtool("check", "config", str(PROM_CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is valid prometheus config file syntax" in r.stdout
    config = yaml.safe_load(PROM_CONFIG.read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "aiosrv" and job.get("metrics_path", "/metrics") == "/metrics"
    assert all(t.endswith(":9090") for sc in job["static_configs"] for t in sc["targets"])


def test_every_alert_is_tested_firing_and_quiet() -> None:
    rules = alert_rules()
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["alerts.yml"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {r["alert"] for r in rules}
    assert names == fired == quiet
    for r in rules:
        labels, notes = r["labels"], r["annotations"]
        assert isinstance(labels, dict) and labels["severity"] in {"warning", "critical"}
        assert isinstance(notes, dict) and notes["summary"]
        assert "$value" in notes["description"] and "Runbook:" in notes["description"]
        assert "docs/operations.md" in notes["runbook"]


def test_dashboard_has_the_guides_panels_and_a_datasource_variable() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    titles = [p["title"] for p in doc["panels"]]
    # the operations guide's five recommended panels, in its order
    for title, word in zip(
        titles, ["系统概览", "连接监控", "消息监控", "错误监控", "性能监控"], strict=True
    ):
        assert word in title
    (ds,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus"
    uid = "${" + ds["name"] + "}"
    for p in doc["panels"]:
        assert p["datasource"]["uid"] == uid
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid
    exprs = " ".join(dashboard_exprs())
    for name in ("active_connections", "cpu_usage_percent", "memory_usage_mb", "error_rate"):
        assert name in exprs


@pytest.fixture(scope="module")
def exported() -> Iterator[set[str]]:
    """The metric names a real aiosrv on the Redis engine exports (the broker
    metrics come only with a broker that has a network)."""
    with RedisServer() as redis:
        srv = start_server(
            settings={
                "broker.engine": "redis",
                "redis.host": redis.host,
                "redis.port": str(redis.port),
                "redis.channel_prefix": "ops-test",
            }
        )
        try:
            m = re.search(r"metrics http://[\d.]+:(\d+)/metrics", srv.log_text())
            assert m, srv.log_text()
            with urllib.request.urlopen(f"http://127.0.0.1:{m[1]}/metrics", timeout=10) as r:
                text = r.read().decode()
        finally:
            srv.stop()
            srv.cleanup()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
            if kind in {"histogram", "summary"}:
                names.update(f"{name}{s}" for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    assert "aiosrv_broker_gap_lost_total" in names, text
    yield names


def test_alert_metrics_are_exported(exported: set[str]) -> None:
    used = {n for r in alert_rules() for n in metric_names(str(r["expr"]))}
    assert used, "no metric names found in alerts.yml"
    assert used - exported - PROMETHEUS_OWN == set()


def test_dashboard_metrics_are_exported(exported: set[str]) -> None:
    used = {n for e in dashboard_exprs() for n in metric_names(e)}
    assert len(used) > 10
    assert used - exported - PROMETHEUS_OWN == set()
