//! DHCPv4: parsing of untrusted requests, the lease table, the pure
//! decision and the socket loop.

mod decide;
mod leases;
pub mod packet;
mod reply;
pub mod server;

pub use decide::{decide, Decision, DhcpConfig, Outcome};
pub use leases::{Lease, LeaseOp, LeaseState, LeaseTable};
pub use packet::{Malformed, MessageType, Request};
pub use reply::encode_reply;
