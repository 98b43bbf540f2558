#!/bin/sh
# verify.sh API_URL WS_URL [VERSION]: check one aiosrv instance after a deploy.
#
#   deploy/verify.sh http://127.0.0.1:8080 ws://127.0.0.1:8765/ws/realtime 0.1.0
#
# 1. /health answers 200 "healthy" (deploy/health-check.sh);
# 2. /status answers with "running" and its version (equal to VERSION if given);
# 3. a WebSocket client subscribes to the type "deploy-verify", an HTTP
#    POST /api/publish sends it a message with a fresh nonce, and the client
#    receives that message.
# Exit 0 when all pass, 1 at the first failure (with a message), 2 on usage.
# Needs curl and jq, and a Python with aiohttp (the server's own venv: PYTHON,
# else the venv next to this script, else python3). API_TOKEN: the bearer for
# /api/publish when api.token is set (without it, publish from loopback only).
# WS_TOKEN: the WebSocket's bearer (security.auth_token or a JWT) when
# security.enable_auth is on.
# VERIFY_TIMEOUT: seconds per step (default 10).
set -u
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 API_URL WS_URL [VERSION]" >&2
    exit 2
fi
api=${1%/}
ws=$2
want=${3:-}
timeout=${VERIFY_TIMEOUT:-10}
here=$(cd "$(dirname "$0")" && pwd)
fail() {
    echo "FAILED: $*"
    exit 1
}
for prog in curl jq; do
    command -v "$prog" >/dev/null 2>&1 || fail "$prog is not installed"
done
if [ -n "${PYTHON:-}" ]; then
    py=$PYTHON
elif [ -x "$here/../.venv/bin/python" ]; then
    py=$here/../.venv/bin/python
else
    py=python3
fi

# 1. health
if ! out=$(HEALTH_TIMEOUT=$timeout sh "$here/health-check.sh" "$api"); then
    fail "health check: $out"
fi
echo "OK health: $api/health is healthy"

# 2. status and version
status=$(curl -sS -f --max-time "$timeout" "$api/status" 2>&1) || fail "GET $api/status: $status"
state=$(printf '%s' "$status" | jq -r '.status' 2>/dev/null) || fail "$api/status is not JSON: $status"
version=$(printf '%s' "$status" | jq -r '.version')
[ "$state" = "running" ] || fail "$api/status says status=$state"
if [ -n "$want" ] && [ "$version" != "$want" ]; then
    fail "version $version is running, expected $want"
fi
echo "OK status: running, version $version"

# 3. subscribe over WebSocket, publish over HTTP, receive
if ! out=$("$py" - "$api" "$ws" "$timeout" 2>&1 <<'PY'
import asyncio
import os
import sys
import uuid

import aiohttp

API, WS, TIMEOUT = sys.argv[1], sys.argv[2], float(sys.argv[3])
TYPE = "deploy-verify"


async def main() -> str:
    nonce = uuid.uuid4().hex
    token = os.environ.get("API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT * 3)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        try:
            ws_token = os.environ.get("WS_TOKEN")
            ws_headers = {"Authorization": f"Bearer {ws_token}"} if ws_token else {}
            ws = await s.ws_connect(WS, headers=ws_headers)
        except aiohttp.WSServerHandshakeError as e:
            raise SystemExit(f"WebSocket {WS}: handshake refused: HTTP {e.status} {e.message}")
        except (aiohttp.ClientError, OSError) as e:
            raise SystemExit(f"WebSocket {WS}: cannot connect: {e}")
        async with ws:
            await ws.send_json({"id": nonce, "action": "subscribe", "payload": {"types": [TYPE]}})

            async def until(pred, what):
                while True:
                    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise SystemExit(f"WebSocket closed while waiting for {what}: {msg}")
                    m = msg.json()
                    if m.get("type") == "error":
                        raise SystemExit(f"WebSocket error while waiting for {what}: {m}")
                    if pred(m):
                        return m

            try:
                await until(lambda m: m.get("type") == "ack" and m.get("id") == nonce, "the ack")
            except asyncio.TimeoutError:
                raise SystemExit(f"no ack to subscribe within {TIMEOUT}s")
            async with s.post(
                f"{API}/api/publish", json={"type": TYPE, "payload": {"nonce": nonce}},
                headers=headers,
            ) as r:
                if r.status != 202:
                    raise SystemExit(f"POST {API}/api/publish: HTTP {r.status} {await r.text()}")
                seq = (await r.json()).get("seq")
            try:
                await until(
                    lambda m: m.get("type") == TYPE
                    and isinstance(m.get("payload"), dict)
                    and m["payload"].get("nonce") == nonce,
                    "the published message",
                )
            except asyncio.TimeoutError:
                raise SystemExit(f"published seq {seq} but it was not received within {TIMEOUT}s")
            return f"seq {seq}"


print(asyncio.run(main()))
PY
); then
    fail "publish/subscribe: $out"
fi
echo "OK publish/subscribe: $out received over $ws"
echo "verified"
