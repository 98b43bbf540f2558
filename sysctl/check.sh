#!/usr/bin/env bash
# Compare this host with an aiosrv sysctl profile: docs/operations.md, "OS tuning".
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

USAGE="usage: sysctl/check.sh [--profile 10k|100k|FILE] [--pid PID] [--root DIR]

One line per setting of the profile: OK or LOW, the current value and the
wanted one; then the open-files limit (nofile): soft and hard of this shell
(ulimit -n) or of process PID (/proc/PID/limits), and what
/etc/security/limits.conf and limits.d/ give new sessions (domain '*').
Exit status 0 when every line is OK, 1 when one is LOW. Changes nothing.

  --profile P  10k (default), 100k, or a FILE.conf with a FILE.limits beside it
  --pid PID    check that process's nofile limits instead of this shell's
  --root DIR   use DIR/proc/sys and DIR/etc instead of /proc/sys and /etc
               (\$SYSCTL_ROOT does the same; for tests; --pid still reads /proc)"

parse_args "$USAGE" "$@"

low=0
report() {  # report NAME CURRENT WANTED-WORDS FINE(0|1)
    local status=OK
    if [ "$4" != 1 ]; then status=LOW; low=1; fi
    printf '%-3s %s: %s (wanted %s)\n' "$status" "$1" "${2:-(unreadable)}" "$3"
}

while IFS=$'\t' read -r key want; do
    cur="$(current_value "$key")"
    k="$(kind "$key")"
    fine=0
    if [ -n "$cur" ] && [ "$(merge "$k" "$cur" "$want")" = "$cur" ]; then fine=1; fi
    report "$key" "$cur" "$(describe "$k" "$want")" "$fine"
done < <(profile_settings)

# at_least CURRENT WANTED: 1 when CURRENT (a number or unlimited) >= WANTED
at_least() {
    case "$1" in
        unlimited|infinity) echo 1 ;;
        ''|*[!0-9]*) echo 0 ;;
        *) if [ "$1" -ge "$2" ]; then echo 1; else echo 0; fi ;;
    esac
}

want_soft="$(wanted_nofile soft)"
want_hard="$(wanted_nofile hard)"
if [ -n "$PID" ]; then
    [ -r "/proc/$PID/limits" ] || die "no process $PID (/proc/$PID/limits)"
    read -r soft hard < <(awk '/^Max open files/ { print $4, $5 }' "/proc/$PID/limits")
    who="pid $PID"
else
    soft="$(ulimit -Sn)"
    hard="$(ulimit -Hn)"
    who="this shell"
fi
report "nofile soft ($who)" "$soft" ">= $want_soft" "$(at_least "$soft" "$want_soft")"
report "nofile hard ($who)" "$hard" ">= $want_hard" "$(at_least "$hard" "$want_hard")"

# what pam_limits gives new sessions: the last '*' nofile line of each type
conf_soft=""
conf_hard=""
for f in "$ETC/security/limits.conf" "$ETC"/security/limits.d/*.conf; do
    [ -r "$f" ] || continue
    while read -r domain type item value _; do
        case "$domain" in '#'*|'') continue ;; esac
        if [ "$domain" != '*' ] || [ "$item" != nofile ]; then continue; fi
        case "$type" in
            soft) conf_soft="$value" ;;
            hard) conf_hard="$value" ;;
            -) conf_soft="$value"; conf_hard="$value" ;;
        esac
    done < "$f"
done
report "nofile soft (limits.d, new sessions)" "${conf_soft:-not set}" ">= $want_soft" "$(at_least "$conf_soft" "$want_soft")"
report "nofile hard (limits.d, new sessions)" "${conf_hard:-not set}" ">= $want_hard" "$(at_least "$conf_hard" "$want_hard")"

if [ "$low" = 1 ]; then
    echo "some settings are LOW: sysctl/apply.sh --profile $PROFILE --dry-run shows what it would change"
    exit 1
fi
