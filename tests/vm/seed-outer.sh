# The outer guest of the seed scenario (tests/tests/seed_scenario.rs), after the prelude.
# Expects: /pageless.ko, /inner/vmlinuz, /inner/initrd, and on PATH pageless, pageless-guest,
# qemu-system-x86_64, qemu-storage-daemon; the vfio-pci modules loaded; QEMU machine q35 with
# -device intel-iommu -device edu, kernel cmdline intel_iommu=on memmap=1G$4G memmap=512M$6G.
RANGES=1G@4G,512M@6G
RUN=/run/pageless
INNER_BOOT_SECS=${INNER_BOOT_SECS:-600}
say() { echo "# $*"; }

check load insmod /pageless.ko ranges=$RANGES
mkdir -p /mnt/pl && check mount-2m mount -t pagelessfs -o pagesize=2M none /mnt/pl
pageless-guest memmap-save /tmp/memmap.base

# edu, behind the vIOMMU, to vfio-pci.
echo 1234 11e8 > /sys/bus/pci/drivers/vfio-pci/new_id
BDF=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then BDF=${d##*/}; fi
done
check edu-on-vfio-pci sh -c "[ -n '$BDF' ] && [ \$(basename \$(readlink /sys/bus/pci/devices/$BDF/driver)) = vfio-pci ] && echo $BDF group \$(basename \$(readlink /sys/bus/pci/devices/$BDF/iommu_group))"

# 3. VFIO DMA into PFN-only memory, and into a memfd as the control.
pageless-guest vfio-edu --bdf "$BDF" --file /mnt/pl/dma --name pagelessfs-vfio
pageless-guest vfio-edu --bdf "$BDF" --memfd --name memfd-vfio

wait_line() { # file pattern seconds
    i=0
    while [ $i -lt $(($3 * 2)) ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        i=$((i + 1))
        [ $((i % 60)) = 0 ] && say "waiting for '$2' in $1: $((i / 2)) s"
        sleep 0.5
    done
    return 1
}

# 1, 2 and 3b: a nested VM whose RAM comes from POOL, with a vhost-user disk through the
# relay to qemu-storage-daemon and edu passed through with vfio-pci.
run_inner() { # label pool
    label=$1 pool=$2 vm=inner-$1
    disk=/tmp/disk-$label.img qsd=/run/qsd-$label.sock log=/tmp/inner-$label.log
    host_tok="HOST-DISK-TOKEN-$label-$(rand_hex 8)"
    echo "$host_tok" > "$disk" && truncate -s 16M "$disk"
    qemu-storage-daemon --blockdev driver=file,node-name=f0,filename="$disk",cache.direct=off \
        --blockdev driver=raw,node-name=d0,file=f0 \
        --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$qsd",writable=on \
        >/tmp/qsd-$label.log 2>&1 &
    qsd_pid=$!
    for i in $(seq 100); do [ -S "$qsd" ] && break; sleep 0.1; done
    pageless serve --vm "$vm" --size 160M --pool "$pool" --run-dir $RUN --vhost-user disk0="$qsd" \
        --consumer-timeout 5 >/tmp/owner-$label.log 2>&1 &
    owner_pid=$!
    for i in $(seq 100); do pageless status --vm "$vm" --run-dir $RUN >/dev/null 2>&1 && break; sleep 0.1; done
    start=$(date +%s)
    pageless qemu --vm "$vm" --run-dir $RUN -- qemu-system-x86_64 -accel tcg -m 160M -nodefaults \
        -display none -monitor none -serial file:"$log" -no-reboot \
        -kernel /inner/vmlinuz -initrd /inner/initrd -append "console=ttyS0 panic=-1 quiet" \
        -chardev socket,id=disk0,path=$RUN/$vm/disk0.sock,reconnect-ms=1000 \
        -device vhost-user-blk-pci,chardev=disk0 -device vfio-pci,host="$BDF" \
        >/tmp/qemu-$label.err 2>&1 &
    qemu_pid=$!
    if wait_line "$log" INNER-READY "$INNER_BOOT_SECS"; then
        ok "$label-inner-boots" "in $(($(date +%s) - start)) s"
    else
        fail "$label-inner-boots" "no INNER-READY: $(tail -c 300 "$log" | tr '\n' ' ') $(tr '\n' ' ' < /tmp/qemu-$label.err)"
    fi
    sed "s/^/# inner-$label: /" "$log" | grep -v '^# inner-[a-z]*: $'
    echo "RESULT ${label}_inner_boot_secs=$(($(date +%s) - start))"

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
    check "$label-relay-consumer" sh -c "echo '$status' | grep -q '\"device\":\"disk0\",\"backend_socket\":\"$qsd\",\"backend_pid\":$qsd_pid'"
    check "$label-vfio-passthrough" sh -c "grep -q INNER-EDU '$log' && [ -e /proc/$qemu_pid ] && ls -l /proc/$qemu_pid/fd | grep -q /dev/vfio/"
    if [ "$label" = pagelessfs ]; then
        pageless-guest memmap-check /tmp/memmap.base struct-page-with-nested-vm
    fi
    kill "$qemu_pid"; wait "$qemu_pid" 2>/dev/null
    pageless stop --vm "$vm" --run-dir $RUN; wait "$owner_pid" 2>/dev/null
    kill "$qsd_pid"; wait "$qsd_pid" 2>/dev/null
    rm -f "/mnt/pl/$vm" "$disk"
}

run_inner pagelessfs pagelessfs:/mnt/pl
run_inner memfd memfd
umount /mnt/pl
check unload rmmod pageless
finish
