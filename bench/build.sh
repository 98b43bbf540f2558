#!/bin/bash
# Builds the C load client: bench/loadclient (bench/run.py does it too when it is missing or stale).
set -euo pipefail
cd "$(dirname "$0")"
${CC:-cc} -O2 -Wall -o loadclient loadclient.c
