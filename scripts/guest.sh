#!/usr/bin/env bash
# Runs one command as root inside a QEMU guest that boots Debian 12's own
# kernel (6.1, with soft-dirty tracking and userfaultfd), and returns its
# output and exit status. The host's kernel here lacks soft-dirty, so CRIU's
# pre-dumps (phaul's pre-copy) can only run for real in such a guest.
#
#   scripts/guest.sh [options] -- COMMAND [ARG...]
#   scripts/guest.sh --check      can this machine run the guest? (boots it)
#   scripts/guest.sh --prepare    fetch and unpack the kernel only (setup.sh)
#
# Options: --timeout SECONDS (default $PHAUL_GUEST_TIMEOUT or 600),
# --mem MIB (default $PHAUL_GUEST_MEM or 4096), -v (print the guest's
# console and timings to stderr).
# Environment: PHAUL_GUEST_ACCEL=auto|tcg|kvm (auto: KVM only when a probe
# boot under it succeeded on this host kernel, else TCG emulation),
# PHAUL_GUEST_CACHE (default /var/cache/phaul/guest), PHAUL_GUEST_KEEP=1
# keeps the run directory, PHAUL_GUEST_PREALLOC=0 leaves the guest's RAM to
# be allocated on the host as the guest first touches it (the default
# allocates it all before the boot).
#
# The guest sees the host's whole file system read-only (virtio-9p) under a
# tmpfs overlay: it can write anywhere, the host sees none of it. /run and
# /dev/shm are its own. COMMAND runs in the caller's working directory
# with the caller's PATH, HOME, TERM, LANG, CI and RUST_*, CARGO_*, CRIU_*,
# PHAUL_* variables, plus PHAUL_IN_GUEST=1. Its stdout and stderr stream
# back as it runs.
#
# Exit status: COMMAND's own; 77 when this machine cannot run the guest (the
# message says why; a COMMAND's own 77 comes back as is, so a caller that
# must tell them apart runs --check first); 124 when the time limit ended
# the guest; 125 when the guest failed before COMMAND could report a status.
set -euo pipefail

# Debian 12's kernel, pinned: package, version, sha256 of the .deb.
KERNEL_PKG=linux-image-6.1.0-57-amd64
KERNEL_VER=6.1.192-3
KERNEL_SHA256=14d219d01e1283261817d961dbb3895cb5b4288d0de10e0ba0632a0d993e15bf
KVER=6.1.0-57-amd64
# What stage 1 needs before the root can be mounted (modules in that kernel).
BOOT_MODULES=(virtio_pci 9pnet_virtio 9p overlay)

EXIT_UNSUPPORTED=77
EXIT_TIMEOUT=124
EXIT_GUEST=125

CACHE=${PHAUL_GUEST_CACHE:-/var/cache/phaul/guest}
MEM=${PHAUL_GUEST_MEM:-4096}
TIMEOUT=${PHAUL_GUEST_TIMEOUT:-600}
ACCEL=${PHAUL_GUEST_ACCEL:-auto}
KVM_PROBE_TIMEOUT=30
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APT=(apt-get -o DPkg::Lock::Timeout=300 -q)
VERBOSE=0

say() { printf 'guest: %s\n' "$*" >&2; }
unsupported() {
    say "this machine cannot run the guest: $*"
    exit "$EXIT_UNSUPPORTED"
}
now_ms() { date +%s%3N; }

# Pre-flight: what the guest needs from the host.
preflight() {
    [ "$(id -u)" -eq 0 ] || unsupported "must run as root (the guest shares the host's whole root file system)"
    [ "$(uname -m)" = x86_64 ] || unsupported "needs an x86_64 host, this is $(uname -m)"
    command -v qemu-system-x86_64 >/dev/null || unsupported "qemu-system-x86_64 is missing (apt-get install qemu-system-x86, or run scripts/setup.sh)"
    command -v depmod >/dev/null || unsupported "depmod is missing (apt-get install kmod)"
    [ -x /bin/busybox ] && file_is_static /bin/busybox ||
        unsupported "a static /bin/busybox is missing (apt-get install busybox-static)"
    case "$CACHE" in
        *,*) unsupported "the cache path $CACHE has a comma, which qemu's options cannot carry" ;;
    esac
}

file_is_static() { ! LC_ALL=C ldd "$1" >/dev/null 2>&1; }

# The kernel package, fetched by name and version, checked against its
# pinned sha256, unpacked under the cache and depmod'ed. Done once.
fetch_kernel() {
    local dir="$CACHE/$KVER" deb="${KERNEL_PKG}_${KERNEL_VER}_amd64.deb" sum
    [ "$(cat "$dir/ready" 2>/dev/null)" = "$KERNEL_SHA256" ] && return 0
    say "fetching $KERNEL_PKG $KERNEL_VER (about 70 MB, once)"
    mkdir -p "$CACHE/download"
    rm -f "$CACHE/download/$deb"
    if ! (cd "$CACHE/download" && "${APT[@]}" download "$KERNEL_PKG=$KERNEL_VER" >/dev/null 2>&1); then
        "${APT[@]}" update >/dev/null 2>&1 || true
        (cd "$CACHE/download" && "${APT[@]}" download "$KERNEL_PKG=$KERNEL_VER" >/dev/null 2>&1) ||
            unsupported "apt-get download $KERNEL_PKG=$KERNEL_VER failed (is the package still served by this machine's mirrors?)"
    fi
    sum=$(sha256sum "$CACHE/download/$deb" | cut -d' ' -f1)
    if [ "$sum" != "$KERNEL_SHA256" ]; then
        rm -f "$CACHE/download/$deb"
        unsupported "$deb has sha256 $sum, not the pinned $KERNEL_SHA256"
    fi
    rm -rf "$dir"
    mkdir -p "$dir/root"
    dpkg-deb -x "$CACHE/download/$deb" "$dir/root"
    [ -f "$dir/root/boot/vmlinuz-$KVER" ] || unsupported "$deb holds no /boot/vmlinuz-$KVER"
    depmod -b "$dir/root" "$KVER"
    rm -f "$CACHE/download/$deb"
    echo "$KERNEL_SHA256" >"$dir/ready"
}

# The initramfs: a static busybox, stage 1, and the boot modules in
# dependency order. Rebuilt when stage 1 or busybox changes.
build_initrd() {
    local dir="$CACHE/$KVER" key tmp i=0 m
    key=$(cat "$HERE/guest/stage1" /bin/busybox | sha256sum | cut -d' ' -f1)
    [ "$(cat "$dir/initrd.key" 2>/dev/null)" = "$key" ] && [ -f "$dir/initrd.cpio" ] && return 0
    tmp=$(mktemp -d "$dir/initrd.XXXXXX")
    mkdir -p "$tmp/bin" "$tmp/modules" "$tmp/proc" "$tmp/dev" "$tmp/sys"
    cp /bin/busybox "$tmp/bin/busybox"
    install -m 0755 "$HERE/guest/stage1" "$tmp/init"
    while read -r m; do
        i=$((i + 1))
        cp "$m" "$tmp/modules/$(printf '%02d' "$i")-$(basename "$m")"
    done < <(modprobe -d "$dir/root" -S "$KVER" --show-depends -a "${BOOT_MODULES[@]}" |
        awk '$1 == "insmod" && !seen[$2]++ { print $2 }')
    (cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0 2>/dev/null) \
        >"$dir/initrd.cpio.part"
    mv "$dir/initrd.cpio.part" "$dir/initrd.cpio"
    echo "$key" >"$dir/initrd.key"
    rm -rf "$tmp"
}

prepare() {
    preflight
    mkdir -p "$CACHE"
    exec 9>"$CACHE/lock"
    flock 9
    fetch_kernel
    build_initrd
    flock -u 9
}

# boot ACCEL RUNDIR TIMEOUT: boots the guest on RUNDIR (which holds argv,
# env, cwd), streams its output, and returns the command's status, or
# EXIT_TIMEOUT / EXIT_GUEST.
boot() {
    local accel=$1 run=$2 limit=$3 cpu=max deadline qemu tails=() status
    # apparmor=0: Debian's kernel enables AppArmor, and LXC then refuses to
    # start a container ("Incomplete AppArmor support") since the guest
    # loads no profiles; this host has none, so the guest goes without too.
    [ "$accel" = kvm ] && cpu=host
    cp "$HERE/guest/stage2" "$run/stage2"
    printf '%s\0' "$CACHE/$KVER/root/lib/modules/$KVER" >"$run/modules"
    # The host's transparent huge page mode, the word in brackets.
    sed -n 's/.*\[\([a-z]*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled \
        >"$run/thp" 2>/dev/null || true
    : >"$run/stdout"
    : >"$run/stderr"
    # The guest's RAM allocated on the host before it boots (6 s for 4 GiB
    # here): otherwise the first touch of each guest page stalls its vCPU
    # in a host fault, and a boot's first 256 MiB restore took 6.0-7.7 s
    # where the later ones took 4.6-5.5 (session 20). Real RAM is there.
    local prealloc=(-mem-prealloc)
    [ "${PHAUL_GUEST_PREALLOC:-1}" = 0 ] && prealloc=()
    # setpriv: the guest dies with this script, whatever kills it.
    setpriv --pdeathsig KILL -- qemu-system-x86_64 -nodefaults -no-user-config -display none \
        -no-reboot -accel "$accel" -cpu "$cpu" -m "$MEM" "${prealloc[@]}" -smp 2 -nic none \
        -kernel "$CACHE/$KVER/root/boot/vmlinuz-$KVER" -initrd "$CACHE/$KVER/initrd.cpio" \
        -append "console=ttyS0 panic=-1 rdinit=/init mitigations=off apparmor=0 loglevel=${PHAUL_GUEST_LOGLEVEL:-4}" \
        -serial "file:$run/console.log" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$run,mount_tag=phaulrun,security_model=none" \
        </dev/null >"$run/qemu.log" 2>&1 &
    qemu=$!
    QEMU_PID=$qemu
    tail -q -c +1 -f --pid="$qemu" "$run/stdout" &
    tails+=($!)
    tail -q -c +1 -f --pid="$qemu" "$run/stderr" >&2 &
    tails+=($!)
    deadline=$(($(now_ms) + limit * 1000))
    while kill -0 "$qemu" 2>/dev/null; do
        if [ "$(now_ms)" -ge "$deadline" ]; then
            kill -TERM "$qemu" 2>/dev/null || true
            sleep 2
            kill -KILL "$qemu" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "$qemu" 2>/dev/null || true
    QEMU_PID=
    wait "${tails[@]}" 2>/dev/null || true
    if [ -f "$run/status" ]; then
        status=$(cat "$run/status")
        return "$status"
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
        say "the time limit of ${limit}s ended the guest"
        tail_console "$run"
        return "$EXIT_TIMEOUT"
    fi
    say "the guest ended without running the command; its console and qemu's log end with:"
    tail_console "$run"
    tail -n 5 "$run/qemu.log" >&2 || true
    return "$EXIT_GUEST"
}

tail_console() { tail -n 20 "$1/console.log" >&2 2>/dev/null || true; }

# A fresh run directory holding what the guest runs: argv and env as
# NUL-separated lists and the working directory, written from the caller's
# arguments as data, never through a shell string.
new_run() {
    local run=$1 cwd=$2
    shift 2
    printf '%s\0' "$@" >"$run/argv"
    printf '%s\0' "$cwd" >"$run/cwd"
    {
        env -0 | grep -zE '^(PATH|HOME|TERM|LANG|LC_[A-Z]+|CI|RUST_[A-Z_]+|CARGO_[A-Z_]+|CRIU_[A-Z_]+|PHAUL_[A-Z0-9_]+)=' |
            grep -zvE '^PHAUL_GUEST_' || true
        printf 'PHAUL_IN_GUEST=1\0'
    } >"$run/env"
}

# KVM when it is usable and a probe boot under it finished on this host
# kernel; the probe's answer is kept in the cache.
pick_accel() {
    local stamp="$CACHE/accel-$(uname -r)" run answer=tcg
    case "$ACCEL" in
        tcg | kvm) echo "$ACCEL"; return ;;
        auto) ;;
        *) say "PHAUL_GUEST_ACCEL must be auto, tcg or kvm, not $ACCEL"; exit 2 ;;
    esac
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
        echo tcg
        return
    fi
    # kvm_pvm (Pagetable-based VMs, for hosts that are guests themselves
    # without hardware virtualization) runs only kernels built as PVM
    # guests; Debian's is not, and hangs before its first console line.
    if [ -d /sys/module/kvm_pvm ] && [ ! -d /sys/module/kvm_intel ] && [ ! -d /sys/module/kvm_amd ]; then
        [ "$VERBOSE" = 1 ] && say "/dev/kvm is kvm_pvm, which runs only PVM guest kernels: using tcg"
        echo tcg
        return
    fi
    if [ -f "$stamp" ]; then
        cat "$stamp"
        return
    fi
    run=$(mktemp -d /tmp/phaul-guest-probe.XXXXXX)
    new_run "$run" / true
    if boot kvm "$run" "$KVM_PROBE_TIMEOUT" >/dev/null 2>&1; then
        answer=kvm
    fi
    rm -rf "$run"
    say "KVM probe: using $answer"
    echo "$answer" >"$stamp"
    echo "$answer"
}

QEMU_PID=
RUN_DIR=
cleanup() {
    [ -n "$QEMU_PID" ] && kill -KILL "$QEMU_PID" 2>/dev/null || true
    if [ -n "$RUN_DIR" ] && [ "${PHAUL_GUEST_KEEP:-0}" != 1 ]; then
        rm -rf "$RUN_DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_command() {
    local accel start status=0
    prepare
    accel=$(pick_accel)
    RUN_DIR=$(mktemp -d /tmp/phaul-guest.XXXXXX)
    new_run "$RUN_DIR" "$PWD" "$@"
    start=$(now_ms)
    boot "$accel" "$RUN_DIR" "$TIMEOUT" || status=$?
    if [ "$VERBOSE" -eq 1 ]; then
        cat "$RUN_DIR/console.log" >&2 2>/dev/null || true
        say "$accel guest ran for $(($(now_ms) - start)) ms, status $status"
        [ "${PHAUL_GUEST_KEEP:-0}" = 1 ] && say "run directory kept: $RUN_DIR"
    fi
    return "$status"
}

check() {
    local status=0
    run_command true || status=$?
    case "$status" in
        0) say "ok: $KERNEL_PKG boots ($(pick_accel)) and runs commands" ;;
        "$EXIT_UNSUPPORTED") exit "$status" ;;
        *) unsupported "a guest running \`true\` ended with status $status (see above)" ;;
    esac
}

mode=run
while [ $# -gt 0 ]; do
    case "$1" in
        --check) mode=check ;;
        --prepare) mode=prepare ;;
        --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift ;;
        --mem) MEM=${2:?--mem needs MiB}; shift ;;
        -v) VERBOSE=1 ;;
        --) shift; break ;;
        -*) say "unknown option $1"; exit 2 ;;
        *) break ;;
    esac
    shift
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || { say "--timeout must be whole seconds, not $TIMEOUT"; exit 2; }
[[ "$MEM" =~ ^[0-9]+$ ]] || { say "--mem must be MiB, not $MEM"; exit 2; }

case "$mode" in
    prepare) prepare; say "ready: $CACHE/$KVER" ;;
    check) check ;;
    run)
        if [ $# -eq 0 ]; then
            say "usage: $0 [--timeout S] [--mem MIB] [-v] -- COMMAND [ARG...]"
            exit 2
        fi
        status=0
        run_command "$@" || status=$?
        exit "$status"
        ;;
esac
