# The outer guest of the NUMA test (tests/tests/numa_cells_nested.rs), after the prelude. QEMU
# gives it two NUMA nodes (node 0 and node 1, 1G each). `pageless serve` serves a VM of two
# memfd cells bound to host nodes 0 and 1; `pageless qemu` boots the inner guest with one
# `-numa node,memdev=` per cell. Checked: the outer guest has two nodes, the inner guest sees two
# nodes of 128M, every page of cell N is on host node N (all of it, mapped and asked with
# move_pages(2) by pageless-guest, and what the guest touched in QEMU's numa_maps), and
# `pageless status` lists both cells.
# Expects /inner/vmlinuz, /inner/initrd (tests/vm/numa-inner.sh), pageless, pageless-guest and
# QEMU on PATH.
RUN=/run/pageless
now() { cut -d' ' -f1 /proc/uptime; }
INNER_BOOT_SECS=${INNER_BOOT_SECS:-600}

check outer-two-nodes sh -c '[ -d /sys/devices/system/node/node0 ] && [ -d /sys/devices/system/node/node1 ] && echo $(ls -d /sys/devices/system/node/node*)'

pageless serve --vm numa --run-dir $RUN --prefault \
    --cell 0:128M:memfd@node=0 --cell 1:128M:memfd@node=1 >/tmp/owner.log 2>&1 &
owner_pid=$!
for i in $(seq 100); do pageless status --vm numa --run-dir $RUN >/dev/null 2>&1 && break; sleep 0.1; done
check owner-serves-cells sh -c "pageless status --vm numa --run-dir $RUN | grep -E '^  cell (0|1) ' | tr '\n' ';' | grep 'cell 0 .*host node 0' | grep 'cell 1 .*host node 1'"

start=$(now)
pageless qemu --vm numa --run-dir $RUN -- qemu-system-x86_64 -accel tcg -m 256M -smp 1 -nodefaults \
    -display none -monitor none -serial file:/tmp/inner.log -no-reboot \
    -object memory-backend-ram,id=m0,size=128M -object memory-backend-ram,id=m1,size=128M \
    -numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,memdev=m1 \
    -kernel /inner/vmlinuz -initrd /inner/initrd -append "console=ttyS0 panic=-1 quiet" \
    >/tmp/qemu.err 2>&1 &
qemu_pid=$!
i=0
while [ $i -lt $((INNER_BOOT_SECS * 10)) ] && ! grep -q INNER-READY /tmp/inner.log 2>/dev/null; do
    kill -0 $qemu_pid 2>/dev/null || break
    sleep 0.1; i=$((i + 1))
done
sed 's/^/# inner: /' /tmp/inner.log
echo "RESULT inner_boot_secs=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
check inner-boots grep -q INNER-READY /tmp/inner.log
# (The serial log's lines end in \r\n.)
check inner-sees-two-nodes sh -c "tr -d '\\r' < /tmp/inner.log | grep -x 'INNER-NODES node0 node1 '"
# Each inner node has its cell's 128M, less what the firmware and kernel keep.
check inner-node-sizes sh -c "grep INNER-NODE-MEM /tmp/inner.log | awk '{ if (\$3 < 65536 || \$3 > 131072) bad = 1; n++ } END { print n \" nodes\"; exit bad || n != 2 }'"

# numa_line PID CELL: the numa_maps line of PID's mapping of cell CELL's memfd.
numa_line() { grep "pageless:numa.cell$2" /proc/$1/numa_maps | head -n 1; }
# pages_on LINE NODE: the pages LINE counts on NODE (0 if none).
pages_on() { echo "$1" | tr ' ' '\n' | sed -n "s/^N$2=//p" | awk '{ s += $1 } END { print s + 0 }'; }
# cell_fd CELL: the owner's fd of cell CELL's memfd, as a /proc path.
cell_fd() { for fd in /proc/$owner_pid/fd/*; do readlink "$fd" | grep -q "pageless:numa.cell$1 " && { echo "$fd"; return; }; done; }

for cell in 0 1; do
    other=$((1 - cell))
    # All of the cell (the owner pre-faulted it): every page on node CELL.
    pageless-guest numa-pages "$(cell_fd $cell)" --node $cell --name cell$cell-all-pages-on-node$cell
    # What the inner guest touched, as QEMU maps it.
    line=$(numa_line $qemu_pid $cell)
    echo "# qemu numa_maps cell $cell: $line"
    on=$(pages_on "$line" $cell); off=$(pages_on "$line" $other)
    if [ "$on" -gt 0 ] && [ "$off" = 0 ]; then
        ok qemu-cell$cell-on-node$cell "the guest touched $on pages, all on node $cell"
    else
        fail qemu-cell$cell-on-node$cell "$on pages on node $cell, $off on node $other: $line"
    fi
done

kill $qemu_pid; wait $qemu_pid 2>/dev/null
pageless stop --vm numa --run-dir $RUN; wait $owner_pid 2>/dev/null
check owner-stops sh -c "! kill -0 $owner_pid 2>/dev/null"
grep -v '^$' /tmp/qemu.err | sed 's/^/# qemu: /'
finish
