#!/usr/bin/env bash
# Set-up for phaul on Debian 12 (run as root). Idempotent: when everything is
# already in place it only checks and returns in a few seconds.
#
# What it ensures:
#   * CRIU >= 4.0 as `criu` on PATH. Debian 12 ships 3.17, which fails on
#     recent kernels ("vdso: Unexpected rt vDSO area bounds"), so we build
#     4.1.1 from Debian trixie's source tarball, verified by sha256.
#   * runtime tools later parts of phaul drive: iptables (CRIU's network
#     lock), rsync, lxc, busybox-static, iproute2.
#   * fs.pipe-max-size >= 4 MiB: CRIU's lazy-pages tee pipe is 4 MiB and
#     root here lacks CAP_SYS_RESOURCE to go past the limit.
set -euo pipefail

CRIU_VERSION=4.1.1
CRIU_TARBALL="criu_${CRIU_VERSION}.orig.tar.xz"
CRIU_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
CRIU_SRC_DIR=/usr/local/src/criu
PIPE_MAX=4194304
RUNTIME_PKGS=(iptables rsync lxc busybox-static iproute2 util-linux procps python3 g++ runc)
BUILD_PKGS=(build-essential pkg-config python3 libprotobuf-c-dev protobuf-c-compiler
    libprotobuf-dev protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev
    libcap-dev libbsd-dev libaio-dev libgnutls28-dev uuid-dev xz-utils)

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

# Prints the major version of the criu on PATH, or nothing.
criu_major() {
    command -v criu >/dev/null 2>&1 || return 0
    criu --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n1
}

# The trixie deb-src entry reuses the mirror this machine already uses for
# bookworm, so no host name is hard-coded here.
add_trixie_sources() {
    local f=/etc/apt/sources.list.d/phaul-trixie-src.sources uri
    [ -f "$f" ] && return 0
    uri=$(grep -h -m1 -E '^URIs: .*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -h -E '^deb [^ ]*/debian/? ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1 || true)
    fi
    if [ -z "$uri" ]; then
        log "cannot find this machine's Debian mirror in /etc/apt; cannot fetch CRIU's source"
        exit 1
    fi
    cat >"$f" <<SRC
Types: deb-src
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=0
}

build_criu() {
    log "building CRIU $CRIU_VERSION from source (about a minute)"
    install_pkgs "${BUILD_PKGS[@]}"
    mkdir -p "$CRIU_SRC_DIR"
    cd "$CRIU_SRC_DIR"
    if ! echo "$CRIU_SHA256  $CRIU_TARBALL" | sha256sum -c - >/dev/null 2>&1; then
        rm -f "$CRIU_TARBALL"
        add_trixie_sources
        apt_update
        # The mirror may lack the .dsc or debian tarball (apt then exits 100)
        # while the orig tarball downloads; the checksum below decides.
        "${APT[@]}" source --download-only "criu/trixie" >/dev/null 2>&1 || true
        if ! echo "$CRIU_SHA256  $CRIU_TARBALL" | sha256sum -c - >/dev/null; then
            log "CRIU source tarball missing or its sha256 does not match"
            exit 1
        fi
    fi
    rm -rf "criu-$CRIU_VERSION"
    tar xf "$CRIU_TARBALL"
    cd "criu-$CRIU_VERSION"
    make -j"$(nproc)" criu >build.log 2>&1 || { tail -n 40 build.log >&2; exit 1; }
    make install-criu PREFIX=/usr/local >>build.log 2>&1 || { tail -n 40 build.log >&2; exit 1; }
    hash -r
}

# 1. CRIU >= 4
major=$(criu_major)
if [ -z "$major" ] || [ "$major" -lt 4 ]; then
    build_criu
fi
# Debian's 3.17 must never win over ours, whatever PATH a caller has
# (liblxc runs the first `criu` on PATH).
if dpkg-query -W -f='${Status}' criu 2>/dev/null | grep -q '^install ok installed$'; then
    log "removing Debian's criu 3.17 (it fails on this kernel)"
    "${APT[@]}" remove -y criu >/dev/null
fi
major=$(criu_major)
if [ -z "$major" ] || [ "$major" -lt 4 ]; then
    log "CRIU >= 4 is still not on PATH after the build"
    exit 1
fi

# 2. runtime packages
install_pkgs "${RUNTIME_PKGS[@]}"

# 3. lazy pages need a 4 MiB pipe
cur=$(sysctl -n fs.pipe-max-size)
if [ "$cur" -lt "$PIPE_MAX" ]; then
    sysctl -q -w fs.pipe-max-size="$PIPE_MAX"
fi

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
