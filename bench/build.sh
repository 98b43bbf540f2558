#!/bin/bash
# Builds the C load tools: bench/loadclient (the subscribers) and bench/publisher (the independent
# publisher). bench/run.py does it too when one is missing or older than its source.
set -euo pipefail
cd "$(dirname "$0")"
${CC:-cc} -O2 -Wall -o loadclient loadclient.c
${CC:-cc} -O2 -Wall -o publisher publisher.c
