//! `vfio-edu`: a device DMAs into PFN-only memory through VFIO type1, set up from scratch with
//! the raw ioctls of include/uapi/linux/vfio.h, with QEMU's `edu` device (hw/misc/edu.c) as
//! the device. Also the container/group plumbing that `vfio-map-bench` shares.
//!
//! The round trip: a random pattern is written through the buffer's mapping at offset A, the
//! device reads it (RAM → its internal buffer), then writes it back at offset B (its buffer →
//! RAM), and B is read back through the file's read path (pread) and through the mapping. B is
//! checked to be zero before, and after VFIO_IOMMU_UNMAP_DMA the same device write must no
//! longer reach the memory (the IOMMU, not a coincidence, routed it).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::*;

// --- include/uapi/linux/vfio.h ---------------------------------------------------------------
// Every VFIO ioctl is _IO(VFIO_TYPE, VFIO_BASE + n): no size or direction bits, the structs
// carry their own argsz.

const VFIO_TYPE: u64 = b';' as u64;
const VFIO_BASE: u64 = 100;

const fn vfio_io(n: u64) -> u64 {
    (VFIO_TYPE << 8) | (VFIO_BASE + n)
}

const VFIO_GET_API_VERSION: u64 = vfio_io(0);
const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio_io(5);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_DEVICE_GET_INFO: u64 = vfio_io(7);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
const VFIO_IOMMU_GET_INFO: u64 = vfio_io(12);
const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: u32 = 1;
const VFIO_TYPE1V2_IOMMU: u32 = 3;

const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;

const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;

const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;

const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;

/// struct vfio_group_status
#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

/// struct vfio_device_info
#[repr(C)]
#[derive(Default)]
struct DeviceInfo {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
    cap_offset: u32,
    pad: u32,
}

/// struct vfio_region_info
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct RegionInfo {
    argsz: u32,
    pub flags: u32,
    pub index: u32,
    cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// struct vfio_iommu_type1_info (fixed part; the capability chain follows in the buffer)
#[repr(C)]
#[derive(Default)]
struct IommuType1Info {
    argsz: u32,
    flags: u32,
    iova_pgsizes: u64,
    cap_offset: u32,
    pad: u32,
}

/// struct vfio_iommu_type1_dma_map
#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// struct vfio_iommu_type1_dma_unmap (without the dirty bitmap data[])
#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// ioctl with a pointer argument.
///
/// # Safety
/// `arg` must point to a live value of the type the ioctl `req` expects on `fd`.
unsafe fn ioctl_ptr<T>(fd: RawFd, req: u64, arg: *mut T) -> io::Result<i32> {
    // SAFETY: the caller guarantees that arg matches what the kernel reads/writes for req.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// ioctl with an integer argument (or none).
fn ioctl_int(fd: RawFd, req: u64, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: the VFIO ioctls used with this helper take their argument by value (an int:
    // extension, IOMMU type, fd) or ignore it; no memory is passed.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An error with what failed and the errno's name, e.g. `VFIO_SET_IOMMU: EINVAL`.
fn ctx(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {} ({e})", errno_name(&e)))
}

fn open_rw_dev(path: &str) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path).map_err(ctx(format!("open {path}")))
}

/// The IOMMU group number of a PCI device, from /sys/bus/pci/devices/<bdf>/iommu_group.
pub fn iommu_group(bdf: &str) -> io::Result<String> {
    let link = format!("/sys/bus/pci/devices/{bdf}/iommu_group");
    let target = std::fs::read_link(&link).map_err(ctx(format!("readlink {link}")))?;
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::other(format!("{link} -> {}: no group number", target.display())))
}

/// The driver a PCI device is bound to (for error messages).
fn pci_driver(bdf: &str) -> String {
    std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "none".into())
}

pub struct IommuInfo {
    pub pgsizes: u64,
    /// Valid IOVA ranges, inclusive ends (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE).
    pub ranges: Vec<(u64, u64)>,
}

impl IommuInfo {
    pub fn describe(&self) -> String {
        let ranges: Vec<String> = self.ranges.iter().map(|(a, b)| format!("{a:#x}-{b:#x}")).collect();
        format!("iova_pgsizes {:#x}, iova ranges [{}]", self.pgsizes, ranges.join(", "))
    }

    /// Whether [iova, iova+size) lies inside one valid range (no range cap: anything goes).
    pub fn allows(&self, iova: u64, size: u64) -> bool {
        self.ranges.is_empty() || self.ranges.iter().any(|&(a, b)| iova >= a && iova + (size - 1) <= b)
    }
}

/// A VFIO container with one group attached and a type1 IOMMU set.
pub struct Vfio {
    container: File,
    group: File,
    pub group_id: String,
    pub iommu_type: u32,
    pub api_version: i32,
    attached: bool,
}

impl Vfio {
    /// /dev/vfio/vfio, API version, type1 extension, the device's group (viable), the group
    /// attached to the container, the type1 IOMMU set (v2 if available).
    pub fn open(bdf: &str) -> io::Result<Vfio> {
        let container = open_rw_dev("/dev/vfio/vfio")?;
        let cfd = container.as_raw_fd();
        let api_version = ioctl_int(cfd, VFIO_GET_API_VERSION, 0).map_err(ctx("VFIO_GET_API_VERSION"))?;
        if api_version != VFIO_API_VERSION {
            return Err(io::Error::other(format!(
                "VFIO_GET_API_VERSION = {api_version}, expected {VFIO_API_VERSION}"
            )));
        }
        let iommu_type = if ioctl_int(cfd, VFIO_CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU.into())
            .map_err(ctx("VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU)"))?
            > 0
        {
            VFIO_TYPE1V2_IOMMU
        } else if ioctl_int(cfd, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU.into())
            .map_err(ctx("VFIO_CHECK_EXTENSION(VFIO_TYPE1_IOMMU)"))?
            > 0
        {
            VFIO_TYPE1_IOMMU
        } else {
            return Err(io::Error::other(
                "neither VFIO_TYPE1v2_IOMMU nor VFIO_TYPE1_IOMMU is supported (vfio_iommu_type1 not loaded?)",
            ));
        };

        let group_id = iommu_group(bdf)?;
        let group = open_rw_dev(&format!("/dev/vfio/{group_id}")).map_err(|e| {
            io::Error::new(e.kind(), format!("{e}; {bdf} is bound to driver {}", pci_driver(bdf)))
        })?;
        let gfd = group.as_raw_fd();
        let mut st = GroupStatus { argsz: std::mem::size_of::<GroupStatus>() as u32, flags: 0 };
        // SAFETY: st is a struct vfio_group_status with argsz set, as VFIO_GROUP_GET_STATUS expects.
        unsafe { ioctl_ptr(gfd, VFIO_GROUP_GET_STATUS, &mut st) }.map_err(ctx("VFIO_GROUP_GET_STATUS"))?;
        if st.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other(format!(
                "group {group_id} is not viable (flags {:#x}): bind every device of /sys/kernel/iommu_groups/{group_id}/devices to vfio-pci",
                st.flags
            )));
        }
        let mut container_fd: libc::c_int = cfd;
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads an int (the container fd) from the pointer.
        unsafe { ioctl_ptr(gfd, VFIO_GROUP_SET_CONTAINER, &mut container_fd) }
            .map_err(ctx("VFIO_GROUP_SET_CONTAINER"))?;
        // From here on, dropping `vfio` detaches the group again.
        let vfio = Vfio { container, group, group_id, iommu_type, api_version, attached: true };
        ioctl_int(cfd, VFIO_SET_IOMMU, iommu_type.into())
            .map_err(ctx(format!("VFIO_SET_IOMMU({iommu_type})")))?;
        Ok(vfio)
    }

    pub fn iommu_name(&self) -> &'static str {
        if self.iommu_type == VFIO_TYPE1V2_IOMMU {
            "VFIO_TYPE1v2_IOMMU"
        } else {
            "VFIO_TYPE1_IOMMU"
        }
    }

    /// VFIO_IOMMU_GET_INFO: page sizes and the IOVA range capability.
    pub fn iommu_info(&self) -> io::Result<IommuInfo> {
        let fd = self.container.as_raw_fd();
        let mut head =
            IommuType1Info { argsz: std::mem::size_of::<IommuType1Info>() as u32, ..Default::default() };
        // SAFETY: head is a struct vfio_iommu_type1_info with argsz = its size.
        unsafe { ioctl_ptr(fd, VFIO_IOMMU_GET_INFO, &mut head) }.map_err(ctx("VFIO_IOMMU_GET_INFO"))?;
        let pgsizes = if head.flags & VFIO_IOMMU_INFO_PGSIZES != 0 { head.iova_pgsizes } else { 0 };
        let mut ranges = Vec::new();
        let need = head.argsz as usize;
        if head.flags & VFIO_IOMMU_INFO_CAPS != 0 && need > std::mem::size_of::<IommuType1Info>() {
            // u64 words: the buffer is 8-aligned like the kernel's structs.
            let mut buf = vec![0u64; need.div_ceil(8)];
            // SAFETY: the buffer holds at least `need` bytes and starts like the fixed struct;
            // argsz is written in its first u32 (little-endian: the low half of word 0).
            unsafe { buf.as_mut_ptr().cast::<u32>().write(need as u32) };
            // SAFETY: argsz tells the kernel the buffer's size; it writes at most that much.
            unsafe { ioctl_ptr(fd, VFIO_IOMMU_GET_INFO, buf.as_mut_ptr()) }
                .map_err(ctx("VFIO_IOMMU_GET_INFO (caps)"))?;
            let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let u16_at = |o: usize| u16::from_ne_bytes([bytes[o], bytes[o + 1]]);
            let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
            let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
            let mut off = u32_at(16) as usize; // cap_offset
            let mut hops = 0;
            while off != 0 && off + 8 <= bytes.len() && hops < 64 {
                let (id, next) = (u16_at(off), u32_at(off + 4) as usize);
                if id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE && off + 16 <= bytes.len() {
                    let n = u32_at(off + 8) as usize;
                    for i in 0..n {
                        let o = off + 16 + 16 * i;
                        if o + 16 > bytes.len() {
                            break;
                        }
                        ranges.push((u64_at(o), u64_at(o + 8)));
                    }
                }
                off = next;
                hops += 1;
            }
        }
        Ok(IommuInfo { pgsizes, ranges })
    }

    /// VFIO_IOMMU_MAP_DMA of [vaddr, vaddr+size) at iova, readable and writable by the device.
    pub fn map_dma(&self, vaddr: usize, iova: u64, size: u64) -> io::Result<()> {
        let mut m = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size,
        };
        // SAFETY: m is a struct vfio_iommu_type1_dma_map with argsz set; the kernel validates
        // the user address range itself.
        unsafe { ioctl_ptr(self.container.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &mut m) }
            .map_err(ctx(format!("VFIO_IOMMU_MAP_DMA(vaddr {vaddr:#x}, iova {iova:#x}, size {size:#x})")))?;
        Ok(())
    }

    /// VFIO_IOMMU_UNMAP_DMA; returns the size the kernel reports unmapped.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<u64> {
        let mut u = DmaUnmap { argsz: std::mem::size_of::<DmaUnmap>() as u32, flags: 0, iova, size };
        // SAFETY: u is a struct vfio_iommu_type1_dma_unmap with argsz set (no bitmap flag).
        unsafe { ioctl_ptr(self.container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut u) }
            .map_err(ctx(format!("VFIO_IOMMU_UNMAP_DMA(iova {iova:#x}, size {size:#x})")))?;
        Ok(u.size)
    }

    /// VFIO_GROUP_GET_DEVICE_FD(bdf) and the device's BAR0 and config regions.
    pub fn device(&self, bdf: &str) -> io::Result<Device> {
        let name = CString::new(bdf).map_err(io::Error::other)?;
        // SAFETY: VFIO_GROUP_GET_DEVICE_FD reads a NUL-terminated device name.
        let fd =
            unsafe { ioctl_ptr(self.group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr().cast_mut()) }
                .map_err(ctx(format!("VFIO_GROUP_GET_DEVICE_FD({bdf})")))?;
        // SAFETY: the ioctl returned a new descriptor that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut info = DeviceInfo { argsz: std::mem::size_of::<DeviceInfo>() as u32, ..Default::default() };
        // SAFETY: info is a struct vfio_device_info with argsz set.
        unsafe { ioctl_ptr(file.as_raw_fd(), VFIO_DEVICE_GET_INFO, &mut info) }
            .map_err(ctx("VFIO_DEVICE_GET_INFO"))?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 || info.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX {
            return Err(io::Error::other(format!(
                "not a vfio-pci device: flags {:#x}, {} regions",
                info.flags, info.num_regions
            )));
        }
        let region = |index: u32| -> io::Result<RegionInfo> {
            let mut ri =
                RegionInfo { argsz: std::mem::size_of::<RegionInfo>() as u32, index, ..Default::default() };
            // SAFETY: ri is a struct vfio_region_info with argsz and index set.
            unsafe { ioctl_ptr(file.as_raw_fd(), VFIO_DEVICE_GET_REGION_INFO, &mut ri) }
                .map_err(ctx(format!("VFIO_DEVICE_GET_REGION_INFO({index})")))?;
            let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            if ri.size == 0 || ri.flags & rw != rw {
                return Err(io::Error::other(format!(
                    "region {index}: size {:#x}, flags {:#x}: not a readable and writable region",
                    ri.size, ri.flags
                )));
            }
            Ok(ri)
        };
        let bar0 = region(VFIO_PCI_BAR0_REGION_INDEX)?;
        let config = region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        Ok(Device {
            file,
            bar0,
            config,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
            saved_cmd: None,
        })
    }

    /// VFIO_GROUP_UNSET_CONTAINER (every device fd must be closed before).
    pub fn detach(&mut self) -> io::Result<()> {
        if self.attached {
            self.attached = false;
            ioctl_int(self.group.as_raw_fd(), VFIO_GROUP_UNSET_CONTAINER, 0)
                .map_err(ctx("VFIO_GROUP_UNSET_CONTAINER"))?;
        }
        Ok(())
    }
}

impl Drop for Vfio {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// Group status of a group nobody holds: (viable, container set). Opening it at all proves
/// the previous user let it go (a group has one opener at a time: EBUSY otherwise).
pub fn group_status(group_id: &str) -> io::Result<(bool, bool)> {
    let group = open_rw_dev(&format!("/dev/vfio/{group_id}"))?;
    let mut st = GroupStatus { argsz: std::mem::size_of::<GroupStatus>() as u32, flags: 0 };
    // SAFETY: st is a struct vfio_group_status with argsz set.
    unsafe { ioctl_ptr(group.as_raw_fd(), VFIO_GROUP_GET_STATUS, &mut st) }
        .map_err(ctx("VFIO_GROUP_GET_STATUS"))?;
    Ok((st.flags & VFIO_GROUP_FLAGS_VIABLE != 0, st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET != 0))
}

// --- the device --------------------------------------------------------------------------------

const PCI_VENDOR_ID: u64 = 0x00;
const PCI_DEVICE_ID: u64 = 0x02;
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;

// hw/misc/edu.c: BAR0 registers (32-bit accesses below 0x80, 32 or 64 above).
const EDU_VENDOR: u16 = 0x1234;
const EDU_DEVICE: u16 = 0x11e8;
const EDU_ID: u64 = 0x00; // 0xRRrr00ed: major, minor, 0xed
const EDU_LIVENESS: u64 = 0x04; // reads back the complement of what was written
const EDU_DMA_SRC: u64 = 0x80;
const EDU_DMA_DST: u64 = 0x88;
const EDU_DMA_CNT: u64 = 0x90;
const EDU_DMA_CMD: u64 = 0x98;
const EDU_DMA_RUN: u32 = 0x1;
const EDU_DMA_TO_RAM: u32 = 0x2; // direction 1: device buffer → RAM
pub(crate) const EDU_BUF: u64 = 0x40000; // the device's internal buffer, as a DMA address
pub(crate) const EDU_BUF_SIZE: u64 = 4096;
const EDU_DMA_MASK: u64 = (1 << 28) - 1;

/// An open vfio-pci device: reads and writes go through the device fd at region offsets.
pub struct Device {
    file: File,
    pub bar0: RegionInfo,
    pub config: RegionInfo,
    pub num_regions: u32,
    pub num_irqs: u32,
    saved_cmd: Option<u16>,
}

impl Device {
    fn bar_read32(&self, reg: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.file
            .read_exact_at(&mut b, self.bar0.offset + reg)
            .map_err(ctx(format!("BAR0 read {reg:#x}")))?;
        Ok(u32::from_le_bytes(b))
    }

    fn bar_write32(&self, reg: u64, v: u32) -> io::Result<()> {
        self.file
            .write_all_at(&v.to_le_bytes(), self.bar0.offset + reg)
            .map_err(ctx(format!("BAR0 write {reg:#x}")))
    }

    pub fn cfg_read16(&self, reg: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.file
            .read_exact_at(&mut b, self.config.offset + reg)
            .map_err(ctx(format!("config read {reg:#x}")))?;
        Ok(u16::from_le_bytes(b))
    }

    fn cfg_write16(&self, reg: u64, v: u16) -> io::Result<()> {
        self.file
            .write_all_at(&v.to_le_bytes(), self.config.offset + reg)
            .map_err(ctx(format!("config write {reg:#x}")))
    }

    /// Sets memory decoding and bus mastering in the command register (restored on drop).
    /// Returns (before, after).
    pub fn enable_bus_master(&mut self) -> io::Result<(u16, u16)> {
        let before = self.cfg_read16(PCI_COMMAND)?;
        self.saved_cmd.get_or_insert(before);
        self.cfg_write16(PCI_COMMAND, before | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)?;
        Ok((before, self.cfg_read16(PCI_COMMAND)?))
    }

    /// One edu DMA transfer of `count` bytes; polls the command register until the run bit
    /// clears. Returns how long that took.
    pub(crate) fn edu_dma(
        &self,
        src: u64,
        dst: u64,
        count: u64,
        to_ram: bool,
        timeout: Duration,
    ) -> io::Result<Duration> {
        // edu only logs a transfer outside its buffer, then copies past it (hw/misc/edu.c
        // edu_check_range): never ask for one, it would corrupt or crash the emulator.
        let inner = if to_ram { src } else { dst };
        if inner < EDU_BUF || inner + count > EDU_BUF + EDU_BUF_SIZE || count == 0 {
            return Err(io::Error::other(format!(
                "edu: {count:#x} bytes at {inner:#x} are outside its buffer"
            )));
        }
        if (if to_ram { dst } else { src }) + count - 1 > EDU_DMA_MASK {
            return Err(io::Error::other("edu: the RAM side is beyond the 28-bit DMA mask"));
        }
        if self.bar_read32(EDU_DMA_CMD)? & EDU_DMA_RUN != 0 {
            // edu ignores register writes while a transfer runs.
            return Err(io::Error::other("edu: a DMA transfer is already running"));
        }
        for (reg, v) in [(EDU_DMA_SRC, src), (EDU_DMA_DST, dst), (EDU_DMA_CNT, count)] {
            let v32 = u32::try_from(v).map_err(|_| io::Error::other(format!("edu: {v:#x} needs 64 bits")))?;
            self.bar_write32(reg, v32)?;
            let back = self.bar_read32(reg)?;
            if back != v32 {
                return Err(io::Error::other(format!(
                    "edu: register {reg:#x} reads {back:#x} after writing {v32:#x}"
                )));
            }
        }
        let t0 = Instant::now();
        self.bar_write32(EDU_DMA_CMD, EDU_DMA_RUN | if to_ram { EDU_DMA_TO_RAM } else { 0 })?;
        loop {
            let cmd = self.bar_read32(EDU_DMA_CMD)?;
            if cmd & EDU_DMA_RUN == 0 {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                return Err(io::Error::other(format!(
                    "edu: DMA still running after {timeout:?} (command register {cmd:#x})"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(cmd) = self.saved_cmd.take() {
            let _ = self.cfg_write16(PCI_COMMAND, cmd);
        }
    }
}

// --- the buffer ----------------------------------------------------------------------------------

/// A VFIO DMA mapping, unmapped on drop unless unmapped explicitly before.
struct DmaGuard<'a> {
    vfio: &'a Vfio,
    iova: u64,
    size: u64,
    mapped: bool,
}

impl DmaGuard<'_> {
    fn unmap(&mut self) -> io::Result<u64> {
        self.mapped = false;
        self.vfio.unmap_dma(self.iova, self.size)
    }
}

impl Drop for DmaGuard<'_> {
    fn drop(&mut self) {
        if self.mapped {
            let _ = self.vfio.unmap_dma(self.iova, self.size);
        }
    }
}

pub fn memfd(name: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is checked and then owned.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Top-level "System RAM" ranges of /proc/iomem (inclusive ends).
pub fn system_ram() -> Vec<(u64, u64)> {
    let iomem = std::fs::read_to_string("/proc/iomem").unwrap_or_default();
    iomem
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(": System RAM"))
        .filter_map(|l| {
            let (a, b) = l.split(" : ").next()?.split_once('-')?;
            Some((u64::from_str_radix(a.trim(), 16).ok()?, u64::from_str_radix(b.trim(), 16).ok()?))
        })
        .collect()
}

pub(crate) fn random_bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    File::open("/dev/urandom")?.read_exact(&mut v)?;
    Ok(v)
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i:#x}: {:#04x} != {:#04x}", a[i], b[i]),
        None => "equal".into(),
    }
}

/// Where the DMA buffer comes from.
pub enum Source {
    File(PathBuf),
    Memfd,
}

/// Offsets inside the buffer: A (the pattern the device reads), B (where it writes it back),
/// C (where it writes after the IOMMU mapping is gone). All in the first 2 MiB, in distinct pages.
const OFF_A: u64 = 0x3000;
const OFF_B: u64 = 0x1f_e000;
const OFF_C: u64 = 0x10_0000;
const DMA_TIMEOUT: Duration = Duration::from_secs(20);

/// A check that failed and was reported; the run stops.
struct Stop;

fn must<T>(r: &mut Report, name: &str, res: io::Result<T>) -> Result<T, Stop> {
    res.map_err(|e| {
        r.check(name, false, e);
        Stop
    })
}

pub struct EduArgs<'a> {
    pub bdf: &'a str,
    pub source: Source,
    pub name: Option<String>,
    pub iova: u64,
    pub keep: bool,
}

/// `vfio-edu`: the whole sequence; every step reports a CHECK, the first failure stops it
/// (after cleaning up).
pub fn vfio_edu(r: &mut Report, args: &EduArgs) -> io::Result<()> {
    let prefix = args.name.clone().unwrap_or_else(|| match args.source {
        Source::File(_) => "vfio-file".into(),
        Source::Memfd => "vfio-memfd".into(),
    });
    let _ = edu_run(r, args, &prefix);
    Ok(())
}

fn edu_run(r: &mut Report, args: &EduArgs, p: &str) -> Result<(), Stop> {
    let key = p.replace('-', "_");
    let bdf = args.bdf;

    // 1. VFIO type1 from scratch.
    let mut vfio = must(r, &format!("{p}-vfio-setup"), Vfio::open(bdf))?;
    let info = must(r, &format!("{p}-vfio-setup"), vfio.iommu_info())?;
    r.check(
        &format!("{p}-vfio-setup"),
        true,
        format!(
            "API version {}, {}, group {} viable and attached; {}",
            vfio.api_version,
            vfio.iommu_name(),
            vfio.group_id,
            info.describe()
        ),
    );
    let mut dev = must(r, &format!("{p}-vfio-device"), vfio.device(bdf))?;
    let ids = (dev.cfg_read16(PCI_VENDOR_ID), dev.cfg_read16(PCI_DEVICE_ID));
    let (vendor, device) = match ids {
        (Ok(v), Ok(d)) => (v, d),
        (Err(e), _) | (_, Err(e)) => return must(r, &format!("{p}-vfio-device"), Err(e)),
    };
    if !r.check(
        &format!("{p}-vfio-device"),
        vendor == EDU_VENDOR && device == EDU_DEVICE,
        format!(
            "{bdf}: {vendor:04x}:{device:04x} (want {EDU_VENDOR:04x}:{EDU_DEVICE:04x}), {} regions, {} irq indexes, BAR0 {:#x} bytes at fd offset {:#x}, config {:#x} bytes at {:#x}",
            dev.num_regions, dev.num_irqs, dev.bar0.size, dev.bar0.offset, dev.config.size, dev.config.offset
        ),
    ) {
        return Err(Stop);
    }

    // The edu identification and liveness registers.
    let id = must(r, &format!("{p}-edu-id"), dev.bar_read32(EDU_ID))?;
    let rnd = must(r, &format!("{p}-edu-id"), random_bytes(4))?;
    let x = u32::from_ne_bytes([rnd[0], rnd[1], rnd[2], rnd[3]]);
    must(r, &format!("{p}-edu-id"), dev.bar_write32(EDU_LIVENESS, x))?;
    let y = must(r, &format!("{p}-edu-id"), dev.bar_read32(EDU_LIVENESS))?;
    if !r.check(
        &format!("{p}-edu-id"),
        id & 0xff == 0xed && y == !x,
        format!(
            "identification {id:#010x} (version {}.{}, low byte {:#04x}), liveness wrote {x:#010x} read {y:#010x} (want {:#010x})",
            id >> 24,
            (id >> 16) & 0xff,
            id & 0xff,
            !x
        ),
    ) {
        return Err(Stop);
    }

    let (before, after) = must(r, &format!("{p}-bus-master"), dev.enable_bus_master())?;
    if !r.check(
        &format!("{p}-bus-master"),
        after & PCI_COMMAND_MASTER != 0,
        format!("PCI command register {before:#06x} -> {after:#06x} through the config region"),
    ) {
        return Err(Stop);
    }

    // 2. The buffer.
    let (file, size, what) = match &args.source {
        Source::File(path) => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let st = must(r, &format!("{p}-buffer"), statfs(dir))?;
            let size = st.bsize.max(2 * MIB);
            let f = must(r, &format!("{p}-buffer"), create(path))?;
            // Truncate to zero first: fresh (scrubbed) memory, whatever the file held.
            must(r, &format!("{p}-buffer"), f.set_len(0).and_then(|_| f.set_len(size)))?;
            let fs = if st.ftype == PAGELESSFS_MAGIC {
                "pagelessfs".to_string()
            } else {
                format!("fs {:#x}", st.ftype)
            };
            (f, size, format!("{} ({fs}, page size {})", path.display(), human(st.bsize)))
        }
        Source::Memfd => {
            let f = must(r, &format!("{p}-buffer"), memfd(c"vfio-edu"))?;
            must(r, &format!("{p}-buffer"), f.set_len(2 * MIB))?;
            (f, 2 * MIB, "memfd".to_string())
        }
    };
    let result = edu_with_buffer(r, args, p, &key, &vfio, &mut dev, &file, size, &what, &info);
    drop(file);
    if let (Source::File(path), false) = (&args.source, args.keep) {
        let _ = std::fs::remove_file(path);
    }

    // 4. Clean up so that the next user (another process, a QEMU with vfio-pci) gets the device.
    drop(dev); // restores the command register, closes the device fd
    let detach = vfio.detach();
    let group_id = vfio.group_id.clone();
    drop(vfio); // closes the group and the container
    let reopened = group_status(&group_id);
    let ok = detach.is_ok() && matches!(reopened, Ok((true, false)));
    r.check(
        &format!("{p}-vfio-release"),
        ok,
        format!(
            "device closed, VFIO_GROUP_UNSET_CONTAINER: {}, group and container closed; /dev/vfio/{group_id} reopened: {}",
            match &detach {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            },
            match &reopened {
                Ok((viable, set)) => format!("viable {viable}, container set {set}"),
                Err(e) => e.to_string(),
            }
        ),
    );
    result
}

#[allow(clippy::too_many_arguments)]
fn edu_with_buffer(
    r: &mut Report,
    args: &EduArgs,
    p: &str,
    key: &str,
    vfio: &Vfio,
    dev: &mut Device,
    file: &File,
    size: u64,
    what: &str,
    info: &IommuInfo,
) -> Result<(), Stop> {
    let is_file = matches!(args.source, Source::File(_));
    let n = EDU_BUF_SIZE as usize;
    let map = must(r, &format!("{p}-buffer"), Map::shared(file, size as usize, 0))?;
    let flags = map.vmflags().unwrap_or_default();
    let pf = flags.split_whitespace().any(|f| f == "pf");
    let mut detail = format!("{what}: {} mapped at {:#x}, VmFlags: {flags}", human(size), map.addr());
    let mut ok = if is_file { pf } else { !pf };
    if is_file {
        match fiemap(file) {
            Ok(ext) => {
                print_fiemap(what, &ext);
                let phys: Vec<String> = phys_of_range(&ext, OFF_B, EDU_BUF_SIZE)
                    .iter()
                    .map(|e| format!("{:#x}", e.physical))
                    .collect();
                let ram = system_ram();
                let in_ram = ext
                    .iter()
                    .any(|e| ram.iter().any(|&(a, b)| e.physical <= b && e.physical + e.length > a));
                if let Some(first) = ext.first() {
                    r.result(&format!("{key}_buffer_phys"), format!("{:#x}", first.physical));
                }
                detail += &format!(
                    "; FIEMAP {} extent(s), first at physical {:#x}, offset B={OFF_B:#x} at physical {}; {} System RAM",
                    ext.len(),
                    ext.first().map_or(0, |e| e.physical),
                    phys.join(","),
                    if in_ram { "INSIDE" } else { "outside" }
                );
                ok &= !ext.is_empty() && !in_ram && ext.iter().all(|e| e.physical != 0);
            }
            Err(e) => {
                detail += &format!("; FIEMAP: {}", errno_name(&e));
                ok = false;
            }
        }
        detail = format!("{} PFN-only (pf): {detail}", if pf { "is" } else { "is NOT" });
    } else {
        detail = format!(
            "{} (control: struct page memory): {detail}",
            if pf { "pf, unexpected" } else { "no pf" }
        );
    }
    if !r.check(&format!("{p}-buffer"), ok, detail) {
        return Err(Stop);
    }

    // VFIO_IOMMU_MAP_DMA, timed. The mapping is not touched before: VFIO faults it in itself.
    let iova = args.iova;
    if iova + OFF_B + EDU_BUF_SIZE > EDU_DMA_MASK || iova & (PAGE as u64 - 1) != 0 {
        r.check(
            &format!("{p}-vfio-map-dma"),
            false,
            format!("IOVA {iova:#x}: must be 4K aligned and iova+{OFF_B:#x}+4K below 2^28 (edu's DMA mask)"),
        );
        return Err(Stop);
    }
    let t0 = Instant::now();
    let mapped = vfio.map_dma(map.addr(), iova, size);
    let map_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let iova_ok = info.allows(iova, size);
    must(r, &format!("{p}-vfio-map-dma"), mapped)?;
    let mut guard = DmaGuard { vfio, iova, size, mapped: true };
    r.result(&format!("{key}_map_dma_ms"), format!("{map_ms:.2}"));
    r.check(
        &format!("{p}-vfio-map-dma"),
        true,
        format!(
            "{} of {what} at IOVA {iova:#x} in {map_ms:.2} ms (IOVA {} the reported ranges)",
            human(size),
            if iova_ok { "inside" } else { "OUTSIDE" }
        ),
    );

    // 3. The round trip. B (and C) must be zero before: a DMA that never happens cannot pass.
    let pattern = must(r, &format!("{p}-edu-dma-to-device"), random_bytes(n))?;
    let read_file = |off: u64| -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        file.read_exact_at(&mut v, off).map_err(ctx(format!("pread {n} bytes at {off:#x}")))?;
        Ok(v)
    };
    let read_map = |off: u64| -> Vec<u8> {
        // SAFETY: off + n <= size (OFF_* + 4K are within the first 2 MiB, size >= 2 MiB); the
        // mapping is live; volatile byte reads because the device writes it behind our back.
        (0..n).map(|i| unsafe { map.ptr.add(off as usize + i).read_volatile() }).collect()
    };
    let zero = vec![0u8; n];
    let b_before = must(r, &format!("{p}-edu-dma-to-device"), read_file(OFF_B))?;
    let c_before = must(r, &format!("{p}-edu-dma-to-device"), read_file(OFF_C))?;
    if b_before != zero || read_map(OFF_B) != zero || c_before != zero {
        r.check(&format!("{p}-edu-dma-to-device"), false, "offsets B and C of the fresh buffer are not zero");
        return Err(Stop);
    }
    for (i, byte) in pattern.iter().enumerate() {
        // SAFETY: OFF_A + i < OFF_A + 4K <= size, inside the live writable mapping.
        unsafe { map.ptr.add(OFF_A as usize + i).write_volatile(*byte) };
    }
    let to_dev = dev.edu_dma(iova + OFF_A, EDU_BUF, EDU_BUF_SIZE, false, DMA_TIMEOUT);
    let to_dev = must(r, &format!("{p}-edu-dma-to-device"), to_dev)?;
    r.result(&format!("{key}_dma_to_device_ms"), format!("{:.1}", to_dev.as_secs_f64() * 1000.0));
    r.check(
        &format!("{p}-edu-dma-to-device"),
        true,
        format!(
            "{n} random bytes at buffer offset A={OFF_A:#x} (IOVA {:#x}) -> edu buffer {EDU_BUF:#x}: done in {to_dev:.1?} (the data is checked at the end of the round trip); B, C zero before",
            iova + OFF_A
        ),
    );

    let from_dev = dev.edu_dma(EDU_BUF, iova + OFF_B, EDU_BUF_SIZE, true, DMA_TIMEOUT);
    let from_dev = must(r, &format!("{p}-edu-dma-from-device"), from_dev)?;
    let via_read = must(r, &format!("{p}-edu-dma-from-device"), read_file(OFF_B))?;
    let via_map = read_map(OFF_B);
    let ok = via_read == pattern && via_map == pattern;
    r.result(&format!("{key}_dma_from_device_ms"), format!("{:.1}", from_dev.as_secs_f64() * 1000.0));
    let path_kind =
        if is_file { "pread() on the file (pagelessfs read path)" } else { "pread() on the memfd" };
    r.check(
        &format!("{p}-edu-dma-from-device"),
        ok,
        format!(
            "edu buffer -> IOVA {:#x} (offset B={OFF_B:#x}) in {from_dev:.1?}: the {n} bytes the device wrote are in the {}: via {path_kind}: {}; via the mapping: {}",
            iova + OFF_B,
            if is_file { "file" } else { "memfd" },
            if via_read == pattern { "match".into() } else { first_diff(&via_read, &pattern) },
            if via_map == pattern { "match".into() } else { first_diff(&via_map, &pattern) },
        ),
    );

    let unmapped = guard.unmap();
    let unmap_ok = matches!(unmapped, Ok(s) if s == size);
    r.check(
        &format!("{p}-vfio-unmap-dma"),
        unmap_ok,
        match &unmapped {
            Ok(s) => format!("unmapped {s:#x} bytes at IOVA {iova:#x} (mapped {size:#x})"),
            Err(e) => e.to_string(),
        },
    );
    if !unmap_ok {
        return Err(Stop);
    }

    // After the unmap the same device write must go nowhere: the IOMMU faults it (a DMAR fault
    // in the kernel log), offset C stays zero.
    let late = dev.edu_dma(EDU_BUF, iova + OFF_C, EDU_BUF_SIZE, true, DMA_TIMEOUT);
    let c_after = read_file(OFF_C);
    let c_map = read_map(OFF_C);
    let blocked = late.is_ok() && matches!(&c_after, Ok(v) if *v == zero) && c_map == zero;
    r.check(
        &format!("{p}-iommu-blocks-after-unmap"),
        blocked,
        format!(
            "edu buffer -> IOVA {:#x} (offset C={OFF_C:#x}) after VFIO_IOMMU_UNMAP_DMA: transfer {}; offset C {} via pread, {} via the mapping",
            iova + OFF_C,
            match &late {
                Ok(d) => format!("ended in {d:.1?}"),
                Err(e) => e.to_string(),
            },
            match &c_after {
                Ok(v) if *v == zero => "still zero".to_string(),
                Ok(v) if *v == pattern => "HAS THE PATTERN".to_string(),
                Ok(_) => "changed".to_string(),
                Err(e) => e.to_string(),
            },
            if c_map == zero { "still zero" } else { "CHANGED" }
        ),
    );
    Ok(())
}
