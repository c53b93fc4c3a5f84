#!/bin/sh
# In-VM checks that pagelessfs files survive kexec (driver/kmod/persist.c), run from the
# initramfs /init of each kernel the guest kexecs into; tests/tests/kexec_vm.rs drives them.
#
# Contract (what the host-side harness must provide):
#   kernel cmdline memmap=1G$4G memmap=512M$6G (QEMU -m 6G) and pageless.stage=N: 1 on the first
#                  boot (6.12), 2 after a kexec into the same kernel, 3 after a kexec into 7.3;
#                  the script passes the same command line, with the next stage, to the next kernel
#   /ko/$(uname -r).ko  the module built for each kernel
#   /kexec/vmlinuz, /kexec/initrd  the next stage's kernel and initramfs (stages 1 and 2)
#   PATH           pageless-guest (tests/guest) and busybox applets
#   /update-checks.sh  the nested VM that rides along the kexecs (its own contract there)
# Output: CHECK lines (checks-lib.sh), "SNAP <tag> ..." lines of pageless-guest persist-snapshot
# (the host compares the tags s1, s2, s2b and s3: the same files, owners, sizes, contents,
# physical extents and pool use; the nested VM's file in every one, and its RAM unchanged from
# a save to the restore after the kexec); /init prints CHECKS-DONE when the script returns.
set -u
G=pageless-guest
M=/mnt/p
RANGES=1G@4G,512M@6G
KO=/ko/$(uname -r).ko
MOUNTS="$M/1g $M/2m $M/4k"

. /checks-lib.sh
. /update-checks.sh

stage=$(sed -n 's/.*pageless\.stage=\([0-9]*\).*/\1/p' /proc/cmdline)
stage=${stage:-1}
echo "# persist-checks: stage $stage, kernel $(uname -r)"
update_disks "$stage"

mount_all() {
	mkdir -p $M/1g $M/2m $M/4k &&
	mount -t pagelessfs -o pagesize=1G none $M/1g &&
	mount -t pagelessfs -o pagesize=2M none $M/2m &&
	mount -t pagelessfs -o pagesize=4K,uid=1000,gid=100,mode=0750 none $M/4k
}
unload() { umount $M/1g $M/2m $M/4k; rmmod pageless; }
# load NAME EXPECTED [insmod args...]: insmod with RANGES; NAME ok if the module's metadata
# lines in the kernel log match EXPECTED.
load() {
	n=$1 want=$2
	shift 2
	dmesg_mark
	if insmod "$KO" ranges="$RANGES" "$@"; then
		msg=$(dmesg_new | grep -e 'pageless: metadata' -e 'pageless: discard' | sed 's/^\[[^]]*\] //' | tr '\n' ' ')
		if echo "$msg" | grep -q -e "$want"; then check "$n" ok "$msg"; else
			check "$n" FAIL "kernel log lacks '$want': $msg"; fi
	else
		check "$n" FAIL "insmod failed: $(dmesg_new | tail -n 3 | tr '\n' ' ')"
	fi
	mount_all || check "$n-mount" FAIL "mount failed"
	# Placement is exact only once the free space is back from the scrubber.
	for i in $(seq 600); do [ "$(cat /sys/fs/pagelessfs/scrubbing_bytes)" = 0 ] && break; sleep 0.1; done
}
# empty NAME: nothing under the mounts, the whole pool free.
empty() {
	left=$(find $MOUNTS -mindepth 1 | tr '\n' ' ')
	if [ -z "$left" ]; then check "$1" ok "every mount empty"; else check "$1" FAIL "left: $left"; fi
	$G persist-snapshot "$1" $MOUNTS --no-quarantine | grep -v '^SNAP'
}
next() { # STAGE: kexec into /kexec/vmlinuz with this command line and pageless.stage=STAGE
	cmdline="$(sed 's/ *pageless\.stage=[0-9]*//' /proc/cmdline) pageless.stage=$1"
	$G kexec /kexec/vmlinuz /kexec/initrd "$cmdline"
	check "kexec-stage-$1" FAIL "kexec returned"
	exit 1
}

case $stage in
1)
	load persist-fresh 'none yet'
	# Files with random content in directories, several owners and modes, a hard link, an
	# empty file; a file that is gone (unlinked) and one shrunk before the kexec.
	expect persist-fill "files, directories, owners, a link, renames" sh -c "
		mkdir -p $M/2m/vms/a/b $M/4k/conf $M/2m/old &&
		truncate -s 64M $M/2m/vms/a/ram &&
		dd if=/dev/urandom of=$M/2m/vms/a/ram bs=1M count=4 seek=10 conv=notrunc 2>/dev/null &&
		truncate -s 1G $M/1g/big &&
		dd if=/dev/urandom of=$M/1g/big bs=1M count=2 seek=700 conv=notrunc 2>/dev/null &&
		truncate -s 12K $M/4k/conf/small &&
		dd if=/dev/urandom of=$M/4k/conf/small bs=4K count=3 conv=notrunc 2>/dev/null &&
		truncate -s 6M $M/2m/vms/a/b/deep &&
		dd if=/dev/urandom of=$M/2m/vms/a/b/deep bs=1M count=6 conv=notrunc 2>/dev/null &&
		touch $M/2m/empty && ln $M/2m/vms/a/ram $M/2m/ram-link &&
		chmod 0600 $M/2m/vms/a/ram && chown 1234:567 $M/2m/vms/a/ram &&
		chmod 0711 $M/2m/vms && chown 42:43 $M/2m/vms/a/b &&
		truncate -s 8M $M/2m/gone && rm $M/2m/gone &&
		truncate -s 10M $M/2m/shrunk && truncate -s 4M $M/2m/shrunk &&
		mv $M/2m/old $M/2m/renamed && mv $M/2m/vms/a/b/deep $M/2m/renamed/deep2"
	# Memory quarantined when the kernel goes: free after the kexec (no process survives).
	$G quarantine-holder $M/2m/held >/tmp/holder.out 2>&1 &
	for i in $(seq 100); do grep -q HOLDER-READY /tmp/holder.out && break; sleep 0.1; done
	# The nested VM on the 2M volume, paused and saved before the kexec.
	update_start
	update_save 1
	$G persist-snapshot s1 $MOUNTS
	# A volume that is not mounted keeps its files too.
	umount $M/4k
	next 2
	;;
2)
	load persist-recover 'recovered 7 files'
	$G persist-snapshot s2 $MOUNTS --no-quarantine
	# A torn update: the newest generation (shrunk grown back to 8M, one commit) fails its
	# checksum, so the generation before it is believed and the grown part is free again.
	truncate -s 8M $M/2m/shrunk
	unload
	$G meta-scribble $RANGES torn
	load persist-torn 'believing slot'
	$G persist-snapshot s2b $MOUNTS --no-quarantine
	# The nested VM, restored on the same kernel, then saved again for the next kexec.
	update_restore 2
	update_save 2
	$G persist-snapshot u2 $MOUNTS --no-quarantine
	next 3
	;;
3)
	load persist-upgrade 'recovered 7 files'
	$G persist-snapshot s3 $MOUNTS --no-quarantine
	# The nested VM, restored on 7.3, saved again and stopped (as a reboot would) before the
	# module is unloaded; with the files gone below, its restore is refused.
	update_restore 3
	update_save 3
	update_stop
	unload
	# Another ranges= set: not believed, everything scrubbed, and gone for good.
	dmesg_mark
	insmod "$KO" ranges=512M@4G,512M@6G
	msg=$(dmesg_new | grep 'pageless: metadata' | sed 's/^\[[^]]*\] //' | tr '\n' ' ')
	if echo "$msg" | grep -q 'another ranges= set'; then check persist-other-ranges ok "$msg"; else
		check persist-other-ranges FAIL "$msg"; fi
	rmmod pageless
	load persist-other-ranges-reload 'not believed: .*recorded for another ranges= set'
	update_refused
	empty persist-other-ranges-empty
	# An attacker's metadata with valid checksums: an extent outside the pool, two files
	# sharing memory.  Either one means nothing is believed.
	truncate -s 2M $M/2m/x1 $M/2m/x2
	unload
	$G meta-scribble $RANGES outside
	load persist-outside 'outside the pool'
	empty persist-outside-empty
	truncate -s 2M $M/2m/x1 $M/2m/x2
	unload
	$G meta-scribble $RANGES overlap
	load persist-overlap 'two extents overlap'
	empty persist-overlap-empty
	# Both slots damaged.
	truncate -s 2M $M/2m/x1
	unload
	$G meta-scribble $RANGES both
	load persist-both 'slot A: .*slot B: '
	empty persist-both-empty
	# The explicit discard, which also sticks.
	truncate -s 2M $M/2m/x1
	unload
	load persist-discard 'discard=1' discard=1
	empty persist-discard-empty
	unload
	load persist-discard-kept 'recovered 0 files'
	empty persist-discard-kept-empty
	unload
	if dmesg | grep -q -E 'BUG|WARNING|Oops'; then
		check persist-dmesg-clean FAIL "$(dmesg | grep -E 'BUG|WARNING|Oops' | head -n 3 | tr '\n' ' ')"
	else
		check persist-dmesg-clean ok "no BUG, WARNING or Oops in the kernel log"
	fi
	;;
esac
