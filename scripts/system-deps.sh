#!/bin/sh
# Install the real programs the test suite drives (redis-server; chromium for
# the browser test; promtool, from Debian's prometheus package, for the alert
# rule and scrape config tests in tests/ops; shellcheck for the sysctl
# scripts; logrotate for the deploy/logrotate rule; systemd-analyze, from
# Debian's systemd package, for the deploy/systemd unit; caddy and nginx, the
# reverse proxies the deploy/ configs are tested through; docker-compose, whose
# `config` checks docker-compose.websocket.yml), from Debian's packages,
# when they are missing. Tests never skip for a missing program: they fail
# with a message that points here.
set -e
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v promtool >/dev/null 2>&1 || need="$need prometheus"
command -v shellcheck >/dev/null 2>&1 || need="$need shellcheck"
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || need="$need logrotate"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
command -v caddy >/dev/null 2>&1 || need="$need caddy"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx"
command -v docker-compose >/dev/null 2>&1 || need="$need docker-compose"
if [ -n "$need" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing:$need"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
    else
        echo "missing programs:$need (install them with your package manager)" >&2
        exit 1
    fi
fi
