# The nested guest of the live migration test (tests/vm/migrate-outer.sh), after the prelude:
# once a second it appends a fresh token to a tmpfs file (its RAM), writes it to sector
# 100 + (N mod 64) of its vhost-user disk (fsync) and prints `TICK N TOKEN`, wherever it runs.
for i in $(seq 300); do [ -b /dev/vda ] && break; sleep 0.1; done
echo INNER-READY
c=0
while true; do
    c=$((c + 1))
    tok="TICK-TOKEN-$c-$(rand_hex 8)"
    echo "$tok" >> /run/ticks
    printf '%s\n' "$tok" | dd of=/dev/vda bs=512 seek=$((100 + c % 64)) conv=fsync 2>/dev/null || echo "INNER-IO-FAILED $c"
    echo "TICK $c $tok"
    sleep 1
done
