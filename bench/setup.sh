#!/bin/bash
# Installs what bench/ needs, on top of the project's .venv (make setup):
#   the peers' Python packages (websockets, picows, socketify) into .venv,
#   Node's ws into bench/peers/node_ws/node_modules and uWebSockets.js into
#   bench/peers/node_uws/node_modules (npm ci, from their lock files; the
#   uWebSockets.js binaries come from @trufflesuite/uws-js-unofficial, whose
#   Node 20 build loads with this machine's glibc), checks that the native
#   uWebSockets.js addon loads (its package would silently fall back to plain
#   JS), and builds the C load tools bench/loadclient and bench/publisher.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "bench/setup.sh: no .venv here; run 'make setup' first" >&2
    exit 1
fi
# socketify ships uWebSockets (C++) prebuilt, driven from Python: a secondary uWebSockets peer
"$PY" -m pip install --quiet "websockets>=13" "picows>=1.6" "socketify==0.0.31"
if command -v npm >/dev/null; then
    (cd bench/peers/node_ws && npm ci --silent --no-audit --no-fund)
    (cd bench/peers/node_uws && npm ci --silent --no-audit --no-fund)
    if ! node bench/peers/node_uws/server.js --check; then
        echo "bench/setup.sh: the native uWebSockets.js addon does not load here (see above);" \
             "bench/run.py will skip the uws peer" >&2
    fi
else
    echo "bench/setup.sh: npm not found: the Node peers will be skipped" >&2
fi
bash bench/build.sh
echo "bench/setup.sh: ready; try: $PY bench/run.py --quick"
