#!/usr/bin/env bash
# Installs everything pageless needs on a fresh Debian 12 (bookworm) machine, then builds it.
#  - apt: bookworm-backports for QEMU 10 and libvirt 11, busybox-static, cpio, build tools,
#    ndctl (copied into the driver benchmark's guest for device-dax)
#  - the 6.12 cloud kernel image, unpacked (not installed) under .cache/kernel/ for test guests,
#    and its headers, against which driver/kmod builds
#  - a Debian 13 build root (debootstrap) with the headers of the newest 7.3 cloud kernel, and
#    that kernel's image and modules unpacked under .cache/kernel/ (.cache/kernel/newest); in
#    it also dkms and Debian 13's 6.12 cloud kernel (image, headers) for the package test
#  - a Debian 12 root filesystem image with libvirt, QEMU, AppArmor and SELinux for the sVirt
#    tests (scripts/svirt-rootfs.sh, .cache/rootfs/)
#  - nightly Rust (minimal profile) and cargo-fuzz under .cache/tools, for scripts/fuzz.sh
#  - cargo build of the workspace, and a release build of pageless (scripts/package.sh)
#  - then runs the demo (scripts/demo.sh), unless given --no-demo
# Idempotent: re-running skips what is already there.
set -euo pipefail
run_demo=1
for arg in "$@"; do
    case "$arg" in
        --no-demo) run_demo=0 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "setup: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
# Downloads and builds (kernels, build roots, tools) are cached under ~/.cache/pageless, shared by
# every clone of the repository; <repo>/.cache is a symlink to it (a real directory is kept).
cache_home="${XDG_CACHE_HOME:-$HOME/.cache}/pageless"
mkdir -p "$cache_home"
[ -e "$here/.cache" ] || ln -s "$cache_home" "$here/.cache"
cache=$(readlink -f "$here/.cache")

log() { printf '\n==> %s\n' "$*"; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding the bookworm-backports apt suite"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' |
        $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi

log "apt-get update"
$SUDO apt-get update -q

log "installing packages (QEMU 10 and libvirt from backports)"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    build-essential bc kmod cpio busybox-static xz-utils zstd e2fsprogs util-linux python3 \
    ca-certificates curl pkg-config ndctl
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -t bookworm-backports qemu-system-x86 qemu-utils qemu-block-extra ovmf seabios ipxe-qemu \
    qemu-system-data
# libvirt 11.3 for tests/tests/libvirt.rs: the daemon with its QEMU driver (virtlogd comes with
# it) and virsh. Runs without systemd: the test starts `virtlogd -d` and `libvirtd -d` itself.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -t bookworm-backports libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients

# The 6.12 cloud kernel for test guests: the newest one the archive has. Its image, modules and
# headers are only unpacked under .cache/kernel/<version>/ (never installed: the headers package
# depends on an installed image). driver/kmod builds against
# .cache/kernel/current/usr/src/linux-headers-<version>.
kver=$(apt-cache depends linux-headers-6.12-cloud-amd64 | sed -n 's/.*Depends: linux-headers-//p' | head -n1)
[ -n "$kver" ] || { echo "setup: cannot find the 6.12 cloud kernel in apt (is bookworm-backports enabled?)" >&2; exit 1; }
kbase=${kver%-cloud-amd64}
log "6.12 cloud kernel $kver: image, modules and headers unpacked under .cache/kernel/$kver"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    gcc-12 pahole libelf1 libssl3 zlib1g
kdir="$cache/kernel/$kver"
if [ ! -f "$kdir/.unpacked" ]; then
    tmp=$(mktemp -d) && chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -q "linux-image-$kver-unsigned" "linux-headers-$kver" \
        "linux-headers-$kbase-common" "linux-kbuild-$kbase")
    rm -rf "$kdir" && mkdir -p "$kdir"
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$kdir"; done
    rm -rf "$tmp"
    # The headers' Makefile includes the common headers by absolute path: point it at our copy.
    sed -i "s#^include /usr/src/#include $kdir/usr/src/#" "$kdir/usr/src/linux-headers-$kver/Makefile"
    # modules.dep, which depmod writes at install time, tells the test bed module dependencies.
    depmod -b "$kdir" "$kver"
    touch "$kdir/.unpacked"
fi
ln -sfn "$kver" "$cache/kernel/current"

# A Debian 13 (trixie) build root under .cache/buildroot/trixie, for kernels newer than this
# machine's toolchain: 7.3's kbuild tools need Debian 13's glibc and gcc-14. It holds
# build-essential and the headers of the newest 7.3 cloud kernel of trixie-backports, installed
# with apt inside it; `make -C driver/kmod KVER=newest` builds there (chroot). About two minutes
# once; cached.
broot="$cache/buildroot/trixie"
# Runs a command inside the build root with /proc mounted (apt needs it), unmounted after.
# shellcheck source=scripts/chroot.sh
. "$here/scripts/chroot.sh"
in_broot() { in_chroot "$broot" "$@"; }
if [ ! -f "$broot/.ready" ]; then
    log "Debian 13 build root with the 7.3 cloud kernel headers under .cache/buildroot/trixie"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
    $SUDO rm -rf "$broot" && mkdir -p "$cache/buildroot"
    $SUDO debootstrap --variant=minbase trixie "$broot" http://deb.debian.org/debian
    echo 'deb http://deb.debian.org/debian trixie-backports main' |
        $SUDO tee "$broot/etc/apt/sources.list.d/trixie-backports.list" >/dev/null
    in_broot apt-get update -q
    # The newest 7.3 cloud kernel, e.g. 7.3.4+deb13-cloud-amd64.
    nver=$(in_broot apt-cache search --names-only '^linux-headers-7\.3\.[0-9]+\+deb13[^ ]*-cloud-amd64$' |
        sed -n 's/^linux-headers-\([^ ]*\) .*/\1/p' | sort -V | tail -n1)
    [ -n "$nver" ] || { echo "setup: no 7.3 cloud kernel headers in trixie-backports" >&2; exit 1; }
    in_broot apt-get install -y -q --no-install-recommends build-essential "linux-headers-$nver"
    in_broot apt-get clean
    echo "$nver" | $SUDO tee "$broot/.kernel" >/dev/null
    $SUDO touch "$broot/.ready"
fi
nver=$(cat "$broot/.kernel")

# The package test (tests/tests/packages.rs) installs the pageless .debs in a fresh overlay of
# the build root, which must already hold what a Debian 13 host running DKMS has: dkms, and a
# second kernel, Debian 13's own 6.12 cloud kernel (image and headers; the 7.3 headers are there
# already), so that the module is built for both. Installed here once, so that the test runs
# offline. About a minute once; cached.
if [ ! -f "$broot/.dkms" ]; then
    log "dkms and Debian 13's 6.12 cloud kernel in the build root, for the package test"
    tver=$(in_broot apt-cache search --names-only '^linux-headers-6\.12\.[0-9]+\+deb13-cloud-amd64$' |
        sed -n 's/^linux-headers-\([^ ]*\) .*/\1/p' | sort -V | tail -n1)
    [ -n "$tver" ] || { echo "setup: no 6.12 cloud kernel headers in trixie" >&2; exit 1; }
    in_broot apt-get install -y -q --no-install-recommends dkms "linux-headers-$tver" \
        "linux-image-$tver"
    in_broot apt-get clean
    echo "$tver" | $SUDO tee "$broot/.dkms" >/dev/null
fi

# The 7.3 kernel for test guests, unpacked under .cache/kernel/<version>/ like the 6.12 one (never
# installed): in Debian 13 the image is in linux-binary-<version> (usr/lib/modules/<version>/
# vmlinuz) and the modules in linux-modules-<version>; linux-image-<version> is a metapackage.
# .cache/kernel/newest points at it; its headers are the build root's.
ndir="$cache/kernel/$nver"
if [ ! -f "$ndir/.unpacked" ]; then
    log "$nver: image and modules unpacked under .cache/kernel/$nver"
    rm -rf "$broot/tmp/pageless-kernel" && mkdir -p "$broot/tmp/pageless-kernel"
    in_broot sh -c "cd /tmp/pageless-kernel && apt-get download -q linux-binary-$nver linux-modules-$nver"
    rm -rf "$ndir" && mkdir -p "$ndir"
    for deb in "$broot"/tmp/pageless-kernel/*.deb; do dpkg-deb -x "$deb" "$ndir"; done
    rm -rf "$broot/tmp/pageless-kernel"
    # depmod -b and the test bed look under lib/modules/ (merged /usr: the files are in usr/lib).
    [ -e "$ndir/lib" ] || ln -s usr/lib "$ndir/lib"
    depmod -b "$ndir" "$nver"
    touch "$ndir/.unpacked"
fi
ln -sfn "$nver" "$cache/kernel/newest"

# The sVirt tests' guest root filesystem (tests/tests/svirt_apparmor.rs, svirt_selinux.rs), cached.
"$here/scripts/svirt-rootfs.sh"

# checkpatch.pl (kernel style of driver/kmod, run by .ci/run): only three files of Debian's
# linux-source-6.12 tarball, unpacked under .cache/checkpatch.
if [ ! -f "$cache/checkpatch/checkpatch.pl" ]; then
    log "extracting checkpatch.pl from linux-source-6.12 into .cache/checkpatch"
    tmp=$(mktemp -d) && chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -q linux-source-6.12)
    mkdir -p "$cache/checkpatch"
    dpkg-deb --fsys-tarfile "$tmp"/linux-source-6.12_*.deb |
        tar -xO ./usr/src/linux-source-6.12.tar.xz |
        tar -xJ -C "$cache/checkpatch" --strip-components=2 --wildcards \
            '*/scripts/checkpatch.pl' '*/scripts/spelling.txt' '*/scripts/const_structs.checkpatch'
    rm -rf "$tmp"
fi

# Rust: the machine's toolchain if there is one, else rustup (Debian's cargo is too old).
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    log "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# vhost-device-rng (rust-vmm, from crates.io): the second vhost-user device of the tests.
if [ ! -x "$cache/tools/bin/vhost-device-rng" ]; then
    log "building vhost-device-rng from crates.io into .cache/tools"
    cargo install --quiet --root "$cache/tools" vhost-device-rng@0.1.0
fi

# Fuzzing (scripts/fuzz.sh, run by .ci/run): a nightly toolchain, minimal profile (libFuzzer's
# sanitizer flags are nightly-only), and cargo-fuzz, built from crates.io into .cache/tools.
if ! cargo +nightly --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 ||
        { echo "setup: fuzzing needs a nightly toolchain, installed with rustup, which is missing" >&2; exit 1; }
    log "installing the nightly Rust toolchain (minimal profile) for fuzzing"
    rustup toolchain install nightly --profile minimal
fi
if [ ! -x "$cache/tools/bin/cargo-fuzz" ]; then
    log "building cargo-fuzz from crates.io into .cache/tools"
    cargo install --quiet --locked --root "$cache/tools" cargo-fuzz@0.13.2
fi

log "building pageless ($(cargo --version))"
(cd "$here" && cargo build --workspace --all-targets)
# The release binary scripts/package.sh packages (tests/tests/packages.rs runs it).
(cd "$here" && cargo build --release --locked -p pageless)

if [ "$run_demo" = 1 ]; then
    log "demo: a guest booted on memory served by pageless"
    "$here/scripts/demo.sh"
fi
