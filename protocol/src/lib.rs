//! Wire formats of pageless: how the owner of a VM's memory (`pageless serve`), its clients
//! (`pageless qemu`, `pageless status`, the libvirt hook) and the vhost-user relay talk.
//!
//! Every parser here treats its input as hostile: sizes, counts and file descriptors are
//! checked before anything is trusted or allocated, arithmetic on peer-supplied numbers is
//! checked, and every received fd is owned ([`std::os::fd::OwnedFd`]) from the moment the
//! kernel hands it over, so it is closed on every error path — none leaks, not even from a
//! truncated control buffer. Malformed input is an error value, never a panic.
//!
//! * [`frame`]: vhost-user style framing on a Unix stream socket — a 12-byte header
//!   `{u32 request, u32 flags, u32 size}` (native-endian), `size` bytes of payload, and fds
//!   passed with SCM_RIGHTS — never reading across a message, with per-connection [`frame::Limits`].
//! * [`memory`]: vhost-user memory tables (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG payloads) on
//!   the `vhost` crate's payload types, with one fd per region.
//! * [`control`]: the owner's socket protocol (version [`control::CONTROL_VERSION`]): HELLO,
//!   GET_MEMORY (the VM's memory as a vhost-user memory table: regions + fds + page sizes),
//!   STATUS, EXTENTS, FIND, WRITE and STOP, and [`control::ControlClient`], the client side.
//!
//! All integers on the wire are native-endian: both ends are processes on the same host.
#![warn(missing_docs)]

pub mod control;
pub mod frame;
pub mod memory;

/// Re-exported from the `vhost` crate so that users of this crate name the same types:
/// [`FrontendReq`] holds the vhost-user request codes (SET_MEM_TABLE, ADD_MEM_REG, …) and
/// [`VhostUserMemoryRegion`] is one region of a memory table (guest physical address, size,
/// frontend virtual address and offset in the region's fd, each a `u64` in bytes).
pub use vhost::vhost_user::message::{FrontendReq, VhostUserMemoryRegion};
