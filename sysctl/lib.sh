# shellcheck shell=bash disable=SC2034  # the variables are for the scripts sourcing it
# Shared by apply.sh and check.sh: options, profiles and how a current value
# compares with a wanted one. Sourced, not run.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROFILE=10k
ROOT="${SYSCTL_ROOT:-}"
DRY_RUN=0
PID=""

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# parse_args "usage text" "$@": --profile, --root, and (per script) --dry-run, --pid
parse_args() {
    local usage="$1"; shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --profile) [ $# -ge 2 ] || die "--profile needs 10k, 100k or a file"; PROFILE="$2"; shift 2 ;;
            --profile=*) PROFILE="${1#*=}"; shift ;;
            --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="$2"; shift 2 ;;
            --root=*) ROOT="${1#*=}"; shift ;;
            --dry-run) DRY_RUN=1; shift ;;
            --pid) [ $# -ge 2 ] || die "--pid needs a process id"; PID="$2"; shift 2 ;;
            --pid=*) PID="${1#*=}"; shift ;;
            -h|--help) echo "$usage"; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
    done
    ROOT="${ROOT%/}"
    case "$PROFILE" in
        10k|100k) CONF="$HERE/profiles/$PROFILE.conf" ;;
        *) CONF="$PROFILE" ;;
    esac
    [ -f "$CONF" ] || die "no such profile: $PROFILE"
    LIMITS="${CONF%.conf}.limits"
    [ -f "$LIMITS" ] || die "the profile has no nofile limits file: $LIMITS"
    PROC_SYS="$ROOT/proc/sys"
    ETC="$ROOT/etc"
}

# profile_settings: "key<TAB>value" for each setting of $CONF
profile_settings() {
    sed -e 's/#.*//' "$CONF" | while IFS='=' read -r key value; do
        key="$(echo "$key" | tr -d '[:space:]')"
        [ -n "$key" ] || continue
        value="$(echo "$value" | xargs)"
        printf '%s\t%s\n' "$key" "$value"
    done
}

# wanted_nofile soft|hard: the profile's nofile value of that type
wanted_nofile() {
    awk -v t="$1" '!/^[[:space:]]*#/ && $3 == "nofile" && ($2 == t || $2 == "-") { v = $4 } END { print v }' "$LIMITS"
}

# current_value KEY: the live value (whitespace squeezed), empty if unreadable
current_value() {
    local f="$PROC_SYS/${1//.//}"
    [ -r "$f" ] || return 0
    xargs < "$f"
}

# kind KEY: how a current value satisfies a wanted one
kind() {
    case "$1" in
        net.ipv4.tcp_fin_timeout) echo max ;;       # at most
        net.ipv4.tcp_tw_reuse) echo eq ;;
        net.ipv4.ip_local_port_range) echo range ;; # current covers wanted
        net.ipv4.tcp_rmem|net.ipv4.tcp_wmem|net.ipv4.tcp_mem) echo triple ;; # each at least
        *) echo min ;;                              # at least
    esac
}

# describe KIND WANTED: the wanted value as words
describe() {
    case "$1" in
        max) echo "<= $2" ;;
        eq) echo "= $2" ;;
        range) echo "covering $2" ;;
        triple) echo "each >= $2" ;;
        *) echo ">= $2" ;;
    esac
}

# merge KIND CURRENT WANTED: the value satisfying WANTED closest to CURRENT
# (CURRENT itself when it already does)
merge() {
    local k="$1" cur="$2" want="$3"
    if [ -z "$cur" ]; then echo "$want"; return; fi
    case "$k" in
        min) if [ "$cur" -ge "$want" ]; then echo "$cur"; else echo "$want"; fi ;;
        max) if [ "$cur" -le "$want" ]; then echo "$cur"; else echo "$want"; fi ;;
        eq) echo "$want" ;;
        range)
            local cl ch wl wh
            read -r cl ch <<< "$cur"; read -r wl wh <<< "$want"
            [ "$wl" -lt "$cl" ] && cl="$wl"
            [ "$wh" -gt "$ch" ] && ch="$wh"
            echo "$cl $ch" ;;
        triple)
            local -a c w out
            read -r -a c <<< "$cur"; read -r -a w <<< "$want"
            for i in 0 1 2; do
                if [ "${c[$i]}" -ge "${w[$i]}" ]; then out[i]="${c[$i]}"; else out[i]="${w[$i]}"; fi
            done
            echo "${out[*]}" ;;
    esac
}
