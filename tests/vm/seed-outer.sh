# The outer guest of the seed scenario (tests/tests/seed_scenario.rs), after the prelude.
# Expects: /pageless.ko, /nested.sh, /inner/vmlinuz, /inner/initrd, and on PATH pageless, pageless-guest,
# qemu-system-x86_64, qemu-storage-daemon; the vfio-pci modules loaded; QEMU machine q35 with
# -device intel-iommu -device edu, kernel cmdline intel_iommu=on memmap=1G$4G memmap=512M$6G.
. /nested.sh
RANGES=1G@4G,512M@6G
INNER_BOOT_SECS=${INNER_BOOT_SECS:-300}

check load insmod /pageless.ko ranges=$RANGES
mkdir -p /mnt/pl && check mount-2m mount -t pagelessfs -o pagesize=2M none /mnt/pl
pageless-guest memmap-save /tmp/memmap.base

# edu, behind the vIOMMU, to vfio-pci.
bind_edu

# 3. VFIO DMA into PFN-only memory, and into a memfd as the control.
pageless-guest vfio-edu --bdf "$BDF" --file /mnt/pl/dma --name pagelessfs-vfio
pageless-guest vfio-edu --bdf "$BDF" --memfd --name memfd-vfio

# DMA isolation: a process that DMA-mapped a file gives its memory back with the container
# open; another file takes the pool; the device must never read that file's data.
pageless-guest vfio-reuse --bdf "$BDF" --dir /mnt/pl --give-back truncate
pageless-guest vfio-reuse --bdf "$BDF" --dir /mnt/pl --give-back unlink

# 1, 2 and 3b: a nested VM whose RAM comes from POOL, with a vhost-user disk through the
# relay to qemu-storage-daemon and edu passed through with vfio-pci.
run_inner() { # label pool
    label=$1 pool=$2 vm=inner-$1
    disk=/tmp/disk-$label.img log=/tmp/inner-$label.log
    host_tok="HOST-DISK-TOKEN-$label-$(rand_hex 8)"
    echo "$host_tok" > "$disk" && truncate -s 16M "$disk"
    OWNER_ARGS=--remove-on-exit start_nested "$vm" "$pool" "$disk" "$log"
    if wait_line "$log" INNER-READY "$INNER_BOOT_SECS"; then
        ok "$label-inner-boots" "in $(since "$nested_start") s"
    else
        fail "$label-inner-boots" "no INNER-READY: $(tail -c 300 "$log" | tr '\n' ' ') $(tr '\n' ' ' < /tmp/qemu-$vm.err)"
    fi
    sed "s/^/# inner-$label: /" "$log" | grep -v '^# inner-[a-z]*: $'
    echo "RESULT ${label}_inner_boot_secs=$(since "$nested_start")"

    tok=$(sed -n 's/.*INNER-TOKEN \(PAGELESS-TOKEN-[0-9a-f]*\).*/\1/p' "$log" | head -n 1)
    check "$label-owner-sees-guest-token" sh -c "[ -n '$tok' ] && pageless find --vm $vm --run-dir $RUN $tok | grep -q 0x"
    status=$(pageless status --vm "$vm" --run-dir $RUN --json | tr -d ' \n')
    inode=$(echo "$status" | sed -n 's/.*"inode":\([0-9]*\).*/\1/p')
    if [ "$label" = pagelessfs ]; then
        check "$label-qemu-maps-pfn-only" sh -c "grep -A30 '/mnt/pl/$vm' /proc/$qemu_pid/smaps | grep -m1 VmFlags | grep -qw pf && grep -A30 '/mnt/pl/$vm' /proc/$qemu_pid/smaps | grep -m1 VmFlags"
    else
        check "$label-qemu-maps-memfd" sh -c "grep -q 'memfd:pageless:$vm' /proc/$qemu_pid/maps && ! grep -A30 'memfd:pageless:$vm' /proc/$qemu_pid/smaps | grep -m1 VmFlags | grep -qw pf"
    fi
    check "$label-vhost-user-disk-read" grep -q "INNER-DISK-READ $host_tok" "$log"
    dtok=$(sed -n 's/.*INNER-DISK-WROTE \(INNER-DISK-TOKEN-[0-9a-f]*\).*/\1/p' "$log" | head -n 1)
    check "$label-vhost-user-disk-write" sh -c "[ -n '$dtok' ] && dd if=$disk bs=512 skip=8 count=1 2>/dev/null | grep -q $dtok"
    check "$label-backend-maps-owner-file" sh -c "[ -n '$inode' ] && awk '{print \$5}' /proc/$qsd_pid/maps | grep -qx $inode"
    check "$label-relay-consumer" sh -c "echo '$status' | grep -q '\"device\":\"disk0\",\"backend_socket\":\"$qsd_sock\",\"backend_pid\":$qsd_pid'"
    check "$label-vfio-passthrough" sh -c "grep -q INNER-EDU '$log' && [ -e /proc/$qemu_pid ] && ls -l /proc/$qemu_pid/fd | grep -q /dev/vfio/"
    if [ "$label" = pagelessfs ]; then
        pageless-guest memmap-check /tmp/memmap.base struct-page-with-nested-vm
    fi
    if [ "$label" = pagelessfs ]; then
        stop_under_qemu "$vm"
    else
        stop_nested "$vm"
    fi
    rm -f "/mnt/pl/$vm" "$disk"
}

# stop_under_qemu VM: asks VM's owner (--remove-on-exit, --consumer-timeout 5) to stop while its
# QEMU, with edu passed through by VFIO on the VM's pagelessfs memory, still runs. The owner
# must keep the memory past its timeout (file and extents stay), say in `pageless status` that
# it stops and waits for QEMU's pid, and release it (remove the file, exit) once QEMU is gone.
stop_under_qemu() {
    file=/mnt/pl/$1
    extents() { pageless status --vm "$1" --run-dir $RUN --json | tr -d ' \n' | sed -n 's/.*"extents":\(\[[^]]*\]\).*/\1/p'; }
    before=$(extents "$1")
    pageless stop --vm "$1" --run-dir $RUN
    asked=$(now)
    sleep 8
    if alive "$owner_pid" && alive "$qemu_pid" && [ -e "$file" ]; then
        ok pagelessfs-owner-keeps-memory "owner $owner_pid alive $(since "$asked") s after the stop request (timeout 5 s), $file kept"
    else
        fail pagelessfs-owner-keeps-memory "owner alive: $(alive "$owner_pid" && echo yes), QEMU alive: $(alive "$qemu_pid" && echo yes), file: $(ls -l "$file" 2>&1); $(tail -n 5 /tmp/owner-$1.log | tr '\n' ' ')"
    fi
    after=$(extents "$1")
    if [ -n "$before" ] && [ "$before" = "$after" ]; then
        ok pagelessfs-owner-extents-kept "$after"
    else
        fail pagelessfs-owner-extents-kept "before $before, after $after"
    fi
    status=$(pageless status --vm "$1" --run-dir $RUN --json | tr -d ' \n')
    human=$(pageless status --vm "$1" --run-dir $RUN)
    case "$status" in
        *'"stopping":{'*'"past_timeout":true'*"\"pid\":$qemu_pid,\"what\""*)
            if echo "$human" | grep -q "STOPPING since" && echo "$human" | grep -q "waiting for pid $qemu_pid: "; then
                ok pagelessfs-owner-status-stopping "$(echo "$human" | grep "waiting for pid $qemu_pid")"
            else
                fail pagelessfs-owner-status-stopping "$(echo "$human" | tr '\n' ' ')"
            fi ;;
        *) fail pagelessfs-owner-status-stopping "$status" ;;
    esac
    check pagelessfs-owner-log-names-qemu grep -m1 "still held after.*pid $qemu_pid (" /tmp/owner-$1.log
    kill "$qemu_pid"; wait "$qemu_pid" 2>/dev/null
    gone=$(now)
    i=0
    while alive "$owner_pid" && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    if ! alive "$owner_pid" && [ ! -e "$file" ]; then
        ok pagelessfs-owner-releases-after-qemu "owner exited $(since "$gone") s after QEMU, $file removed"
    else
        fail pagelessfs-owner-releases-after-qemu "owner alive: $(alive "$owner_pid" && echo yes), file: $(ls -l "$file" 2>&1); $(tail -n 5 /tmp/owner-$1.log | tr '\n' ' ')"
        kill -9 "$owner_pid"
    fi
    wait "$owner_pid" 2>/dev/null
    kill "$qsd_pid"; wait "$qsd_pid" 2>/dev/null
}

run_inner pagelessfs pagelessfs:/mnt/pl
run_inner memfd memfd
umount /mnt/pl
check unload rmmod pageless
finish
