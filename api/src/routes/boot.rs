//! The boot face: per-machine iPXE scripts and the ramdisk files.
//!
//! Scripts are unauthenticated by necessity (firmware holds no secret);
//! they carry a fresh agent token, which is why each request replaces the
//! previous token. Files are served from the ramdisk directory only, with
//! HEAD and Range support from `tower-http`.

use super::confine::confined_dir;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::AppState;
use inventory::MacAddr;
use model::lifecycle::{self, BootKind};
use pxe::boot::{render_script, ScriptTarget};
use pxe::tftp::server::{Generated, GeneratedFiles, Refusal};

/// Agent tokens outlive any sane boot, but not by days.
const AGENT_TOKEN_TTL_MS: i64 = 24 * 3600 * 1000;

pub fn router(state: &AppState) -> axum::Router<AppState> {
    let router = Router::new().route("/boot/{script}", get(script));
    match &state.boot {
        Some(boot) => router
            .nest_service("/boot/files", confined_dir(&boot.ramdisk_dir))
            .nest_service(pxe::boot::IPXE_HTTP_DIR, confined_dir(&boot.ipxe_dir)),
        None => router,
    }
}

async fn script(State(state): State<AppState>, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let not_found = || ApiError::NotFound { what: format!("boot script {name}") };
    let mac = name.strip_suffix(".ipxe").and_then(MacAddr::parse_dashed).ok_or_else(not_found)?;
    let boot = state.boot.as_ref().ok_or_else(not_found)?;
    let target = machine_target(&state, mac, "ipxe").await?;
    let body = render_script(&target, &mac, &boot.http_base);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], body))
}

/// What `mac`'s boot script does now, for its iPXE or GRUB `loader`: the
/// machine is created if unknown, and a discovery boot gets a fresh agent
/// token (revoking the last one).
pub(crate) async fn machine_target(
    state: &AppState,
    mac: MacAddr,
    loader: &'static str,
) -> Result<ScriptTarget, ApiError> {
    let mac_text = mac.to_string();
    let (id, _) = state.store.ensure_machine(mac, "boot script requested", state.discovery_timeout_ms).await?;
    let machine = state.store.machine(&id).await?;
    let kind = lifecycle::boot_kind(machine.as_ref().map(|m| m.state));
    let target = match kind {
        BootKind::Discovery => {
            ScriptTarget::Discovery { token: state.store.issue_agent_token(&id, AGENT_TOKEN_TTL_MS).await? }
        }
        BootKind::LocalDisk => ScriptTarget::LocalDisk,
    };
    let target_name = match kind {
        BootKind::Discovery => "discovery",
        BootKind::LocalDisk => "local_disk",
    };
    tracing::info!(mac = mac_text, machine = id, target = target_name, loader, "boot script served");
    metrics::counter!("slipway_boot_scripts_total", "target" => target_name, "loader" => loader).increment(1);
    state
        .store
        .record_event(
            Some(&id),
            "boot.script",
            serde_json::json!({ "mac": mac_text, "target": target_name, "loader": loader }),
        )
        .await?;
    Ok(target)
}

/// The TFTP side of the boot face, for the signed UEFI chain: GRUB's
/// `grub.cfg` and each machine's GRUB script, the same decision as its
/// iPXE script.
pub struct GrubScripts(pub AppState);

impl GeneratedFiles for GrubScripts {
    fn generate<'a>(&'a self, name: &'a str, peer: std::net::SocketAddr) -> Option<Generated<'a>> {
        if name.trim_start_matches('/') == pxe::boot::GRUB_CFG {
            return Some(Box::pin(async { Ok(pxe::boot::GRUB_MENU.as_bytes().to_vec()) }));
        }
        let mac = pxe::boot::grub_script_mac(name)?;
        Some(Box::pin(async move {
            let boot = self.0.boot.as_ref().ok_or(Refusal::NotFound)?;
            match machine_target(&self.0, mac, "grub").await {
                Ok(target) => Ok(pxe::boot::render_grub(&target, &mac, &boot.http_base).into_bytes()),
                Err(err) => {
                    tracing::warn!(%mac, %peer, error = %err, "GRUB script not served");
                    Err(Refusal::Unavailable("boot script unavailable, try again"))
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::routes::test_support::{app, get, get_text};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn unknown_mac_gets_discovery_and_appears_as_discovering() {
        let t = app().await;
        let (status, script) = get_text(&t.boot, "/boot/52-54-00-00-00-05.ipxe").await;
        assert_eq!(status, StatusCode::OK);
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains("slipway.token="));
        let (_, m) = get(&t.operator, "/api/v1/machines/52:54:00:00:00:05", Some(&t.admin)).await;
        assert_eq!(m["state"], "discovering");
        assert_eq!(m["macs"][0], "52:54:00:00:00:05");
    }

    #[tokio::test]
    async fn bad_script_names_are_404() {
        let t = app().await;
        for path in ["/boot/52-54-00-00-00.ipxe", "/boot/..%2f..%2fetc%2fpasswd", "/boot/52-54-00-00-00-05.txt"] {
            assert_eq!(get_text(&t.boot, path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn ramdisk_files_support_range_and_stay_in_their_root() {
        let t = app().await;
        let (status, body) = get_text(&t.boot, "/boot/files/vmlinuz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "kernel-bytes"));
        assert_eq!(get_text(&t.boot, "/boot/files/../secret").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get_text(&t.boot, "/boot/files/%2e%2e/secret").await.0, StatusCode::NOT_FOUND);
        let req = axum::http::Request::get("/boot/files/vmlinuz")
            .header("Range", "bytes=0-5")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(t.boot.clone(), req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(resp.headers()["content-length"], "6");
        // iPXE binaries for UEFI HTTP Boot.
        let (status, body) = get_text(&t.boot, "/boot/ipxe/snponly.efi").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "efi-bytes"));
        assert_eq!(get_text(&t.boot, "/boot/ipxe/../files/vmlinuz").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn grub_gets_the_same_decision_over_tftp_with_a_fresh_token_each_time() {
        use pxe::tftp::server::GeneratedFiles;
        let t = app().await;
        let grub = super::GrubScripts(t.state.clone());
        let peer = std::net::SocketAddr::from(([10, 77, 0, 100], 1024));
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        let menu = text(grub.generate("/grub/grub.cfg", peer).unwrap().await.unwrap());
        assert!(menu.contains("source $prefix/${net_default_mac}.cfg"));
        assert!(grub.generate("grub/52-54-00-00-00-07.cfg", peer).is_none(), "only the colon spelling is a script");
        assert!(grub.generate("undionly.kpxe", peer).is_none(), "files are left to the mounts");

        let first = text(grub.generate("grub/52:54:00:00:00:07.cfg", peer).unwrap().await.unwrap());
        let second = text(grub.generate("grub/52:54:00:00:00:07.cfg", peer).unwrap().await.unwrap());
        assert!(first.contains("linux /slipway/vmlinuz") && first.contains("slipway.mac=52-54-00-00-00-07"), "{first}");
        let token = |s: &str| s.split("slipway.token=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        assert_ne!(token(&first), token(&second), "each boot script carries its own one-boot token");
        let (_, m) = get(&t.operator, "/api/v1/machines/52:54:00:00:00:07", Some(&t.admin)).await;
        assert_eq!(m["state"], "discovering");
        let (_, events) = get(&t.operator, "/api/v1/events?limit=100", Some(&t.admin)).await;
        assert!(events.to_string().contains("\"loader\":\"grub\""), "{events}");
    }
}
