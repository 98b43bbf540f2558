#!/bin/sh
# health-check.sh URL: is one aiosrv instance healthy?
#
# URL is the API's base (http://127.0.0.1:8080) or its /health address.
# Exit 0 when /health answers 200 with status "healthy"; 1 otherwise (503:
# draining, broker down, broadcast queue full; or no answer at all). Prints
# the status and, when unhealthy, the reason and every failing check from
# /health's JSON. Needs curl and jq. HEALTH_TIMEOUT: seconds (default 5).
# A draining instance (SIGTERM) closes its listeners first: it reports "no
# answer" to new connections, which is unhealthy as well.
set -u
if [ $# -ne 1 ]; then
    echo "usage: $0 URL   (e.g. http://127.0.0.1:8080)" >&2
    exit 2
fi
for prog in curl jq; do
    if ! command -v "$prog" >/dev/null 2>&1; then
        echo "UNHEALTHY: $prog is not installed" >&2
        exit 1
    fi
done
url=${1%/}
case $url in
    */health) ;;
    *) url="$url/health" ;;
esac
body=$(mktemp)
err=$(mktemp)
trap 'rm -f "$body" "$err"' EXIT
code=$(curl -sS -o "$body" -w '%{http_code}' --max-time "${HEALTH_TIMEOUT:-5}" "$url" 2>"$err")
rc=$?
if [ $rc -ne 0 ]; then
    echo "UNHEALTHY: no answer from $url: $(cat "$err")"
    exit 1
fi
if ! summary=$(jq -r '
        "status: \(.status)",
        (if .reason then "reason: \(.reason)" else empty end),
        (if .checks.draining == true then "check draining: the instance is shutting down" else empty end),
        (.checks // {} | to_entries[]
            | select((.value | type) == "object" and .value.ok == false)
            | "check \(.key): \(.value.reason // "not ok \(.value | del(.ok) | tojson)")")
    ' "$body" 2>/dev/null); then
    echo "UNHEALTHY: HTTP $code from $url, not /health's JSON: $(head -c 200 "$body")"
    exit 1
fi
status=$(jq -r '.status' "$body")
if [ "$code" = "200" ] && [ "$status" = "healthy" ]; then
    echo "HEALTHY: $url HTTP $code"
    echo "$summary"
    exit 0
fi
echo "UNHEALTHY: $url HTTP $code"
echo "$summary"
exit 1
