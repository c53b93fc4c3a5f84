# The inner (nested) guest of the seed scenario, after the prelude: writes a random token into
# its RAM, reads the host's token from its vhost-user disk and writes one back, reports the
# passed-through edu device, then idles until the outer guest stops it.
tok="PAGELESS-TOKEN-$(rand_hex 12)"
echo "$tok" > /run/token
echo "INNER-TOKEN $tok"
for i in $(seq 300); do [ -b /dev/vda ] && break; sleep 0.1; done
echo "INNER-DISK-READ $(head -c 64 /dev/vda | head -n 1)"
dtok="INNER-DISK-TOKEN-$(rand_hex 8)"
if printf '%s\n' "$dtok" | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; then
    echo "INNER-DISK-WROTE $dtok"
fi
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then echo "INNER-EDU ${d##*/}"; fi
done
echo INNER-READY
while true; do sleep 60; done
