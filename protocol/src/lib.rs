//! Wire formats of pageless. Every parser here treats its input as hostile: sizes, counts and
//! file descriptors are checked before anything is trusted, and every received fd is owned
//! (closed on any error path).
//!
//! * [`frame`]: vhost-user style framing — a 12-byte header `{u32 request, u32 flags, u32 size}`,
//!   `size` bytes of payload, and fds passed with SCM_RIGHTS — never reading across a message.
//! * [`memory`]: vhost-user memory tables (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) on the
//!   `vhost` crate's payload types.
//! * [`control`]: the owner's socket protocol: a client gets the VM's memory as a vhost-user
//!   memory table (regions + fds), plus status, find and stop, with version negotiation.

pub mod control;
pub mod frame;
pub mod memory;

pub use vhost::vhost_user::message::{FrontendReq, VhostUserMemoryRegion};
