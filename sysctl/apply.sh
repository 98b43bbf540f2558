#!/usr/bin/env bash
# Apply an aiosrv sysctl profile: docs/operations.md, "OS tuning".
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

USAGE="usage: sysctl/apply.sh [--profile 10k|100k|FILE] [--dry-run] [--root DIR]

Brings the kernel settings of a profile (sysctl/profiles/NAME.conf) and its
open-files limit (NAME.limits) to this host: writes /etc/sysctl.d/60-aiosrv.conf
and runs sysctl -p on it, and writes /etc/security/limits.d/60-aiosrv.conf.
Settings the host already satisfies keep their value (a larger file-max is
not lowered); running it again changes nothing. Needs root.

  --profile P  10k (default), 100k, or a FILE.conf with a FILE.limits beside it
  --dry-run    change nothing; print each setting as 'change KEY: current -> wanted'
               or 'ok KEY: current'
  --root DIR   use DIR/proc/sys and DIR/etc instead of /proc/sys and /etc
               (\$SYSCTL_ROOT does the same; for tests); the new values are
               written into DIR/proc/sys, no root needed"

parse_args "$USAGE" "$@"

if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "needs root to change kernel settings and /etc (run it with sudo, or --dry-run to see what it would change)"
fi

SYSCTL_FILE="$ETC/sysctl.d/60-aiosrv.conf"
LIMITS_FILE="$ETC/security/limits.d/60-aiosrv.conf"
tmp="$(mktemp)"
trap 'rm -f "$tmp" "$tmp.changed"' EXIT
: > "$tmp.changed"

echo "# written by aiosrv sysctl/apply.sh from $(basename "$CONF"); edit the profile, not this file" > "$tmp"
while IFS=$'\t' read -r key want; do
    cur="$(current_value "$key")"
    k="$(kind "$key")"
    new="$(merge "$k" "$cur" "$want")"
    if [ "$new" = "$cur" ]; then
        echo "ok $key: $cur"
    else
        echo "change $key: ${cur:-(unreadable)} -> $new"
        printf '%s\t%s\n' "$key" "$new" >> "$tmp.changed"
    fi
    echo "$key = $new" >> "$tmp"
done < <(profile_settings)

limits_body="$(echo "# written by aiosrv sysctl/apply.sh from $(basename "$LIMITS")"; grep -v '^[[:space:]]*#' "$LIMITS" | grep -v '^[[:space:]]*$')"

write_file() {  # write_file PATH CONTENT-FILE: replace PATH when its content differs
    if [ -f "$1" ] && cmp -s "$1" "$2"; then
        echo "ok $1: unchanged"
        return
    fi
    if [ "$DRY_RUN" = 1 ]; then
        echo "change $1: would write"
        return
    fi
    mkdir -p "$(dirname "$1")"
    cp "$2" "$1"
    chmod 644 "$1"
    echo "wrote $1"
}

write_file "$SYSCTL_FILE" "$tmp"
echo "$limits_body" > "$tmp"
write_file "$LIMITS_FILE" "$tmp"
echo "nofile $(wanted_nofile soft) soft / $(wanted_nofile hard) hard: for new login sessions; a systemd unit needs LimitNOFILE="

if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: nothing changed"
    exit 0
fi
if [ ! -s "$tmp.changed" ]; then
    echo "kernel settings: nothing to change"
elif [ -n "$ROOT" ]; then
    # what sysctl -p does, into the redirected tree
    while IFS=$'\t' read -r key new; do
        f="$PROC_SYS/${key//.//}"
        mkdir -p "$(dirname "$f")"
        echo "$new" > "$f"
        echo "set $key = $new"
    done < "$tmp.changed"
else
    sysctl -p "$SYSCTL_FILE"
fi
