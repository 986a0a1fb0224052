//! DHCPv4: parsing of untrusted requests, the lease table, the pure
//! decision and the socket loop.

mod client_kind;
mod decide;
mod journal;
mod leases;
pub mod packet;
mod proxy;
mod reply;
pub mod server;

pub use decide::{decide, Decision, DhcpConfig, DhcpMode, Outcome, Reply, ReplyKind, Subnet};
pub use journal::{LeaseJournal, Loaded};
pub use leases::{Lease, LeaseOp, LeaseState, LeaseTable};
pub use packet::{Malformed, MessageType, Request};
pub use proxy::decide_proxy;
pub use reply::encode_reply;
