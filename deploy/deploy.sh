#!/bin/sh
# deploy.sh: put a new release of aiosrv into service on one host, without
# dropping the service, as the operations guide describes: blue-green (start
# the new colour beside the old, check it, switch the proxy, drain the old) or
# rolling (replace the instances of one host one at a time; they share a Redis
# engine, so clients reconnect to the others while one restarts).
#
#   deploy/deploy.sh blue-green --release /opt/aiosrv/releases/0.2.0 \
#       --state /var/lib/websocket-server --config /etc/websocket-server/production.yaml \
#       --env-file /etc/websocket-server/secrets.env \
#       --upstreams /etc/nginx/aiosrv-upstreams.conf --switch-cmd 'nginx -s reload'
#   deploy/deploy.sh rolling --release DIR --state DIR \
#       --instances "8765:8080:9090 8766:8081:9091"
#   deploy/deploy.sh status --state DIR
#   deploy/deploy.sh stop --state DIR
#
# A release is a directory holding a virtualenv with aiosrv installed
# (DIR/bin/aiosrv), e.g. `python3 -m venv DIR && DIR/bin/pip install aiosrv-*.whl`.
# Instances are processes this script starts (setsid, stderr to
# STATE/NAME.log, pid in STATE/NAME.pid) with the ports of their slot in
# WEBSOCKET_PORT, API_PORT and METRICS_PORT, AIOSRV_CONFIG=--config, and the
# KEY=VALUE lines of --env-file. Everything else comes from the config file
# and this script's environment (WEBSOCKET_HOST, API_HOST, ...).
#
# Blue-green: slots "blue" (--blue WS:API:METRICS, default 8765:8080:9090) and
# "green" (--green, default 8766:8081:9091); STATE/active names the live one.
#   1. checks: the release runs (`aiosrv --version`), the config passes
#      `aiosrv check-config`, nothing answers on the idle slot's ports;
#   2. starts the release in the idle slot; waits until deploy/health-check.sh
#      says healthy (--start-timeout) and deploy/verify.sh passes (a message
#      published over HTTP reaches a WebSocket subscriber, the version is the
#      release's) and /status names the pid this script started;
#   3. switches: writes --upstreams (nginx `upstream` blocks naming the new
#      slot's ports) and runs --switch-cmd; records STATE/active;
#   4. drains the old slot: SIGTERM, so its clients are closed with 1001 over
#      shutdown.drain_window and reconnect, through the proxy, to the new one;
#      waits for it to exit (--stop-timeout).
#   A failure in 1 or 2 stops the new instance and leaves the old one serving
#   (exit 1); nothing was switched.
# Rolling: for each slot of --instances in turn: SIGTERM the instance there
# (its clients reconnect to the others), wait for it to exit, start the
# release on the same ports, wait for health and verify. A failure stops the
# roll there (exit 1): the new instance is stopped, the previous release is
# started again in that slot (rollback of that slot), the slots not yet
# reached keep the old release. Rolling needs broker.engine redis (several
# instances of a single service).
#
# Exit: 0 done, 1 failed (with a message saying which step), 2 usage.
# Needs curl and jq (as health-check.sh and verify.sh do).
set -u

here=$(cd "$(dirname "$0")" && pwd)
usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
say() { echo "deploy: $*"; }
fail() {
    echo "deploy: FAILED: $*" >&2
    exit 1
}

[ $# -ge 1 ] || usage
mode=$1
shift
case $mode in
    blue-green | rolling | status | stop) ;;
    -h | --help) usage ;;
    *) echo "deploy: unknown mode '$mode' (blue-green, rolling, status, stop)" >&2; exit 2 ;;
esac

release=${RELEASE:-}
state=${DEPLOY_STATE:-/var/lib/websocket-server/deploy}
config=${AIOSRV_CONFIG:-}
env_file=
instances="8765:8080:9090"
blue="8765:8080:9090"
green="8766:8081:9091"
upstreams=
switch_cmd=
host=127.0.0.1
start_timeout=30
stop_timeout=60
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || { echo "deploy: $1 needs a value" >&2; exit 2; }
    case $1 in
        --release) release=$2 ;;
        --state) state=$2 ;;
        --config) config=$2 ;;
        --env-file) env_file=$2 ;;
        --instances) instances=$2 ;;
        --blue) blue=$2 ;;
        --green) green=$2 ;;
        --upstreams) upstreams=$2 ;;
        --switch-cmd) switch_cmd=$2 ;;
        --host) host=$2 ;;
        --start-timeout) start_timeout=$2 ;;
        --stop-timeout) stop_timeout=$2 ;;
        *) echo "deploy: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done

mkdir -p "$state" || fail "cannot create the state directory $state"

# -- slots: NAME with ports WS:API:METRICS --------------------------------------

ws_port() { echo "$1" | cut -d: -f1; }
api_port() { echo "$1" | cut -d: -f2; }
metrics_port() { echo "$1" | cut -d: -f3; }

check_slot() {  # NAME PORTS
    case $2 in
        *[!0-9:]* | *::* | :* | *:) fail "slot $1: ports '$2' are not WS:API:METRICS" ;;
    esac
    [ "$(echo "$2" | tr -cd : | wc -c)" -eq 2 ] || fail "slot $1: ports '$2' are not WS:API:METRICS"
}

pid_of() {  # NAME: the pid of the instance this script started there, if alive
    f=$state/$1.pid
    [ -f "$f" ] || return 1
    p=$(cat "$f")
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
    # the pid is still ours: the process runs aiosrv (pids are reused)
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q 'aiosrv' || return 1
    echo "$p"
}

answers() {  # PORTS: does anything answer HTTP on the API port?
    curl -s -o /dev/null --max-time 2 "http://$host:$(api_port "$1")/health"
}

start_slot() {  # NAME PORTS RELEASE
    name=$1 ports=$2 rel=$3
    say "starting $name ($rel) on websocket $(ws_port "$ports"), api $(api_port "$ports"), metrics $(metrics_port "$ports")"
    (
        if [ -n "$env_file" ]; then
            set -a
            # shellcheck disable=SC1090
            . "$env_file"
            set +a
        fi
        [ -n "$config" ] && export AIOSRV_CONFIG="$config"
        WEBSOCKET_PORT=$(ws_port "$ports") API_PORT=$(api_port "$ports") \
            METRICS_PORT=$(metrics_port "$ports") \
            exec setsid "$rel/bin/aiosrv" serve
    ) </dev/null >>"$state/$name.log" 2>&1 &
    echo $! >"$state/$name.pid"
    echo "$rel" >"$state/$name.release"
}

stop_slot() {  # NAME: SIGTERM, wait for the exit (the drain); SIGKILL after --stop-timeout
    name=$1
    p=$(pid_of "$name") || { rm -f "$state/$name.pid"; return 0; }
    say "draining $name (pid $p): SIGTERM"
    kill -TERM "$p"
    waited=0
    while kill -0 "$p" 2>/dev/null; do
        if [ "$waited" -ge $((stop_timeout * 10)) ]; then
            say "$name (pid $p) still running after ${stop_timeout}s: SIGKILL"
            kill -KILL "$p" 2>/dev/null
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$state/$name.pid"
    say "$name stopped"
}

wait_ready() {  # NAME PORTS RELEASE: healthy, verified, and the pid we started
    name=$1 ports=$2 rel=$3
    p=$(cat "$state/$name.pid")
    api="http://$host:$(api_port "$ports")"
    waited=0
    until out=$(HEALTH_TIMEOUT=2 sh "$here/health-check.sh" "$api"); do
        if ! kill -0 "$p" 2>/dev/null; then
            echo "deploy: $name (pid $p) exited while starting; its log ($state/$name.log) ends:" >&2
            tail -n 5 "$state/$name.log" >&2
            return 1
        fi
        if [ "$waited" -ge $((start_timeout * 5)) ]; then
            echo "deploy: $name not healthy after ${start_timeout}s: $out" >&2
            return 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    answering=$(curl -sS --max-time 5 "$api/status" | jq -r '.worker.supervisor_pid // .worker.pid')
    if [ "$answering" != "$p" ]; then
        echo "deploy: $api answers for pid $answering, not the instance started (pid $p)" >&2
        return 1
    fi
    version=$("$rel/bin/aiosrv" --version | awk '{print $2}')
    ws="ws://$host:$(ws_port "$ports")/ws/realtime"
    if ! out=$(PYTHON="$rel/bin/python" sh "$here/verify.sh" "$api" "$ws" "$version" 2>&1); then
        echo "deploy: verify $name: $out" >&2
        return 1
    fi
    say "$name (pid $p) healthy and verified, version $version"
}

write_upstreams() {  # PORTS...: the live instances, as nginx upstream blocks
    # the same blocks as deploy/nginx/upstreams.conf, naming these instances
    [ -n "$upstreams" ] || return 0
    tmp=$upstreams.tmp.$$
    {
        echo "# written by deploy/deploy.sh ($mode) on $(date -u +%Y-%m-%dT%H:%M:%SZ): the live instances"
        echo "upstream websocket_backend {"
        echo "    least_conn;"
        for ports in "$@"; do echo "    server $host:$(ws_port "$ports") max_fails=3 fail_timeout=30s;"; done
        echo "}"
        echo "upstream websocket_api {"
        echo "    least_conn;"
        for ports in "$@"; do echo "    server $host:$(api_port "$ports") max_fails=3 fail_timeout=30s;"; done
        echo "    keepalive 16;"
        echo "}"
    } >"$tmp" || fail "cannot write $tmp"
    mv "$tmp" "$upstreams" || fail "cannot write $upstreams"
    say "upstreams: $upstreams names $*"
}

switch() {
    [ -n "$switch_cmd" ] || return 0
    say "switching: $switch_cmd"
    sh -c "$switch_cmd" || return 1
}

check_release() {
    [ -n "$release" ] || { echo "deploy: --release DIR is needed (a venv with aiosrv)" >&2; exit 2; }
    [ -x "$release/bin/aiosrv" ] || fail "$release/bin/aiosrv is not there: a release is a venv with aiosrv installed"
    v=$("$release/bin/aiosrv" --version 2>&1) || fail "$release/bin/aiosrv does not run: $v"
    say "release $release: $v"
    if [ -n "$config" ]; then
        out=$("$release/bin/aiosrv" check-config "$config" 2>&1) || fail "config: $out"
    fi
}

# -- modes ----------------------------------------------------------------------

case $mode in
status)
    for f in "$state"/*.pid; do
        [ -e "$f" ] || { say "no instances in $state"; exit 0; }
        name=$(basename "$f" .pid)
        if p=$(pid_of "$name"); then
            say "$name: pid $p, release $(cat "$state/$name.release" 2>/dev/null)"
        else
            say "$name: not running (stale pid file)"
        fi
    done
    [ -f "$state/active" ] && say "active: $(cat "$state/active")"
    exit 0
    ;;
stop)
    for f in "$state"/*.pid; do
        [ -e "$f" ] || exit 0
        stop_slot "$(basename "$f" .pid)"
    done
    exit 0
    ;;
blue-green)
    check_slot blue "$blue"
    check_slot green "$green"
    check_release
    active=$(cat "$state/active" 2>/dev/null || echo "")
    if [ "$active" = blue ]; then idle=green idle_ports=$green old_ports=$blue
    else idle=blue idle_ports=$blue old_ports=$green; fi
    if [ -n "$active" ] && ! pid_of "$active" >/dev/null; then
        say "the active slot $active is not running: deploying to $idle anyway"
    fi
    if pid_of "$idle" >/dev/null; then
        fail "slot $idle still runs (pid $(pid_of "$idle")): a previous deploy did not finish; '$0 stop' or stop it"
    fi
    if answers "$idle_ports"; then
        fail "something already answers on http://$host:$(api_port "$idle_ports"): not starting $idle there"
    fi
    start_slot "$idle" "$idle_ports" "$release"
    if ! wait_ready "$idle" "$idle_ports" "$release"; then
        stop_slot "$idle"
        fail "the new release did not come up in $idle; ${active:-nothing} keeps serving, nothing switched"
    fi
    write_upstreams "$idle_ports"
    if ! switch; then
        stop_slot "$idle"
        [ -n "$active" ] && write_upstreams "$old_ports"
        fail "the switch command failed; ${active:-nothing} keeps serving"
    fi
    echo "$idle" >"$state/active"
    say "active: $idle"
    if [ -n "$active" ]; then
        stop_slot "$active"
    fi
    say "blue-green done: $idle serves $release"
    ;;
rolling)
    check_release
    n=0
    for ports in $instances; do
        n=$((n + 1))
        check_slot "instance-$n" "$ports"
    done
    n=0
    for ports in $instances; do
        n=$((n + 1))
        name=instance-$n
        previous=$(cat "$state/$name.release" 2>/dev/null || echo "")
        stop_slot "$name"
        if answers "$ports"; then
            fail "something not started by this script answers on http://$host:$(api_port "$ports"): stopping the roll at $name"
        fi
        start_slot "$name" "$ports" "$release"
        if ! wait_ready "$name" "$ports" "$release"; then
            stop_slot "$name"
            if [ -n "$previous" ] && [ "$previous" != "$release" ]; then
                say "rolling back $name to $previous"
                start_slot "$name" "$ports" "$previous"
                wait_ready "$name" "$ports" "$previous" || say "the rollback of $name did not come up either"
            fi
            fail "the new release did not come up in $name; the roll stopped there"
        fi
    done
    # shellcheck disable=SC2086  # one argument per slot
    write_upstreams $instances
    switch || fail "the switch command failed (every instance runs the new release)"
    say "rolling done: $n instances serve $release"
    ;;
esac
