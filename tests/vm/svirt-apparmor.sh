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
echo '# svirt: Debian root'
. /pl/svirt-common.sh

# AppArmor is on, and libvirtd runs under its profile.
if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]; then
    ok apparmor-enabled "$(cat /sys/kernel/security/lsm)"
else
    fail apparmor-enabled "AppArmor is not enabled: $(cat /sys/kernel/security/lsm 2>&1)"
    exit
fi
install_pageless
install -D -m 644 /pl/apparmor-local-usr.sbin.libvirtd /etc/apparmor.d/local/usr.sbin.libvirtd
t0=$(date +%s)
check apparmor-load-libvirt-profiles apparmor_parser -r /etc/apparmor.d/usr.sbin.libvirtd \
    /etc/apparmor.d/usr.lib.libvirt.virt-aa-helper
echo "RESULT apparmor_load_secs=$(since "$t0")"

start_libvirtd
check_libvirtd_confined 'libvirtd (enforce)' apparmor

prepare_vms
start_vms

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

check_guests

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
check_still_running
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
