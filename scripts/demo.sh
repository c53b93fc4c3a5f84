#!/usr/bin/env bash
# The pageless demo: a QEMU guest (TCG) boots with its RAM served by `pageless serve` from a
# memfd pool; the guest writes a random token into its RAM, and the owner finds it through its
# own mapping of the VM's memory.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cargo build --quiet -p pageless -p pageless-tests --bins
pageless=$here/target/debug/pageless
testbed=$here/target/debug/pageless-testbed
work=$(mktemp -d)
run_dir=$work/run
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building a busybox initramfs whose /init writes a random token into guest RAM"
"$testbed" token-guest "$work/initrd"
kernel=$("$testbed" kernel)

say "pageless serve --vm demo --size 512M --pool memfd --run-dir $run_dir"
"$pageless" serve --vm demo --size 512M --pool memfd --run-dir "$run_dir" 2>"$work/owner.log" &
for _ in $(seq 100); do [ -S "$run_dir/demo.sock" ] && break; sleep 0.1; done
"$pageless" status --run-dir "$run_dir"

say "pageless qemu --vm demo -- qemu-system-x86_64 … (TCG, 6.12 cloud kernel)"
mkfifo "$work/console-in"
"$pageless" qemu --vm demo --run-dir "$run_dir" -- qemu-system-x86_64 \
    -accel tcg -cpu max -m 512M -nodefaults -display none -serial stdio -monitor none -no-reboot \
    -kernel "$kernel" -initrd "$work/initrd" -append "console=ttyS0 panic=-1 quiet" \
    <"$work/console-in" >"$work/console.log" 2>&1 &
exec 3>"$work/console-in"
token=""
for _ in $(seq 600); do
    token=$(sed -n 's/.*GUEST-TOKEN \(PAGELESS-TOKEN-[0-9a-f]*\).*/\1/p' "$work/console.log" | head -n1)
    [ -n "$token" ] && break
    sleep 0.2
done
[ -n "$token" ] || { echo "the guest did not boot:"; cat "$work/console.log"; exit 1; }
echo "the guest wrote: $token"

say "pageless find --vm demo $token   (the owner's own mapping of the VM's memory)"
offsets=$("$pageless" find --vm demo --run-dir "$run_dir" "$token")
[ -n "$offsets" ] || { echo "FAILED: the owner does not see the guest's token"; exit 1; }
echo "$offsets" | sed 's/^/  found at guest RAM offset /'
"$pageless" status --run-dir "$run_dir"

say "stopping the guest and the owner"
echo quit >&3
exec 3>&-
wait %2 || true
"$pageless" stop --vm demo --run-dir "$run_dir"
wait %1 || true
echo
echo "PROOF: the guest's random token $token is in the memory pageless serve owns."
