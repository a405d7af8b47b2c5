#!/usr/bin/env bash
# The phaul demo: two "hosts" and a client host on one LAN (network
# namespaces: a switch bridge, each host's own bridge, the client), and a
# live migration with `phaul migrate`. By default it moves a real server,
# Debian's redis-server with an address of its own on the LAN, while a
# client on the client host keeps ONE connection open and sends a request
# every 5 ms; it prints the report beside the client's longest stall and
# error count, and checks the server's data on the target. Run as root,
# after scripts/setup.sh (the README's first command does both).
#
#   ./scripts/demo.sh [--mode auto|stop-copy|post-copy|...]   # redis with its client
#   ./scripts/demo.sh --kind memory [--mib N]   # a process holding N MiB, checksummed
#   ./scripts/demo.sh --kind lxc [--fs native|rsync]   # an LXC container with its files
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=auto
MIB=256
KIND=redis
FS=native
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODE=$2; shift 2 ;;
        --mib) MIB=$2; shift 2 ;;
        --kind) KIND=$2; shift 2 ;;
        --fs) FS=$2; shift 2 ;;
        *) echo "usage: $0 [--mode MODE] [--kind redis|memory|lxc] [--mib N] [--fs native|rsync]" >&2; exit 2 ;;
    esac
done
case "$KIND" in redis|memory|lxc) ;; *) echo "--kind is redis, memory or lxc" >&2; exit 2 ;; esac

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building phaul and phaul-service (release)"
cargo build --release --quiet --example phaul --example phaul-service
BIN=target/release/examples

TAG=$$
SRC=phdemo-s$TAG TGT=phdemo-t$TAG SWITCH=phdemo-w$TAG CLIENT=phdemo-c$TAG
NET=10.199.0
SRC_IP=$NET.1 TGT_IP=$NET.2 CLIENT_IP=$NET.100 SERVICE_IP=$NET.50
WORK=$(mktemp -d /tmp/phaul-demo.XXXXXX)
SVC_PID= WL_UNSHARE= NEW_PID= CT= CLIENT_PID=

cleanup() {
    if [ -n "$CT" ]; then
        for side in "$SRC:$WORK/lxc-src" "$TGT:$WORK/lxc-tgt"; do
            ns=${side%%:*} path=${side#*:}
            nsenter --net="/run/netns/$ns" lxc-stop -P "$path" -n "$CT" -k >/dev/null 2>&1 || true
            nsenter --net="/run/netns/$ns" lxc-destroy -P "$path" -n "$CT" >/dev/null 2>&1 || true
        done
    fi
    [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null || true
    [ -n "$NEW_PID" ] && kill -9 "$NEW_PID" 2>/dev/null || true
    [ -n "$WL_UNSHARE" ] && kill -9 "$WL_UNSHARE" 2>/dev/null || true
    [ -n "$SVC_PID" ] && kill "$SVC_PID" 2>/dev/null && wait "$SVC_PID" 2>/dev/null || true
    for ns in "$SRC" "$TGT" "$SWITCH" "$CLIENT"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

say "a LAN: hosts $SRC ($SRC_IP) and $TGT ($TGT_IP), client $CLIENT ($CLIENT_IP)"
for ns in "$SRC" "$TGT" "$SWITCH" "$CLIENT"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$SWITCH" link add lan0 type bridge
ip -n "$SWITCH" link set lan0 up
n=0
for side in "$SRC:$SRC_IP" "$TGT:$TGT_IP" "$CLIENT:$CLIENT_IP"; do
    ns=${side%%:*} addr=${side#*:} n=$((n + 1))
    ip link add "phu$TAG$n" type veth peer name "phd$TAG$n"
    ip link set "phu$TAG$n" netns "$ns"
    ip link set "phd$TAG$n" netns "$SWITCH"
    ip -n "$SWITCH" link set "phd$TAG$n" master lan0 up
    if [ "$ns" = "$CLIENT" ]; then
        ip -n "$ns" addr add "$addr/24" dev "phu$TAG$n"
        ip -n "$ns" link set "phu$TAG$n" up
    else
        # A host's own bridge: its uplink and its services' veths sit on it.
        ip -n "$ns" link add br0 type bridge
        # Its own MAC: a bridge otherwise takes its ports' lowest, which
        # changes as the service's veth comes and goes.
        ip -n "$ns" link set br0 address "02:70:68:ff:00:0$n"
        ip -n "$ns" link set "phu$TAG$n" master br0 up
        ip -n "$ns" addr add "$addr/24" dev br0
        ip -n "$ns" link set br0 up
    fi
done

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

if [ "$KIND" = redis ]; then
    OUTER=phsv$TAG
    say "redis-server on $SRC with its own address $SERVICE_IP (own network and PID namespaces, veth on $SRC's br0)"
    mkdir -p "$WORK/redis"
    ( cd "$WORK/redis" && exec nsenter --net="/run/netns/$SRC" unshare --net --pid --fork setsid \
        /usr/bin/redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save "" --appendonly no \
        </dev/null >/dev/null 2>&1 ) &
    WL_UNSHARE=$!
    for _ in $(seq 100); do [ -s "/proc/$WL_UNSHARE/task/$WL_UNSHARE/children" ] && break; sleep 0.05; done
    PID=$(cut -d' ' -f1 < "/proc/$WL_UNSHARE/task/$WL_UNSHARE/children")
    ip -n "$SRC" link add "$OUTER" type veth peer name eth0 netns "/proc/$PID/ns/net"
    ip -n "$SRC" link set "$OUTER" master br0 up
    IN_SVC=(nsenter --net="/proc/$PID/ns/net")
    "${IN_SVC[@]}" ip link set lo up
    "${IN_SVC[@]}" ip link set eth0 address 02:70:68:61:75:32
    "${IN_SVC[@]}" ip addr add "$SERVICE_IP/24" dev eth0
    "${IN_SVC[@]}" ip link set eth0 up
    CLI=(nsenter --net="/run/netns/$CLIENT" redis-cli -h "$SERVICE_IP" --raw)
    for _ in $(seq 100); do [ "$("${CLI[@]}" PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
    args=(MSET)
    for i in $(seq 0 999); do args+=("demo:k$i" "value-$i"); done
    "${CLI[@]}" "${args[@]}" >/dev/null
    echo "redis pid $PID holds $("${CLI[@]}" DBSIZE) keys"

    say "a client on $CLIENT: one connection to $SERVICE_IP:6379, INCR every 5 ms"
    nsenter --net="/run/netns/$CLIENT" python3 crates/phaul-testkit/src/redis_client.py \
        "$SERVICE_IP" 6379 0.005 "$WORK/client.stats" </dev/null >/dev/null 2>&1 &
    CLIENT_PID=$!
    stat_of() { sed -n "s/^$1 //p" "$WORK/client.stats" 2>/dev/null; }
    for _ in $(seq 100); do [ "$(stat_of ok)" -gt 20 ] 2>/dev/null && break; sleep 0.1; done
    echo "client: $(stat_of ok) answers, $(stat_of errors) errors so far"

    say "phaul migrate --to $TGT_IP:7070 --mode $MODE --veth eth0=$OUTER@br0 pid $PID   (run on $SRC)"
    set +e
    nsenter --net="/run/netns/$SRC" "$BIN/phaul" migrate --to "$TGT_IP:7070" --key-file "$WORK/key" \
        --mode "$MODE" --work-dir "$WORK/source" --json "$WORK/report.json" \
        --veth "eth0=$OUTER@br0" pid "$PID"
    STATUS=$?
    set -e
    [ "$STATUS" -eq 0 ] || { cat "$WORK/report.json"; exit "$STATUS"; }
    NEW_PID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["target_pid"])' "$WORK/report.json")
    BEFORE=$(stat_of ok)
    for _ in $(seq 100); do [ "$(stat_of ok)" -gt $((BEFORE + 200)) ] && break; sleep 0.05; done

    say "redis on $TGT, and what its client saw"
    echo "source pid $PID: $( [ -d /proc/$PID ] && echo still there || echo gone )"
    echo "target pid $NEW_PID: $(tr '\0' ' ' < /proc/$NEW_PID/cmdline)"
    echo "its network namespace's host end: $(ip -n "$TGT" -br link show "$OUTER" | cut -d' ' -f1) on $TGT's br0"
    echo "keys on the target: $("${CLI[@]}" DBSIZE), demo:k999 = $("${CLI[@]}" GET demo:k999)"
    STALL=$(stat_of stall_ms) ERRORS=$(stat_of errors)
    echo "client: $(stat_of ok) answers on one connection; errors: $ERRORS; longest stall: $STALL ms"
    echo "report: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("mode %s, downtime %.1f ms, total %.1f ms" % (r["mode"], r["downtime_ms"], r["total_ms"]))' "$WORK/report.json")"
    [ "$ERRORS" = 0 ] && [ "$("${CLI[@]}" DBSIZE)" -ge 1000 ] && [ ! -d "/proc/$PID" ]
    say "demo OK: the server moved with its client attached"
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
