# Shell helpers of the kmod guest's check scripts (kmod-checks.sh, numa-checks.sh), sourced as
# /checks-lib.sh: CHECK lines, commands as checks, the kernel log since a mark.
check() { # name ok|FAIL detail...
	n=$1 s=$2
	shift 2
	echo "CHECK $n $s $*"
}
expect() { # name detail command... : ok if the command succeeds
	n=$1 d=$2
	shift 2
	if "$@" >/tmp/expect.out 2>&1; then check "$n" ok "$d"; else
		check "$n" FAIL "$d: $(tr '\n' ' ' </tmp/expect.out | head -c 300)"; fi
}
dmesg_mark() { DMESG_MARK=$(dmesg | wc -l); }
dmesg_new() { dmesg | tail -n +$((DMESG_MARK + 1)); }
