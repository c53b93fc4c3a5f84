#!/usr/bin/env bash
# Builds the Debian packages of pageless with dpkg-deb, into target/debian/:
#  - pageless_<version>_amd64.deb: /usr/bin/pageless (release build), the <emulator> wrapper
#    /usr/bin/pageless-qemu, the libvirt hook /etc/libvirt/hooks/qemu.d/pageless, the systemd
#    units pageless-host.service and pageless@.service (/usr/lib/systemd/system, which is
#    /lib/systemd/system on Debian's merged /usr), tmpfiles
#    /usr/lib/tmpfiles.d/pageless.conf, /etc/pageless/vms
#  - pageless-dkms_<version>_all.deb: the module's sources, Kbuild and dkms.conf under
#    /usr/src/pageless-<version>/
# The version is the pageless crate's (backend/Cargo.toml). The scripts of contrib/ name
# /usr/local/bin/pageless (README.md's manual install); the packaged copies name /usr/bin.
# Maintainer scripts: contrib/debian/. Usage: scripts/package.sh [--no-build] (--no-build
# packages the release binary already in target/release).
set -euo pipefail
build=1
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "package: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

id=$(cargo pkgid -p pageless)
version=${id##*[#@]}
[[ "$version" =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || { echo "package: cannot read pageless's version from '$id'" >&2; exit 1; }
if [ "$build" = 1 ]; then
    cargo build --release --locked -p pageless
fi
bin=target/release/pageless
[ -x "$bin" ] || { echo "package: $bin is missing (run without --no-build)" >&2; exit 1; }

out=target/debian
stage=$(mktemp -d "${TMPDIR:-/tmp}/pageless-package.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out"
maintainer="pageless developers <pageless@pageless.dev>"

# The contrib scripts with the packaged binary's path.
packaged() {
    sed -e 's#/usr/local/bin/pageless#/usr/bin/pageless#g' "$1"
}
# The highest glibc symbol version the binary needs, for libc6's Depends.
glibc=$(objdump -T "$bin" | sed -n 's/.*GLIBC_\([0-9.]*\).*/\1/p' | sort -uV | tail -n1)
[ -n "$glibc" ] || { echo "package: cannot read the glibc version $bin needs (objdump)" >&2; exit 1; }

# --- pageless
root="$stage/pageless"
install -D -m 0755 "$bin" "$root/usr/bin/pageless"
strip --strip-unneeded "$root/usr/bin/pageless"
install -d -m 0755 "$root/usr/bin" "$root/etc/libvirt/hooks/qemu.d" "$root/usr/lib/systemd/system" \
    "$root/usr/lib/tmpfiles.d" "$root/etc/pageless/vms" "$root/usr/share/doc/pageless"
packaged contrib/libvirt/pageless-qemu |
    sed -e 's#install as /usr/bin/pageless-qemu (0755)#installed as /usr/bin/pageless-qemu#' \
        >"$root/usr/bin/pageless-qemu"
packaged contrib/libvirt/hooks/qemu |
    sed -e 's#install as /etc/libvirt/hooks/qemu (mode 0755) and restart#installed as /etc/libvirt/hooks/qemu.d/pageless (libvirt runs every script there); the package restarts#' \
        >"$root/etc/libvirt/hooks/qemu.d/pageless"
chmod 0755 "$root/usr/bin/pageless-qemu" "$root/etc/libvirt/hooks/qemu.d/pageless"
for unit in pageless-host.service pageless@.service; do
    packaged "contrib/systemd/$unit" >"$root/usr/lib/systemd/system/$unit"
    chmod 0644 "$root/usr/lib/systemd/system/$unit"
done
install -m 0644 contrib/systemd/pageless.conf "$root/usr/lib/tmpfiles.d/pageless.conf"
install -m 0644 README.md "$root/usr/share/doc/pageless/README.md"
cat >"$root/usr/share/doc/pageless/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pageless

Files: *
License: Apache-2.0 OR BSD-3-Clause
EOF
install -d -m 0755 "$root/DEBIAN"
for script in postinst postrm; do
    sed -e "s/@VERSION@/$version/g" "contrib/debian/pageless.$script" >"$root/DEBIAN/$script"
    chmod 0755 "$root/DEBIAN/$script"
done
cat >"$root/DEBIAN/control" <<EOF
Package: pageless
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: libc6 (>= $glibc)
Recommends: qemu-system-x86, libvirt-daemon-driver-qemu
Suggests: pageless-dkms
Section: admin
Priority: optional
Homepage: https://pageless.dev/
Description: guest RAM for QEMU/KVM owned by one process per VM
 pageless serves each VM's memory from one small owner process, pageless serve,
 which hands it to QEMU (pageless qemu) and to the VM's vhost-user device
 backends. Includes the libvirt hook that starts and stops each VM's owner
 (as pageless@<vm>.service where systemd runs), the <emulator> wrapper
 /usr/bin/pageless-qemu and the boot unit pageless-host.service. The kernel
 module for pagelessfs pools is in pageless-dkms.
EOF

# --- pageless-dkms
droot="$stage/pageless-dkms"
src="$droot/usr/src/pageless-$version"
install -d -m 0755 "$src" "$droot/usr/share/doc/pageless-dkms" "$droot/DEBIAN"
for f in driver/kmod/*.c driver/kmod/*.h driver/kmod/Kbuild driver/kmod/README.md; do
    case "$f" in *.mod.c) continue ;; esac
    install -m 0644 "$f" "$src/"
done
sed -e "s/@VERSION@/$version/g" contrib/dkms/dkms.conf >"$src/dkms.conf"
chmod 0644 "$src/dkms.conf"
cat >"$droot/usr/share/doc/pageless-dkms/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pageless

Files: usr/src/pageless-$version/*
License: GPL-2.0
EOF
for script in postinst prerm; do
    sed -e "s/@VERSION@/$version/g" "contrib/debian/pageless-dkms.$script" >"$droot/DEBIAN/$script"
    chmod 0755 "$droot/DEBIAN/$script"
done
cat >"$droot/DEBIAN/control" <<EOF
Package: pageless-dkms
Version: $version
Architecture: all
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$droot" | cut -f1)
Depends: dkms (>= 3), make, gcc | c-compiler
Recommends: linux-headers-cloud-amd64 | linux-headers-amd64 | linux-headers
Section: kernel
Priority: optional
Homepage: https://pageless.dev/
Description: pageless kernel module (pagelessfs) for DKMS
 pageless.ko provides pagelessfs, a filesystem over boot-reserved memory that
 the kernel tracks by PFN only (no struct page), the pageless pool of choice
 for guest RAM. DKMS builds it for every installed kernel with headers, and
 again for each kernel installed later.
EOF

for pkg in pageless pageless-dkms; do
    dpkg-deb --root-owner-group -Zxz --build "$stage/$pkg" "$out/" >/dev/null
done
arch_deb="$out/pageless_${version}_amd64.deb"
dkms_deb="$out/pageless-dkms_${version}_all.deb"
for deb in "$arch_deb" "$dkms_deb"; do
    [ -f "$deb" ] || { echo "package: $deb was not built" >&2; exit 1; }
    echo "$deb"
done
