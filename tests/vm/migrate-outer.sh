# The outer guest of the nested live migration test (tests/tests/migration_nested.rs), after the
# prelude. Kernel cmdline memmap=768M$1G; expects /pageless.ko, /nested.sh, /inner/vmlinuz,
# /inner/initrd (tests/vm/migrate-inner.sh), pageless, QEMU and qemu-storage-daemon on PATH.
#
# Four "hosts" in one guest, each its own run directory, owner, qemu-storage-daemon and disk
# image: a (pagelessfs) → b (pagelessfs) → c (memfd) → d (pagelessfs). The nested guest boots on
# a and is live-migrated along the chain; QEMU is driven by QMP over pipe chardevs. After each
# migration: the destination runs the guest, which keeps ticking; RAM written before is in the
# destination owner's memory; a token written after is in the destination's memory and disk and
# in neither of the source's; the source's relay forwarded QEMU's dirty log; the source owner,
# asked to stop, waits for the source QEMU and stops once it has quit.
. /nested.sh
INNER_BOOT_SECS=${INNER_BOOT_SECS:-400}

check load insmod /pageless.ko ranges=768M@1G
mkdir -p /mnt/pl && check mount-2m mount -t pagelessfs -o pagesize=2M none /mnt/pl
check pool-dirs mkdir /mnt/pl/a /mnt/pl/b /mnt/pl/d

# side NAME POOL [FROM]: NAME's disk image (a copy of FROM's, else new), qemu-storage-daemon
# exporting it, and the owner of VM "mig" on POOL in /run/pl-NAME relaying it.
side() {
    if [ -n "${3:-}" ]; then cp "/tmp/disk-$3.img" "/tmp/disk-$1.img"; else truncate -s 16M "/tmp/disk-$1.img"; fi
    qemu-storage-daemon --blockdev driver=file,node-name=f0,filename="/tmp/disk-$1.img",cache.direct=off \
        --blockdev driver=raw,node-name=d0,file=f0 \
        --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=/run/qsd-$1.sock,writable=on \
        >/tmp/qsd-$1.log 2>&1 &
    eval "qsd_$1=$!"
    for i in $(seq 100); do [ -S /run/qsd-$1.sock ] && break; sleep 0.1; done
    pageless serve --vm mig --size 128M --pool "$2" --run-dir /run/pl-$1 --vhost-user disk0=/run/qsd-$1.sock \
        --consumer-timeout 5 >/tmp/owner-$1.log 2>&1 &
    eval "owner_$1=$!"
    for i in $(seq 100); do pageless status --vm mig --run-dir /run/pl-$1 >/dev/null 2>&1 && break; sleep 0.1; done
}

# qmp NAME JSON: sends a QMP command to NAME's QEMU (answers accumulate in /tmp/qmp-NAME.log).
qmp() { timeout 30 sh -c "printf '%s\n' '$2' > /tmp/qmp-$1.in"; }

# inner NAME [PORT]: the nested guest's QEMU through NAME's owner, with the vhost-user disk
# through NAME's relay; with PORT, waiting for an incoming migration on 127.0.0.1:PORT.
inner() {
    mkfifo /tmp/qmp-$1.in /tmp/qmp-$1.out
    cat /tmp/qmp-$1.out >/tmp/qmp-$1.log &
    pageless qemu --vm mig --run-dir /run/pl-$1 -- qemu-system-x86_64 -accel tcg -m 128M -nodefaults \
        -display none -monitor none -serial file:/tmp/inner-$1.log -no-reboot \
        -kernel /inner/vmlinuz -initrd /inner/initrd -append "console=ttyS0 panic=-1 quiet" \
        -chardev socket,id=disk0,path=/run/pl-$1/mig/disk0.sock,reconnect-ms=1000 \
        -device vhost-user-blk-pci,chardev=disk0 \
        -chardev pipe,id=qmp0,path=/tmp/qmp-$1 -mon chardev=qmp0,mode=control \
        ${2:+-incoming tcp:127.0.0.1:$2} >/tmp/qemu-$1.err 2>&1 &
    eval "qemu_$1=$!"
    qmp "$1" '{"execute":"qmp_capabilities"}'
}

# ticks NAME: the TICK lines of NAME's serial log.
ticks() { tr -d '\r' < /tmp/inner-$1.log | grep '^TICK '; }
# sector_has NAME N TOKEN: NAME's disk image holds TOKEN at sector 100 + N mod 64.
sector_has() { dd if=/tmp/disk-$1.img bs=512 skip=$((100 + $2 % 64)) count=1 2>/dev/null | grep -q "$3"; }
# found NAME TOKEN: NAME's owner finds TOKEN in the VM's memory.
found() { pageless find --vm mig --run-dir /run/pl-$1 "$2" | grep -q 0x; }

# migrate FROM TO PORT LABEL
migrate() {
    from=$1 to=$2 label=$4
    eval "qemu_from=\$qemu_$from owner_from=\$owner_$from"
    before=$(ticks "$from" | tail -n 1 | cut -d' ' -f3)
    inner "$to" "$3"
    wait_line /tmp/qmp-$to.log '"return"' 120 || say "$to: no QMP answer: $(cat /tmp/qemu-$to.err)"
    start=$(now)
    qmp "$from" "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:127.0.0.1:$3\"}}"
    i=0
    while [ $i -lt 600 ] && ! grep -Eq '"status": *"(completed|failed|cancelled)"' /tmp/qmp-$from.log; do
        qmp "$from" '{"execute":"query-migrate"}'; sleep 1; i=$((i + 1))
    done
    echo "RESULT ${label}_migration_secs=$(since "$start")"
    check "$label-migrates" grep -Eo '"status": *"completed"' /tmp/qmp-$from.log
    i=0
    while [ $i -lt 60 ] && ! grep -q '"status": *"running"' /tmp/qmp-$to.log; do
        qmp "$to" '{"execute":"query-status"}'; sleep 0.5; i=$((i + 1))
    done
    check "$label-destination-runs" grep -o '"status": *"running"' /tmp/qmp-$to.log

    # The guest ticks on the destination: a token written after the migration (the second
    # tick: the first one's token may have been made before the switch-over).
    i=0; while [ $i -lt 1200 ] && [ "$(ticks "$to" | wc -l)" -lt 2 ]; do sleep 0.1; i=$((i + 1)); done
    line=$(ticks "$to" | sed -n 2p); n=$(echo "$line" | cut -d' ' -f2); after=$(echo "$line" | cut -d' ' -f3)
    check "$label-guest-ticks-on" sh -c "[ -n '$after' ] && echo '$line'"
    check "$label-ram-moved" sh -c "[ -n '$before' ] && pageless find --vm mig --run-dir /run/pl-$to $before | grep 0x"
    check "$label-new-ram-in-destination" sh -c "pageless find --vm mig --run-dir /run/pl-$to $after | grep 0x"
    check "$label-new-ram-not-in-source" sh -c "! pageless find --vm mig --run-dir /run/pl-$from $after | grep -q 0x && echo absent"
    check "$label-disk-write-in-destination" sector_has "$to" "$n" "$after"
    check "$label-disk-write-not-in-source" sh -c "! dd if=/tmp/disk-$from.img bs=512 skip=$((100 + n % 64)) count=1 2>/dev/null | grep -q $after && echo absent"
    eval "qsd_to=\$qsd_$to"
    inode=$(pageless status --vm mig --run-dir /run/pl-$to --json | tr -d ' \n' | sed -n 's/.*"inode":\([0-9]*\).*/\1/p')
    check "$label-destination-backend-maps-owner-file" sh -c "[ -n '$inode' ] && awk '{print \$5}' /proc/$qsd_to/maps | grep -qx $inode && echo inode $inode"
    check "$label-source-relay-forwarded-dirty-log" grep -m1 "forwarding SET_LOG_BASE" /tmp/owner-$from.log

    # The source's owner, asked to stop while the source QEMU still exists, keeps the memory.
    pageless stop --vm mig --run-dir /run/pl-$from
    sleep 1
    alive "$owner_from" && owner_alive=yes || owner_alive=no
    check "$label-source-owner-waits-for-qemu" sh -c "[ $owner_alive = yes ] && pageless status --vm mig --run-dir /run/pl-$from --json | tr -d ' \n' | grep -o '\"waiting_for\":\[[^]]*' | grep '\"pid\":$qemu_from,'"
    qmp "$from" '{"execute":"quit"}'
    wait "$qemu_from" 2>/dev/null
    i=0; while [ $i -lt 300 ] && alive "$owner_from"; do sleep 0.1; i=$((i + 1)); done
    alive "$owner_from" && owner_alive=yes || owner_alive=no
    check "$label-source-owner-stops-after-qemu" sh -c "[ $owner_alive = no ] && echo stopped"
    eval "kill \$qsd_$from"
    grep -v '^$' /tmp/qemu-$from.err | sed "s/^/# qemu-$from: /"
}

side a pagelessfs:/mnt/pl/a
start_a=$(now)
inner a
if wait_line /tmp/inner-a.log '^TICK 3 ' "$INNER_BOOT_SECS"; then
    ok inner-boots "ticking after $(since "$start_a") s"
else
    fail inner-boots "$(tail -c 300 /tmp/inner-a.log | tr '\n' ' ') $(tr '\n' ' ' < /tmp/qemu-a.err)"
fi
side b pagelessfs:/mnt/pl/b a
migrate a b 4441 pl-to-pl
side c memfd b
migrate b c 4442 pl-to-memfd
side d pagelessfs:/mnt/pl/d c
migrate c d 4443 memfd-to-pl
grep -h -v DEBUG /tmp/owner-*.log | grep -E 'WARN|ERROR|refused' | sed 's/^/# owner: /'
eval "kill \$qemu_d"
finish
