//! vhost-user memory tables: SET_MEM_TABLE, ADD_MEM_REG and REM_MEM_REG payloads, on the `vhost`
//! crate's `VhostUserMemory`, `VhostUserMemoryRegion` and `VhostUserSingleMemoryRegion`.

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

/// Why a memory message was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("memory table payload of {0} bytes is shorter than its 8-byte header")]
    ShortTable(usize),
    #[error("memory table with {0} regions (1 to {MAX_MEM_TABLE_REGIONS} allowed)")]
    RegionCount(u32),
    #[error("memory table header padding is not zero")]
    Padding,
    #[error("memory table payload of {got} bytes does not match its {regions} regions ({want} bytes)")]
    TableSize { got: usize, want: usize, regions: u32 },
    #[error("{fds} fds attached for {regions} memory regions: exactly one per region is required")]
    FdCount { fds: usize, regions: usize },
    #[error("region {index} is empty or wraps around the address space")]
    BadRegion { index: usize },
    #[error("single-region payload of {got} bytes, {want} expected")]
    SingleSize { got: usize, want: usize },
}

/// One memory region and the fd it lives in.
pub struct Region {
    pub region: VhostUserMemoryRegion,
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
pub fn encode_mem_table<'a>(regions: impl ExactSizeIterator<Item = &'a VhostUserMemoryRegion>) -> Vec<u8> {
    let table = VhostUserMemory::new(regions.len() as u32);
    let mut payload = table.as_slice().to_vec();
    for region in regions {
        payload.extend_from_slice(region.as_slice());
    }
    payload
}

/// Parses an ADD_MEM_REG / REM_MEM_REG payload.
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

/// Encodes an ADD_MEM_REG / REM_MEM_REG payload.
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
