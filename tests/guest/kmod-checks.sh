#!/bin/sh
# In-VM checks of the pagelessfs kernel module (driver/kmod), run from the initramfs /init.
#
# Contract (what the host-side harness must provide):
#   guest kernel   the 6.12 cloud kernel the module was built for (.cache/kernel/current)
#   kernel cmdline console=ttyS0 memmap=1G$4G memmap=512M$6G  (plus anything else, e.g. quiet
#                  panic=-1); QEMU: -m 6G (RAM must exist above 6.5G so both ranges sit
#                  inside the E820 map as "Reserved"), -smp 2, TCG is fine (~1 minute).
#                  For the refusals of ranges that are not RAM also memmap=256M$0x280000000
#                  (a reservation past the end of RAM: 10 GiB, above QEMU's 64-bit PCI window)
#                  and memmap=256M%0x1b0000000-1 (RAM taken out of the kernel's map, neither
#                  System RAM nor reserved); and QEMU's firmware "Reserved" entry at
#                  0xfd00000000 (the AMD HyperTransport hole, present with TCG's -cpu max)
#   /pageless.ko   the module (override: PAGELESS_KO=path)
#   PATH           must contain pageless-guest (tests/guest, e.g. a static build:
#                  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release
#                  -p pageless-guest --target x86_64-unknown-linux-gnu), busybox applets
#                  (sh, insmod, rmmod, mount, umount, dmesg, grep, dd, cmp, cp, df, truncate,
#                  mkdir, mv, rm, rmdir, stat, wc, tail, head, sed, sort, cat, tr)
#   /proc, /sys, /dev mounted (the script mounts them if not), /tmp writable (tmpfs or
#   initramfs)
#   optional env   PAGELESS_RANGES (default 1G@4G,512M@6G, must match memmap=),
#                  PAGELESS_STRESS_SECS (default 15), PAGELESS_BENCH=1 also runs bench-faults
#                  (it reserves 512 x 2M and, if possible, 1 x 1G hugetlb pages itself),
#                  PAGELESS_MCE_INJECT_KO (default /mce-inject.ko: the guest kernel's
#                  arch/x86/kernel/cpu/mce/mce-inject.ko.xz, decompressed; if absent the
#                  memory-error checks are skipped with a "#" line, no CHECK line)
# Output: one line per check, exactly "CHECK <name> ok <detail>" or "CHECK <name> FAIL
# <detail>", measurements as "RESULT <key>=<value>", commentary lines start with "#"; the
# last line is "CHECKS-DONE". The script never stops early: a failing step prints FAIL and
# the sequence goes on (the module is unloaded at the end if possible).

set -u
KO=${PAGELESS_KO:-/pageless.ko}
RANGES=${PAGELESS_RANGES:-1G@4G,512M@6G}
STRESS_SECS=${PAGELESS_STRESS_SECS:-15}
G=pageless-guest
M=/mnt/pageless
THP=/sys/kernel/mm/transparent_hugepage/enabled

. /checks-lib.sh
loaded() { grep -q '^pageless ' /proc/modules; }
claimed() { grep -q ' : pageless$' /proc/iomem; }

[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/kernel ] || mount -t sysfs sys /sys
[ -e /dev/null ] || mount -t devtmpfs dev /dev
mount | grep -q debugfs || mount -t debugfs none /sys/kernel/debug
mkdir -p /tmp
echo "# kmod-checks: kernel $(uname -r), cmdline: $(cat /proc/cmdline)"
echo "# ranges=$RANGES module=$KO"

# --- environment -------------------------------------------------------------------------
if grep -q 'memmap=' /proc/cmdline && [ -f "$KO" ] && command -v $G >/dev/null; then
	check environment ok "memmap= on the cmdline, $KO and $G present"
else
	check environment FAIL "need memmap= on the cmdline, $KO and $G on PATH"
fi
echo "# /proc/iomem (top level):"
grep -v '^ ' /proc/iomem | sed 's/^/#   /'

# --- bad loads: each fails with a clear message and leaves nothing behind -----------------
bad_load() { # name expected-message args...
	n=$1 want=$2
	shift 2
	dmesg_mark
	if insmod "$KO" "$@" 2>/tmp/insmod.err; then
		check "$n" FAIL "insmod $* succeeded"
		rmmod pageless
		return
	fi
	msg=$(dmesg_new | grep 'pageless:' | grep -v taint | sed 's/^\[[^]]*\] //' | uniq | tail -n 2 | tr '\n' ' ')
	if ! echo "$msg" | grep -q "$want"; then
		check "$n" FAIL "insmod $* failed but dmesg lacks '$want': $msg"
	elif loaded || claimed; then
		check "$n" FAIL "insmod $* failed but left the module or a claimed range behind"
	else
		check "$n" ok "insmod $* refused: $msg"
	fi
}
bad_load load-system-ram 'overlaps System RAM' ranges=512M@1G
bad_load load-partly-ram 'overlaps System RAM' ranges=2G@4G
bad_load load-overlap 'overlaps range' ranges=1G@4G,512M@0x120000000
bad_load load-unaligned 'multiples of 2 MiB' ranges=1G@0x100001000
bad_load load-not-reserved 'not wholly reserved memory' ranges=256M@0x1b0000000
bad_load load-unwind 'overlaps System RAM' ranges=1G@4G,512M@0x140000000
# Reserved in the kernel's map (so the checks above pass), but not RAM in the firmware's map.
reserved_top() { # iomem-range: a top-level "Reserved" entry of /proc/iomem
	grep -q "^$1 : Reserved\$" /proc/iomem
}
if reserved_top 280000000-28fffffff; then
	bad_load load-past-ram-end 'firmware reports no memory at \[0x280000000-0x28fffffff\]' \
		ranges=256M@0x280000000
	bad_load load-past-ram-end-unwind 'firmware reports no memory at' ranges=1G@4G,256M@0x280000000
else
	check load-past-ram-end FAIL "needs memmap=256M\$0x280000000 past the end of RAM"
	check load-past-ram-end-unwind FAIL "needs memmap=256M\$0x280000000 past the end of RAM"
fi
if reserved_top fd00000000-ffffffffff && grep -qx 0xfd00000000 /sys/firmware/memmap/*/start; then
	bad_load load-firmware-reserved 'firmware reports "Reserved" at \[0xfd00000000-0xfd001fffff\]' \
		ranges=2M@0xfd00000000
else
	check load-firmware-reserved FAIL "needs QEMU's firmware-reserved [0xfd00000000-0xffffffffff] (-cpu max under TCG)"
fi
bad_load load-parse 'cannot parse' ranges=1G
bad_load load-no-ranges 'no memory'

# --- load ---------------------------------------------------------------------------------
$G memmap-save /tmp/memmap.base
dmesg_mark
if insmod "$KO" ranges="$RANGES"; then
	check load ok "insmod ranges=$RANGES: $(dmesg_new | grep 'pageless:' | grep -c 'added to the pool') range(s) added"
else
	check load FAIL "insmod ranges=$RANGES failed: $(dmesg_new | tail -n 3 | tr '\n' ' ')"
fi
echo "# /proc/iomem after load:"
grep -B1 ' : pageless$' /proc/iomem | sed 's/^/#   /'
expect iomem-claimed "two 'pageless' resources nested in Reserved" \
	sh -c "[ \$(grep -c ' : pageless\$' /proc/iomem) = 2 ]"
$G memmap-check /tmp/memmap.base struct-page-after-load
$G pat "$RANGES" --name pat-write-back

# --- mounts -------------------------------------------------------------------------------
mkdir -p $M/1g $M/2m $M/4k $M/opt
for ps in 1g 2m 4k; do
	expect "mount-$ps" "mount -t pagelessfs -o pagesize=$ps" \
		mount -t pagelessfs -o pagesize=$(echo $ps | tr gmk GMK) none $M/$ps
done
expect mount-options "uid=1000,gid=100,mode=0770 on the root directory" \
	sh -c "mount -t pagelessfs -o pagesize=2M,uid=1000,gid=100,mode=0770 none $M/opt &&
	       stat -c '%u %g %a' $M/opt | grep -qx '1000 100 770' &&
	       grep \" $M/opt pagelessfs \" /proc/mounts | grep -q 'pagesize=2M,uid=1000,gid=100,mode=770' &&
	       umount $M/opt"
bad_mount() { # name expected-message options
	dmesg_mark
	if mount -t pagelessfs -o "$3" none $M/opt 2>/dev/null; then
		check "$1" FAIL "mount -o $3 succeeded"
		umount $M/opt
		return
	fi
	msg=$(dmesg_new | grep pagelessfs | sed 's/^\[[^]]*\] //' | tail -n 1)
	if echo "$msg" | grep -q "$2"; then check "$1" ok "mount -o $3 refused: $msg"; else
		check "$1" FAIL "mount -o $3 refused, but dmesg lacks '$2': $msg"; fi
}
bad_mount mount-bad-pagesize 'unsupported' pagesize=3M
bad_mount mount-bad-size 'not a size' pagesize=huge
bad_mount mount-unknown-option "Unknown parameter 'bogus'" pagesize=2M,bogus=1
df -k $M/1g $M/2m $M/4k | sed 's/^/# df: /'
# 1.5 GiB less the 2 MiB of the module's metadata (persist.c) at the top of 512M@6G.
expect df "df: 2M mount shows 1570816 KiB total" \
	sh -c "df -k $M/2m | tail -n 1 | grep -q ' 1570816 '"
$G memmap-check /tmp/memmap.base struct-page-after-mount
$G rmmod-busy pageless

# --- huge entries, THP never and always ---------------------------------------------------
for thp in never always; do
	if [ -w $THP ]; then echo $thp >$THP; fi
	$G faults --file $M/1g/touch --size 1G --max 2 --name "faults-1g-thp-$thp"
	$G faults --file $M/2m/touch --size 1G --max 514 --name "faults-2m-thp-$thp"
	$G faults --file $M/4k/touch --size 1G --min 262144 --max 262400 --name "faults-4k-thp-$thp"
done
[ -w $THP ] && echo always >$THP
$G odd-maps $M/2m
$G odd-maps $M/1g
$G pat "$RANGES" --name pat-after-faults

# --- sharing ------------------------------------------------------------------------------
$G share $M/2m
$G share $M/1g

# --- DMA isolation: no fork inheritance, seals, quarantine while a mapper lives -------------
$G fork-dontcopy $M/2m
$G seals $M/2m
$G quarantine-unlink $M/2m
$G quarantine-unlink $M/1g

# --- read/write, cp, dd, cmp, FIEMAP, directories -------------------------------------------
dd if=/dev/urandom of=/tmp/rnd bs=1M count=8 2>/dev/null
expect dd-cmp "truncate -s 8M, dd conv=notrunc in, cmp" sh -c "
	truncate -s 8M $M/2m/data && dd if=/tmp/rnd of=$M/2m/data bs=1M conv=notrunc 2>/dev/null &&
	cmp /tmp/rnd $M/2m/data"
expect cp-out "cp out of pagelessfs, cmp" sh -c "cp $M/2m/data /tmp/copy && cmp /tmp/rnd /tmp/copy"
expect dd-offset "dd skip/seek at odd offsets, cmp" sh -c "
	dd if=/tmp/rnd of=$M/2m/data bs=4096 skip=3 seek=1001 count=77 conv=notrunc 2>/dev/null &&
	dd if=$M/2m/data of=/tmp/back bs=4096 skip=1001 count=77 2>/dev/null &&
	dd if=/tmp/rnd of=/tmp/want bs=4096 skip=3 count=77 2>/dev/null && cmp /tmp/want /tmp/back"
expect dd-direct "dd iflag=direct out of pagelessfs (O_DIRECT open), cmp" sh -c "
	dd if=$M/2m/data of=/tmp/direct bs=1M iflag=direct 2>/dev/null && cmp $M/2m/data /tmp/direct"
truncate -s 1G $M/1g/frag
truncate -s 4M $M/4k/frag
$G fiemap $M/2m/data $M/1g/frag $M/4k/frag
rm -f $M/2m/data $M/1g/frag $M/4k/frag /tmp/rnd /tmp/copy /tmp/back /tmp/want /tmp/direct
expect directories "mkdir -p, truncate, rename, rmdir of a non-empty dir fails, unlink, rmdir" sh -c "
	mkdir -p $M/2m/libvirt/qemu/1-vm && truncate -s 4M $M/2m/libvirt/qemu/1-vm/pc.ram &&
	mv $M/2m/libvirt/qemu/1-vm $M/2m/libvirt/qemu/2-vm && ! rmdir $M/2m/libvirt/qemu/2-vm 2>/dev/null &&
	[ \$(stat -c %s $M/2m/libvirt/qemu/2-vm/pc.ram) = 4194304 ] &&
	rm $M/2m/libvirt/qemu/2-vm/pc.ram && rmdir $M/2m/libvirt/qemu/2-vm $M/2m/libvirt/qemu $M/2m/libvirt"

# --- scrubbing, errors, whole pool --------------------------------------------------------
$G scrub-unlink $M/2m
$G scrub-truncate $M/2m
$G scrub-unlink $M/1g
$G errors $M/2m
$G errors $M/1g
$G errors $M/4k
$G hold-pool $M/2m /tmp/memmap.base

# --- stress -------------------------------------------------------------------------------
$G stress --secs "$STRESS_SECS" $M/1g $M/2m $M/4k

# --- memory errors (optional: needs the kernel's mce-inject module) -----------------------
# The kernel reports memory errors asynchronously (the MCE decode chain's work): keep its
# messages off the console while these checks print, or they land inside a CHECK line (seen
# once on 7.3). dmesg still has them, for dmesg-clean and the checks themselves.
console_loglevel=$(cut -f1 /proc/sys/kernel/printk)
echo 1 >/proc/sys/kernel/printk
MCE_KO=${PAGELESS_MCE_INJECT_KO:-/mce-inject.ko}
if [ -f "$MCE_KO" ] && insmod "$MCE_KO"; then
	$G memory-error $M/2m
	$G memory-error $M/4k
	rmmod mce_inject
else
	echo "# memory-error checks skipped: no $MCE_KO (decompressed mce-inject.ko of the guest kernel)"
fi

# --- memory_failure() of pool pages: SIGBUS to the mappers on 6.19+, ignored before ----------
$G memory-failure $M/2m
$G memory-failure $M/4k
echo "$console_loglevel" >/proc/sys/kernel/printk

# --- benchmark (optional) -----------------------------------------------------------------
if [ "${PAGELESS_BENCH:-0}" = 1 ]; then
	echo 512 >/proc/sys/vm/nr_hugepages
	mkdir -p /mnt/huge2m /mnt/huge1g && mount -t hugetlbfs -o pagesize=2M none /mnt/huge2m
	h1g=/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
	huge1g=
	if [ -w $h1g ] && echo 1 >$h1g && [ "$(cat $h1g)" = 1 ] &&
		mount -t hugetlbfs -o pagesize=1G none /mnt/huge1g; then huge1g="--hugetlbfs /mnt/huge1g"; fi
	for thp in never always; do
		[ -w $THP ] && echo $thp >$THP
		$G bench-faults --pageless $M/1g --pageless $M/2m --pageless $M/4k --hugetlbfs /mnt/huge2m $huge1g
	done
	umount /mnt/huge2m
	[ -n "$huge1g" ] && umount /mnt/huge1g
	[ -w $h1g ] && echo 0 >$h1g
	echo 0 >/proc/sys/vm/nr_hugepages
fi

# --- unload and reload --------------------------------------------------------------------
# Quarantined memory keeps the module loaded (a device may still reach it by DMA), even with
# nothing mounted; it goes once the process that mapped it is gone.
$G quarantine-holder $M/2m/held >/tmp/holder.out 2>&1 &
holder=$!
for i in $(seq 100); do grep -q HOLDER-READY /tmp/holder.out && break; sleep 0.1; done
for ps in 1g 2m 4k; do umount $M/$ps; done
held=$(cat /sys/fs/pagelessfs/quarantined_bytes)
if rmmod pageless 2>/tmp/rmmod.err; then
	check unload-refused-quarantined FAIL "rmmod succeeded with $held bytes quarantined: $(cat /tmp/holder.out)"
	insmod "$KO" ranges="$RANGES"
	for ps in 1g 2m 4k; do mount -t pagelessfs -o pagesize=$(echo $ps | tr gmk GMK) none $M/$ps; done
	for ps in 1g 2m 4k; do umount $M/$ps; done
else
	check unload-refused-quarantined ok "nothing mounted, $held bytes quarantined by pid $holder: rmmod refused: $(tr '\n' ' ' </tmp/rmmod.err)"
fi
kill $holder
wait $holder 2>/dev/null
for i in $(seq 50); do [ "$(cat /sys/fs/pagelessfs/quarantined_bytes 2>/dev/null)" = 0 ] && break; sleep 0.1; done
echo "# quarantined_bytes after the holder exited: $(cat /sys/fs/pagelessfs/quarantined_bytes 2>&1)"
dmesg_mark
expect unload "rmmod after umount; ranges released" sh -c "rmmod pageless && ! claimed"
expect pat-released "no PAT entry left for the pool" sh -c \
	"! grep -q -e '0x0000000100000000-0x0000000140000000' -e '0x0000000180000000-0x00000001a0000000' \
	/sys/kernel/debug/x86/pat_memtype_list"
expect reload "insmod, mount, 512M file, umount, rmmod again" sh -c "
	insmod $KO ranges=$RANGES && mount -t pagelessfs -o pagesize=2M none $M/2m &&
	truncate -s 512M $M/2m/again && rm $M/2m/again && umount $M/2m && rmmod pageless"
$G memmap-check /tmp/memmap.base struct-page-after-unload

# --- kernel log ---------------------------------------------------------------------------
if dmesg | grep -q -E 'BUG|WARNING|Oops'; then
	check dmesg-clean FAIL "kernel log has BUG/WARNING/Oops lines: $(dmesg | grep -E 'BUG|WARNING|Oops' | head -n 3 | tr '\n' ' ')"
	dmesg | tail -n 60 | sed 's/^/# dmesg: /'
else
	check dmesg-clean ok "no BUG, WARNING or Oops in the kernel log"
fi
echo CHECKS-DONE
