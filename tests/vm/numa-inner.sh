# The inner guest of the NUMA test (tests/tests/numa_cells_nested.rs), after the prelude: says
# which NUMA nodes it sees and how much memory each has.
nodes=$(ls -d /sys/devices/system/node/node* 2>/dev/null | sed 's|.*/||' | tr '\n' ' ')
echo "INNER-NODES $nodes"
for n in /sys/devices/system/node/node*; do
    echo "INNER-NODE-MEM ${n##*/} $(awk '/MemTotal/ { print $4 }' "$n/meminfo") kB"
done
echo INNER-READY
sleep 600
