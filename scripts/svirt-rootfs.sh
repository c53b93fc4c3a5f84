#!/usr/bin/env bash
# Builds the root filesystem of the sVirt test guests (tests/tests/svirt_apparmor.rs and
# svirt_selinux.rs), cached: Debian 12 (debootstrap minbase) with libvirt 11 and QEMU 10 from
# bookworm-backports, AppArmor, and SELinux (Debian's reference policy, which has the virt module
# and MCS), as an ext4 image .cache/rootfs/bookworm-svirt.img. Its files carry the SELinux
# policy's labels (setfiles at build; mke2fs -d copies extended attributes), which AppArmor
# ignores. The tests boot it read-write on a throw-away snapshot (QEMU snapshot=on), so the image
# never changes. Called by scripts/setup.sh;
# idempotent (rebuilds only when the package list below changes).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=$(readlink -f "$here/.cache")
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

packages="libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-log libvirt-clients qemu-system-x86 qemu-utils apparmor
    selinux-policy-default policycoreutils selinux-utils checkpolicy semodule-utils"
stamp="v2 $packages"
img="$cache/rootfs/bookworm-svirt.img"
if [ -f "$img.ready" ] && [ "$(cat "$img.ready")" = "$stamp" ]; then
    exit 0
fi
printf '\n==> %s\n' "sVirt test root filesystem (Debian 12, libvirt, QEMU, AppArmor, SELinux) in .cache/rootfs"
command -v debootstrap >/dev/null ||
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
root="$cache/rootfs/bookworm-svirt"
$SUDO rm -rf "$root" "$img" "$img.ready"
mkdir -p "$cache/rootfs"
$SUDO debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
echo 'deb http://deb.debian.org/debian bookworm-backports main' |
    $SUDO tee "$root/etc/apt/sources.list.d/bookworm-backports.list" >/dev/null
# shellcheck source=scripts/chroot.sh
. "$here/scripts/chroot.sh"
in_root() { in_chroot "$root" "$@"; }
in_root apt-get update -q
# shellcheck disable=SC2086 # a word list
in_root apt-get install -y -q --no-install-recommends -t bookworm-backports $packages
in_root apt-get clean
$SUDO rm -rf "$root/var/lib/apt/lists"/*
# The guest's /etc/libvirt/qemu.conf: AppArmor is libvirt's default security driver when the
# kernel has it enabled; say so explicitly, as the AppArmor test asserts that it is used (the
# SELinux test's guest script sets "selinux").
echo 'security_driver = "apparmor"' | $SUDO tee -a "$root/etc/libvirt/qemu.conf" >/dev/null
# SELinux labels, as `fixfiles relabel` would set them on a booted system (the guest boots with
# SELinux on and loads the policy itself; it does not relabel, the image is read-only to it).
in_root setfiles -F -e /proc -e /sys /etc/selinux/default/contexts/files/file_contexts /
size_mb=$(( $($SUDO du -sm "$root" | cut -f1) + 1024 ))
$SUDO mke2fs -q -t ext4 -d "$root" -L svirt-root "$img" "${size_mb}M"
$SUDO rm -rf "$root"
echo "$stamp" > "$img.ready"
