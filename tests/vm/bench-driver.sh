# The outer guest of the driver benchmark (tests/benches/driver.rs), after the prelude.
# Expects: /pageless.ko; /mods/{libnvdimm,nd_e820,nd_btt,nd_pmem,device_dax,dax_pmem}.ko (not
# loaded: the System RAM baseline is taken before any pmem memmap exists); /nested.sh; /inner/vmlinuz and
# /inner/initrd (tests/vm/seed-inner.sh); on PATH pageless, pageless-guest, ndctl,
# qemu-system-x86_64, qemu-storage-daemon; the vfio-pci modules loaded. QEMU: q35 with
# -device intel-iommu -device edu, -m 10G; kernel cmdline intel_iommu=on memmap=1G$4G
# memmap=512M$6G (the pagelessfs pool) memmap=1G!8G (legacy pmem for device-dax)
# hugepagesz=1G hugepages=1 (keeps a free 1 GiB-aligned GiB for run-time 1G pages).
# Prints RESULT lines (measurements) and CHECK lines (every step that can fail), then
# CHECKS-DONE.
. /nested.sh
RANGES=1G@4G,512M@6G
G=pageless-guest
INNER_RUNS=${INNER_RUNS:-2}
INNER_BOOT_SECS=${INNER_BOOT_SECS:-400}
H1G=/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
phase() { say "phase $1 at $(now) s"; }

phase setup
check load insmod /pageless.ko ranges=$RANGES
for ps in 1G 2M 4K; do
    d=/mnt/pl/$(echo $ps | tr GMK gmk)
    mkdir -p "$d" && check "mount-$ps" mount -t pagelessfs -o pagesize=$ps none "$d"
done
echo "RESULT thp=$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled)"

# 1. struct page bytes per GiB. System RAM, pagelessfs and hugetlb first, before any pmem
# driver has given the pmem range a memmap; then device-dax over the legacy pmem range
# (nd_e820 finds it, nd_pmem binds it raw, ndctl turns it into devdax). ndctl needs /sys and
# /dev (devtmpfs: without it "failed to reconfigure namespace"), not /run, udev or
# /lib/modules (the modules are loaded here).
phase struct-page
# Leaves 1 GiB of free HVO-off 2M and 1G pages for the hugetlbfs benchmarks below (and the HVO
# pages in files under /run/pageless-hugetlb: freeing them would hit a kernel bug).
$G struct-page --ram --ranges $RANGES --pageless /mnt/pl/1g --hugetlb
for m in libnvdimm nd_e820 nd_btt nd_pmem device_dax dax_pmem; do
    insmod /mods/$m.ko || say "insmod $m failed"
done
check pmem-namespace sh -c 'for i in $(seq 100); do [ -e /sys/bus/nd/devices/namespace0.0 ] && ls /sys/bus/nd/devices | tr "\n" " " && exit 0; sleep 0.1; done; exit 1'
$G struct-page --devdax namespace0.0

# 2. First touch of 1 GiB: pagelessfs 1G/2M/4K vs memfd, anonymous memory and hugetlbfs.
phase faults
F2M=/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages
F1G=/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages
check hugepages sh -c "[ \$(cat $F2M) -ge 512 ] && [ \$(cat $F1G) -ge 1 ] && echo free: \$(cat $F2M) x 2M, \$(cat $F1G) x 1G"
mkdir -p /mnt/huge2m /mnt/huge1g
check mount-hugetlbfs sh -c 'mount -t hugetlbfs -o pagesize=2M none /mnt/huge2m && mount -t hugetlbfs -o pagesize=1G none /mnt/huge1g'
$G bench-faults --pageless /mnt/pl/1g --pageless /mnt/pl/2m --pageless /mnt/pl/4k \
    --hugetlbfs /mnt/huge2m --hugetlbfs /mnt/huge1g

# 5. The scrubber against memset of 1 GiB on the same core (CPU 0).
phase scrub
$G bench-scrub /mnt/pl/1g --size 1G

# 3. VFIO_IOMMU_MAP_DMA of 1 GiB: edu, behind the vIOMMU, bound to vfio-pci gives the container.
phase vfio
bind_edu
# One process per pagelessfs mount: memory freed from a file that a living process mapped (and
# here VFIO-mapped) stays quarantined until that process exits, and the pool holds one GiB.
$G vfio-map-bench --bdf "$BDF" --pageless /mnt/pl/1g --hugetlbfs /mnt/huge1g /mnt/huge2m \
    --memfd --size 1G --runs 3
$G vfio-map-bench --bdf "$BDF" --pageless /mnt/pl/2m --size 1G --runs 3
umount /mnt/huge2m /mnt/huge1g
# Give the free (HVO-off) pages back; the held HVO pages are in use and stay.
echo 512 >/proc/sys/vm/nr_hugepages
echo 1 >$H1G

# 4. The seed scenario's nested VM (tests/vm/seed-outer.sh's run_inner: 160M of RAM from the
# pool, a vhost-user disk through the owner's relay to qemu-storage-daemon, edu passed through
# with vfio-pci), booted on pagelessfs (2M mount) and memfd: seconds from QEMU's start to the
# inner guest's INNER-READY. One warm-up boot first (not counted), then INNER_RUNS of each in
# ABBA order, so that neither kind always boots first.
run_inner() { # label pool run
    label=$1 pool=$2 n=$3 vm=inner-$1-$3
    disk=/tmp/disk-$vm.img log=/tmp/$vm.log
    echo "HOST-DISK-TOKEN-$vm" >"$disk" && truncate -s 16M "$disk"
    start_nested "$vm" "$pool" "$disk" "$log"
    if wait_line "$log" INNER-READY "$INNER_BOOT_SECS"; then
        secs=$(since "$nested_start")
        echo "RESULT inner_boot_secs_${label}_$n=$secs"
        status=$(pageless status --vm "$vm" --run-dir $RUN --json | tr -d ' \n')
        case "$status" in
            *"\"memory\":\"$label\""*) ok "$vm-boots" "INNER-READY after $secs s on $label memory" ;;
            *) fail "$vm-boots" "the owner's memory is not $label: $status" ;;
        esac
        check "$vm-disk-and-vfio" sh -c "grep -q 'INNER-DISK-READ HOST-DISK-TOKEN-$vm' '$log' && grep -q INNER-EDU '$log'"
    else
        fail "$vm-boots" "no INNER-READY in $INNER_BOOT_SECS s: $(tail -c 300 "$log" | tr '\n' ' ') $(tr '\n' ' ' </tmp/qemu-$vm.err)"
    fi
    stop_nested "$vm"
    rm -f "/mnt/pl/2m/$vm" "$disk"
}
phase inner
[ "$INNER_RUNS" -gt 0 ] && run_inner memfd memfd 0
n=1
while [ $n -le "$INNER_RUNS" ]; do
    if [ $((n % 2)) = 1 ]; then
        run_inner pagelessfs pagelessfs:/mnt/pl/2m $n
        run_inner memfd memfd $n
    else
        run_inner memfd memfd $n
        run_inner pagelessfs pagelessfs:/mnt/pl/2m $n
    fi
    n=$((n + 1))
done

phase done
for ps in 1g 2m 4k; do umount /mnt/pl/$ps; done
check unload rmmod pageless
if dmesg | grep -q -E 'BUG|WARNING|Oops'; then
    fail dmesg-clean "$(dmesg | grep -E 'BUG|WARNING|Oops' | head -n 3 | tr '\n' ' ')"
else
    ok dmesg-clean "no BUG, WARNING or Oops in the kernel log"
fi
finish
