#!/usr/bin/env bash
# Set-up for phaul on Debian 12 (run as root). Idempotent: when everything is
# already in place it only checks and returns in a few seconds.
#
# What it ensures:
#   * a CRIU on PATH that can dump and restore a process with TCP, UDP and
#     unix sockets on this kernel, proven by a self-test (dump and restore
#     of such a process) before anything relies on it. Debian 12's 3.17
#     fails on recent kernels (vDSO) and is removed; 4.2.1 is built from
#     Debian's source tarball (sha256-pinned), or, once no suite serves it,
#     4.1.1 with our patch. A CRIU that fails the self-test is replaced or,
#     when nothing better can be had, set-up fails.
#   * runtime tools later parts of phaul drive: iptables (CRIU's network
#     lock), rsync, lxc, busybox-static, iproute2.
#   * fs.pipe-max-size >= 4 MiB: CRIU's lazy-pages tee pipe is 4 MiB and
#     root here lacks CAP_SYS_RESOURCE to go past the limit.
#   * what scripts/guest.sh needs to boot Debian 12's kernel (which has
#     soft-dirty tracking, for real pre-dumps): qemu, kmod and the pinned
#     kernel package, unpacked in /var/cache/phaul/guest.
set -euo pipefail

# CRIU: 4.2.1 from Debian's newer suites, pinned by sha256; when no suite
# serves it any more, trixie's 4.1.1 with our patch for the socket-option
# dump (scripts/criu-4.1.1-inet-sockopts.patch). Linux >= 6.16 answers
# SO_PASSCRED/SO_PASSSEC only for unix and netlink sockets, and unpatched
# 4.1.1 asks every socket, so it cannot dump any TCP or UDP socket here.
# Both get scripts/criu-lazy-rollback-unlock.patch: a failed post-copy
# transfer resumes the tree, and without it CRIU leaves the tree's network
# locked and its TCP sockets in repair mode, so the resumed server loses
# its clients. 4.2.1 also gets nine patches that cut what a freeze or a
# post-copy costs (the fallback does without them). Two take fixed costs out
# of every freeze of a tree with its own network namespace:
# scripts/criu-iptables-legacy-probe.patch (the dump looks for and runs the
# legacy iptables tools only when the namespace has legacy tables, the
# restore only when the images hold some) and
# scripts/criu-conntrack-count.patch (the dump skips the conntrack walk of
# the kernel's whole table where the namespace counts no tracked
# connection). scripts/criu-lazy-fault-around.patch: a lazily restored
# task's page fault fetches the 64 KiB around the page, not the page alone.
# scripts/criu-pagemap-scan-anon.patch: the dump's page scan of a private
# anonymous mapping skips a per-page lookup that cannot change its answer
# there. scripts/criu-lazy-iov-copy.patch: a lazy dump hands the parasite
# the page list in use, not an array sized for one entry per page.
# scripts/criu-dump-page-ranges.patch: the dump adds each run of present
# pages to its page pipe at once, not page by page, and sizes each pipe
# once. scripts/criu-smaps-read-ahead.patch: the tasks' /proc/PID/smaps
# (a walk of every page table entry) is read on a second thread from the
# moment the tree is seized, beside the dump's namespace and socket work.
# scripts/criu-lazy-pages-in-task.patch: a lazy dump leaves the lazy pages
# of readable mappings in the tasks, which stay frozen until the lazy
# transfer ends, and the page server reads them there when asked, instead
# of the parasite pinning every page into pipes inside the freeze.
# scripts/criu-lazy-pull-pipelined.patch: the lazy-pages daemon keeps up to
# four background requests in flight (one in the first 250 ms after the
# restore) and sleeps in epoll while they are, where it had one at a time
# and polled with a zero timeout.
# (VERSION SHA256 "PATCH...")
CRIU_PRIMARY=(4.2.1 29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
    "criu-lazy-rollback-unlock.patch criu-iptables-legacy-probe.patch criu-conntrack-count.patch criu-lazy-fault-around.patch criu-pagemap-scan-anon.patch criu-lazy-iov-copy.patch criu-dump-page-ranges.patch criu-smaps-read-ahead.patch criu-lazy-pages-in-task.patch criu-lazy-pull-pipelined.patch")
CRIU_FALLBACK=(4.1.1 f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
    "criu-4.1.1-inet-sockopts.patch criu-lazy-rollback-unlock.patch")
CRIU_SRC_DIR=/usr/local/src/criu
CRIU_STATE=/usr/local/share/phaul
PIPE_MAX=4194304
RUNTIME_PKGS=(iptables nftables rsync lxc busybox-static iproute2 util-linux procps python3 g++ runc
    redis-server redis-tools)
BUILD_PKGS=(build-essential pkg-config python3 libprotobuf-c-dev protobuf-c-compiler
    libprotobuf-dev protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev
    libcap-dev libbsd-dev libaio-dev uuid-dev xz-utils patch
    libnftables-dev)
# What a build must have: libnftables lets CRIU lock a tree's network in
# process (`--network-lock nftables`) where iptables spawns a program per
# rule set, about 100 ms of a container's downtime (see the README). A
# build without it is replaced.
# CRIU probes the kernel when it starts (iptables among other things), about
# 50 ms here, unless it finds the cache of an earlier probe, which it keeps
# only on a tmpfs (its RUNDIR, /run by default). This machine's /run is not
# a tmpfs, so every CRIU run probed again: on runc's post-copy path, four
# runs of which two on each host, some 200 ms of the downtime that a
# host whose /run is a tmpfs does not pay. Ours keeps its cache in
# CRIU_RUNDIR, a tmpfs of its own where /run is not one (step 3).
CRIU_RUNDIR=/run/criu
# Built without GnuTLS (NO_GNUTLS=1): it serves only CRIU's own `--tls`
# page server, which phaul never uses (its link is authenticated and
# encrypted itself), and it and the seven libraries only it pulls in
# doubled the time every CRIU took to start (5.6 against 2.9 ms for
# `criu --version` here, mostly the dynamic loader mapping them); a
# container's restore starts CRIU three
# times inside the downtime (the lazy-pages daemon, and liblxc's version
# check and restore).
CRIU_FEATURES="nftables no-gnutls rundir=$CRIU_RUNDIR"

# The repository, found before anything changes the working directory.
PHAUL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

export DEBIAN_FRONTEND=noninteractive
export PATH="/usr/local/sbin:/usr/local/bin:$PATH"
APT=(apt-get -o DPkg::Lock::Timeout=300 -q)

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (CRIU checkpoints and restores other processes)"
    exit 1
fi

apt_updated=0
apt_update() {
    if [ "$apt_updated" -eq 0 ]; then
        "${APT[@]}" update >/dev/null
        apt_updated=1
    fi
}

missing_pkgs() {
    local p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
            printf '%s\n' "$p"
        fi
    done
}

install_pkgs() {
    local missing
    mapfile -t missing < <(missing_pkgs "$@")
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_update
        "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

file_sha() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

# The deb-src entries reuse the mirror this machine already uses, so no host
# name is hard-coded here. Several suites, because the one that carries a
# given CRIU changes over time; the sha256 below decides what is used.
add_criu_sources() {
    local f=/etc/apt/sources.list.d/phaul-criu-src.sources uri want
    rm -f /etc/apt/sources.list.d/phaul-trixie-src.sources
    uri=$(grep -h -m1 -E '^URIs: .*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -h -E '^deb [^ ]*/debian/? ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1 || true)
    fi
    if [ -z "$uri" ]; then
        log "cannot find this machine's Debian mirror in /etc/apt; cannot fetch CRIU's source"
        exit 1
    fi
    want="Types: deb-src
URIs: $uri
Suites: trixie forky sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    if [ "$(cat "$f" 2>/dev/null)" != "$want" ]; then
        printf '%s\n' "$want" >"$f"
        apt_updated=0
    fi
}

# fetch_criu VERSION SHA256: leaves criu_VERSION.orig.tar.xz in the current
# directory, or returns 1. The mirror may lack the .dsc or the debian tarball
# (apt then exits 100) while the orig tarball downloads; the checksum decides.
fetch_criu() {
    local version=$1 sha=$2 tarball="criu_$1.orig.tar.xz" spec
    echo "$sha  $tarball" | sha256sum -c - >/dev/null 2>&1 && return 0
    add_criu_sources
    apt_update
    for spec in "criu=$version-1" criu/sid criu/forky criu/trixie; do
        rm -f "$tarball"
        "${APT[@]}" source --download-only "$spec" >/dev/null 2>&1 || true
        echo "$sha  $tarball" | sha256sum -c - >/dev/null 2>&1 && return 0
    done
    rm -f "$tarball"
    return 1
}

# The sha256 of the patches' contents, in order: a patch edited under the
# same name makes the build stale too.
patches_sha() {
    local p
    for p in $1; do cat "$PHAUL_ROOT/scripts/$p"; done | sha256sum | cut -d' ' -f1
}

# build_criu VERSION SHA256 "PATCH...": builds and installs
# /usr/local/sbin/criu.
build_criu() {
    local version=$1 sha=$2 patches=$3 dir p
    install_pkgs "${BUILD_PKGS[@]}"
    mkdir -p "$CRIU_SRC_DIR"
    cd "$CRIU_SRC_DIR"
    fetch_criu "$version" "$sha" || return 1
    log "building CRIU $version${patches:+ with $patches} (about a minute)"
    dir="criu-$version"
    rm -rf "$dir"
    tar xf "criu_$version.orig.tar.xz"
    for p in $patches; do
        patch -d "$dir" -p1 --quiet <"$PHAUL_ROOT/scripts/$p"
    done
    (cd "$dir" && make -j"$(nproc)" criu NO_GNUTLS=1 RUNDIR="$CRIU_RUNDIR" >build.log 2>&1 &&
        make install-criu NO_GNUTLS=1 PREFIX=/usr/local RUNDIR="$CRIU_RUNDIR" >>build.log 2>&1) || {
        tail -n 40 "$dir/build.log" >&2
        return 1
    }
    hash -r
    mkdir -p "$CRIU_STATE"
    # What we built, for the next run and for scripts/zdtm.sh (which builds
    # CRIU's own test suite from the same source tree).
    if ! /usr/local/sbin/criu check --feature network_lock_nftables >/dev/null 2>&1; then
        log "CRIU $version was built without a working nftables lock (libnftables-dev, set concatenations); phaul falls back to iptables"
    fi
    printf 'version=%s\nsource=%s\npatch=%s\npatch_sha256=%s\nfeatures=%s\nbinary_sha256=%s\n' "$version" \
        "$CRIU_SRC_DIR/$dir" "${patches:-none}" "$(patches_sha "$patches")" "$CRIU_FEATURES" \
        "$(file_sha /usr/local/sbin/criu)" >"$CRIU_STATE/criu-build"
    cd "$PHAUL_ROOT"
}

# The criu on PATH is ours when its checksum is the one we recorded and it
# was built with the patches this version wants now, as they read now (a
# build from before a patch was added or edited is replaced).
criu_is_ours() {
    local sum stamp="$CRIU_STATE/criu-build" version want
    sum=$(file_sha "$(command -v criu 2>/dev/null || echo /nonexistent)")
    [ -n "$sum" ] && grep -qx "binary_sha256=$sum" "$stamp" 2>/dev/null || return 1
    version=$(sed -n 's/^version=//p' "$stamp")
    case "$version" in
        "${CRIU_PRIMARY[0]}") want=${CRIU_PRIMARY[2]} ;;
        "${CRIU_FALLBACK[0]}") want=${CRIU_FALLBACK[2]} ;;
        *) return 1 ;;
    esac
    grep -qxF "patch=${want:-none}" "$stamp" && grep -qxF "features=$CRIU_FEATURES" "$stamp" &&
        grep -qxF "patch_sha256=$(patches_sha "$want")" "$stamp"
}

# The self-test workload in DIR counts on, with its sockets working.
counts_on() {
    local before after
    before=$(cat "$1/count" 2>/dev/null || echo 0)
    sleep 0.3
    after=$(cat "$1/count" 2>/dev/null || echo 0)
    [ ! -f "$1/broken" ] && [ "$after" -gt "$before" ]
}

# A post-copy dump whose page transfer fails resumes the tree: its TCP
# connection must work again (CRIU without
# scripts/criu-lazy-rollback-unlock.patch leaves it locked and in repair).
# The transfer is failed as phaul's rollback fails it: its one client sends
# a page-server request with a command CRIU does not know (a client that
# just went away would end the transfer as done, and the tree with it).
lazy_rollback_keeps_sockets() {
    local ns=$1 dir=$2 pid port lazy
    pid=$(cat "$dir/restored")
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$dir/lazy"
    nsenter --net="/run/netns/$ns" criu dump -t "$pid" -D "$dir/lazy" --tcp-established \
        --lazy-pages --address 127.0.0.1 --port "$port" -o dump.log -v4 >/dev/null 2>&1 &
    lazy=$!
    for _ in $(seq 100); do
        nsenter --net="/run/netns/$ns" ss -Hltn "sport = :$port" | grep -q . && break
        sleep 0.05
    done
    nsenter --net="/run/netns/$ns" python3 -c '
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(struct.pack("=IIQQ", 0xbeef, 0, 0, 0))
s.shutdown(socket.SHUT_WR)
s.recv(1)
' "$port" 2>/dev/null || true
    wait "$lazy" 2>/dev/null || true
    counts_on "$dir"
}

# Dumps and restores, with the criu on PATH, a process holding a listening
# TCP socket, an established TCP connection, a UDP and a unix socket, in a
# network namespace of its own (as phaul's hosts are), and checks that it
# goes on using them; then fails a post-copy dump of it and checks that its
# connection works again. Remembers a pass by the binary's checksum.
criu_selftest() {
    local sum ns dir init pid ok=0
    sum=$(file_sha "$(command -v criu)")
    [ "$(cat "$CRIU_STATE/criu-selftest" 2>/dev/null)" = "$sum" ] && return 0
    ns="phaul-selftest-$$"
    dir=$(mktemp -d /tmp/phaul-criu-selftest.XXXXXX)
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    nsenter --net="/run/netns/$ns" unshare --pid --fork setsid \
        /usr/bin/python3 "$PHAUL_ROOT/scripts/criu-selftest.py" "$dir" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 100); do [ -f "$dir/ready" ] && break; sleep 0.05; done
    init=$(cat "$dir/ready" 2>/dev/null || true)
    pid=$(pgrep -f "criu-selftest.py $dir\$" | while read -r p; do
        grep -qP 'NSpid:\t\d+\t1$' "/proc/$p/status" 2>/dev/null && echo "$p"; done | head -n1)
    if [ "$init" = "1" ] && [ -n "$pid" ] &&
        nsenter --net="/run/netns/$ns" criu dump -t "$pid" -D "$dir" --tcp-established \
            -o dump.log -v4 >/dev/null 2>&1 &&
        nsenter --net="/run/netns/$ns" criu restore -d -D "$dir" --tcp-established \
            --pidfile "$dir/restored" -o restore.log -v4 >/dev/null 2>&1 &&
        counts_on "$dir" && lazy_rollback_keeps_sockets "$ns" "$dir"; then
        ok=1
    fi
    [ -f "$dir/restored" ] && kill -9 "$(cat "$dir/restored")" 2>/dev/null || true
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    if [ "$ok" -ne 1 ]; then
        log "CRIU self-test failed: $(criu --version | head -n1) cannot dump and restore a process with sockets on $(uname -r)"
        for f in "$dir/dump.log" "$dir/restore.log" "$dir/lazy/dump.log"; do
            [ -f "$f" ] && grep -E 'Error|FAILED' "$f" | grep -v RLIMIT_NOFILE | tail -n 5 >&2
        done
        [ -f "$dir/broken" ] && log "the workload's sockets broke: $(cat "$dir/broken")"
        rm -rf "$dir"
        return 1
    fi
    rm -rf "$dir"
    mkdir -p "$CRIU_STATE"
    echo "$sum" >"$CRIU_STATE/criu-selftest"
}

# 1. CRIU that can dump sockets on this kernel. Debian's 3.17 must never win
# over ours, whatever PATH a caller has (liblxc runs the first `criu` on
# PATH), so it goes first.
if dpkg-query -W -f='${Status}' criu 2>/dev/null | grep -q '^install ok installed$'; then
    log "removing Debian's criu 3.17 (it fails on this kernel)"
    "${APT[@]}" remove -y criu >/dev/null
fi
# The self-test needs iptables (CRIU's network lock) and ip.
install_pkgs iptables iproute2 python3 util-linux
criu_ready=0
if criu_is_ours && criu_selftest; then
    criu_ready=1
fi
if [ "$criu_ready" -eq 0 ] && [ "${PHAUL_CRIU_SOURCE:-}" != fallback ]; then
    if build_criu "${CRIU_PRIMARY[@]}"; then
        criu_selftest && criu_ready=1
    else
        log "CRIU ${CRIU_PRIMARY[0]} could not be fetched or built; trying ${CRIU_FALLBACK[0]} with our patch"
    fi
fi
if [ "$criu_ready" -eq 0 ]; then
    build_criu "${CRIU_FALLBACK[@]}" && criu_selftest && criu_ready=1
fi
if [ "$criu_ready" -eq 0 ]; then
    log "no CRIU that can dump sockets on this kernel could be installed; refusing to go on"
    exit 1
fi

# 2. runtime packages
install_pkgs "${RUNTIME_PKGS[@]}"

# 3. lazy pages need a 4 MiB pipe
cur=$(sysctl -n fs.pipe-max-size)
if [ "$cur" -lt "$PIPE_MAX" ]; then
    sysctl -q -w fs.pipe-max-size="$PIPE_MAX"
fi

# 4. CRIU's kernel-probe cache: a tmpfs (CRIU keeps it nowhere else), gone
# at a reboot like /run itself, when the probe runs again once.
mkdir -p "$CRIU_RUNDIR"
if [ "$(stat -f -c %T "$CRIU_RUNDIR")" != tmpfs ]; then
    mount -t tmpfs -o mode=0700,size=1m phaul-criu-rundir "$CRIU_RUNDIR"
fi

# --- the guest with Debian 12's kernel (scripts/guest.sh) --------------------
# This kernel has no soft-dirty tracking, so CRIU's pre-dumps run for real
# only in that guest. qemu and kmod here, the pinned kernel package in
# /var/cache/phaul/guest (fetched once). A machine that cannot have it says
# so and set-up goes on: the guest adds a kernel, it replaces nothing.
install_pkgs qemu-system-x86 kmod busybox-static
if ! guest_out=$("$PHAUL_ROOT/scripts/guest.sh" --prepare 2>&1); then
    log "$guest_out"
    log "the guest cannot be prepared here: its tests skip (and fail with CI set)"
fi
# --- end of the guest ---------------------------------------------------------

# --- phaul-web's browser test (tests/web.rs runs web/e2e.mjs) ---------------
# Debian's chromium, which playwright-core drives (it downloads no browser),
# a font for readable screenshots, node >= 20, and web/'s pinned packages
# (npm ci, only when web/node_modules is missing or package-lock.json
# changed since the last install).
install_pkgs chromium fonts-dejavu-core
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    install_pkgs nodejs npm
fi
node_major=$(node --version 2>/dev/null | sed -n 's/^v\([0-9]*\)\..*/\1/p')
if [ -z "$node_major" ] || [ "$node_major" -lt 20 ]; then
    log "node $(node --version 2>/dev/null) is older than 20, which playwright-core needs: the browser test will fail"
fi
web_dir="$PHAUL_ROOT/web"
if [ -f "$web_dir/package-lock.json" ]; then
    lock_sum=$(sha256sum "$web_dir/package-lock.json" | cut -d' ' -f1)
    stamp="$web_dir/node_modules/.phaul-package-lock.sha256"
    if [ ! -d "$web_dir/node_modules" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
        log "installing web/'s node packages (npm ci)"
        npm ci --prefix "$web_dir" --no-audit --no-fund --loglevel=error >/dev/null
        echo "$lock_sum" >"$stamp"
    fi
fi
# --- end of phaul-web's browser test -----------------------------------------

log "ok: $(criu --version | head -n1 | tr -s ' '), fs.pipe-max-size=$(sysctl -n fs.pipe-max-size)"
