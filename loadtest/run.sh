#!/usr/bin/env bash
# Run one Locust scenario headless against aiosrv and write a report directory.
#
#   loadtest/run.sh --start-server --scenario steady -u 500 -t 60s
#   loadtest/run.sh -H https://push.example.com --api-url https://api.example.com \
#       --metrics-url http://10.0.0.5:9090/metrics --token "$TOKEN" --scenario ramp \
#       -u 10000 -t 10m --processes 4
#
# Options (the rest, after --, go to locust as they are):
#   --scenario NAME     steady (default), ramp, storm, churn, slow, reconnect
#   --start-server      start `aiosrv serve` on a free loopback port, single-port
#                       mode (WebSocket, API and /metrics on one port); stopped at the end
#   -H, --host URL      the server (http[s]:// or ws[s]://); not with --start-server
#   --api-url URL       the HTTP API when it has its own port (default: the host)
#   --metrics-url URL   /metrics to sample (default: host + /metrics)
#   -u N, -r N, -t T    peak users, spawn rate per second, duration (30s, 5m)
#   --processes N       Locust worker processes (-1: one per core)
#   --out DIR           report directory (default loadtest/reports/SCENARIO-TIMESTAMP)
#   --quiet             no periodic Locust stats on the terminal (summary only)
# Scenario tuning goes after -- (e.g. -- --types prices,news --keys eu,us
# --publishers 2 --publish-rate 50 --slow-fraction 0.5 --token T).
#
# The report directory holds Locust's report.html, locust_*.csv (with the
# per-second history), server_metrics.csv (the /metrics samples), the PNG plots
# and report.md. The exit status is Locust's (1 when any request failed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"
elif [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"
else py="$(command -v python3)"; fi
bindir="$(dirname "$py")"
locust="$bindir/locust"
[[ -x "$locust" ]] || locust="$(command -v locust)"

scenario=steady start_server=0 host="" api_url="" metrics_url="" users=100 rate="" duration=30s
processes="" out="" quiet=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --scenario) scenario="$2"; shift 2 ;;
    --start-server) start_server=1; shift ;;
    -H|--host) host="$2"; shift 2 ;;
    --api-url) api_url="$2"; shift 2 ;;
    --metrics-url) metrics_url="$2"; shift 2 ;;
    -u|--users) users="$2"; shift 2 ;;
    -r|--spawn-rate) rate="$2"; shift 2 ;;
    -t|--run-time) duration="$2"; shift 2 ;;
    --processes) processes="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --quiet) quiet=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) echo "run.sh: unknown option $1 (locust options go after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$rate" ]] || rate=$(( users / 10 > 1 ? users / 10 : 1 ))
out="${out:-$here/reports/$scenario-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# connections are file descriptors, in Locust and in a local server
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

if [[ $start_server == 1 ]]; then
  [[ -z "$host" ]] || { echo "run.sh: --start-server and -H exclude each other" >&2; exit 2; }
  port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # a fresh directory: the server must not pick up the repository's config/
  srvdir="$(mktemp -d "${TMPDIR:-/tmp}/aiosrv-loadtest-XXXXXX")"
  (cd "$srvdir" && exec "$py" -m aiosrv serve --host 127.0.0.1 --port "$port" \
      --api-host 127.0.0.1 --api-port "$port" --metrics-port "$port" --log-level WARNING \
      >"$out/server.log" 2>&1) &
  pids+=($!)
  host="http://127.0.0.1:$port"
  for _ in $(seq 100); do
    if "$py" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "$host/health" 2>/dev/null; then break; fi
    kill -0 "${pids[0]}" 2>/dev/null || { echo "run.sh: the server died:" >&2; cat "$out/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "run.sh: server on $host (pid ${pids[0]}, log $out/server.log)"
fi
[[ -n "$host" ]] || { echo "run.sh: give -H URL or --start-server" >&2; exit 2; }
if [[ -z "$metrics_url" ]]; then
  metrics_url="$(echo "$host" | sed -e 's#^ws://#http://#' -e 's#^wss://#https://#')"
  metrics_url="${metrics_url%/}/metrics"
fi

"$py" "$here/report.py" sample "$metrics_url" "$out/server_metrics.csv" &
pids+=($!)

cat >"$out/run.txt" <<EOF
scenario:  $scenario
host:      $host${api_url:+  (api $api_url)}
metrics:   $metrics_url
users:     $users (spawn rate $rate/s), duration $duration${processes:+, processes $processes}
extra:     $*
started:   $(date -u +%FT%TZ)
EOF
echo "run.sh: scenario $scenario, $users users, $duration -> $out"

args=(-f "$here/locustfile.py" --headless -H "$host" -u "$users" -r "$rate" -t "$duration"
      --csv "$out/locust" --csv-full-history --html "$out/report.html"
      --stop-timeout 5 --exit-code-on-error 1)
[[ -n "$api_url" ]] && args+=(--api-url "$api_url")
[[ -n "$processes" ]] && args+=(--processes "$processes")
[[ $quiet == 1 ]] && args+=(--only-summary)
status=0
if [[ $scenario == plain ]]; then
  "$locust" "${args[@]}" "$@" || status=$?
else
  LOADTEST_SCENARIO="$scenario" "$locust" "${args[@]}" "$@" || status=$?
fi

sleep 1  # one more sample after the end
cleanup
pids=()
"$py" "$here/report.py" render "$out" --title "aiosrv load test: $scenario"
echo "run.sh: report $out/report.md (locust exit $status)"
exit "$status"
