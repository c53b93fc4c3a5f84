//! The kernel module's extent allocator (driver/kmod/alloc.c), built for user space by
//! build.rs with the shim in tests/alloc/: the very placement and bookkeeping code pageless.ko
//! runs, for property tests and the fragmentation benchmark. Addresses are only numbers here;
//! no memory is touched.

use std::ffi::{c_int, c_long, c_uint, c_void};

extern "C" {
    fn plh_new() -> *mut c_void;
    fn plh_destroy(h: *mut c_void);
    fn plh_free(h: *mut c_void, phys: u64, len: u64, nid: c_int);
    fn plh_avail(h: *mut c_void, align: u64, nid: c_int) -> u64;
    fn plh_alloc(
        h: *mut c_void,
        bytes: u64,
        align: u64,
        nid: c_int,
        out: *mut u64,
        cap: c_uint,
        nr: *mut c_uint,
    ) -> c_int;
    fn plh_dump(h: *mut c_void, out: *mut u64, cap: c_uint) -> c_uint;
    fn plh_fail_after(n: c_long);
}

/// The kernel's `NUMA_NO_NODE`: any node.
const ANY: c_int = -1;

/// One entry of the free list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeExtent {
    /// Physical address.
    pub phys: u64,
    /// Bytes.
    pub len: u64,
    /// NUMA node.
    pub nid: i32,
}

/// A free list of the module's allocator (`struct list_head` of `struct pl_free`).
pub struct FreeList(*mut c_void);

impl Default for FreeList {
    fn default() -> Self {
        Self::new()
    }
}

impl FreeList {
    /// An empty free list.
    pub fn new() -> Self {
        // SAFETY: plh_new() takes nothing and returns a fresh handle (it aborts rather than
        // return NULL).
        Self(unsafe { plh_new() })
    }

    /// Return `[phys, phys + len)`, on node `nid`, to the free list (`pl_free_insert()`).
    pub fn free(&mut self, phys: u64, len: u64, nid: i32) {
        // SAFETY: self.0 is a live handle, used by one thread (&mut self).
        unsafe { plh_free(self.0, phys, len, nid) }
    }

    /// Bytes a request of `align`-aligned pages on `nid` (None: any node) can get
    /// (`pl_free_avail()`).
    pub fn avail(&self, align: u64, nid: Option<i32>) -> u64 {
        // SAFETY: self.0 is a live handle; plh_avail() only reads the list.
        unsafe { plh_avail(self.0, align, nid.unwrap_or(ANY)) }
    }

    /// Carve `bytes` in `align`-aligned extents on `nid` (None: any node): the extents as
    /// (phys, len), or the kernel's negative errno (`-ENOSPC`, `-ENOMEM`).
    pub fn alloc(&mut self, bytes: u64, align: u64, nid: Option<i32>) -> Result<Vec<(u64, u64)>, i32> {
        // A request's extents never outnumber the free list's entries times the passes (3)
        // times the pieces a pass cuts from one entry (2).
        let cap = (self.entries().len() * 6).max(1);
        let mut out = vec![0u64; 2 * cap];
        let mut nr: c_uint = 0;
        let cap = c_uint::try_from(cap).expect("free list too long for the harness");
        // SAFETY: self.0 is a live handle used by one thread; out has room for cap pairs and
        // nr is a valid pointer; plh_alloc() aborts rather than write past cap.
        let ret =
            unsafe { plh_alloc(self.0, bytes, align, nid.unwrap_or(ANY), out.as_mut_ptr(), cap, &mut nr) };
        if ret != 0 {
            return Err(ret);
        }
        Ok(out.chunks(2).take(nr as usize).map(|p| (p[0], p[1])).collect())
    }

    /// The free list's entries, in address order.
    pub fn entries(&self) -> Vec<FreeExtent> {
        // SAFETY: self.0 is a live handle; with cap 0, plh_dump() only counts.
        let n = unsafe { plh_dump(self.0, std::ptr::null_mut(), 0) };
        let mut out = vec![0u64; 3 * n as usize];
        // SAFETY: out has room for the n triples; the list did not change since counting.
        let m = unsafe { plh_dump(self.0, out.as_mut_ptr(), n) };
        assert_eq!(m, n);
        out.chunks(3).map(|t| FreeExtent { phys: t[0], len: t[1], nid: t[2] as i64 as i32 }).collect()
    }

    /// Make this thread's next allocations of bookkeeping fail after `n` successful ones
    /// (None: never fail), to test that a failed request changes nothing.
    pub fn fail_after(n: Option<u32>) {
        // SAFETY: plh_fail_after() sets a thread-local counter.
        unsafe { plh_fail_after(n.map_or(-1, c_long::from)) }
    }
}

impl Drop for FreeList {
    fn drop(&mut self) {
        // SAFETY: self.0 is a live handle, destroyed once.
        unsafe { plh_destroy(self.0) }
    }
}
