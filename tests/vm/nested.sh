# Shared by the outer guests that boot nested VMs (seed-outer.sh, bench-driver.sh): sourced
# after the prelude. Needs on PATH pageless, qemu-system-x86_64 and qemu-storage-daemon, and
# the nested guest's /inner/vmlinuz and /inner/initrd (tests/vm/seed-inner.sh).
RUN=/run/pageless
say() { echo "# $*"; }
now() { cut -d' ' -f1 /proc/uptime; } # seconds, 10 ms resolution
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# bind_edu: binds QEMU's edu device (1234:11e8), behind the vIOMMU, to vfio-pci; sets BDF.
bind_edu() {
    echo 1234 11e8 >/sys/bus/pci/drivers/vfio-pci/new_id
    BDF=
    for d in /sys/bus/pci/devices/*; do
        if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then BDF=${d##*/}; fi
    done
    check edu-on-vfio-pci sh -c "[ -n '$BDF' ] && [ \$(basename \$(readlink /sys/bus/pci/devices/$BDF/driver)) = vfio-pci ] && echo $BDF group \$(basename \$(readlink /sys/bus/pci/devices/$BDF/iommu_group))"
}

# wait_line FILE PATTERN SECONDS: waits for a line with PATTERN in FILE.
wait_line() {
    i=0
    while [ $i -lt $(($3 * 10)) ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        i=$((i + 1))
        [ $((i % 600)) = 0 ] && say "waiting for '$2' in $1: $((i / 10)) s"
        sleep 0.1
    done
    return 1
}

# start_nested VM POOL DISK LOG: qemu-storage-daemon exporting the image DISK, `pageless serve`
# owning VM's 160M on POOL (--consumer-timeout 5, plus $OWNER_ARGS if set) and relaying the
# disk, and `pageless qemu` booting the nested guest with the vhost-user disk and edu ($BDF)
# passed through with vfio-pci, its console in LOG.
# Sets qsd_sock, qsd_pid, owner_pid, qemu_pid and nested_start (when QEMU started, see now).
start_nested() {
    qsd_sock=/run/qsd-$1.sock
    qemu-storage-daemon --blockdev driver=file,node-name=f0,filename="$3",cache.direct=off \
        --blockdev driver=raw,node-name=d0,file=f0 \
        --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$qsd_sock",writable=on \
        >/tmp/qsd-$1.log 2>&1 &
    qsd_pid=$!
    for i in $(seq 100); do [ -S "$qsd_sock" ] && break; sleep 0.1; done
    pageless serve --vm "$1" --size 160M --pool "$2" --run-dir $RUN --vhost-user disk0="$qsd_sock" \
        --consumer-timeout 5 ${OWNER_ARGS:-} >/tmp/owner-$1.log 2>&1 &
    owner_pid=$!
    for i in $(seq 100); do pageless status --vm "$1" --run-dir $RUN >/dev/null 2>&1 && break; sleep 0.1; done
    nested_start=$(now)
    pageless qemu --vm "$1" --run-dir $RUN -- qemu-system-x86_64 -accel tcg -m 160M -nodefaults \
        -display none -monitor none -serial file:"$4" -no-reboot \
        -kernel /inner/vmlinuz -initrd /inner/initrd -append "console=ttyS0 panic=-1 quiet" \
        -chardev socket,id=disk0,path=$RUN/$1/disk0.sock,reconnect-ms=1000 \
        -device vhost-user-blk-pci,chardev=disk0 -device vfio-pci,host="$BDF" \
        >/tmp/qemu-$1.err 2>&1 &
    qemu_pid=$!
}

# alive PID: the process exists and is not a zombie (kill -0 succeeds on an unreaped child).
alive() { [ -r /proc/$1/stat ] && [ "$(sed 's/.*) //' /proc/$1/stat | cut -d' ' -f1)" != Z ]; }

# stop_nested VM: stops what start_nested started, the nested QEMU first.
stop_nested() {
    kill "$qemu_pid"; wait "$qemu_pid" 2>/dev/null
    pageless stop --vm "$1" --run-dir $RUN; wait "$owner_pid" 2>/dev/null
    kill "$qsd_pid"; wait "$qsd_pid" 2>/dev/null
}
