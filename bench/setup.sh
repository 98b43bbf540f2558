#!/bin/bash
# Installs what bench/ needs, on top of the project's .venv (make run / make test):
#   the peers' Python packages (websockets, picows, socketify) into .venv,
#   Node's ws into bench/peers/node_ws/node_modules (npm ci, from the lock file),
#   and builds the C load client bench/loadclient.
# Optional: --with-uws also installs bench/peers/node_uws (a third-party npm
# republish of uWebSockets.js' binaries; needs glibc >= 2.38, so not on Debian 12).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "bench/setup.sh: no .venv here; run 'make run' (or the project's setup) first" >&2
    exit 1
fi
# socketify ships uWebSockets (C++) prebuilt: the near-limit reference
"$PY" -m pip install --quiet "websockets>=13" "picows>=1.6" "socketify==0.0.31"
if command -v npm >/dev/null; then
    (cd bench/peers/node_ws && npm ci --silent --no-audit --no-fund)
    if [ "${1:-}" = "--with-uws" ]; then
        (cd bench/peers/node_uws && npm install --silent --no-audit --no-fund)
        node -e "require('./bench/peers/node_uws/node_modules/@btc-vision/uwebsockets.js')" ||
            echo "bench/setup.sh: uWebSockets.js does not load on this machine (see the error above)" >&2
    fi
else
    echo "bench/setup.sh: npm not found: the Node peers will be skipped" >&2
fi
bash bench/build.sh
echo "bench/setup.sh: ready; try: $PY bench/run.py --quick"
