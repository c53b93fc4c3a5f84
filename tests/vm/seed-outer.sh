# The outer guest of the seed scenario (tests/tests/seed_scenario.rs), after the prelude.
# Expects: /pageless.ko, /nested.sh, /inner/vmlinuz, /inner/initrd, and on PATH pageless, pageless-guest,
# qemu-system-x86_64, qemu-storage-daemon; the vfio-pci modules loaded; QEMU machine q35 with
# -device intel-iommu -device edu, kernel cmdline intel_iommu=on memmap=1G$4G memmap=512M$6G.
. /nested.sh
RANGES=1G@4G,512M@6G
INNER_BOOT_SECS=${INNER_BOOT_SECS:-600}

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
    start_nested "$vm" "$pool" "$disk" "$log"
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
    stop_nested "$vm"
    rm -f "/mnt/pl/$vm" "$disk"
}

run_inner pagelessfs pagelessfs:/mnt/pl
run_inner memfd memfd
umount /mnt/pl
check unload rmmod pageless
finish
