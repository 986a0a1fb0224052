//! Slipway's boot service: DHCPv4, the PXE/iPXE boot decision, TFTP and the
//! per-machine iPXE scripts.
//!
//! Every protocol decision here is a pure function of a parsed request, the
//! current state and the configuration (`dhcp::decide`, `tftp::Session`,
//! `boot::render_script`); the `server` modules are the only code that
//! touches sockets, and they reach the rest of Slipway (leases on disk,
//! machine records) through the traits in [`dhcp::server`]. This crate does
//! not know about the database or the REST API.

pub mod boot;
pub mod dhcp;
pub mod ra;
pub mod tftp;
