//! Slipway's REST API, persistence, machine lifecycle and the `serve`
//! process that wires the boot services to them.
//!
//! Handlers are thin: extract, call the store or the lifecycle, map the
//! result. [`operator_router`] and [`boot_router`] build the two HTTP
//! faces (operators on `api.listen`; booting machines and agents on the
//! provisioning address) so tests drive them with `oneshot`, no listener.

pub mod audit;
pub mod auth;
pub mod boot_guard;
pub mod campaign;
pub mod config;
mod dhcp_backend;
pub mod error;
pub mod extract;
pub mod firmware_files;
pub mod http_serve;
pub mod idempotency;
pub mod image_peers;
pub mod join;
pub mod leader;
pub mod metrics_catalog;
pub mod oob;
pub mod rate;
mod routes;
pub mod secrets;
pub mod serve;
pub mod tls;
pub mod work;

use std::path::PathBuf;
use std::sync::Arc;

pub use routes::{boot_router, operator_router};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub admin_token_digest: [u8; 32],
    pub boot: Option<Arc<BootContext>>,
    pub discovery_timeout_ms: i64,
    pub deploy_timeout_ms: i64,
    pub join_timeout_ms: i64,
    /// `quick` or `full`: how a release wipes unless the request says.
    pub release_wipe: wire::WipeMode,
    /// Wakes a machine's held instruction requests when work is posted
    /// for it (a deploy, a release), so they look again.
    pub work_posted: Arc<work::WorkPosted>,
    /// The image catalog's content: `<name>.raw.zst` per image.
    pub images_dir: PathBuf,
    /// Fetches of image content other appliances hold (`peer/` in `images_dir`).
    pub image_fetches: Arc<image_peers::Fetches>,
    /// Imports by path read only inside this directory (canonical).
    pub import_dir: PathBuf,
    /// BMC and UPS clients and their pollers.
    pub oob: Arc<oob::Oob>,
    /// Uploaded firmware files (`NAME.bin`), served to BMCs.
    pub firmware_dir: PathBuf,
}

/// What the boot HTTP face needs: where clients reach it, and the ramdisk.
#[derive(Debug)]
pub struct BootContext {
    /// `http://10.77.0.1:8081`, as written into DHCP replies and scripts.
    pub http_base: String,
    /// Holds `vmlinuz` and `initrd.img`.
    pub ramdisk_dir: PathBuf,
    /// iPXE binaries, served under `/boot/ipxe/` to UEFI HTTP Boot clients.
    pub ipxe_dir: PathBuf,
    /// Who may have a boot script and use an agent token.
    pub guard: Arc<boot_guard::BootGuard>,
    /// Signs every answer an agent asks for with a nonce; its public half
    /// goes to the ramdisk on the kernel command line, and from there to
    /// the deployed node agent.
    pub signer: Arc<ed25519_dalek::SigningKey>,
}
