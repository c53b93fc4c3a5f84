#!/bin/bash
# The sVirt test guest (tests/tests/svirt_apparmor.rs), run as PID 1 of a Debian 12 root
# filesystem (scripts/svirt-rootfs.sh: libvirt 11, QEMU 10, AppArmor) booted with AppArmor on.
# /pl holds what the test brings: pageless, pageless-guest, the libvirt wrapper and hook from
# contrib/libvirt, and the nested guests' kernel and initrd.
#
# Two pageless domains, web1 (a directory pool, a vhost-user disk through the owner's relay to
# qemu-storage-daemon) and web2 (memfd), start under libvirt's AppArmor driver with the hook;
# each runs confined by its own profile libvirt-<uuid>, which the hook extended with that VM's
# sockets and memory file. A process under web2's profile cannot reach web1's sockets or memory
# file (EACCES), and web1's not web2's; under its own profile each can. `virsh destroy` leaves no
# profile behind. Reports CHECK lines like every test guest, then powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo '# svirt: Debian root'
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

# AppArmor is on, and libvirtd runs under its profile.
if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]; then
    ok apparmor-enabled "$(cat /sys/kernel/security/lsm)"
else
    fail apparmor-enabled "AppArmor is not enabled: $(cat /sys/kernel/security/lsm 2>&1)"
    exit
fi
# What libvirt-daemon-system's postinst does (the root filesystem has only the daemons).
getent group kvm >/dev/null || groupadd -r kvm
id libvirt-qemu >/dev/null 2>&1 || useradd -r -u 64055 -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

# pageless as the README's libvirt section installs it.
install -m 755 /pl/pageless /usr/local/bin/pageless
install -m 755 /pl/pageless-qemu /usr/local/bin/pageless-qemu
install -D -m 755 /pl/hook-qemu /etc/libvirt/hooks/qemu
install -D -m 644 /pl/apparmor-local-usr.sbin.libvirtd /etc/apparmor.d/local/usr.sbin.libvirtd
t0=$(date +%s)
check apparmor-load-libvirt-profiles apparmor_parser -r /etc/apparmor.d/usr.sbin.libvirtd \
    /etc/apparmor.d/usr.lib.libvirt.virt-aa-helper
echo "RESULT apparmor_load_secs=$(since "$t0")"
mkdir -p /etc/pageless/vms /var/lib/pageless /srv/pageless
mount -t tmpfs -o mode=755 tmpfs /srv/pageless
cp /pl/vmlinuz /pl/initrd /var/lib/pageless/
chmod 644 /var/lib/pageless/*

virtlogd -d
libvirtd -d
for _ in $(seq 120); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.5; done
check libvirtd-answers virsh -c qemu:///system version
lvpid=$(cat /run/libvirtd.pid)
case "$(cat "/proc/$lvpid/attr/current")" in
    "libvirtd (enforce)") ok libvirtd-confined "libvirtd pid $lvpid runs as $(cat "/proc/$lvpid/attr/current")" ;;
    *) fail libvirtd-confined "libvirtd runs as $(cat "/proc/$lvpid/attr/current")" ;;
esac
secmodel=$(virsh -c qemu:///system capabilities | grep -A1 '<secmodel>' | sed -n 's/.*<model>\(.*\)<\/model>.*/\1/p' | tr '\n' ' ')
case "$secmodel" in
    *apparmor*) ok libvirt-security-driver "security models: $secmodel" ;;
    *) fail libvirt-security-driver "libvirt does not use AppArmor: models $secmodel" ;;
esac

# web1's disk: qemu-storage-daemon (unconfined, root) behind the owner's relay.
qemu-img create -f raw /var/lib/pageless/web1-disk.img 16M >/dev/null
echo "HOST-DISK-TOKEN-$RANDOM$RANDOM" | dd of=/var/lib/pageless/web1-disk.img conv=notrunc 2>/dev/null
qemu-storage-daemon --blockdev driver=file,node-name=f,filename=/var/lib/pageless/web1-disk.img,cache.direct=off \
    --export type=vhost-user-blk,id=e,node-name=f,writable=on,addr.type=unix,addr.path=/run/qsd-web1.sock \
    >/tmp/qsd.log 2>&1 &
for _ in $(seq 100); do [ -S /run/qsd-web1.sock ] && break; sleep 0.1; done

cat > /etc/pageless/vms/web1.toml <<EOF
pool = "dir:/srv/pageless"
remove_on_exit = true
consumer_timeout = 10
[[vhost_user]]
name = "disk0"
backend = "/run/qsd-web1.sock"
EOF
printf 'pool = "memfd"\nconsumer_timeout = 10\n' > /etc/pageless/vms/web2.toml

domain() { # name devices append
    cat <<EOF
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
    <serial type='file'><source path='/var/log/libvirt/qemu/$1.console'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}
disk="<disk type='vhostuser' device='disk'><driver name='qemu' type='raw'/><source type='unix' path='/run/pageless/web1/disk0.sock'><reconnect enabled='yes' timeout='1'/></source><target dev='vda' bus='virtio'/></disk>"
domain web1 "$disk" "" > /tmp/web1.xml
domain web2 "" nodisk > /tmp/web2.xml
for vm in web1 web2; do
    virsh -c qemu:///system define /tmp/$vm.xml >/dev/null
    t0=$(date +%s)
    if out=$(virsh -c qemu:///system start $vm 2>&1); then
        ok "$vm-starts" "in $(since "$t0") s"
    else
        fail "$vm-starts" "$out $(tail -n 5 /run/pageless/$vm.log 2>/dev/null) $(tail -n 5 /var/log/libvirt/qemu/$vm.log)"
    fi
done
boot0=$(date +%s)

declare -A uuid qemu profile
for vm in web1 web2; do
    uuid[$vm]=$(virsh -c qemu:///system domuuid $vm | tr -d '[:space:]')
    profile[$vm]=libvirt-${uuid[$vm]}
    qemu[$vm]=$(cat /run/libvirt/qemu/$vm.pid 2>/dev/null)
    label=$(cat /proc/${qemu[$vm]}/attr/current 2>&1)
    if [ "$label" = "${profile[$vm]} (enforce)" ]; then
        ok "$vm-qemu-confined" "QEMU pid ${qemu[$vm]} runs as $label"
    else
        fail "$vm-qemu-confined" "QEMU pid ${qemu[$vm]:-?} runs as $label, not ${profile[$vm]} (enforce)"
    fi
    rules=/etc/apparmor.d/libvirt/${profile[$vm]}.pageless
    if [ -f "$rules" ] && grep -qF "<libvirt/${profile[$vm]}.pageless>" /etc/apparmor.d/libvirt/${profile[$vm]}; then
        ok "$vm-profile-has-pageless-rules" "$(grep -c rw, "$rules") rw rules in $rules"
    else
        fail "$vm-profile-has-pageless-rules" "$(ls /etc/apparmor.d/libvirt/)"
    fi
    echo "# $vm rules: $(grep -v '^#' "$rules" 2>/dev/null | tr -s ' \n' ' ')"
done

# Both guests boot on their owners' memory; web1 uses its disk through the relay.
for vm in web1 web2; do
    console=/var/log/libvirt/qemu/$vm.console
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
if grep -q "DISK-WROTE" /var/log/libvirt/qemu/web1.console; then
    ok web1-disk-through-relay "$(grep -a DISK- /var/log/libvirt/qemu/web1.console | tr -d '\r' | tr '\n' ' ')"
else
    fail web1-disk-through-relay "$(grep -a 'DISK-\|IO-FAILED' /var/log/libvirt/qemu/web1.console | tr '\n' ' ')"
fi

# The attack: a process confined like web2's QEMU (a compromised one; root here, so the
# owner's user checks let it in) goes for web1's owner socket, relay socket and memory file;
# then the reverse; each VM's own profile reaches its own. The kernel refuses the file (EACCES);
# Debian's AppArmor does not mediate connecting to a Unix socket by path, so the owner refuses
# the connection by the peer's profile (--apparmor-profile, which the hook passes).
web1_file=/srv/pageless/web1
probe() { # name profile expect args…: output through a pipe (the profile may not allow the console)
    out=$(/pl/pageless-guest aa-probe --name "$1" --profile "$2" --expect "$3" "${@:4}" 2>&1)
    echo "$out"
}
probe web2-cannot-reach-web1 "${profile[web2]}" denied --control /run/pageless/web1.sock \
    --vhost /run/pageless/web1/disk0.sock --open "$web1_file"
probe web1-cannot-reach-web2 "${profile[web1]}" denied --control /run/pageless/web2.sock
probe web1-reaches-its-own "${profile[web1]}" allowed --control /run/pageless/web1.sock --open "$web1_file"
probe web2-reaches-its-own "${profile[web2]}" allowed --control /run/pageless/web2.sock
if grep -q "runs under AppArmor profile ${profile[web2]}, not this VM's ${profile[web1]}" /run/pageless/web1.log; then
    ok web1-owner-logs-refusals "$(grep -c 'runs under AppArmor profile' /run/pageless/web1.log) refusals in /run/pageless/web1.log"
else
    fail web1-owner-logs-refusals "$(tail -n 5 /run/pageless/web1.log | tr '\n' ' ')"
fi
# Both VMs still run, and their owners saw nothing of the refused attempts.
for vm in web1 web2; do
    check "$vm-still-runs" sh -c "virsh -c qemu:///system domstate $vm | grep -qx running"
done
dmesg | grep 'apparmor="DENIED"' | sed 's/^/# /' | tail -n 20

# virsh destroy: libvirt unloads the profile and deletes its .files (it keeps the profile file
# itself for the domain's next start), the hook deletes its .pageless rules; owners stop.
for vm in web1 web2; do
    virsh -c qemu:///system destroy $vm >/dev/null 2>&1
    dir=/etc/apparmor.d/libvirt
    left=$(grep -c "${profile[$vm]}" /sys/kernel/security/apparmor/profiles)
    if [ "$left" = 0 ] && [ ! -e "$dir/${profile[$vm]}.pageless" ] && [ ! -e "$dir/${profile[$vm]}.files" ] &&
        [ ! -e /run/pageless/$vm.sock ]; then
        ok "$vm-profile-gone-after-destroy" "${profile[$vm]} unloaded, its .files and .pageless rules deleted, owner stopped"
    else
        fail "$vm-profile-gone-after-destroy" "loaded: $left, files: $(ls $dir | tr '\n' ' '), run dir: $(ls /run/pageless | tr '\n' ' ')"
    fi
done
if [ ! -e "$web1_file" ]; then ok web1-memory-file-removed; else fail web1-memory-file-removed "$web1_file is left"; fi
dmesg | grep -a 'apparmor="DENIED"' | sed 's/^/# after destroy: /' | tail -n 20
