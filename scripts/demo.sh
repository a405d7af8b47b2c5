#!/usr/bin/env bash
# The phaul demo: two "hosts" (network namespaces joined by a veth pair), a
# workload on one, phaul-service on the other, and a live migration between
# them with `phaul migrate`. Shows the report and the workload running on
# the target with its memory and counter intact. Run as root, after
# scripts/setup.sh (the README's first command does both).
#
#   ./scripts/demo.sh [--mode auto|stop-copy|post-copy|pre-copy|hybrid] [--mib N]
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=auto
MIB=256
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODE=$2; shift 2 ;;
        --mib) MIB=$2; shift 2 ;;
        *) echo "usage: $0 [--mode MODE] [--mib N]" >&2; exit 2 ;;
    esac
done

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building phaul and phaul-service (release)"
cargo build --release --quiet --example phaul --example phaul-service
BIN=target/release/examples

TAG=$$
SRC=phdemo-s$TAG TGT=phdemo-t$TAG
VS=phds$TAG VT=phdt$TAG
SRC_IP=10.199.0.1 TGT_IP=10.199.0.2
WORK=$(mktemp -d /tmp/phaul-demo.XXXXXX)
SVC_PID= WL_UNSHARE= NEW_PID=

cleanup() {
    [ -n "$NEW_PID" ] && kill -9 "$NEW_PID" 2>/dev/null || true
    [ -n "$WL_UNSHARE" ] && kill -9 "$WL_UNSHARE" 2>/dev/null || true
    [ -n "$SVC_PID" ] && kill "$SVC_PID" 2>/dev/null && wait "$SVC_PID" 2>/dev/null || true
    ip netns del "$SRC" 2>/dev/null || true
    ip netns del "$TGT" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say "two hosts: $SRC ($SRC_IP) and $TGT ($TGT_IP), joined by a veth pair"
ip netns add "$SRC"
ip netns add "$TGT"
ip link add "$VS" type veth peer name "$VT"
ip link set "$VS" netns "$SRC"
ip link set "$VT" netns "$TGT"
ip -n "$SRC" addr add "$SRC_IP/24" dev "$VS"
ip -n "$TGT" addr add "$TGT_IP/24" dev "$VT"
for ns in "$SRC" "$TGT"; do ip -n "$ns" link set lo up; done
ip -n "$SRC" link set "$VS" up
ip -n "$TGT" link set "$VT" up

head -c 32 /dev/urandom | base64 > "$WORK/key"
chmod 600 "$WORK/key"

say "phaul-service on $TGT, listening on $TGT_IP:7070"
nsenter --net="/run/netns/$TGT" "$BIN/phaul-service" --listen "$TGT_IP:7070" \
    --key-file "$WORK/key" --work-dir "$WORK/target" >"$WORK/service.log" 2>&1 &
SVC_PID=$!
for _ in $(seq 100); do
    grep -q '^listening on' "$WORK/service.log" && break
    sleep 0.05
done
grep -q '^listening on' "$WORK/service.log" || { cat "$WORK/service.log"; exit 1; }

say "a workload on $SRC: $MIB MiB of memory with a known checksum, and a counter"
mkdir -p "$WORK/wl"
cp crates/phaul-testkit/src/workload.py "$WORK/wl/"
# Its own PID namespace, so that the same PIDs are free on the "other host"
# (which is this same machine); stdio on /dev/null, cwd of its own.
( cd "$WORK/wl" && exec nsenter --net="/run/netns/$SRC" unshare --pid --fork setsid \
    python3 "$WORK/wl/workload.py" "$WORK/wl/out" "$MIB" </dev/null >/dev/null 2>&1 ) &
WL_UNSHARE=$!
for _ in $(seq 600); do [ -f "$WORK/wl/out.ready" ] && break; sleep 0.1; done
PID=$(cut -d' ' -f1 < "/proc/$WL_UNSHARE/task/$WL_UNSHARE/children")
sleep 0.5
echo "workload pid $PID, counter at $(cut -d' ' -f1 "$WORK/wl/out")"

say "phaul migrate --to $TGT_IP:7070 --mode $MODE pid $PID   (run on $SRC)"
set +e
nsenter --net="/run/netns/$SRC" "$BIN/phaul" migrate --to "$TGT_IP:7070" --key-file "$WORK/key" \
    --mode "$MODE" --work-dir "$WORK/source" --json "$WORK/report.json" pid "$PID"
STATUS=$?
set -e
echo "exit status $STATUS; JSON report:"
cat "$WORK/report.json"; echo
[ "$STATUS" -eq 0 ] || exit "$STATUS"

NEW_PID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["target_pid"])' "$WORK/report.json")
say "the workload on $TGT"
echo "source pid $PID: $( [ -d /proc/$PID ] && echo still there || echo gone )"
echo "target pid $NEW_PID: $(tr '\0' ' ' < /proc/$NEW_PID/cmdline)"
echo "its network namespace: $(readlink /proc/$NEW_PID/ns/net) (the target host's is net:[$(stat -L -c %i /run/netns/$TGT)])"
C1=$(cut -d' ' -f1 "$WORK/wl/out"); sleep 1; C2=$(cut -d' ' -f1 "$WORK/wl/out")
echo "counter keeps counting: $C1 -> $C2"
rm -f "$WORK/wl/out.check"
kill -USR1 "$NEW_PID"
for _ in $(seq 300); do [ -f "$WORK/wl/out.check" ] && break; sleep 0.1; done
echo "memory checksum: $(cut -d' ' -f1 "$WORK/wl/out.check")"
[ "$(cut -d' ' -f1 "$WORK/wl/out.check")" = ok ] && [ "$C2" -gt "$C1" ]
say "demo OK"
