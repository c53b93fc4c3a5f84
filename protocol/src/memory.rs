//! vhost-user memory tables: SET_MEM_TABLE, ADD_MEM_REG and REM_MEM_REG payloads, on the `vhost`
//! crate's `VhostUserMemory`, `VhostUserMemoryRegion` and `VhostUserSingleMemoryRegion`.
//!
//! Wire layout (native-endian, as in the vhost-user specification):
//!
//! * a region is 32 bytes: `u64 guest_phys_addr`, `u64 memory_size`, `u64 user_addr` (the
//!   frontend's virtual address), `u64 mmap_offset` (where the region starts in its fd);
//! * SET_MEM_TABLE: `u32 num_regions`, `u32` padding (zero), then `num_regions` regions —
//!   8 + 32 × n bytes — with one fd per region, in the same order;
//! * ADD_MEM_REG / REM_MEM_REG: `u64` padding, then one region — 40 bytes — with one fd for
//!   ADD_MEM_REG.
//!
//! The parsers check the sizes and counts against each other before reading a region, refuse
//! regions that are empty or whose ends overflow `u64` (so `address + memory_size` is safe to
//! compute for every accepted region), and take ownership of the fds they are given: on an
//! error every fd is dropped (closed).

use std::mem::size_of;
use std::os::fd::OwnedFd;

use thiserror::Error;
use vhost::vhost_user::message::{
    VhostUserMemory, VhostUserMemoryRegion, VhostUserMsgValidator, VhostUserSingleMemoryRegion,
};
use vm_memory::ByteValued;

/// SET_MEM_TABLE carries at most this many regions (QEMU's VHOST_MEMORY_BASELINE_NREGIONS);
/// more go through ADD_MEM_REG with the CONFIGURE_MEM_SLOTS protocol feature.
pub const MAX_MEM_TABLE_REGIONS: usize = 8;

/// Why a memory message was refused. Each is a protocol violation by the sender: the
/// receiver should refuse the message (a vhost-user backend answers with a failed REPLY_ACK
/// or drops the connection) and not use any part of it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MemoryError {
    /// The SET_MEM_TABLE payload (this many bytes) is shorter than its 8-byte header.
    #[error("memory table payload of {0} bytes is shorter than its 8-byte header")]
    ShortTable(usize),
    /// The table announces this many regions: 0, or more than [`MAX_MEM_TABLE_REGIONS`].
    #[error("memory table with {0} regions (1 to {MAX_MEM_TABLE_REGIONS} allowed)")]
    RegionCount(u32),
    /// The table header's padding word is not zero.
    #[error("memory table header padding is not zero")]
    Padding,
    /// The payload's length does not match the announced region count.
    #[error("memory table payload of {got} bytes does not match its {regions} regions ({want} bytes)")]
    TableSize {
        /// Bytes received.
        got: usize,
        /// Bytes `regions` regions take: 8 + 32 × `regions`.
        want: usize,
        /// The announced region count.
        regions: u32,
    },
    /// The number of fds is not the number of regions.
    #[error("{fds} fds attached for {regions} memory regions: exactly one per region is required")]
    FdCount {
        /// Fds that came with the message.
        fds: usize,
        /// Regions in the table.
        regions: usize,
    },
    /// A region has `memory_size` 0, or its guest address, user address or mmap offset plus
    /// its size overflows `u64`.
    #[error("region {index} is empty or wraps around the address space")]
    BadRegion {
        /// The region's position in the table (0 for ADD_MEM_REG / REM_MEM_REG).
        index: usize,
    },
    /// An ADD_MEM_REG / REM_MEM_REG payload is not exactly 40 bytes.
    #[error("single-region payload of {got} bytes, {want} expected")]
    SingleSize {
        /// Bytes received.
        got: usize,
        /// Bytes expected (40).
        want: usize,
    },
}

/// One memory region and the fd it lives in, as parsed from a SET_MEM_TABLE message.
///
/// The region is valid (non-empty, no overflow: see [`MemoryError::BadRegion`]); whether
/// `mmap_offset + memory_size` lies within the fd's file is not checked here (the file's size
/// is not known to the parser), so check it, or be ready for SIGBUS, before mapping.
pub struct Region {
    /// Where the region is: guest physical address, size, frontend address, offset in `fd`.
    pub region: VhostUserMemoryRegion,
    /// The file that holds the region's memory, from offset `region.mmap_offset` on. Owned:
    /// dropping the region closes it.
    pub fd: OwnedFd,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.region;
        f.debug_struct("Region")
            .field("guest_phys_addr", &format_args!("{:#x}", { r.guest_phys_addr }))
            .field("memory_size", &format_args!("{:#x}", { r.memory_size }))
            .field("user_addr", &format_args!("{:#x}", { r.user_addr }))
            .field("mmap_offset", &format_args!("{:#x}", { r.mmap_offset }))
            .field("fd", &self.fd)
            .finish()
    }
}

/// Parses a SET_MEM_TABLE payload and its fds (exactly one per region).
///
/// Checks, in order: the 8-byte header is there, 1 to [`MAX_MEM_TABLE_REGIONS`] regions, zero
/// padding, the payload is exactly 8 + 32 × n bytes, exactly n fds, and every region is
/// valid. Returns the regions in table order, each paired with its fd. Takes the fds by value:
/// on an error they are all closed.
pub fn parse_mem_table(payload: &[u8], fds: Vec<OwnedFd>) -> Result<Vec<Region>, MemoryError> {
    let header_len = size_of::<VhostUserMemory>();
    let table = payload
        .get(..header_len)
        .and_then(VhostUserMemory::from_slice)
        .ok_or(MemoryError::ShortTable(payload.len()))?;
    let count = table.num_regions;
    if count == 0 || count as usize > MAX_MEM_TABLE_REGIONS {
        return Err(MemoryError::RegionCount(count));
    }
    if { table.padding1 } != 0 {
        return Err(MemoryError::Padding);
    }
    let region_len = size_of::<VhostUserMemoryRegion>();
    let want = header_len + count as usize * region_len;
    if payload.len() != want {
        return Err(MemoryError::TableSize { got: payload.len(), want, regions: count });
    }
    if fds.len() != count as usize {
        return Err(MemoryError::FdCount { fds: fds.len(), regions: count as usize });
    }
    payload[header_len..]
        .chunks_exact(region_len)
        .zip(fds)
        .enumerate()
        .map(|(index, (bytes, fd))| {
            let region = *VhostUserMemoryRegion::from_slice(bytes).expect("chunk has the region's size");
            if !region.is_valid() {
                return Err(MemoryError::BadRegion { index });
            }
            Ok(Region { region, fd })
        })
        .collect()
}

/// Encodes a SET_MEM_TABLE payload for `regions` (their fds travel separately, in order).
///
/// Does not check the regions or their count: send at most [`MAX_MEM_TABLE_REGIONS`] valid
/// regions, or [`parse_mem_table`] on the other end refuses them.
pub fn encode_mem_table<'a>(regions: impl ExactSizeIterator<Item = &'a VhostUserMemoryRegion>) -> Vec<u8> {
    let table = VhostUserMemory::new(regions.len() as u32);
    let mut payload = table.as_slice().to_vec();
    for region in regions {
        payload.extend_from_slice(region.as_slice());
    }
    payload
}

/// Parses an ADD_MEM_REG / REM_MEM_REG payload: exactly 40 bytes (8 bytes of padding, which
/// is not checked, then one region), the region valid. The fd of an ADD_MEM_REG message is not
/// handled here: the caller takes it from the message and should require exactly one.
pub fn parse_single_region(payload: &[u8]) -> Result<VhostUserMemoryRegion, MemoryError> {
    let want = size_of::<VhostUserSingleMemoryRegion>();
    let single = VhostUserSingleMemoryRegion::from_slice(payload)
        .ok_or(MemoryError::SingleSize { got: payload.len(), want })?;
    let region: VhostUserMemoryRegion = **single;
    if !region.is_valid() {
        return Err(MemoryError::BadRegion { index: 0 });
    }
    Ok(region)
}

/// Encodes an ADD_MEM_REG / REM_MEM_REG payload (40 bytes, zero padding). The region is not
/// checked; for ADD_MEM_REG send its fd with the message.
pub fn encode_single_region(region: &VhostUserMemoryRegion) -> Vec<u8> {
    VhostUserSingleMemoryRegion::new(
        region.guest_phys_addr,
        region.memory_size,
        region.user_addr,
        region.mmap_offset,
    )
    .as_slice()
    .to_vec()
}

/// The file range a region maps: `(mmap_offset, mmap_offset + memory_size)`, checked.
///
/// Byte offsets in the region's fd, end exclusive; `None` if the end overflows `u64` (never
/// for a region the parsers above accepted).
pub fn file_range(region: &VhostUserMemoryRegion) -> Option<(u64, u64)> {
    let (offset, size) = (region.mmap_offset, region.memory_size);
    offset.checked_add(size).map(|end| (offset, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn null_fds(count: usize) -> Vec<OwnedFd> {
        (0..count).map(|_| std::fs::File::open("/dev/null").unwrap().into()).collect()
    }

    fn region(gpa: u64, size: u64, offset: u64) -> VhostUserMemoryRegion {
        VhostUserMemoryRegion::new(gpa, size, 0x7f00_0000_0000 + gpa, offset)
    }

    #[test]
    fn mem_table_round_trip() {
        let regions = [region(0, 0xc0000, 0), region(0x100000, 0x7ff00000, 0x100000)];
        let payload = encode_mem_table(regions.iter());
        assert_eq!(payload.len(), 8 + 2 * 32);
        let parsed = parse_mem_table(&payload, null_fds(2)).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!({ parsed[1].region.mmap_offset }, 0x100000);
        assert_eq!({ parsed[1].region.memory_size }, 0x7ff00000);
    }

    #[test]
    fn mem_table_errors() {
        let one = encode_mem_table([region(0, 4096, 0)].iter());
        assert_eq!(parse_mem_table(&one[..4], null_fds(1)).unwrap_err(), MemoryError::ShortTable(4));
        assert_eq!(
            parse_mem_table(&one, null_fds(0)).unwrap_err(),
            MemoryError::FdCount { fds: 0, regions: 1 }
        );
        assert_eq!(
            parse_mem_table(&one, null_fds(2)).unwrap_err(),
            MemoryError::FdCount { fds: 2, regions: 1 }
        );
        let mut short = one.clone();
        short.pop();
        assert!(matches!(parse_mem_table(&short, null_fds(1)), Err(MemoryError::TableSize { .. })));
        let nine = encode_mem_table(vec![region(0, 4096, 0); 9].iter());
        assert_eq!(parse_mem_table(&nine, null_fds(9)).unwrap_err(), MemoryError::RegionCount(9));
        let zero = encode_mem_table(std::iter::empty());
        assert_eq!(parse_mem_table(&zero, null_fds(0)).unwrap_err(), MemoryError::RegionCount(0));
        let empty_region = encode_mem_table([region(0, 0, 0)].iter());
        assert_eq!(
            parse_mem_table(&empty_region, null_fds(1)).unwrap_err(),
            MemoryError::BadRegion { index: 0 }
        );
        let wrapping = encode_mem_table([region(0, 4096, u64::MAX - 10)].iter());
        assert_eq!(parse_mem_table(&wrapping, null_fds(1)).unwrap_err(), MemoryError::BadRegion { index: 0 });
        let mut padded = one.clone();
        padded[4] = 1;
        assert_eq!(parse_mem_table(&padded, null_fds(1)).unwrap_err(), MemoryError::Padding);
    }

    #[test]
    fn single_region_round_trip_and_errors() {
        let r = region(0x1000, 0x2000, 0x3000);
        let payload = encode_single_region(&r);
        assert_eq!(payload.len(), 40);
        assert_eq!({ parse_single_region(&payload).unwrap().guest_phys_addr }, 0x1000);
        assert!(matches!(parse_single_region(&payload[..39]), Err(MemoryError::SingleSize { .. })));
        assert!(parse_single_region(&encode_single_region(&region(0, 0, 0))).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..400), fds in 0usize..10) {
            let _ = parse_mem_table(&payload, null_fds(fds));
            let _ = parse_single_region(&payload);
        }
    }
}
