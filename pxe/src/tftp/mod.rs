//! TFTP (RFC 1350 with the option extension of RFC 2347, blksize 2348,
//! tsize/timeout 2349 and windowsize 7440): a sans-I/O session state machine
//! and a read-only server over it.
//!
//! We write our own rather than use the `tftpd` crate: `tftpd` runs blocking
//! threads, prints with `println!`, serves only plain files and follows
//! symlinks out of its root; `async-tftp` ignores a client's ERROR after a
//! `tsize` probe (which UEFI firmware sends) and re-sends its OACK for
//! minutes. See ARCHITECTURE.md.

mod packet;
pub mod server;
mod session;

pub use packet::{Packet, ParseError, ReadRequest};
pub use session::{Output, Session, SessionOptions};
