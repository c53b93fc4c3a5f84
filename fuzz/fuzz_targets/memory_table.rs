//! The vhost-user memory-table parsers (`pageless_protocol::memory`): SET_MEM_TABLE with its fds, and
//! ADD_MEM_REG / REM_MEM_REG. What they accept is valid and encodes back to the same bytes; no fd
//! leaks.
//!
//! Input: byte 0 is how many fds come with the table (0 to 15); the rest is the payload.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use pageless_protocol::memory::{
    encode_mem_table, encode_single_region, file_range, parse_mem_table, parse_single_region,
    MAX_MEM_TABLE_REGIONS,
};

fuzz_target!(|data: &[u8]| {
    let Some((&fd_count, payload)) = data.split_first() else { return };
    let guard = common::FdGuard::new();
    let fds = (0..fd_count & 0x0f).map(|_| common::dev_null()).collect::<Vec<_>>();
    let fd_count = fds.len();
    if let Ok(regions) = parse_mem_table(payload, fds) {
        assert!((1..=MAX_MEM_TABLE_REGIONS).contains(&regions.len()));
        assert_eq!(regions.len(), fd_count);
        for region in &regions {
            assert!({ region.region.memory_size } != 0);
            let _ = file_range(&region.region);
        }
        assert_eq!(encode_mem_table(regions.iter().map(|r| &r.region)), payload);
    }
    drop(guard);
    if let Ok(region) = parse_single_region(payload) {
        let encoded = encode_single_region(&region);
        assert_eq!(encoded.len(), payload.len());
        let again = parse_single_region(&encoded).expect("an encoded region parses");
        assert_eq!(encode_single_region(&again), encoded);
        // Everything but the leading padding word is kept.
        assert_eq!(&encoded[8..], &payload[8..]);
    }
});
