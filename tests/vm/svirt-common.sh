#!/bin/bash
# Shared by the sVirt test guests (tests/vm/svirt-apparmor.sh, tests/vm/svirt-selinux.sh), which
# source it as PID 1 of the Debian 12 root filesystem (scripts/svirt-rootfs.sh): mounts, the
# CHECK helpers, pageless installed as the README's libvirt section says, and the two pageless
# domains both tests start: web1 (a directory pool, a vhost-user disk through the owner's relay
# to qemu-storage-daemon) and web2 (memfd).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t securityfs securityfs /sys/kernel/security
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
hostname svirt

ok() { echo "CHECK $1 ok ${2:-}"; }
fail() { echo "CHECK $1 FAIL ${2:-}"; }
check() {
    name=$1; shift
    if out=$("$@" 2>&1); then ok "$name" "$(echo "$out" | tail -n 1)"; else fail "$name" "$(echo "$out" | tail -n 1)"; fi
}
finish() { echo CHECKS-DONE; sync; echo o > /proc/sysrq-trigger; sleep 30; }
since() { echo $(( $(date +%s) - $1 )); }
# wait_line FILE TEXT SECS: whether FILE gets a line containing TEXT within SECS.
wait_line() {
    for _ in $(seq $(( $3 * 2 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.5; done
    return 1
}
trap finish EXIT
# Where the nested guests' serial consoles go (a script may choose another directory before
# sourcing this file).
console_dir=${console_dir:-/var/log/libvirt/qemu}

# install_pageless: what libvirt-daemon-system's postinst does (the root filesystem has only
# the daemons), and pageless as the README's libvirt section installs it.
install_pageless() {
    getent group kvm >/dev/null || groupadd -r kvm
    id libvirt-qemu >/dev/null 2>&1 || useradd -r -u 64055 -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    install -m 755 /pl/pageless /usr/local/bin/pageless
    install -m 755 /pl/pageless-qemu /usr/local/bin/pageless-qemu
    install -D -m 755 /pl/hook-qemu /etc/libvirt/hooks/qemu
    mkdir -p /etc/pageless/vms /var/lib/pageless /srv/pageless
    mount -t tmpfs -o mode=755 tmpfs /srv/pageless
    cp /pl/vmlinuz /pl/initrd /var/lib/pageless/
    chmod 644 /var/lib/pageless/*
}

# start_libvirtd: virtlogd and libvirtd, answering.
start_libvirtd() {
    virtlogd -d
    libvirtd -d
    for _ in $(seq 120); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.5; done
    check libvirtd-answers virsh -c qemu:///system version
}

# security_models: the security models of `virsh capabilities`.
security_models() {
    virsh -c qemu:///system capabilities | grep -A1 '<secmodel>' | sed -n 's/.*<model>\(.*\)<\/model>.*/\1/p' | tr '\n' ' '
}

# Checks that libvirtd runs confined (its /proc attr/current matches the case pattern $1) and
# that libvirt uses the security driver $2 (selinux, apparmor).
check_libvirtd_confined() {
    local pattern=$1 model=$2 lvpid lvcon secmodel
    lvpid=$(cat /run/libvirtd.pid)
    lvcon=$(tr -d '\0' < "/proc/$lvpid/attr/current")
    # shellcheck disable=SC2254 # the pattern is meant to match
    case "$lvcon" in
        $pattern) ok libvirtd-confined "libvirtd pid $lvpid runs as $lvcon" ;;
        *) fail libvirtd-confined "libvirtd runs as $lvcon" ;;
    esac
    secmodel=$(security_models)
    case "$secmodel" in
        *"$model"*) ok libvirt-security-driver "security models: $secmodel" ;;
        *) fail libvirt-security-driver "libvirt does not use $model: models $secmodel" ;;
    esac
}

# web1's disk: qemu-storage-daemon (root) behind the owner's relay, and both VMs' configs.
prepare_vms() {
    qemu-img create -f raw /var/lib/pageless/web1-disk.img 16M >/dev/null
    echo "HOST-DISK-TOKEN-$RANDOM$RANDOM" | dd of=/var/lib/pageless/web1-disk.img conv=notrunc 2>/dev/null
    qemu-storage-daemon --blockdev driver=file,node-name=f,filename=/var/lib/pageless/web1-disk.img,cache.direct=off \
        --export type=vhost-user-blk,id=e,node-name=f,writable=on,addr.type=unix,addr.path=/run/qsd-web1.sock \
        >/tmp/qsd.log 2>&1 &
    for _ in $(seq 100); do [ -S /run/qsd-web1.sock ] && break; sleep 0.1; done
    cat > /etc/pageless/vms/web1.toml <<EOT
pool = "dir:/srv/pageless"
remove_on_exit = true
consumer_timeout = 10
[[vhost_user]]
name = "disk0"
backend = "/run/qsd-web1.sock"
EOT
    printf 'pool = "memfd"\nconsumer_timeout = 10\n' > /etc/pageless/vms/web2.toml
}

domain() { # name devices append
    cat <<EOT
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/var/lib/pageless/vmlinuz</kernel>
    <initrd>/var/lib/pageless/initrd</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet $3</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/local/bin/pageless-qemu</emulator>
    $2
    <serial type='file'><source path='$console_dir/$1.console'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOT
}

# start_vms: defines and starts web1 and web2 (CHECK web1-starts, web2-starts); sets boot0.
start_vms() {
    local disk="<disk type='vhostuser' device='disk'><driver name='qemu' type='raw'/><source type='unix' path='/run/pageless/web1/disk0.sock'><reconnect enabled='yes' timeout='1'/></source><target dev='vda' bus='virtio'/></disk>"
    # Under /etc, where SELinux's virsh_t may read them (not /tmp).
    mkdir -p /etc/pageless/domains
    domain web1 "$disk" "" > /etc/pageless/domains/web1.xml
    domain web2 "" nodisk > /etc/pageless/domains/web2.xml
    for vm in web1 web2; do
        if ! out=$(virsh -c qemu:///system define /etc/pageless/domains/$vm.xml 2>&1); then
            echo "# virsh define $vm: $out"
        fi
        t0=$(date +%s)
        if out=$(virsh -c qemu:///system start $vm 2>&1); then
            ok "$vm-starts" "in $(since "$t0") s"
        else
            fail "$vm-starts" "$out $(tail -n 5 /run/pageless/$vm.log 2>/dev/null) $(tail -n 5 /var/log/libvirt/qemu/$vm.log)"
            # The whole story: the owner's log and libvirt's domain log (QEMU's stderr).
            sed "s/^/# $vm owner: /" /run/pageless/$vm.log 2>/dev/null | tail -n 20
            grep -v '^[-/A-Z_]' /var/log/libvirt/qemu/$vm.log 2>/dev/null | sed "s/^/# $vm qemu: /" | tail -n 30
        fi
    done
    boot0=$(date +%s)
}

# check_guests: both guests boot on their owners' memory (the guest's RAM token is in the
# owner's memory); web1 uses its disk through the relay.
check_guests() {
    for vm in web1 web2; do
        console=$console_dir/$vm.console
        if ! virsh -c qemu:///system domstate $vm 2>&1 | grep -qx running; then
            fail "$vm-guest-runs" "the domain does not run"
            continue
        fi
        if wait_line "$console" GUEST-READY 600; then
            ok "$vm-guest-runs" "ready $(since "$boot0") s after both started"
        else
            fail "$vm-guest-runs" "$(tail -c 400 "$console" | tr '\n' ' ') $(tail -n 5 /var/log/libvirt/qemu/$vm.log | tr '\n' ' ')"
            continue
        fi
        token=$(sed -n 's/.*GUEST-TOKEN \([A-Z0-9a-f-]*\).*/\1/p' "$console" | head -n 1)
        offsets=$(pageless find --vm $vm "$token" 2>&1)
        case "$offsets" in
            0x*) ok "$vm-token-in-owner-memory" "$token at $(echo $offsets)" ;;
            *) fail "$vm-token-in-owner-memory" "$token: $offsets" ;;
        esac
    done
    if grep -q "DISK-WROTE" $console_dir/web1.console; then
        ok web1-disk-through-relay "$(grep -a DISK- $console_dir/web1.console | tr -d '\r' | tr '\n' ' ')"
    else
        fail web1-disk-through-relay "$(grep -a 'DISK-\|IO-FAILED' $console_dir/web1.console | tr '\n' ' ')"
    fi
}

# check_still_running: both VMs survived the attack.
check_still_running() {
    for vm in web1 web2; do
        check "$vm-still-runs" sh -c "virsh -c qemu:///system domstate $vm | grep -qx running"
    done
}
