#!/usr/bin/env bash
# Runs CRIU's own zdtm static tests through phaul: each test is started in
# a network-namespace "host", migrated with `phaul migrate ... pid` to
# another one (stop-copy, or --mode post-copy: restored lazily, its memory
# served from the frozen source as it faults), then judged as zdtm.py judges
# it (SIGTERM, then PASS in its .out file). With --plain, plain `criu dump`
# + `criu restore` on this machine replace phaul, with the same set-up, for
# comparison.
#
#   ./scripts/zdtm.sh [--plain] [--ci | --ci-post-copy] [--mode MODE]
#                     [--timeout SECS] [--logs DIR] [TEST...]
#
# TEST is a static test's name (socket-tcp, pipe00, ...). Without TEST:
# every static test CRIU's runner (test/zdtm.py -a -f ns) would run here;
# with --ci: the list in scripts/zdtm-ci.list; with --ci-post-copy: the
# list in scripts/zdtm-post-copy.list, by post-copy. Prints `PASS name` or
# `FAIL name: reason` per test and `N passed, M failed` last; exit status 0
# only when every test passed. CRIU's and phaul's logs of failed tests are
# kept under --logs (default /tmp/phaul-zdtm-logs.PID); everything else a
# test leaves (namespaces, processes, its directory) is removed.
#
# How a test runs, and why (zdtm.py's ns flavour is the model):
# - zdtm.py's ns flavour starts the test with ZDTM_NEWNS=1: the test clones
#   itself into new pid, mount, uts, ipc and net namespaces, pivots into a
#   root made for it, and CRIU restores that with --root and an external
#   /dev. phaul's pid kind has no --root, and CRIU cannot restore a mount
#   namespace without it, so the test has no mount namespace of its own;
#   and it has no network namespace of its own on purpose: it runs in the
#   source host's, so that it moves between hosts. It runs in new pid, uts
#   and ipc namespaces (and the time namespace the zdtm library makes
#   itself), on the host's file system and /proc.
# - The namespace's init is the test binary itself, as in the ns flavour:
#   ZDTM_NEWNS=2 is what the library's own clone()d child runs with
#   (ns_init: it makes a time namespace, forks the test, reports on fd 255
#   that it started, reaps, and on SIGTERM stops the test and exits). Tests
#   without the ns flavour (socket-tcp and others that fork their peer
#   before the library's init, which would leave the peer in another time
#   namespace, which CRIU cannot restore) run under scripts/zdtm/init.sh,
#   the same init without the time namespace. Either way the session is
#   the init's own (setsid), as CRIU requires of a pid namespace's tree.
# - No ZDTM_UID/ZDTM_GID/ZDTM_GROUPS: this machine's root lacks
#   CAP_SYS_RESOURCE, so CRIU cannot dump a task of another user; the tests
#   stay root.
# - Each test runs from a directory of its own (a copy of its binary), so
#   that runs do not share files, and in hosts of its own: network
#   namespaces joined by a veth, and each with its own /dev/pts instance
#   (the target's phaul-service runs in a mount namespace of its own).
#   Both hosts share this machine's file system, like hosts with shared
#   storage: the frozen source (phaul keeps it until the target runs)
#   still holds its file locks, leases and FIFOs while the target
#   restores them.
# - --plain dumps and restores in the source host with the options of the
#   test's .desc (opts, dopts, ropts), as zdtm.py does. phaul runs with the
#   pid kind's defaults; a .desc option that is a phaul flag becomes that
#   flag, one that phaul's defaults already give is dropped, and a test
#   that needs any other CRIU option is a FAIL naming it (not run).
# - Not reproduced from zdtm.py: .hook scripts (image checks, cgroup and
#   iptables set-up), the fd/maps comparison before and after, pre-dumps.
set -euo pipefail
# This script's absolute path: it runs itself for each test (see the end).
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."
REPO=$PWD

usage() { echo "usage: $0 [--plain] [--ci | --ci-post-copy] [--mode stop-copy|post-copy] [--timeout SECS] [--logs DIR] [TEST...]" >&2; exit 2; }

PLAIN=0 CI_LIST=0 TIMEOUT=60 LOGS= ONE= DIR= MODE=stop-copy LIST=zdtm-ci.list
TESTS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --plain) PLAIN=1; shift ;;
        --ci) CI_LIST=1; shift ;;
        --ci-post-copy) CI_LIST=1 LIST=zdtm-post-copy.list MODE=post-copy; shift ;;
        --mode)
            [ $# -ge 2 ] || usage
            case "$2" in stop-copy | post-copy) MODE=$2 ;; *) usage ;; esac
            shift 2 ;;
        --timeout) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift 2 ;;
        --logs) [ $# -ge 2 ] || usage; LOGS=$2; shift 2 ;;
        # Internal: run one test, numbered N, in this process (see the end).
        --one) [ $# -ge 2 ] || usage; ONE=$2; shift 2 ;;
        # Internal: the test's directory, made (and removed) by the parent.
        --dir) [ $# -ge 2 ] || usage; DIR=$2; shift 2 ;;
        # Internal: a new pty instance here, then exec the rest (the
        # target host's phaul-service, in a mount namespace of its own).
        --devpts-exec)
            shift
            mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
            mount --bind /dev/pts/ptmx /dev/ptmx
            exec "$@" ;;
        --) shift ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) TESTS+=("$1"); shift ;;
    esac
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] && [ "$TIMEOUT" -gt 0 ] || { echo "--timeout: a number of seconds" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "zdtm.sh: run as root (CRIU and namespaces need it)" >&2; exit 2; }
if [ "$PLAIN" -eq 1 ] && [ "$MODE" != stop-copy ]; then
    echo "zdtm.sh: --plain runs criu dump and restore; --mode is phaul's" >&2; exit 2
fi
if [ "$CI_LIST" -eq 1 ] && [ ${#TESTS[@]} -gt 0 ]; then
    echo "zdtm.sh: --ci or TEST names, not both" >&2; exit 2
fi

CRIU=${CRIU:-/usr/local/sbin/criu}
# Debian's python3 (the one setup.sh's packages are for), not a pyenv one.
PY=/usr/bin/python3
BUILD_INFO=/usr/local/share/phaul/criu-build
[ -x "$CRIU" ] || { echo "zdtm.sh: no $CRIU; run ./scripts/setup.sh" >&2; exit 2; }
CRIU_SRC=
while IFS='=' read -r k v; do
    [ "$k" = source ] && CRIU_SRC=$v
done < "$BUILD_INFO"
[ -n "$CRIU_SRC" ] && [ -d "$CRIU_SRC/test/zdtm/static" ] ||
    { echo "zdtm.sh: no CRIU source tree with test/zdtm (source= in $BUILD_INFO)" >&2; exit 2; }
ZDTM=$CRIU_SRC/test/zdtm
STATIC=$ZDTM/static
DESC=(/usr/bin/python3 "$REPO/scripts/zdtm/desc.py")

LOGS=${LOGS:-/tmp/phaul-zdtm-logs.$$}
# Where cargo puts them (CARGO_TARGET_DIR moves the whole target dir).
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/examples

if [ -z "$ONE" ]; then
# --- build ------------------------------------------------------------------

# What the static tests link with or include beyond the C toolchain
# (aio00: libaio; different_creds: libcap; netns_sub_veth: libnl-route;
# bpf_*: libbpf, which test/zdtm/lib also builds its bpf helpers with when
# pkg-config finds it). Only the missing ones are installed.
need=()
for p in gcc make libc6-dev pkg-config libaio-dev libcap-dev libnl-3-dev libnl-route-3-dev libbpf-dev python3 iproute2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "zdtm.sh: installing ${need[*]}" >&2
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${need[@]}" >&2
fi

# The stamp makes a second run skip make entirely (make over ~500 tests
# still takes seconds when nothing changed); it names the tree it was made
# for, so another CRIU source is built anew.
STAMP=$STATIC/.phaul-zdtm-built
if [ "$(cat "$STAMP" 2>/dev/null)" != "$CRIU_SRC" ]; then
    echo "zdtm.sh: building zdtm's static tests in $STATIC" >&2
    make -s -j"$(nproc)" -C "$ZDTM/lib" >&2
    # -k: a test that does not build here must not stop the others; it is
    # then missing from the list (zdtm.py would not run it either).
    if make -s -k -j"$(nproc)" -C "$STATIC" >&2; then
        echo "$CRIU_SRC" > "$STAMP"
    else
        echo "zdtm.sh: some static tests did not build (see above)" >&2
    fi
fi

if [ "$PLAIN" -eq 0 ]; then
    cargo build --release --quiet --example phaul --example phaul-service
fi

# --- which tests --------------------------------------------------------------

if [ "$CI_LIST" -eq 1 ]; then
    while read -r line; do
        line=${line%%#*}
        read -r name _ <<<"$line" || true
        [ -n "${name:-}" ] && TESTS+=("$name")
    done < "$REPO/scripts/$LIST"
elif [ ${#TESTS[@]} -eq 0 ]; then
    nskip=0
    while read -r verdict rest; do
        case "$verdict" in
            RUN) TESTS+=("$rest") ;;
            SKIP) nskip=$((nskip + 1)) ;;
        esac
    done < <("${DESC[@]}" select "$STATIC" "$CRIU")
    echo "zdtm.sh: ${#TESTS[@]} tests selected, $nskip skipped as zdtm.py -f ns would (scripts/zdtm/desc.py select)" >&2
fi

mkdir -p "$LOGS"
fi

# --- one test ---------------------------------------------------------------

# The state of the test being run, for cleanup.
T= SRC_NS= TGT_NS= LAUNCH= SVC=
SRC_IP=10.198.0.1 TGT_IP=10.198.0.2

now() { date +%s; }
left() { echo $(( DEADLINE - $(now) )); }

# A test shares this (private) mount namespace, and some unmount /proc
# (clean_mntns), which this script and CRIU need.
ensure_proc() {
    [ -e /proc/self/stat ] || mount -t proc proc /proc
}

# True while PID runs (a zombie has ended).
alive() {
    local s
    ensure_proc
    s=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$s" != Z ] && [ "$s" != X ]
}

# Waits until PID has ended or the deadline passed.
wait_gone() {
    while alive "$1"; do
        [ "$(left)" -gt 0 ] || return 1
        sleep 0.05
    done
}

# Kills everything in the test's two hosts (the test tree, restored or not,
# phaul-service, a CRIU left behind), then the hosts and the directory.
cleanup_test() {
    local ns pids p i
    ensure_proc
    for i in 1 2 3 4 5; do
        pids=()
        for ns in "$SRC_NS" "$TGT_NS"; do
            [ -n "$ns" ] && [ -e "/run/netns/$ns" ] || continue
            while read -r p; do [ -n "$p" ] && pids+=("$p"); done < <(ip netns pids "$ns" 2>/dev/null)
        done
        [ -n "$LAUNCH" ] && alive "$LAUNCH" && pids+=("$LAUNCH")
        [ ${#pids[@]} -eq 0 ] && break
        kill -9 "${pids[@]}" 2>/dev/null || true
        sleep 0.1
    done
    [ -n "$LAUNCH" ] && wait "$LAUNCH" 2>/dev/null || true
    [ -n "$SVC" ] && wait "$SVC" 2>/dev/null || true
    for ns in "$SRC_NS" "$TGT_NS"; do
        [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null || true
    done
    # What a test mounted below its directory (T is a mount of its own).
    [ -n "$T" ] && umount -R -l "$T" 2>/dev/null
    # (The parent removes it too: mnt_ro_root leaves / read-only here.)
    [ -n "$T" ] && rm -rf --one-file-system "$T" 2>/dev/null
    T= SRC_NS= TGT_NS= LAUNCH= SVC=
}

# The decisive lines of a CRIU log on one line: the first real error and
# the last one before "FAILED" (the RLIMIT_NOFILE error every run logs here
# is harmless and skipped).
criu_reason() {
    local log=$1 errs first last
    [ -f "$log" ] || { echo "no log $log"; return; }
    errs=$(grep -E '(Error|FAILED)' "$log" | grep -v 'RLIMIT_NOFILE' | grep -v 'FAILED' |
        sed -E 's/^\([0-9. ]+\) *//' || true)
    first=$(head -n1 <<<"$errs") last=$(tail -n1 <<<"$errs")
    if [ -z "$first" ]; then echo "no error in $(basename "$log")"
    elif [ "$first" = "$last" ]; then echo "$first"
    else echo "$first ... $last"; fi
}

# A test's output, for a reason: the last line of .out, else of its
# .out.inprogress or of the init's .outns.
out_reason() {
    local d=$1 n=$2 f
    for f in "$d/$n.out" "$d/$n.out.inprogress" "$d/$n.outns"; do
        if [ -s "$f" ]; then tail -n1 "$f" | tr -d '\r'; return; fi
    done
    echo "no output"
}

# Mounts a new devpts instance on /dev/pts and its ptmx on /dev/ptmx, in
# this (private) mount namespace.
new_devpts() {
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
    mount --bind /dev/pts/ptmx /dev/ptmx
}

# Says which process of host NS sleeps on a file lock, if one does: on
# this one machine both hosts share one file system, so a restore can wait
# for a lock that the frozen source (phaul keeps it until the target runs)
# still holds.
lock_waiters() {
    local p w
    for p in $(ip netns pids "$1" 2>/dev/null); do
        w=$(cat "/proc/$p/wchan" 2>/dev/null) || continue
        case "$w" in
            *lock*|*setlk*|*lease*) echo "; on the target $(cat "/proc/$p/comm" 2>/dev/null) $p sleeps in $w (a file lock the frozen source holds: both hosts share this file system)"; return ;;
        esac
    done
}

# Keeps what explains a failure.
keep_logs() {
    local n=$1 dst=$LOGS/$1 f
    # (mnt_ro_root makes / read-only in this mount namespace.)
    mkdir -p "$dst" 2>/dev/null || return 0
    for f in "$T"/img/*.log "$T"/*.log "$T"/report.json "$T"/zdtm/static/"$n".out*; do
        [ -f "$f" ] && cp "$f" "$dst/" 2>/dev/null || true
    done
    # phaul keeps CRIU's logs of a failed migration in its work dirs.
    find "$T/src-work" "$T/tgt-work" -name '*.log' -exec cp --backup=numbered {} "$dst/" \; 2>/dev/null || true
}

# Sets PHAUL_FLAGS from the .desc options, or UNSUPPORTED to the CRIU
# options phaul migrate has no flag for.
map_opts() {
    local o a i=0 words=("$@")
    PHAUL_FLAGS=() UNSUPPORTED=()
    while [ $i -lt ${#words[@]} ]; do
        o=${words[$i]}
        case "$o" in
            # What the pid kind always does (established TCP moves, in-flight
            # connections are skipped, file locks move, link remap on).
            --tcp-established|--skip-in-flight|--file-locks|--link-remap) ;;
            --tcp-close|--ext-unix-sk|--shell-job|--force-irmap|--mntns-compat-mode)
                PHAUL_FLAGS+=("$o") ;;
            --irmap-scan-path)
                PHAUL_FLAGS+=("$o" "${words[$((i + 1))]:-}"); i=$((i + 1)) ;;
            # CRIU takes K/M/G suffixes; phaul takes bytes.
            --ghost-limit)
                a=${words[$((i + 1))]:-}
                case "$a" in
                    *K) a=$(( ${a%K} << 10 )) ;;
                    *M) a=$(( ${a%M} << 20 )) ;;
                    *G) a=$(( ${a%G} << 30 )) ;;
                esac
                PHAUL_FLAGS+=("$o" "$a"); i=$((i + 1)) ;;
            # The two --external forms the pid kind has flags for: a veth
            # recreated on restore, a mount bound from the same path.
            --external)
                a=${words[$((i + 1))]:-}
                if [[ "$a" =~ ^veth\[([^]]+)\]:(.+)$ ]]; then
                    PHAUL_FLAGS+=(--veth "${BASH_REMATCH[1]}=${BASH_REMATCH[2]}")
                elif [[ "$a" =~ ^mnt\[(/[^]]*)\]:(/.*)$ ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ]; then
                    PHAUL_FLAGS+=(--ext-mount "${BASH_REMATCH[1]}")
                else
                    UNSUPPORTED+=("$o $a")
                fi
                i=$((i + 1)) ;;
            # Options with a separate argument: name the option with it.
            --network-lock|--join-ns|--cgroup-root|--cgroup-yard|\
            --ext-mount-map|--enable-fs|--lsm-mount-context)
                UNSUPPORTED+=("$o ${words[$((i + 1))]:-}"); i=$((i + 1)) ;;
            *) UNSUPPORTED+=("$o") ;;
        esac
        i=$((i + 1))
    done
    # A phaul flag that appears in both opts and ropts is given once (an
    # option with its value is one word here).
    if [ ${#PHAUL_FLAGS[@]} -gt 0 ]; then
        local -A seen=()
        local f out=() j=0
        while [ $j -lt ${#PHAUL_FLAGS[@]} ]; do
            f=${PHAUL_FLAGS[$j]}
            case "$f" in
                --veth|--ext-mount|--irmap-scan-path|--ghost-limit)
                    f+=" ${PHAUL_FLAGS[$((j + 1))]}"; j=$((j + 1)) ;;
            esac
            if [ -z "${seen[$f]:-}" ]; then
                seen[$f]=1
                read -r -a pair <<<"$f"
                out+=("${pair[@]}")
            fi
            j=$((j + 1))
        done
        PHAUL_FLAGS=("${out[@]}")
    fi
    if [ ${#UNSUPPORTED[@]} -gt 0 ]; then
        mapfile -t UNSUPPORTED < <(printf '%s\n' "${UNSUPPORTED[@]}" | sort -u)
    fi
}

# Stops the test at PID as zdtm.py does (SIGTERM, wait for it to end) and
# checks PASS in its .out. Prints the verdict's reason on failure.
judge() {
    local pid=$1 d=$T/zdtm/static n=$NAME
    kill -TERM "$pid" 2>/dev/null || { echo "result check: test $pid is gone before SIGTERM ($(out_reason "$d" "$n"))"; return 1; }
    wait_gone "$pid" || { echo "timeout: test still running ${TIMEOUT}s after start, after SIGTERM"; return 1; }
    if [ -f "$d/$n.out" ] && tail -n 5 "$d/$n.out" | tr -s ' \t' '\n\n' | grep -qx PASS; then
        return 0
    fi
    echo "result check: $(out_reason "$d" "$n")"
    return 1
}

# Runs one test; prints its PASS/FAIL line; returns 0 on PASS.
run_one() {
    NAME=$1
    local d line argv env flags opts dopts ropts i status pid new rc reason
    DEADLINE=$(( $(now) + TIMEOUT ))
    if [ -z "$DIR" ] || [ ! -d "$DIR" ]; then
        echo "FAIL $NAME: no test directory"; return 1
    fi
    if ! [[ "$NAME" =~ ^[A-Za-z0-9_.+-]+$ ]] || [ ! -x "$STATIC/$NAME" ] || [ -d "$STATIC/$NAME" ]; then
        echo "FAIL $NAME: no such static test (built) in $STATIC"; return 1
    fi

    declare -A desc=()
    while IFS=$'\t' read -r k v; do desc[$k]=$v; done < <("${DESC[@]}" show "$STATIC" "$NAME")
    read -r -a opts <<<"${desc[opts]:-}"
    read -r -a dopts <<<"${desc[dopts]:-}"
    read -r -a ropts <<<"${desc[ropts]:-}"
    flags=" ${desc[flags]:-} "

    if [ "$PLAIN" -eq 0 ]; then
        map_opts "${opts[@]}" "${dopts[@]}" "${ropts[@]}"
        if [ ${#UNSUPPORTED[@]} -gt 0 ]; then
            echo "FAIL $NAME: needs CRIU option(s) phaul migrate does not expose: $(IFS=,; echo "${UNSUPPORTED[*]}")"
            return 1
        fi
    fi

    # The command line zdtm's Makefile starts the test with (its %.pid rule:
    # --pidfile, --outfile and the test's own arguments); make -n prints it.
    line=$(make -n --no-print-directory -C "$STATIC" "$NAME.pid" 2>/dev/null | tail -n1)
    read -r -a argv <<<"$line"
    if [ "${argv[0]:-}" != "./$NAME" ]; then
        echo "FAIL $NAME: no start command from zdtm's Makefile ($line)"; return 1
    fi

    T=$DIR
    # A mount of its own, so that what the test mounts below it goes with
    # one umount -R (this is a private mount namespace, see the end).
    mount --bind "$T" "$T"
    # This host's own pty instance: hosts do not share /dev/pts, and on one
    # machine the frozen source (phaul keeps it until the target runs)
    # would hold the pty numbers the target's restore must take.
    new_devpts
    d=$T/zdtm/static
    mkdir -p "$d" "$T/img"
    cp "$STATIC/$NAME" "$d/"
    SRC_NS=pz-s$$-$COUNT TGT_NS=pz-t$$-$COUNT
    ip netns add "$SRC_NS"
    ip -n "$SRC_NS" link set lo up
    if [ "$PLAIN" -eq 0 ]; then
        ip netns add "$TGT_NS"
        ip -n "$TGT_NS" link set lo up
        ip link add "pzs$COUNT.$$" type veth peer name "pzt$COUNT.$$"
        ip link set "pzs$COUNT.$$" netns "$SRC_NS"
        ip link set "pzt$COUNT.$$" netns "$TGT_NS"
        ip -n "$SRC_NS" addr add "$SRC_IP/24" dev "pzs$COUNT.$$"
        ip -n "$TGT_NS" addr add "$TGT_IP/24" dev "pzt$COUNT.$$"
        ip -n "$SRC_NS" link set "pzs$COUNT.$$" up
        ip -n "$TGT_NS" link set "pzt$COUNT.$$" up
    else
        TGT_NS=
    fi

    env=(ZDTM_THREAD_BOMB=5 TMPDIR=/tmp
         PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    # zdtm.py gives these tests the pre-dump notification pipes.
    [[ "$flags" == *" pre-dump-notify "* ]] && env+=(ZDTM_NOTIFY_FDIN=100 ZDTM_NOTIFY_FDOUT=101)

    # The test under its init (see the header), which reports in
    # $T/status that the test started: the library's own ns_init for a
    # test of the ns flavour (4 bytes, an int, on fd 255), init.sh (a line)
    # for the others. The subshell first closes what this shell holds open
    # beyond stdio, so that the test inherits only stdio.
    local nsinit=0 minsize=1
    if [[ " ${desc[flavor]:-h ns uns} " == *" ns "* ]]; then
        nsinit=1 minsize=4
    fi
    (
        cd "$d"
        for f in /proc/$BASHPID/fd/*; do
            i=${f##*/}
            [ "$i" -gt 2 ] 2>/dev/null && exec {i}>&- || true
        done
        run=(nsenter --net="/run/netns/$SRC_NS" unshare --pid --fork --uts --ipc setsid env "${env[@]}")
        if [ $nsinit -eq 1 ]; then
            exec "${run[@]}" ZDTM_NEWNS=2 "${argv[@]}" </dev/null >"$T/start.log" 2>&1 255>"$T/status"
        fi
        exec "${run[@]}" "$REPO/scripts/zdtm/init.sh" "$T/status" "$NAME.pid" "${argv[@]}" \
            </dev/null >"$T/start.log" 2>&1
    ) &
    LAUNCH=$!

    # Started when the init wrote the test's start status (0: it runs).
    while [ "$(stat -c %s "$T/status" 2>/dev/null || echo 0)" -lt $minsize ]; do
        if ! alive "$LAUNCH" || [ "$(left)" -le 0 ]; then
            echo "FAIL $NAME: did not start: $(out_reason "$d" "$NAME") $(tail -n1 "$T/start.log" 2>/dev/null)"
            keep_logs "$NAME"; return 1
        fi
        sleep 0.05
    done
    if [ $nsinit -eq 1 ]; then
        status=$(od -An -td4 -N4 "$T/status" | tr -d ' ')
    else
        read -r status < "$T/status" || status=
    fi
    ensure_proc
    pid=$(tr -d ' \n' 2>/dev/null < "/proc/$LAUNCH/task/$LAUNCH/children" || true)
    if [ "$status" != 0 ] || [ -z "$pid" ]; then
        echo "FAIL $NAME: did not start (status $status): $(out_reason "$d" "$NAME")"
        keep_logs "$NAME"; return 1
    fi

    # crfail: zdtm.py expects the dump to fail and the test to go on.
    local crfail=0
    [[ "$flags" == *" crfail "* ]] && crfail=1

    if [ "$PLAIN" -eq 1 ]; then
        rc=0
        timeout -k 5 "$(left)" nsenter --net="/run/netns/$SRC_NS" "$CRIU" dump -t "$pid" -D "$T/img" \
            -o dump.log -v4 "${opts[@]}" "${dopts[@]}" >"$T/criu-dump.out" 2>&1 || rc=$?
        if [ $rc -ne 0 ]; then
            if [ $crfail -eq 1 ] && [ $rc -ne 124 ]; then
                if reason=$(judge "$pid"); then echo "PASS $NAME"; return 0; fi
                echo "FAIL $NAME: after the expected dump failure: $reason"; keep_logs "$NAME"; return 1
            fi
            [ $rc -eq 124 ] && reason="timeout (${TIMEOUT}s) in criu dump" || reason="criu dump: $(criu_reason "$T/img/dump.log")"
            echo "FAIL $NAME: $reason"; keep_logs "$NAME"; return 1
        fi
        [ $crfail -eq 1 ] && { echo "FAIL $NAME: unexpected success of criu dump (crfail)"; keep_logs "$NAME"; return 1; }
        wait_gone "$pid" || { echo "FAIL $NAME: dumped test did not end"; keep_logs "$NAME"; return 1; }
        wait "$LAUNCH" 2>/dev/null || true
        LAUNCH=
        timeout -k 5 "$(left)" nsenter --net="/run/netns/$SRC_NS" "$CRIU" restore -D "$T/img" -d \
            -o restore.log -v4 --pidfile "$T/restored.pid" "${opts[@]}" "${ropts[@]}" \
            >"$T/criu-restore.out" 2>&1 || rc=$?
        if [ $rc -ne 0 ]; then
            [ $rc -eq 124 ] && reason="timeout (${TIMEOUT}s) in criu restore" || reason="criu restore: $(criu_reason "$T/img/restore.log")"
            echo "FAIL $NAME: $reason"; keep_logs "$NAME"; return 1
        fi
        new=$(cat "$T/restored.pid")
    else
        head -c 32 /dev/urandom | base64 > "$T/key"
        chmod 600 "$T/key"
        # The target host: its network namespace, and a mount namespace
        # copied from this one now (the test's mounts included, shared ones
        # still peers of the source's, so that a restored test can unmount
        # them) with a pty instance of its own (see new_devpts).
        unshare --mount --propagation unchanged -- "$SELF" --devpts-exec \
            nsenter --net="/run/netns/$TGT_NS" "$BIN/phaul-service" --listen "$TGT_IP:7070" --key-file "$T/key" \
            --work-dir "$T/tgt-work" --criu "$CRIU" >"$T/service.log" 2>&1 &
        SVC=$!
        until grep -q '^listening on' "$T/service.log" 2>/dev/null; do
            if ! alive "$SVC" || [ "$(left)" -le 0 ]; then
                echo "FAIL $NAME: phaul-service did not start: $(tail -n1 "$T/service.log")"
                keep_logs "$NAME"; return 1
            fi
            sleep 0.05
        done
        rc=0
        timeout -k 5 "$(left)" nsenter --net="/run/netns/$SRC_NS" "$BIN/phaul" migrate --to "$TGT_IP:7070" \
            --key-file "$T/key" --mode "$MODE" --work-dir "$T/src-work" --criu "$CRIU" \
            --json "$T/report.json" "${PHAUL_FLAGS[@]}" pid "$pid" >"$T/phaul.log" 2>&1 || rc=$?
        if [ $rc -ne 0 ]; then
            if [ $crfail -eq 1 ] && [ $rc -eq 1 ]; then
                if reason=$(judge "$pid"); then echo "PASS $NAME"; return 0; fi
                echo "FAIL $NAME: after the expected migration failure: $reason"; keep_logs "$NAME"; return 1
            fi
            if [ $rc -eq 124 ]; then
                reason="timeout (${TIMEOUT}s) in phaul migrate$(lock_waiters "$TGT_NS")"
            else
                # The report's error quotes CRIU's decisive lines.
                reason="phaul migrate exit $rc: $("$PY" -c 'import json,sys
try: e = json.load(open(sys.argv[1])).get("error") or ""
except Exception: e = ""
print(" | ".join(l.strip() for l in str(e).splitlines() if l.strip())[:400])' "$T/report.json")"
                [ "$reason" = "phaul migrate exit $rc: " ] && reason+=$(tail -n1 "$T/phaul.log")
            fi
            echo "FAIL $NAME: $reason"; keep_logs "$NAME"; return 1
        fi
        [ $crfail -eq 1 ] && { echo "FAIL $NAME: unexpected success of the migration (crfail)"; keep_logs "$NAME"; return 1; }
        new=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["target_pid"])' "$T/report.json")
        # The report says how it moved: a post-copy run that fell back to
        # stop-copy proved nothing about lazy restores.
        ran=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["mode"])' "$T/report.json")
        if [ "$ran" != "$MODE" ]; then
            echo "FAIL $NAME: moved by $ran, not $MODE"; keep_logs "$NAME"; return 1
        fi
    fi

    if ! [[ "$new" =~ ^[0-9]+$ ]]; then
        echo "FAIL $NAME: no restored pid ($new)"; keep_logs "$NAME"; return 1
    fi
    if reason=$(judge "$new"); then
        echo "PASS $NAME"; return 0
    fi
    echo "FAIL $NAME: $reason"; keep_logs "$NAME"; return 1
}

# --- all of them --------------------------------------------------------------

# One test per process, each in a private mount namespace: tests mount
# things (in the ns flavour they have a mount namespace of their own, which
# phaul's pid kind cannot restore), and so do `ip netns` and this script;
# none of it reaches the machine's mount table, and all of it ends with
# the test. CRIU, phaul and phaul-service run in that namespace too, so to
# CRIU the test's mounts are its own.
if [ -n "$ONE" ]; then
    [ ${#TESTS[@]} -eq 1 ] || usage
    COUNT=$ONE
    trap "cleanup_test 2>/dev/null" EXIT
    trap 'exit 130' INT TERM
    # Should the parent be gone, its verdict line cannot be written, but
    # the clean-up must still run.
    trap '' PIPE
    if run_one "${TESTS[0]}"; then exit 0; else exit 1; fi
fi

child=(--timeout "$TIMEOUT" --logs "$LOGS" --mode "$MODE")
[ "$PLAIN" -eq 1 ] && child+=(--plain)
PASSED=0 FAILED=0 COUNT=0 STOP=0
# SIGINT/SIGTERM: the test under way finishes (and cleans up), then the
# summary of what ran.
trap 'STOP=1' INT TERM
for name in "${TESTS[@]}"; do
    [ "$STOP" -eq 0 ] || break
    COUNT=$((COUNT + 1))
    rc=0
    dir=$(mktemp -d /var/tmp/phaul-zdtm.XXXXXX)
    # The child keeps its own deadline; this one is for a child that hangs
    # in its clean-up.
    line=$(timeout -k 10 $((TIMEOUT + 60)) unshare --mount --propagation private -- \
        "$SELF" --one "$COUNT" --dir "$dir" "${child[@]}" -- "$name") || rc=$?
    rm -rf --one-file-system "$dir"
    case "$line" in
        "PASS $name") PASSED=$((PASSED + 1)); echo "$line" ;;
        "FAIL $name: "*) FAILED=$((FAILED + 1)); echo "$line" ;;
        *) FAILED=$((FAILED + 1)); echo "FAIL $name: the runner ended with status $rc${line:+ ($line)}" ;;
    esac
done
rmdir "$LOGS" 2>/dev/null || echo "zdtm.sh: logs of failed tests in $LOGS" >&2
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
