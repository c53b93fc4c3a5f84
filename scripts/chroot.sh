# Sourced by scripts/setup.sh and scripts/svirt-rootfs.sh: in_chroot DIR COMMAND… runs COMMAND
# in the Debian tree DIR with /proc mounted (apt and dpkg need it), unmounted after, as root
# (through sudo when not root); returns COMMAND's status.
in_chroot() {
    local dir=$1 rc=0 sudo=""
    shift
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo mount -t proc proc "$dir/proc"
    $sudo env DEBIAN_FRONTEND=noninteractive chroot "$dir" "$@" || rc=$?
    $sudo umount "$dir/proc"
    return $rc
}
