#!/usr/bin/env bash
# The phaul demo: two "hosts" (network namespaces joined by a veth pair), a
# workload on one, phaul-service on the other, and a live migration between
# them with `phaul migrate`. Shows the report and the workload running on
# the target with its memory and counter intact. Run as root, after
# scripts/setup.sh (the README's first command does both).
#
#   ./scripts/demo.sh [--mode auto|stop-copy|post-copy|pre-copy|hybrid] [--mib N]
#   ./scripts/demo.sh --kind lxc [--fs native|rsync]   # an LXC container with its files
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=auto
MIB=256
KIND=pid
FS=native
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODE=$2; shift 2 ;;
        --mib) MIB=$2; shift 2 ;;
        --kind) KIND=$2; shift 2 ;;
        --fs) FS=$2; shift 2 ;;
        *) echo "usage: $0 [--mode MODE] [--mib N] [--kind pid|lxc] [--fs native|rsync]" >&2; exit 2 ;;
    esac
done
case "$KIND" in pid|lxc) ;; *) echo "--kind is pid or lxc" >&2; exit 2 ;; esac

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building phaul and phaul-service (release)"
cargo build --release --quiet --example phaul --example phaul-service
BIN=target/release/examples

TAG=$$
SRC=phdemo-s$TAG TGT=phdemo-t$TAG
VS=phds$TAG VT=phdt$TAG
SRC_IP=10.199.0.1 TGT_IP=10.199.0.2
WORK=$(mktemp -d /tmp/phaul-demo.XXXXXX)
SVC_PID= WL_UNSHARE= NEW_PID= CT=

cleanup() {
    if [ -n "$CT" ]; then
        for side in "$SRC:$WORK/lxc-src" "$TGT:$WORK/lxc-tgt"; do
            ns=${side%%:*} path=${side#*:}
            nsenter --net="/run/netns/$ns" lxc-stop -P "$path" -n "$CT" -k >/dev/null 2>&1 || true
            nsenter --net="/run/netns/$ns" lxc-destroy -P "$path" -n "$CT" >/dev/null 2>&1 || true
        done
    fi
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
    --key-file "$WORK/key" --work-dir "$WORK/target" --lxcpath "$WORK/lxc-tgt" >"$WORK/service.log" 2>&1 &
SVC_PID=$!
for _ in $(seq 100); do
    grep -q '^listening on' "$WORK/service.log" && break
    sleep 0.05
done
grep -q '^listening on' "$WORK/service.log" || { cat "$WORK/service.log"; exit 1; }

if [ "$KIND" = lxc ]; then
    CT=phdemo$TAG
    IN_SRC=(nsenter --net="/run/netns/$SRC")
    IN_TGT=(nsenter --net="/run/netns/$TGT")
    say "an LXC container $CT on $SRC (busybox template), counting in memory into its /tmp/count"
    mkdir -p "$WORK/lxc-src" "$WORK/lxc-tgt"
    "${IN_SRC[@]}" lxc-create -P "$WORK/lxc-src" -t busybox -n "$CT" >/dev/null
    C="$WORK/lxc-src/$CT/config"
    # What LXC needs on this kind of machine (see shared notes): no bridge,
    # no AppArmor, no ttys, /lib binds that are not symlinks.
    sed -i -e 's/^lxc.net.0.type = veth/lxc.net.0.type = empty/' -e '/^lxc.net.0.link/d' -e '/^lxc.net.0.flags/d' \
        -e '/^lxc.apparmor/d' -e 's/^lxc.tty.max = .*/lxc.tty.max = 0/' \
        -e 's#^lxc.mount.entry = /lib lib #lxc.mount.entry = /usr/lib lib #' \
        -e 's#^lxc.mount.entry = /lib64 lib64 #lxc.mount.entry = /usr/lib64 lib64 #' "$C"
    sed -i '/getty/d' "$WORK/lxc-src/$CT/rootfs/etc/inittab"
    cat > "$WORK/lxc-src/$CT/rootfs/bin/counter.sh" <<'SH'
#!/bin/sh
for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] 2>/dev/null && eval "exec $n>&-"; done
i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done
SH
    chmod +x "$WORK/lxc-src/$CT/rootfs/bin/counter.sh"
    echo "written before the migration" > "$WORK/lxc-src/$CT/rootfs/etc/demo-note"
    "${IN_SRC[@]}" lxc-start -P "$WORK/lxc-src" -n "$CT" >/dev/null 2>&1 </dev/null
    "${IN_SRC[@]}" lxc-wait -P "$WORK/lxc-src" -n "$CT" -s RUNNING -t 20
    "${IN_SRC[@]}" lxc-attach -P "$WORK/lxc-src" -n "$CT" -- /bin/sh -c \
        'exec </dev/null >/dev/null 2>/dev/null; setsid /bin/counter.sh &' </dev/null >/dev/null 2>&1
    for _ in $(seq 100); do [ -s "$WORK/lxc-src/$CT/rootfs/tmp/count" ] && break; sleep 0.1; done
    sleep 0.5
    echo "lxc-info on $SRC: $("${IN_SRC[@]}" lxc-info -P "$WORK/lxc-src" -n "$CT" -sH), counter at $(cat "$WORK/lxc-src/$CT/rootfs/tmp/count")"

    say "phaul migrate --to $TGT_IP:7070 --fs $FS lxc $CT   (run on $SRC)"
    set +e
    "${IN_SRC[@]}" "$BIN/phaul" migrate --to "$TGT_IP:7070" --key-file "$WORK/key" --mode "$MODE" \
        --fs "$FS" --lxcpath "$WORK/lxc-src" --work-dir "$WORK/source" --json "$WORK/report.json" lxc "$CT"
    STATUS=$?
    set -e
    echo "exit status $STATUS; JSON report:"
    cat "$WORK/report.json"; echo
    [ "$STATUS" -eq 0 ] || exit "$STATUS"

    say "the container on $TGT"
    echo "on $SRC: $( [ -d "$WORK/lxc-src/$CT" ] && echo "still there" || echo "gone" )"
    echo "lxc-info on $TGT: $("${IN_TGT[@]}" lxc-info -P "$WORK/lxc-tgt" -n "$CT" -sH)"
    echo "its file from before: $(cat "$WORK/lxc-tgt/$CT/rootfs/etc/demo-note")"
    C1=$(cat "$WORK/lxc-tgt/$CT/rootfs/tmp/count"); sleep 1; C2=$(cat "$WORK/lxc-tgt/$CT/rootfs/tmp/count")
    echo "counter keeps counting from its memory: $C1 -> $C2"
    [ "$C2" -gt "$C1" ]
    say "demo OK"
    exit 0
fi

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
# Drawn at the workload's start and kept only in its memory: a restarted
# copy would show another one.
TOKEN=$(cut -d' ' -f3 "$WORK/wl/out")

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
T2=$(cut -d' ' -f3 "$WORK/wl/out")
echo "the token it drew at start: $TOKEN before, $T2 after"
rm -f "$WORK/wl/out.check"
kill -USR1 "$NEW_PID"
for _ in $(seq 300); do [ -f "$WORK/wl/out.check" ] && break; sleep 0.1; done
echo "memory checksum: $(cut -d' ' -f1 "$WORK/wl/out.check")"
[ "$(cut -d' ' -f1 "$WORK/wl/out.check")" = ok ] && [ "$C2" -gt "$C1" ] && [ "$T2" = "$TOKEN" ]
say "demo OK"
