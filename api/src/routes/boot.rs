//! The boot face: per-machine iPXE scripts and the ramdisk files.
//!
//! Firmware holds no secret, so scripts go by address instead
//! (`boot_guard`): only the holder of the MAC's lease (or, under
//! proxyDHCP, one fetch per observed network boot) gets one. A discovery
//! script carries a fresh agent token bound to that address, replacing
//! the previous token. Files are served from the ramdisk directory only,
//! with HEAD and Range support from `tower-http`.

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

async fn script(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: axum::http::request::Parts,
) -> Result<impl IntoResponse, ApiError> {
    let not_found = || ApiError::NotFound { what: format!("boot script {name}") };
    let mac = name.strip_suffix(".ipxe").and_then(MacAddr::parse_dashed).ok_or_else(not_found)?;
    let boot = state.boot.as_ref().ok_or_else(not_found)?;
    let target = machine_target(&state, mac, "ipxe", crate::boot_guard::peer_of(&request.extensions)).await?;
    let body = render_script(&target, &mac, &boot.http_base);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], body))
}

/// What `mac`'s boot script does now, for its iPXE or GRUB `loader`, if
/// `peer` may have it: the machine is created if unknown, and a discovery
/// boot gets a fresh agent token bound to `peer` (revoking the last one).
pub(crate) async fn machine_target(
    state: &AppState,
    mac: MacAddr,
    loader: &'static str,
    peer: Option<std::net::IpAddr>,
) -> Result<ScriptTarget, ApiError> {
    let mac_text = mac.to_string();
    let boot = state.boot.as_ref().ok_or_else(|| ApiError::NotFound { what: format!("boot script for {mac}") })?;
    let known = state.store.machine_id_by_mac(mac).await?;
    let machine = match &known {
        Some(id) => state.store.machine(id).await?,
        None => None,
    };
    let kind = lifecycle::boot_kind(machine.as_ref().map(|m| m.state));
    let now_secs = u64::try_from(state.store.now_ms() / 1000).unwrap_or(0);
    let discovery = kind == BootKind::Discovery;
    if let Err(refusal) = boot.guard.may_fetch_script(mac, peer, known.as_deref(), discovery, now_secs) {
        let refusal = crate::boot_guard::refused(state, refusal, loader, Some(mac), known.as_deref(), peer).await;
        return Err(ApiError::Refused(refusal));
    }
    let id = match known {
        Some(id) => id,
        None => state.store.ensure_machine(mac, "boot script requested", state.discovery_timeout_ms).await?.0,
    };
    let target = match kind {
        BootKind::Discovery => {
            let bound_to = boot.guard.token_address(peer);
            let token = state.store.issue_agent_token(&id, AGENT_TOKEN_TTL_MS, bound_to).await?;
            ScriptTarget::Discovery { token, key: hex::encode(boot.signer.verifying_key().as_bytes()) }
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
            match machine_target(&self.0, mac, "grub", Some(peer.ip())).await {
                Ok(target) => Ok(pxe::boot::render_grub(&target, &mac, &boot.http_base).into_bytes()),
                Err(ApiError::Refused(refusal)) => Err(Refusal::Access(refusal.detail())),
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
    use crate::routes::test_support::{app, boot_script, get, get_text, lease};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn unknown_mac_gets_discovery_and_appears_as_discovering() {
        let t = app().await;
        let (status, script) = boot_script(&t, "52:54:00:00:00:05").await;
        assert_eq!(status, StatusCode::OK);
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains("slipway.token="));
        let (_, m) = get(&t.operator, "/api/v1/machines/52:54:00:00:00:05", Some(&t.admin)).await;
        assert_eq!(m["state"], "discovering");
        assert_eq!(m["macs"][0], "52:54:00:00:00:05");
    }

    /// A request from `ip` on the provisioning network.
    fn from(ip: [u8; 4], request: axum::http::request::Builder) -> axum::http::request::Builder {
        let addr = std::net::SocketAddr::from((ip, 40_000));
        request.extension(axum::extract::ConnectInfo(addr))
    }

    async fn send(t: &crate::routes::test_support::TestApp, req: axum::http::Request<axum::body::Body>) -> StatusCode {
        tower::ServiceExt::oneshot(t.boot.clone(), req).await.unwrap().status()
    }

    #[tokio::test]
    async fn only_the_lease_holder_gets_a_script_and_its_token_works_only_from_there() {
        use axum::body::Body;
        use axum::http::Request;
        let t = app().await;
        scrape(&t).await; // installs the recorder
        let mac = "52:54:00:00:00:08";
        let (_, script) = boot_script(&t, mac).await; // from TEST_PEER, which holds the lease
        let token = crate::routes::test_support::token_from(&script);

        // An attacker at another address asks for the machine's script: refused,
        // and the machine's own token is not replaced.
        let script_req = || from([10, 77, 0, 66], Request::get("/boot/52-54-00-00-00-08.ipxe"));
        assert_eq!(send(&t, script_req().body(Body::empty()).unwrap()).await, StatusCode::FORBIDDEN);
        // ...nor for a MAC nobody holds a lease for: no machine is created.
        let unknown = from([10, 77, 0, 66], Request::get("/boot/52-54-00-00-00-99.ipxe"));
        assert_eq!(send(&t, unknown.body(Body::empty()).unwrap()).await, StatusCode::FORBIDDEN);
        let (status, _) = get(&t.operator, "/api/v1/machines/52:54:00:00:00:99", Some(&t.admin)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // A stolen token is no use from the attacker's address...
        let hello = |ip| {
            from(ip, Request::post(wire::HELLO_PATH))
                .header("Authorization", format!("Bearer {token}"))
                .header("Content-Type", "application/json")
                .body(Body::from(r#"{"mac":"52:54:00:00:00:08","agent_version":"t","mode":"discovery"}"#))
                .unwrap()
        };
        assert_eq!(send(&t, hello([10, 77, 0, 66])).await, StatusCode::FORBIDDEN);
        // ...and still works from the machine's.
        assert_eq!(send(&t, hello([10, 77, 0, 50])).await, StatusCode::OK);

        let (_, events) = get(&t.operator, "/api/v1/events?limit=100", Some(&t.admin)).await;
        let refusals: Vec<_> =
            events["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "boot.refused").collect();
        let reasons: Vec<_> = refusals.iter().map(|e| e["detail"]["reason"].as_str().unwrap()).collect();
        assert_eq!(reasons.iter().filter(|r| **r == "not_lease_holder").count(), 2, "{events}");
        assert_eq!(reasons.iter().filter(|r| **r == "wrong_address").count(), 1, "{events}");
        assert!(refusals.iter().all(|e| e["detail"]["peer"] == "10.77.0.66"), "{refusals:?}");
        let text = scrape(&t).await;
        assert!(text.contains(r#"slipway_boot_refusals_total{reason="wrong_address",what="agent"} 1"#), "{text}");
    }

    async fn scrape(t: &crate::routes::test_support::TestApp) -> String {
        let auth = format!("Bearer {}", t.admin);
        let req = axum::http::Request::get("/metrics").header("Authorization", auth);
        let resp =
            tower::ServiceExt::oneshot(t.operator.clone(), req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
        String::from_utf8(axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_flood_of_refused_requests_writes_a_bounded_number_of_events() {
        use axum::body::Body;
        use axum::http::Request;
        let t = app().await;
        let count = || async {
            let (_, events) = get(&t.operator, "/api/v1/events?limit=1000", Some(&t.admin)).await;
            events["events"].as_array().unwrap().len()
        };
        let before = count().await;
        for i in 0..300u32 {
            let path = format!("/boot/02-00-00-00-{:02x}-{:02x}.ipxe", i / 256, i % 256);
            let req = from([10, 77, 0, 66], Request::get(path)).body(Body::empty()).unwrap();
            assert_eq!(send(&t, req).await, StatusCode::FORBIDDEN);
        }
        let written = count().await - before;
        assert!(written <= 120, "a minute's budget (60), or two if the minute turned: {written}");
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

        lease(&t, "52:54:00:00:00:07", [10, 77, 0, 100].into());
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
