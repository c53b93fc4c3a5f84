# The nested guest of the kexec live-update test (tests/guest/update-checks.sh), after the
# prelude: a random token in its RAM (a tmpfs file), then once a second `TICK N TOKEN`, the
# count in the shell's memory and the token read back from RAM, wherever and whenever it runs.
echo "UPDATE-TOKEN-$(rand_hex 16)" >/run/token
echo INNER-READY
c=0
while true; do
    c=$((c + 1))
    echo "TICK $c $(cat /run/token)"
    sleep 1
done
