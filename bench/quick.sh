#!/bin/bash
# One aiosrv scenario: server pinned to CPU 0, C load client and HTTP publisher on CPU 1.
# usage: [SERVER=naive|websockets|node] bench/quick.sh NCONN RATE SECONDS SIZE [ENV=VALUE ...]   e.g. AIOSRV_NO_EXTENSIONS=1
N=$1; RATE=$2; SECS=$3; SIZE=$4; shift 4
cd "$(dirname "$0")/.." && cc -O2 -o bench/loadclient bench/loadclient.c
# SERVER=naive|websockets|node runs a peer from bench/peers instead of aiosrv
if [ "${SERVER:-aiosrv}" = naive ]; then
    env "$@" taskset -c 0 .venv/bin/python bench/peers/aiohttp_naive.py --port 18765 --api-port 18080 > /tmp/aiosrv-bench-srv.log 2>&1 &
elif [ "${SERVER}" = websockets ]; then
    env "$@" taskset -c 0 .venv/bin/python bench/peers/websockets_broadcast.py --port 18765 --api-port 18080 > /tmp/aiosrv-bench-srv.log 2>&1 &
elif [ "${SERVER}" = node ]; then
    (cd bench/peers/node_ws && [ -d node_modules ] || npm install --silent --no-audit --no-fund)
    env "$@" taskset -c 0 node bench/peers/node_ws/server.js 18765 18080 > /tmp/aiosrv-bench-srv.log 2>&1 &
else
    env "$@" taskset -c 0 .venv/bin/aiosrv serve --host 127.0.0.1 --port 18765 --api-host 127.0.0.1 --api-port 18080 --metrics-port 19090 --set sources.enabled=false --set websocket.max_connections=20000 --log-level WARNING > /tmp/aiosrv-bench-srv.log 2>&1 &
fi
SP=$!
sleep 1.5
taskset -c 1 bench/loadclient -p 18765 -n $N -d $(echo "$SECS + 1" | bc) -r 5000 > /tmp/aiosrv-bench-lc.json 2>/tmp/aiosrv-bench-lc.err &
LP=$!
# wait for the client to connect everyone
for i in $(seq 1 100); do grep -q connected /tmp/aiosrv-bench-lc.err && break; sleep 0.1; done
RSS0=$(grep VmRSS /proc/$SP/status | awk '{print $2}')
CPU0=$(awk '{print $14+$15}' /proc/$SP/stat)
taskset -c 1 .venv/bin/python bench/publisher.py --port 18080 --rate $RATE --seconds $SECS --size $SIZE > /tmp/aiosrv-bench-pub.json
wait $LP
CPU1=$(awk '{print $14+$15}' /proc/$SP/stat)
RSS1=$(grep VmRSS /proc/$SP/status | awk '{print $2}')
kill $SP; wait $SP 2>/dev/null
echo "pub: $(cat /tmp/aiosrv-bench-pub.json)"
echo "client: $(cat /tmp/aiosrv-bench-lc.json)"
echo "server rss_kb=$RSS1 cpu_ticks=$((CPU1-CPU0))"
