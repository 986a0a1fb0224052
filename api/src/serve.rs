//! `slipway serve`: one process with the operator API and, when a
//! provisioning interface is configured, DHCP, TFTP and boot HTTP.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::Config;
use crate::dhcp_backend::StoreBackend;
use crate::leader::{self, Leader};
use crate::{auth, boot_router, operator_router, AppState, BootContext};
use pxe::boot::BootConfig;
use pxe::dhcp::server::{bind_socket, DhcpServer, Ports};
use pxe::dhcp::{DhcpConfig, LeaseJournal};
use pxe::tftp::server::TftpServer;
use pxe::tftp::SessionOptions;
use store::Store;

/// Seeds the first admin token (automation); see [`admin_token_in`].
pub const BOOTSTRAP_TOKEN_ENV: &str = "SLIPWAY_BOOTSTRAP_TOKEN";

/// The admin token: from the config, else from `data_dir/admin-token`,
/// else `SLIPWAY_BOOTSTRAP_TOKEN` or a generated one, written there.
fn admin_token(config: &Config) -> anyhow::Result<String> {
    let bootstrap = std::env::var(BOOTSTRAP_TOKEN_ENV).ok().filter(|t| !t.trim().is_empty());
    admin_token_in(&config.api.token, &config.data_dir, bootstrap.as_deref())
}

/// The admin token: `config_token` if set, else `data_dir/admin-token`.
/// When neither exists yet, `bootstrap` (at least 32 characters) becomes
/// the first admin token, else one is generated and printed this once;
/// either is written to `data_dir/admin-token` (mode 0600), so later starts
/// keep it and ignore a changed `bootstrap`.
pub(crate) fn admin_token_in(config_token: &str, data_dir: &Path, bootstrap: Option<&str>) -> anyhow::Result<String> {
    if !config_token.is_empty() {
        if bootstrap.is_some() {
            warn!("{BOOTSTRAP_TOKEN_ENV} is ignored: api.token is set");
        }
        return Ok(config_token.to_string());
    }
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        if bootstrap.is_some_and(|b| b.trim() != token.trim()) {
            warn!(path = %path.display(), "{BOOTSTRAP_TOKEN_ENV} is ignored: an admin token exists already");
        }
        return Ok(token.trim().to_string());
    }
    let token = match bootstrap.map(str::trim) {
        Some(token) if token.len() < 32 || token.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            bail!("{BOOTSTRAP_TOKEN_ENV} must be at least 32 characters without spaces")
        }
        Some(token) => token.to_string(),
        None => store::random_token(),
    };
    crate::secrets::write_private(&path, &token)?;
    if bootstrap.is_some() {
        info!(path = %path.display(), "the admin API token is {BOOTSTRAP_TOKEN_ENV}'s; stored (mode 0600)");
    } else {
        eprintln!("First start: the admin API token is\n\n    {token}\n\nIt is stored in {} (mode 0600) and will not be shown again.", path.display());
    }
    Ok(token)
}

fn agent_binary(config: &Config) -> anyhow::Result<PathBuf> {
    if !config.boot.agent_binary.is_empty() {
        return Ok(config.boot.agent_binary.clone().into());
    }
    let exe = std::env::current_exe().context("locating the slipway binary")?;
    Ok(exe.with_file_name("slipway-agent"))
}

/// The directory configured as `key` (`dir`), checked to hold `files`;
/// `None` when the key is empty (the caller builds its own).
fn configured_dir(key: &str, dir: &str, files: &[&str]) -> anyhow::Result<Option<PathBuf>> {
    if dir.is_empty() {
        return Ok(None);
    }
    let dir = PathBuf::from(dir);
    if let Some(file) = files.iter().find(|f| !dir.join(f).is_file()) {
        bail!("{key} {} has no {file}", dir.display());
    }
    Ok(Some(dir))
}

/// Every connection is a file descriptor, and a fleet in discovery holds
/// one long poll per machine: under systemd's default soft limit (1,024)
/// the kernel would refuse connections long before `http.max_connections`
/// does. Raises the soft limit towards `wanted` (never above the hard one).
fn raise_open_files(wanted: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let target = wanted.min(hard);
    if soft < target {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => info!(from = soft, to = target, "raised the open-file limit"),
            Err(err) => warn!(soft, error = %err, "could not raise the open-file limit"),
        }
    }
    if target < wanted {
        warn!(limit = target, wanted, "the open-file hard limit is below what http.max_connections needs");
    }
}

async fn ramdisk_dir(config: &Config) -> anyhow::Result<PathBuf> {
    let files = [pxe::boot::KERNEL_FILE, pxe::boot::INITRD_FILE];
    if let Some(dir) = configured_dir("boot.ramdisk_dir", &config.boot.ramdisk_dir, &files)? {
        return Ok(dir);
    }
    let inputs = images::RamdiskInputs { agent_binary: agent_binary(config)?, cache_dir: config.cache_dir.clone() };
    let ramdisk = tokio::task::spawn_blocking(move || images::ensure_ramdisk(&inputs)).await??;
    Ok(ramdisk.dir)
}

/// Whether UEFI PXE firmware gets the signed chain. Not as proxyDHCP:
/// Debian 12's GRUB takes its boot server from the DHCP ACK alone, which
/// another server sends there, so it would find no script; iPXE reads
/// the proxy's answer.
fn uefi_signed(config: &Config, mode: pxe::dhcp::DhcpMode) -> bool {
    let signed = config.boot.uefi_pxe == crate::config::UefiPxe::Signed;
    if signed && mode == pxe::dhcp::DhcpMode::Proxy {
        warn!("proxyDHCP: UEFI PXE gets iPXE, not the signed chain (GRUB needs Slipway as the DHCP ACK's next-server); Secure Boot machines cannot network-boot");
    }
    signed && mode != pxe::dhcp::DhcpMode::Proxy
}

/// The directory with the signed shim and GRUB for UEFI PXE.
async fn signed_dir(config: &Config) -> anyhow::Result<PathBuf> {
    let files = [images::signed_boot::NET_SHIM, images::signed_boot::NET_GRUB];
    if let Some(dir) = configured_dir("boot.signed_dir", &config.boot.signed_dir, &files)? {
        return Ok(dir);
    }
    let cache = config.cache_dir.clone();
    Ok(tokio::task::spawn_blocking(move || images::signed_boot::ensure_netboot(&cache)).await??)
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    raise_open_files(2 * config.http.max_connections as u64 + 1024);
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let token = admin_token(&config)?;
    let store = Store::connect(&config.database_url()).await.context("opening the database")?;
    crate::routes::metrics_handle();
    let provisioning = config.provisioning()?;
    let images_dir = config.data_dir.join("images");
    std::fs::create_dir_all(&images_dir).with_context(|| format!("creating {}", images_dir.display()))?;
    let import_dir = match config.import_dir.as_os_str().is_empty() {
        true => config.data_dir.join("import"),
        false => config.import_dir.clone(),
    };
    std::fs::create_dir_all(&import_dir).with_context(|| format!("creating {}", import_dir.display()))?;
    let import_dir = import_dir.canonicalize().with_context(|| format!("resolving {}", import_dir.display()))?;
    let discovery_timeout_ms =
        i64::try_from(config.provisioning.discovery_timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);

    let secrets =
        crate::secrets::SecretBox::load(&config.oob.secret_key, &config.oob.secret_key_file, &config.data_dir)
            .context("loading the key for secrets at rest")?;
    let mut tasks = JoinSet::new();
    let boot = match &provisioning {
        None => {
            info!("no provisioning interface configured: DHCP, TFTP and boot HTTP are off");
            None
        }
        Some(p) => {
            let http_base = format!("http://{}:{}", p.address, config.provisioning.http_port);
            let ramdisk_dir = ramdisk_dir(&config).await.context("preparing the discovery ramdisk")?;
            let guard = crate::boot_guard::BootGuard::new(p.mode, p.deny.clone(), config.provisioning.answer_unknown);
            let ipxe_dir = config.boot.ipxe_dir.clone();
            let signer = Arc::new(secrets.agent_signer());
            Some(Arc::new(BootContext { http_base, ramdisk_dir, ipxe_dir, guard: Arc::new(guard), signer }))
        }
    };
    let oob = crate::oob::Oob::new(store.clone(), secrets, (&config.oob).into(), discovery_timeout_ms);
    // Background work (deadline reaper, BMC/UPS pollers, campaigns) runs
    // on the one appliance holding the lease; see crate::leader.
    let leader =
        Leader::start(store.clone(), leader::BACKGROUND, leader::holder_name(&config.api.listen.to_string())).await;
    oob.start(leader.clone()).await.context("starting the BMC and UPS pollers")?;
    let state = AppState {
        oob,
        store: store.clone(),
        admin_token_digest: auth::digest(&token),
        boot: boot.clone(),
        discovery_timeout_ms,
        deploy_timeout_ms: i64::try_from(config.provisioning.deploy_timeout_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX),
        join_timeout_ms: i64::try_from(config.provisioning.join_timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        images_dir: images_dir.clone(),
        image_fetches: Default::default(),
        import_dir,
        release_wipe: config.release_wipe()?,
        work_posted: Default::default(),
        firmware_dir: config.data_dir.join("firmware"),
    };
    crate::routes::enrol_configured_ups(&state, &config.oob.ups).await.context("enrolling the configured UPSes")?;
    crate::routes::resume_imports(&state).await.context("resuming imports a stop cut off")?;

    if let (Some(p), Some(boot)) = (&provisioning, &boot) {
        let uefi_signed = uefi_signed(&config, p.mode);
        let dhcp_config = DhcpConfig {
            server_ip: p.address,
            netmask: p.netmask,
            router: p.router,
            dns: p.dns.clone(),
            pool_start: p.pool_start,
            pool_end: p.pool_end,
            relay_subnets: p.relay_subnets.clone(),
            lease_secs: config.provisioning.lease_secs,
            offer_hold_secs: 60,
            boot: BootConfig {
                tftp_server: p.address,
                http_base: boot.http_base.clone(),
                bios_file: config.boot.bios_file.clone(),
                uefi_file: config.boot.uefi_file.clone(),
                uefi_signed,
                arm64_file: config.boot.arm64_file.clone(),
            },
            mode: p.mode,
            reservations: p.reservations.clone(),
            deny: p.deny.clone(),
            answer_unknown: config.provisioning.answer_unknown,
        };
        let journal_path = config.data_dir.join("dhcp-leases");
        let (journal, table, loaded) = LeaseJournal::open(&journal_path, config.provisioning.lease_fsync)
            .with_context(|| format!("opening the lease journal {}", journal_path.display()))?;
        if loaded.skipped > 0 {
            warn!(skipped = loaded.skipped, path = %journal_path.display(), "lease journal lines unreadable (a torn last write?); skipped");
        }
        info!(leases = table.len(), "DHCP leases restored");
        boot.guard.seed(&table);
        let ports = Ports { server: config.provisioning.dhcp_port, ..Ports::default() };
        let any = std::net::Ipv4Addr::UNSPECIFIED;
        let socket = bind_socket(Some(&p.interface), SocketAddrV4::new(any, ports.server))
            .with_context(|| format!("binding DHCP to {}:{}", p.interface, ports.server))?;
        let dhcp = DhcpServer::new(
            dhcp_config,
            ports,
            table,
            StoreBackend::start(store.clone(), journal, discovery_timeout_ms, boot.guard.clone()),
        );
        if dhcp.mode() == pxe::dhcp::DhcpMode::Proxy {
            let pxe_socket = bind_socket(Some(&p.interface), SocketAddrV4::new(any, ports.pxe))
                .with_context(|| format!("binding proxyDHCP to {}:{}", p.interface, ports.pxe))?;
            let proxy = dhcp.clone();
            tasks.spawn(async move { proxy.run(pxe_socket, true).await.context("proxyDHCP server (4011)") });
        }
        tasks.spawn(async move { dhcp.run(socket, false).await.context("DHCP server") });

        let tftp_addr = SocketAddr::from((p.address, config.provisioning.tftp_port));
        let tftp_socket =
            tokio::net::UdpSocket::bind(tftp_addr).await.with_context(|| format!("binding TFTP to {tftp_addr}"))?;
        let signed_dir = match uefi_signed {
            true => Some(signed_dir(&config).await.context("preparing the signed UEFI boot chain")?),
            false => None,
        };
        let mut mounts = vec![("", config.boot.ipxe_dir.as_path())];
        if let Some(dir) = &signed_dir {
            // GRUB reads the ramdisk over TFTP from beside shim and itself.
            mounts
                .extend([(pxe::boot::SIGNED_DIR, dir.as_path()), (pxe::boot::SIGNED_DIR, boot.ramdisk_dir.as_path())]);
        }
        let grub = Arc::new(crate::routes::GrubScripts(state.clone()));
        let limits = SessionOptions {
            max_sessions: config.provisioning.tftp_max_sessions,
            max_sessions_per_client: config.provisioning.tftp_sessions_per_client,
            ..SessionOptions::default()
        };
        let tftp = TftpServer::with_mounts(&mounts, Some(grub), limits)
            .with_context(|| format!("TFTP root {}", config.boot.ipxe_dir.display()))?;
        tasks.spawn(async move { tftp.run(tftp_socket).await.context("TFTP server") });

        if config.provisioning.router_advertisements {
            let interface = p.interface.clone();
            // Optional: without IPv6 on the interface boots are just slower.
            tasks.spawn(async move {
                if let Err(err) = pxe::ra::run(interface).await {
                    warn!(error = %err, "router advertisements are off; iPXE will wait ~13 s for one");
                }
                std::future::pending::<anyhow::Result<()>>().await
            });
        }

        let http_addr = SocketAddr::from((p.address, config.provisioning.http_port));
        let listener = tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding boot HTTP to {http_addr}"))?;
        // Each request carries its connection's address: scripts and agent tokens go by it.
        let router = boot_router(state.clone());
        let limits = config.http.limits();
        tasks.spawn(async move {
            crate::http_serve::serve(listener, router, "boot", limits).await.context("boot HTTP server")
        });
        info!(interface = p.interface, dhcp = %format!("{}:{}", p.interface, ports.server), tftp = %tftp_addr, http = %http_addr,
              ramdisk = %boot.ramdisk_dir.display(), "boot services up");
    }

    let api_tls = config.api_tls()?;
    if api_tls == crate::config::ApiTls::Off && !config.api.listen.ip().is_loopback() {
        warn!(listen = %config.api.listen, "the API listens beyond loopback without TLS: tokens and BMC passwords cross the network in clear; set api.tls");
    }
    let listener = crate::tls::ApiListener::bind(&config, &api_tls).await?;
    let api_url = format!("{}://{}", listener.scheme(), listener.local_addr()?);
    let router = operator_router(state.clone());
    let limits = config.http.limits();
    tasks.spawn(async move { listener.serve(router, limits).await.context("API server") });
    tasks.spawn(deadline_reaper(store.clone(), leader.clone()));
    tasks.spawn(retention(store.clone(), leader.clone(), config.retention.clone()));
    // One campaign runner per database: started on gaining the lease,
    // dropped (its node workers with it) on losing it.
    let (campaign_state, campaign_leader) = (state.clone(), leader.clone());
    tasks.spawn(async move {
        campaign_leader
            .while_leading("campaign runner", || {
                crate::campaign::runner::run(campaign_state.clone(), Default::default())
            })
            .await;
        anyhow::Ok(())
    });
    info!(api = %api_url, "slipway is serving");

    tokio::select! {
        Some(result) = tasks.join_next() => {
            let err = match result {
                Ok(Ok(())) => anyhow::anyhow!("a server task stopped"),
                Ok(Err(err)) => err,
                Err(join) => anyhow::anyhow!("a server task panicked: {join}"),
            };
            Err(err)
        }
        _ = shutdown_signal() => {
            info!("shutting down");
            leader.release(&store).await;
            Ok(())
        }
    }
}

/// Deletes events and audit entries past `retention`, hourly, on the
/// leader only.
async fn retention(store: Store, leader: Leader, retention: crate::config::RetentionConfig) -> anyhow::Result<()> {
    const DAY_MS: i64 = 86_400_000;
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if !leader.is_leader() {
            continue;
        }
        let now = store.now_ms();
        let events_before = now - i64::from(retention.events_days.max(1)) * DAY_MS;
        let audit_before = now - i64::from(retention.audit_days.max(1)) * DAY_MS;
        match store.prune(events_before, audit_before).await {
            Ok((events, audit)) => {
                metrics::counter!("slipway_retention_deleted_total", "table" => "events").increment(events);
                metrics::counter!("slipway_retention_deleted_total", "table" => "audit").increment(audit);
                if events + audit > 0 {
                    info!(events, audit, "deleted events and audit entries past their retention");
                }
            }
            Err(err) => warn!(error = %err, "deleting old events and audit entries failed"),
        }
    }
}

/// Moves machines whose waiting state passed its deadline to `failed`,
/// on the leader only (once per database, not once per appliance).
async fn deadline_reaper(store: Store, leader: Leader) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        if !leader.is_leader() {
            continue;
        }
        let now = store.now_ms();
        match store.overdue(now).await {
            Ok(ids) => {
                for id in ids {
                    // Re-checked in the update: the machine may have moved on since.
                    match store.fire_deadline_passed(&id, now).await {
                        Ok(Some((from, _))) => {
                            warn!(machine = id, state = from.as_str(), "waiting state's deadline passed");
                            crate::metrics_catalog::deadline_passed(from);
                        }
                        Ok(None) => tracing::debug!(machine = id, "moved on before its deadline was enforced"),
                        Err(err) => warn!(machine = id, error = %err, "marking an overdue machine failed"),
                    }
                }
            }
            Err(err) => warn!(error = %err, "checking deadlines failed"),
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
