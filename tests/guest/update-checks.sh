# A nested VM across the kexecs of tests/guest/persist-checks.sh (issue #10's live update):
# sourced by it as /update-checks.sh. The nested guest (tests/vm/update-inner.sh, 128M of RAM
# on the 2M pagelessfs volume, in $UPOOL/$UVM) counts on its console and keeps a random token
# in its RAM; `pageless update save` pauses it before each kexec and `pageless update restore`
# brings it back after it, on 6.12 and on 7.3.
#
# Contract (besides persist-checks.sh's):
#   two virtio disks: serial "state" (blank; made an ext2 filesystem on the first boot and
#                  mounted on /var/lib/pageless on every boot: the default state directory
#                  /var/lib/pageless/update lives there) and serial "tools" (an uncompressed
#                  newc cpio archive with QEMU, its libraries and firmware, pageless, and the
#                  nested guest's /inner/vmlinuz and /inner/initrd, unpacked into / on every
#                  boot: one copy for the three kernels instead of one per initramfs)
# Output: CHECK update-* lines; RESULT update_s<stage>_state_bytes / _ram_bytes at each save and
# update_s<stage>_paused_secs (from the save's pause to the resume, the kexec included); the nested
# guest's console is $ULOG on the state disk, appended to by every QEMU of it (a line cut by the
# pause is whole again in the file), so the counting goes on in one file across the kexecs.
U=/var/lib/pageless
UT=$U/test
UVM=upd
UPOOL=$M/2m/vms-upd
URUN=/run/pageless
ULOG=$UT/inner.log
URAM=134217728

# udisk SERIAL: the virtio disk with that serial.
udisk() {
	for b in /sys/block/vd*; do
		[ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] && echo "/dev/${b##*/}" && return 0
	done
	return 1
}

# update_disks STAGE: unpacks the tools, mounts the state disk (made on the first boot).
update_disks() {
	tools=$(udisk tools) && state=$(udisk state)
	if [ -z "$tools" ] || [ -z "$state" ]; then
		check "update-s$1-disks" FAIL "no disks with serials tools and state: $(ls /sys/block | tr '\n' ' ')"
		return
	fi
	(cd / && cpio -i -d -m <"$tools" 2>/tmp/cpio.err) ||
		check "update-s$1-tools" FAIL "cpio: $(tail -n 2 /tmp/cpio.err | tr '\n' ' ')"
	mkdir -p $U
	if [ "$1" = 1 ]; then mke2fs -q "$state" >/tmp/mke2fs.out 2>&1 ||
		check update-s1-mkfs FAIL "$(tr '\n' ' ' </tmp/mke2fs.out)"; fi
	expect "update-s$1-state-disk" "$state on $U" mount -t ext2 "$state" $U
	mkdir -p $UT
}

uticks() { tr -d '\r' <$ULOG | sed -n 's/.*TICK \([0-9]*\) .*/\1/p'; }
ulast() { uticks | tail -n 1; }
# uwait_tick N SECONDS: waits until the nested guest printed tick N.
uwait_tick() {
	i=0
	while [ $i -lt $(($2 * 10)) ]; do
		[ "$(ulast)" -ge "$1" ] 2>/dev/null && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

# update_start: the owner of the nested VM on the 2M volume and its QEMU through `pageless
# qemu`; waits for the nested guest's third tick and keeps its token on the state disk.
update_start() {
	mkdir -p $UPOOL
	pageless serve --vm $UVM --size 128M --pool pagelessfs:$UPOOL --run-dir $URUN >/tmp/owner-$UVM.log 2>&1 &
	for i in $(seq 300); do pageless status --vm $UVM --run-dir $URUN >/dev/null 2>&1 && break; sleep 0.1; done
	: >$ULOG
	t0=$(cut -d' ' -f1 /proc/uptime)
	pageless qemu --vm $UVM --run-dir $URUN -- qemu-system-x86_64 -accel tcg -m 128M -nodefaults \
		-display none -monitor none -chardev file,id=con0,path=$ULOG,append=on -serial chardev:con0 \
		-no-reboot -kernel /inner/vmlinuz -initrd /inner/initrd -append "console=ttyS0 panic=-1 quiet" \
		>/tmp/qemu-$UVM.err 2>&1 &
	if uwait_tick 3 500; then
		check update-inner-boots ok "ticking after $(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { print b - a }') s"
	else
		check update-inner-boots FAIL "$(tail -c 300 $ULOG | tr '\r\n' '  ') $(tr '\n' ' ' </tmp/qemu-$UVM.err) $(tail -n 5 /tmp/owner-$UVM.log | tr '\n' ' ')"
	fi
	# From the first tick: the newest line may still be on its way.
	tr -d '\r' <$ULOG | sed -n 's/.*TICK [0-9]* \(UPDATE-TOKEN-[0-9a-f]*\).*/\1/p' | head -n 1 >$UT/token
	echo "# update: the nested guest's token $(cat $UT/token)"
}

# update_save STAGE: `pageless update save`; the guest stops counting, the state is on the
# state disk and far smaller than the guest's RAM; the last tick is kept on the state disk.
update_save() {
	if pageless update save --vm $UVM --run-dir $URUN >/tmp/save.out 2>&1; then
		check "update-s$1-save" ok "$(tail -n 1 /tmp/save.out)"
	else
		check "update-s$1-save" FAIL "$(tr '\n' ' ' </tmp/save.out | tail -c 400)"
	fi
	sed 's/^/# save: /' /tmp/save.out
	last=$(ulast)
	sleep 3
	now=$(ulast)
	if [ -n "$last" ] && [ "$now" = "$last" ]; then check "update-s$1-paused" ok "last tick $last"; else
		check "update-s$1-paused" FAIL "tick $last at the save, $now 3 s later"; fi
	echo "$last" >$UT/last
	# The whole of the paused guest's RAM, to compare after the kexec.
	md5sum $UPOOL/$UVM | cut -d' ' -f1 >$UT/ram.md5
	size=$(stat -c %s $U/update/$UVM/state 2>/dev/null || echo 0)
	echo "RESULT update_s$1_state_bytes=$size"
	echo "RESULT update_s$1_ram_bytes=$URAM"
	if [ "$size" -gt 0 ] && [ $((size * 100)) -lt $URAM ]; then
		check "update-s$1-state-small" ok "state file $size bytes for $URAM bytes of guest RAM"
	else
		check "update-s$1-state-small" FAIL "state file $size bytes for $URAM bytes of guest RAM"
	fi
	sync
}

# update_restore STAGE: after a kexec: the VM's pagelessfs file is byte for byte what it was at
# the save and holds the token, before anything runs; `pageless update restore`; the guest counts on from its last tick, without a reboot,
# with the same token in its RAM.
update_restore() {
	tok=$(cat $UT/token) last=$(cat $UT/last)
	if [ -n "$tok" ] && grep -q -F "$tok" $UPOOL/$UVM; then check "update-s$1-token-in-file" ok "$tok in $UPOOL/$UVM"; else
		check "update-s$1-token-in-file" FAIL "token '$tok' not in $UPOOL/$UVM"; fi
	ram=$(md5sum $UPOOL/$UVM | cut -d' ' -f1)
	if [ "$ram" = "$(cat $UT/ram.md5)" ]; then check "update-s$1-ram-unchanged" ok "md5 $ram, as at the save"; else
		check "update-s$1-ram-unchanged" FAIL "md5 $ram, $(cat $UT/ram.md5) at the save"; fi
	t0=$(cut -d' ' -f1 /proc/uptime)
	if pageless update restore --vm $UVM --run-dir $URUN >/tmp/restore.out 2>&1; then
		check "update-s$1-restore" ok "$(tail -n 1 /tmp/restore.out)"
	else
		check "update-s$1-restore" FAIL "$(tr '\n' ' ' </tmp/restore.out | tail -c 600)"
	fi
	sed 's/^/# restore: /' /tmp/restore.out
	sed -n "s/.*paused for \([0-9.]*\) s.*/RESULT update_s$1_paused_secs=\1/p" /tmp/restore.out | tail -n 1
	if uwait_tick $((last + 3)) 120; then
		check "update-s$1-ticks-again" ok "tick $((last + 3)) $(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { print b - a }') s after the restore began"
	else
		check "update-s$1-ticks-again" FAIL "last tick $(ulast), saved at $last; $(tail -n 5 $URUN/$UVM.qemu.log 2>/dev/null | tr '\n' ' ')"
	fi
	# Every tick of the one boot, in order, without a gap or a restart: 1, 2, …, last, last+1, …
	if out=$(uticks | awk -v l="$last" '$1 != NR { print "tick " NR " is " $1; bad = 1; exit } END { if (!bad && NR <= l) { print "no tick after " l; bad = 1 } if (!bad) print "ticks 1.." NR ", saved at " l; exit bad }'); then
		check "update-s$1-counts-on" ok "$out"
	else
		check "update-s$1-counts-on" FAIL "$out"
	fi
	boots=$(grep -c INNER-READY $ULOG)
	if [ "$boots" = 1 ]; then check "update-s$1-no-reboot" ok "one INNER-READY"; else
		check "update-s$1-no-reboot" FAIL "$boots INNER-READY lines"; fi
	# Not the newest line, which the running guest may be writing.
	toks=$(tr -d '\r' <$ULOG | sed '$d' | sed -n 's/.*TICK [0-9]* \([^ ]*\).*/\1/p' | sort -u)
	if [ "$toks" = "$tok" ]; then check "update-s$1-token" ok "every tick shows $tok"; else
		check "update-s$1-token" FAIL "tokens: $(echo "$toks" | tr '\n' ' ')"; fi
}

# update_stop: QEMU and the owner of the nested VM gone (the module can be unloaded).
update_stop() {
	qpid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' $URUN/$UVM.qemu.json 2>/dev/null)
	[ -n "$qpid" ] && kill "$qpid"
	pageless stop --vm $UVM --run-dir $URUN >/dev/null 2>&1
	for i in $(seq 300); do pageless status --vm $UVM --run-dir $URUN >/dev/null 2>&1 || break; sleep 0.1; done
	for i in $(seq 100); do [ -n "$qpid" ] && [ -d /proc/$qpid ] || break; sleep 0.1; done
}

# update_refused: with the pool's files gone (the module loaded with another ranges= set), a
# restore of the saved VM refuses before it starts anything: its RAM did not survive.
update_refused() {
	if pageless update restore --vm $UVM --run-dir $URUN >/tmp/restore.out 2>&1; then
		check update-refused-without-ram FAIL "restored: $(tr '\n' ' ' </tmp/restore.out | tail -c 300)"
	elif grep -q 'did not survive the reboot' /tmp/restore.out && ! pageless status --vm $UVM --run-dir $URUN >/dev/null 2>&1; then
		check update-refused-without-ram ok "$(tail -n 1 /tmp/restore.out)"
	else
		check update-refused-without-ram FAIL "$(tr '\n' ' ' </tmp/restore.out | tail -c 300)"
	fi
}
