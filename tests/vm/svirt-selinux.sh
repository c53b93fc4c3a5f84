#!/bin/bash
# The SELinux sVirt test guest (tests/tests/svirt_selinux.rs), run as PID 1 of the Debian 12 root
# filesystem (scripts/svirt-rootfs.sh: libvirt 11, QEMU 10, Debian's reference policy with the
# virt module and MCS, files labelled at build) booted with security=selinux. /pl holds what the
# test brings: pageless, pageless-guest, the libvirt wrapper and hook from contrib/libvirt, the
# policy module from contrib/selinux, and the nested guests' kernel and initrd.
#
# PID 1 loads the policy, goes enforcing and becomes init_t (as systemd does), so libvirtd runs
# in virtd_t. Two pageless domains, web1 (a directory pool, a vhost-user disk through the owner's
# relay to qemu-storage-daemon) and web2 (memfd), start under libvirt's SELinux driver with the
# hook: each QEMU runs as svirt_t with its own MCS category pair, and the hook gave that VM's
# owner socket, relay directory and sockets and memory (file or memfd) the domain's image label.
# A process running as web2's QEMU (svirt_t and web2's categories) cannot connect to web1's
# sockets nor open web1's memory file (EACCES, AVC denials), and web1's not web2's; handed the
# other VM's memory fd across its exec into the domain (as libvirtd hands QEMU files), the kernel
# takes it away; as its own VM each can.
# `virsh destroy` stops the owners and removes the labelled files. Reports CHECK lines, then
# powers off.
echo '# svirt: Debian root'
# The nested guests' serial consoles: libvirtd writes them itself (stdio_handler "file" below),
# and virtd_t may not write virt_log_t (/var/log/libvirt), only virtlogd_t may.
console_dir=/var/lib/libvirt/qemu
. /pl/svirt-common.sh
# Every AVC denial on the console: no rate limit on the kernel's audit messages.
echo 0 > /proc/sys/kernel/printk_ratelimit

# SELinux is the active LSM; PID 1 loads the policy, enforcing, and moves to init_t.
case "$(cat /sys/kernel/security/lsm)" in
    *selinux*) ok selinux-lsm "$(cat /sys/kernel/security/lsm)" ;;
    *) fail selinux-lsm "SELinux is not active: $(cat /sys/kernel/security/lsm)"; exit ;;
esac
t0=$(date +%s)
check selinux-load-policy load_policy -i
setenforce 1
echo "RESULT load_policy_secs=$(since "$t0")"
# What systemd does after loading the policy: leave kernel_t for init_t (kernel_t may
# dyntransition there), so that the daemons it runs get their own domains.
echo -n system_u:system_r:init_t:s0-s0:c0.c1023 > /proc/self/attr/current
echo "# PID 1 runs as $(tr -d '\0' < /proc/$$/attr/current), $(getenforce)"
case "$(getenforce)" in
    Enforcing) ok selinux-enforcing "$(sestatus 2>/dev/null | tr -s ' \n' ' ')" ;;
    *) fail selinux-enforcing "$(getenforce)" ;;
esac

install_pageless
# The README's SELinux steps: libvirt's security driver, the policy module, the files' labels.
sed -i 's/^security_driver = .*/security_driver = "selinux"/' /etc/libvirt/qemu.conf
# Not pageless: Debian 12's policy does not let virtd_t unmount (AVC: unmount on tmpfs_t,
# devpts_t, device_t), so libvirt's per-domain mount namespace fails ("Cannot delete directory
# /run/libvirt/qemu/1-web1.shm: Device or resource busy"): without it.
echo 'namespaces = []' >> /etc/libvirt/qemu.conf
# Likewise cgroups (v2 devices control is a BPF program, which libvirt sets up even without
# "devices" listed): Debian 12's policy denies virtd_t
# bpf map_create and prog_run ("failed to initialize device BPF map: Permission denied").
echo "cgroup_controllers = [ ]" >> /etc/libvirt/qemu.conf
# QEMU's stderr into /var/log/libvirt/qemu/<domain>.log by libvirtd itself: under Debian 12's
# MCS constraints svirt_t (one category pair) may not write to virtlogd's pipe (s0-s0:c0.c1023),
# so with virtlogd a failing QEMU's message is lost.
echo 'stdio_handler = "file"' >> /etc/libvirt/qemu.conf
# What systemd and udev do after loading the policy: label what was mounted before.
restorecon -R /dev /run /tmp
# This test's environment, not pageless: the nested QEMUs run TCG (no KVM in a TCG guest), which
# needs execmem; Debian 12's policy lets svirt_t read but not map the kernel and initrd of a
# direct kernel boot (virt_content_t) and its own memfd (QEMU probes memfd support); the disk's
# qemu-storage-daemon runs from this script (initrc_t), and the owner's relay connects to it.
setsebool virt_use_execmem 1
cat > /tmp/pageless_test_env.te <<'EOT'
module pageless_test_env 1.0;
require {
	type svirt_t; type virt_content_t; type svirt_tmpfs_t; type virtd_t; type initrc_t;
	type initrc_runtime_t; type sysfs_t; type sysctl_vm_t;
	class file { map read open getattr };
	class dir search;
	class sock_file write;
	class unix_stream_socket { connectto getattr };
}
allow svirt_t virt_content_t:file map;
allow svirt_t svirt_tmpfs_t:file map;
allow svirt_t sysfs_t:file { read open getattr };
allow svirt_t sysctl_vm_t:dir search;
allow svirt_t sysctl_vm_t:file { read open getattr };
allow virtd_t initrc_t:unix_stream_socket { connectto getattr };
allow virtd_t initrc_runtime_t:sock_file write;
EOT
t0=$(date +%s)
cp /pl/pageless.te /pl/pageless.fc /tmp/
# One policy rebuild (-D: every denial logged, dontaudit rules too, so that a failure's cause is
# on the console).
check selinux-module sh -c 'cd /tmp && checkmodule -M -m -o pageless.mod pageless.te &&
    semodule_package -o pageless.pp -m pageless.mod -f pageless.fc &&
    checkmodule -M -m -o pageless_test_env.mod pageless_test_env.te &&
    semodule_package -o pageless_test_env.pp -m pageless_test_env.mod &&
    semodule -D -i pageless.pp pageless_test_env.pp && semodule -l | grep -x pageless'
echo "RESULT semodule_secs=$(since "$t0")"
restorecon -R /usr/local/bin /etc/libvirt /etc/pageless /var/lib/pageless /srv/pageless
# The nested guests' kernel and initrd, as if in /var/lib/libvirt/boot; the directory pool's
# directory as the README says (files created there are then virt_image_t, which the hook may
# relabel).
chcon -t virt_content_t /var/lib/pageless/vmlinuz /var/lib/pageless/initrd
chcon -t virt_image_t /srv/pageless
echo "# labels: $(ls -Z /usr/local/bin/pageless /usr/local/bin/pageless-qemu /etc/libvirt/hooks/qemu | tr -s ' \n' ' ')"

# What systemd's virtlogd.socket does: /run/libvirt, labelled (virtlogd_t may not create it).
mkdir -p /run/libvirt && restorecon -R /run/libvirt
start_libvirtd
check_libvirtd_confined '*:virtd_t:*' selinux

prepare_vms
start_vms

declare -A qemu label level files_of
for vm in web1 web2; do
    qemu[$vm]=$(cat /run/libvirt/qemu/$vm.pid 2>/dev/null)
    label[$vm]=$(tr -d '\0' < /proc/${qemu[$vm]}/attr/current 2>&1)
    level[$vm]=${label[$vm]#*:*:*:}
    case "${label[$vm]}" in
        *:svirt_t:s0:c*,c*) ok "$vm-qemu-confined" "QEMU pid ${qemu[$vm]} runs as ${label[$vm]}" ;;
        *) fail "$vm-qemu-confined" "QEMU pid ${qemu[$vm]:-?} runs as ${label[$vm]}" ;;
    esac
    files="/run/pageless/$vm.sock"
    [ $vm = web1 ] && files="$files /run/pageless/web1 /run/pageless/web1/disk0.sock /srv/pageless/web1"
    # web2's memory is the owner's memfd: its inode, through the owner's fd.
    for p in /proc/[0-9]*; do
        case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
            *pageless\ serve*--vm\ $vm\ *)
                for fd in $p/fd/*; do
                    case "$(readlink $fd)" in /memfd:pageless:*) files="$files $fd" ;; esac
                done ;;
        esac
    done
    wrong=""
    case "$vm:$files" in web2:*/fd/*) ;; web2:*) wrong=" (no memfd of web2's owner found)" ;; esac
    for f in $files; do
        case "$(stat -L -c %C "$f" 2>&1)" in
            *:svirt_image_t:"${level[$vm]}") ;;
            *) wrong="$wrong $f=$(stat -L -c %C "$f" 2>&1)" ;;
        esac
    done
    files_of[$vm]=$files
    if [ -z "$wrong" ] && [ -n "${level[$vm]}" ]; then
        ok "$vm-files-labelled" "svirt_image_t:${level[$vm]} on $(echo $files)"
    else
        fail "$vm-files-labelled" "not svirt_image_t:${level[$vm]}:$wrong"
    fi
done
dmesg | grep -a 'avc:  denied' | sed 's/^/# after the start: /'
for p in /proc/[0-9]*; do
    case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
        *pageless\ serve*) echo "# owner ${p#/proc/} runs as $(tr -d '\0' < $p/attr/current)" ;;
    esac
done

check_guests

# The attack: a process running as web2's QEMU (svirt_t with web2's categories, and QEMU's user
# libvirt-qemu, whom every owner's sockets and files belong to: a compromised QEMU, which DAC
# would let in) goes for web1's owner socket, relay socket and memory file; then the reverse;
# each VM's own label reaches its own. As libvirtd starts QEMU: a process in virtd_t (runcon,
# labelled libvirtd's executable) execs the prober (labelled like QEMU's executable) into the
# domain's label.
mkdir -p /usr/local/libexec/pageless-test
cp /usr/bin/runcon /usr/local/libexec/pageless-test/virtd-runcon
cp /pl/pageless-guest /usr/local/libexec/pageless-test/probe
chcon -t virtd_exec_t /usr/local/libexec/pageless-test/virtd-runcon
chcon -t qemu_exec_t /usr/local/libexec/pageless-test/probe
cp /pl/pageless-guest /usr/local/libexec/pageless-test/virtd-exec-into
chcon -t virtd_exec_t /usr/local/libexec/pageless-test/virtd-exec-into
probe() { # name label expect args…
    local name=$1 con=$2 expect=$3 rc what
    shift 3
    what="$*"
    timeout 60 setpriv --reuid=64055 --regid="$(getent group kvm | cut -d: -f3)" --clear-groups \
        /usr/local/libexec/pageless-test/virtd-runcon "$con" /usr/local/libexec/pageless-test/probe probe "$@" \
        </dev/null >/dev/null 2>&1
    rc=$?
    case "$expect:$rc" in
        allowed:0) ok "$name" "$what as $con: allowed" ;;
        denied:13) ok "$name" "$what as $con: denied by the kernel (EACCES)" ;;
        denied:3) ok "$name" "$what as $con: connected, refused by the owner" ;;
        *) fail "$name" "$what as $con: exit code $rc (0 allowed, 13 EACCES, 3 refused by the owner), expected $expect" ;;
    esac
}
# A VM's memory handed over as libvirtd hands QEMU its files: a process in virtd_t opens it and
# execs the prober into a domain's label with it on fd 3; SELinux revalidates the inherited file
# at the transition and takes it away (its null file in its place) from a domain whose categories
# do not cover the file's. Neither QEMU nor the prober can reach a memfd by path: /proc of the
# owner (virtd_t) is closed to svirt_t.
probe_fd() { # name label expect file
    local name=$1 con=$2 expect=$3 file=$4 rc
    timeout 60 /usr/local/libexec/pageless-test/virtd-exec-into exec-into --label "$con" --file "$file" --fd 3 -- \
        /usr/local/libexec/pageless-test/probe probe --inherited 3 </dev/null >/dev/null 2>/tmp/probe-fd.err
    rc=$?
    case "$expect:$rc" in
        allowed:0) ok "$name" "$file handed to $con: maps read-write" ;;
        denied:13) ok "$name" "$file handed to $con: taken away by the kernel at the exec" ;;
        *) fail "$name" "$file handed to $con: exit code $rc (0 allowed, 13 taken away), expected $expect: $(tail -n 2 /tmp/probe-fd.err | tr '\n' ' ')" ;;
    esac
}
web1_file=/srv/pageless/web1
dmesg | grep -a 'avc:  denied' | sed 's/^/# before the attack: /'
dmesg -C
probe web2-cannot-reach-web1-control "${label[web2]}" denied --control /run/pageless/web1.sock
probe web2-cannot-reach-web1-relay "${label[web2]}" denied --vhost /run/pageless/web1/disk0.sock
probe web2-cannot-reach-web1-memory "${label[web2]}" denied --open "$web1_file"
probe web1-cannot-reach-web2-control "${label[web1]}" denied --control /run/pageless/web2.sock
# web2's memfd has no path but its owner's /proc/<pid>/fd/<n>.
web2_memfd=$(echo ${files_of[web2]} | tr ' ' '\n' | grep /fd/ | head -n 1)
probe_fd web1-cannot-use-web2-memfd "${label[web1]}" denied "${web2_memfd:-/nonexistent}"
probe_fd web2-cannot-use-web1-memory-fd "${label[web2]}" denied "$web1_file"
dmesg | grep -a 'avc:  denied' | sed 's/^/# denial: /' | tail -n 20
if dmesg | grep -a 'avc:  denied' | grep -q "scontext=${label[web2]} tcontext=system_u:object_r:svirt_image_t:${level[web1]}"; then
    ok web1-denials-logged "$(dmesg | grep -a 'avc:  denied' | grep -c "scontext=${label[web2]}") AVC denials for ${label[web2]}"
else
    fail web1-denials-logged "no AVC denial of ${label[web2]} on svirt_image_t:${level[web1]}"
fi
if dmesg | grep -a 'avc:  denied' | grep -q "scontext=${label[web1]} tcontext=system_u:object_r:svirt_image_t:${level[web2]} tclass=file"; then
    ok web2-memfd-denial-logged "$(dmesg | grep -a 'avc:  denied' | grep "scontext=${label[web1]}" | grep -m 1 "tclass=file" | sed 's/.*avc:  //')"
else
    fail web2-memfd-denial-logged "no AVC denial of ${label[web1]} on svirt_image_t:${level[web2]} (file)"
fi
probe web1-reaches-its-own-control "${label[web1]}" allowed --control /run/pageless/web1.sock
probe web1-reaches-its-own-memory "${label[web1]}" allowed --open "$web1_file"
probe web2-reaches-its-own-control "${label[web2]}" allowed --control /run/pageless/web2.sock
probe_fd web2-uses-its-own-memfd "${label[web2]}" allowed "${web2_memfd:-/nonexistent}"
probe_fd web1-uses-its-own-memory-fd "${label[web1]}" allowed "$web1_file"
check_still_running
dmesg | grep -a 'avc:  denied' | sed 's/^/# after own: /' | tail -n 20

# virsh destroy: the owners stop and their labelled sockets and memory file go with them.
for vm in web1 web2; do
    virsh -c qemu:///system destroy $vm >/dev/null 2>&1
    for _ in $(seq 60); do [ -e /run/pageless/$vm.sock ] || break; sleep 0.5; done
    left=$(ls -d /run/pageless/$vm.sock /run/pageless/$vm /srv/pageless/$vm 2>/dev/null | tr '\n' ' ')
    if [ -z "$left" ]; then
        ok "$vm-labelled-files-gone-after-destroy" "owner stopped, its sockets and memory file removed"
    else
        fail "$vm-labelled-files-gone-after-destroy" "left: $left"
    fi
done
echo "# all AVC denials of the run:"
dmesg | grep -a 'avc:  denied' | sed 's/^/# /' | tail -n 40
