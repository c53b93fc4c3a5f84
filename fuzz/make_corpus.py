#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target under fuzz/corpus/<target>/: real messages, command
lines and configs, in each target's input format (see the header of fuzz_targets/<target>.rs).
Deterministic: re-running rewrites the same files. Run it after changing a format.

    python3 fuzz/make_corpus.py
"""

import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# vhost-user (protocol/src/frame.rs): header = request, flags, size (native-endian u32: x86 LE).
VERSION_1, REPLY, NEED_REPLY = 0x1, 0x4, 0x8
# vhost-user request codes (the vhost-user spec).
GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_KICK = 8, 9, 10, 12
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_MAX_MEM_SLOTS = 15, 16, 36
ADD_MEM_REG, REM_MEM_REG = 37, 38
# The owner's control protocol (protocol/src/control.rs).
HELLO, GET_MEMORY, STATUS, FIND, STOP, WRITE = 1, 2, 3, 4, 5, 6


def frame(request, payload=b"", flags=VERSION_1):
    return struct.pack("<III", request, flags, len(payload)) + payload


def region(gpa, size, uaddr, offset):
    return struct.pack("<QQQQ", gpa, size, uaddr, offset)


def mem_table(regions):
    return struct.pack("<II", len(regions), 0) + b"".join(regions)


def single_region(r):
    return struct.pack("<Q", 0) + r


GIB, MIB = 1 << 30, 1 << 20
# QEMU's usual layout of a 4 GiB x86 guest: below and above the PCI hole, one fd.
LOW = region(0, 3 * GIB, 0x7F0000000000, 0)
HIGH = region(4 * GIB, GIB, 0x7F00C0000000, 3 * GIB)
SMALL = region(0, 256 * MIB, 0x7F1000000000, 0)


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def frames():
    # byte 0: bit 7 = control limits, bits 0-6 = fds with the first message.
    start = (
        frame(GET_FEATURES)
        + frame(SET_OWNER)
        + frame(SET_FEATURES, struct.pack("<Q", 0x1_4000_0000))
        + frame(GET_PROTOCOL_FEATURES)
    )
    write("frame", "qemu-start", b"\x00" + start)
    write("frame", "set-mem-table-2-fds", b"\x02" + frame(SET_MEM_TABLE, mem_table([LOW, HIGH]), VERSION_1 | NEED_REPLY))
    write("frame", "add-mem-reg-fd", b"\x01" + frame(ADD_MEM_REG, single_region(SMALL), VERSION_1 | NEED_REPLY))
    write("frame", "vring-setup", b"\x00" + frame(SET_VRING_NUM, struct.pack("<II", 0, 256))
          + frame(SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, 0x7F0000001000, 0x7F0000002000, 0x7F0000003000, 0))
          + frame(SET_VRING_BASE, struct.pack("<II", 0, 0)))
    write("frame", "kick-fd", b"\x01" + frame(SET_VRING_KICK, struct.pack("<Q", 0)))
    write("frame", "reply", b"\x00" + frame(GET_MAX_MEM_SLOTS, struct.pack("<Q", 509), VERSION_1 | REPLY))
    write("frame", "control-hello", b"\x80" + frame(HELLO, struct.pack("<I", 1) + b"qemu") + frame(GET_MEMORY))
    write("frame", "truncated", b"\x00" + frame(SET_MEM_TABLE, mem_table([LOW]))[:-5])
    write("frame", "too-large", b"\x00" + struct.pack("<III", SET_MEM_TABLE, VERSION_1, 1 << 20))
    write("frame", "too-many-fds", b"\x41" + frame(SET_MEM_TABLE, mem_table([LOW])))


def memory_tables():
    # byte 0: fds attached; the rest: the payload.
    write("memory_table", "one-region", b"\x01" + mem_table([SMALL]))
    write("memory_table", "two-regions", b"\x02" + mem_table([LOW, HIGH]))
    write("memory_table", "eight-regions", b"\x08" + mem_table([region(i * GIB, GIB, 0x7F0000000000 + i * GIB, i * GIB) for i in range(8)]))
    write("memory_table", "fd-missing", b"\x01" + mem_table([LOW, HIGH]))
    write("memory_table", "wrapping-region", b"\x01" + mem_table([region(2**64 - 4096, 8192, 0, 0)]))
    write("memory_table", "single-region", b"\x00" + single_region(SMALL))
    write("memory_table", "single-high", b"\x00" + single_region(HIGH))


def control_requests():
    # byte 0: fds with the first message; the rest: what a client sends.
    hello = frame(HELLO, struct.pack("<I", 1) + b"qemu")
    write("control_request", "qemu", b"\x00" + hello + frame(GET_MEMORY))
    write("control_request", "status", b"\x00" + frame(HELLO, struct.pack("<I", 1) + b"status") + frame(STATUS))
    write("control_request", "find", b"\x00" + frame(HELLO, struct.pack("<I", 1) + b"find") + frame(FIND, b"GUEST-TOKEN 0123456789abcdef"))
    write("control_request", "write", b"\x00" + frame(HELLO, struct.pack("<I", 1) + b"write") + frame(WRITE, struct.pack("<Q", 0x100000) + b"token\n"))
    write("control_request", "stop", b"\x00" + frame(HELLO, struct.pack("<I", 1) + b"stop") + frame(STOP))
    write("control_request", "hello-with-fd", b"\x01" + hello)
    write("control_request", "hello-version-2", b"\x00" + frame(HELLO, struct.pack("<I", 2) + b"hook"))
    write("control_request", "reply-flag", b"\x00" + frame(GET_MEMORY, flags=VERSION_1 | REPLY))


def qemu_args():
    # bytes 0-7: the owner's size, little-endian (top nibble 0: 1 GiB, 1: 512 MiB, 2: 4 GiB);
    # then the arguments separated by NUL.
    def args(size_selector, argv):
        return struct.pack("<Q", size_selector << 60) + b"\0".join(a.encode() for a in argv)

    gib, half, four = 0, 1, 2
    # What scripts/demo.sh and the tests' guests pass (tests/src/vm.rs).
    write("qemu_args", "demo", args(half, ["-accel", "tcg", "-cpu", "max", "-m", "512M", "-smp", "1", "-nodefaults",
                                          "-display", "none", "-serial", "stdio", "-kernel", "vmlinuz", "-initrd", "initrd",
                                          "-append", "console=ttyS0 panic=-1 quiet", "-no-reboot"]))
    # libvirt 11 (q35, memfd backing, JSON -object).
    write("qemu_args", "libvirt-q35", args(gib, [
        "-name", "guest=web1,debug-threads=on", "-S",
        "-object", '{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-1-web1/master-key.aes"}',
        "-machine", "pc-q35-10.0,usb=off,dump-guest-core=off,memory-backend=pc.ram,acpi=on",
        "-accel", "tcg", "-cpu", "qemu64",
        "-m", "size=1048576k",
        "-object", '{"qom-type":"memory-backend-memfd","id":"pc.ram","share":true,"x-use-canonical-path-for-ramblock-id":false,"size":1073741824}',
        "-overcommit", "mem-lock=off", "-smp", "1,sockets=1,cores=1,threads=1",
        "-uuid", "8f4a0e4e-2f2a-4b1f-9d1b-2a6c1c7d9e10", "-display", "none", "-no-user-config", "-nodefaults",
        "-chardev", "socket,id=charmonitor,fd=30,server=on,wait=off", "-mon", "chardev=charmonitor,id=monitor,mode=control",
        "-rtc", "base=utc", "-no-shutdown", "-boot", "strict=on",
        "-kernel", "/tmp/d/vmlinuz", "-initrd", "/tmp/d/initrd", "-append", "console=ttyS0 panic=-1 quiet",
        "-chardev", "socket,id=chr-vu-vua-disk0,path=/run/pageless/web1/disk0.sock",
        "-device", '{"driver":"vhost-user-blk-pci","chardev":"chr-vu-vua-disk0","id":"ua-disk0","bus":"pcie.0","addr":"0x3"}',
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-msg", "timestamp=on"]))
    # Two NUMA nodes (libvirt's ram-node<N>), keyval syntax.
    write("qemu_args", "numa-keyval", args(gib, [
        "-name", "numa", "-m", "1G",
        "-object", "memory-backend-memfd,id=ram-node0,size=512M,share=on",
        "-numa", "node,nodeid=0,cpus=0,memdev=ram-node0",
        "-object", "memory-backend-ram,id=ram-node1,size=536870912,prealloc=on",
        "-numa", "node,nodeid=1,cpus=1,memdev=ram-node1", "-smp", "2"]))
    write("qemu_args", "numa-json", args(four, [
        "-m", "4G",
        "-object", '{"qom-type":"memory-backend-file","id":"ram-node0","mem-path":"/dev/hugepages","size":2147483648,"prealloc":true}',
        "-numa", "node,nodeid=0,memdev=ram-node0",
        "-object", '{"qom-type":"memory-backend-file","id":"ram-node1","mem-path":"/dev/hugepages","size":2147483648}',
        "-numa", "node,nodeid=1,memdev=ram-node1"]))
    write("qemu_args", "machine-backend", args(gib, ["-machine", "q35,memory-backend=r", "-object", "memory-backend-ram,id=r,size=1G", "-m", "1024"]))
    write("qemu_args", "maxmem", args(four, ["-m", "size=4G,slots=2,maxmem=8G", "-name", "guest=a,,b"]))
    write("qemu_args", "conflicts", args(gib, ["-mem-path", "/dev/hugepages", "-mem-prealloc"]))
    write("qemu_args", "missing-value", args(gib, ["-nographic", "-m"]))
    # Regression: two NUMA backends whose sizes overflowed u64 when added (a panic, found with
    # this target).
    write("qemu_args", "numa-sizes-overflow", args(gib, [
        "-object", "memory-backend-ram,id=n0,size=9223372036854775808", "-numa", "node,memdev=n0",
        "-object", "memory-backend-ram,id=n1,size=9223372036854775808", "-numa", "node,memdev=n1"]))


def hook_configs():
    # NUL-separated: VM name, TOML config (none if empty), domain XML, qemu.conf (none if empty).
    def hook(vm, toml, xml, qemu_conf=""):
        return b"\0".join(s.encode() for s in (vm, toml, xml, qemu_conf))

    readme_toml = """# /etc/pageless/vms/web1.toml
size = "4G"
pool = "memfd"
run_dir = "/run/pageless"
qemu_user = "root"
consumer_timeout = 30
start_timeout = 30
remove_on_exit = false
prefault = false

[[vhost_user]]
name = "disk0"
backend = "/run/qsd/web1-disk0.sock"
"""
    domain = """<domain type='qemu'>
  <name>web1</name>
  <metadata>
    <pageless:vm xmlns:pageless="https://pageless.dev/xmlns/libvirt/1" pool="dir:/dev/shm/pageless" remove-on-exit="yes" allow-uid="64055, 1000">
      <pageless:vhost-user name="disk0" backend="/run/qsd/web1-disk0.sock"/>
    </pageless:vm>
  </metadata>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/tmp/d/vmlinuz</kernel>
  </os>
  <devices>
    <emulator>/usr/local/bin/pageless-qemu</emulator>
    <memballoon model='none'/>
  </devices>
</domain>
"""
    numa = """<domain type='kvm'>
  <name>numa1</name>
  <metadata><pageless:vm xmlns:pageless="https://pageless.dev/xmlns/libvirt/1" pool="memfd:2M" qemu-user="+0" consumer-timeout="10" prefault="no"/></metadata>
  <memory unit='KiB'>2097152</memory>
  <cpu>
    <numa>
      <cell id='0' cpus='0' memory='1048576' unit='KiB'/>
      <cell id='1' cpus='1' memory='1' unit='GiB'/>
    </numa>
  </cpu>
</domain>
"""
    write("hook_config", "toml-readme", hook("web1", readme_toml, ""))
    write("hook_config", "toml-allow-uid", hook("vm1", 'size = 1073741824\npool = "memfd:2M"\nallow_uid = [64055, 1000]\n', "<domain><memory unit='GiB'>1</memory></domain>"))
    write("hook_config", "toml-size-from-xml", hook("vm2", 'pool = "dir:/dev/shm/p"\nallow_uid = 1000\n', domain))
    write("hook_config", "metadata", hook("web1", "", domain))
    write("hook_config", "metadata-numa", hook("numa1", "", numa))
    numatune = numa.replace("<cpu>", "<numatune><memory mode='strict' nodeset='0-1'/><memnode cellid='0' mode='strict' nodeset='0'/>"
                            "<memnode cellid='1' mode='strict' nodeset='1-1'/></numatune><cpu>")
    write("hook_config", "metadata-numatune", hook("numa1", "", numatune))
    # NUMA cells whose sizes overflow when added, with a configured size (the cells' sum is
    # then checked against it).
    write("hook_config", "numa-cells-overflow-sized", hook("vm1", 'size = "1G"\n', "<domain>"
          "<cpu><numa><cell memory='9223372036854775808' unit='b'/><cell memory='9223372036854775808' unit='b'/></numa></cpu></domain>", ""))
    write("hook_config", "qemu-conf", hook("web1", "", domain.replace(' allow-uid="64055, 1000"', ""), 'user = "root"\ngroup = "root"\n'))
    write("hook_config", "not-pageless", hook("other", "", "<domain><name>other</name><memory>1000</memory></domain>"))
    write("hook_config", "bad-name", hook("../etc", "size = \"1G\"\n", ""))
    # Regression: NUMA cells whose sizes overflowed u64 when added (a panic, found with this target).
    write("hook_config", "numa-cells-overflow", hook("vm1", "", '<domain><metadata><pageless:vm xmlns:pageless="https://pageless.dev/xmlns/libvirt/1"/></metadata>'
          "<cpu><numa><cell memory='9223372036854775808' unit='b'/><cell memory='9223372036854775808' unit='b'/></numa></cpu></domain>", ""))


if __name__ == "__main__":
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    frames()
    memory_tables()
    control_requests()
    qemu_args()
    hook_configs()
