//! A fresh app per test: its own database (SQLite, or PostgreSQL with
//! `SLIPWAY_TEST_API_DB=postgres`) and ramdisk directory.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use std::sync::Arc;
use tower::ServiceExt;

use crate::{auth, boot_router, operator_router, AppState, BootContext};
use store::test_db::TestDb;
use store::Store;

pub struct TestApp {
    pub operator: Router,
    pub boot: Router,
    pub admin: String,
    /// What the routers were built with (for background tasks in tests).
    pub state: AppState,
    _dir: tempfile::TempDir,
    /// SQLite, or PostgreSQL with `SLIPWAY_TEST_API_DB=postgres`.
    db: Arc<TestDb>,
}

pub async fn app() -> TestApp {
    app_at(TEST_HTTP_BASE, Arc::new(TestDb::from_env("app").await)).await
}

/// The boot face tests' appliances say they are at.
pub const TEST_HTTP_BASE: &str = "http://10.77.0.1:8081";

/// An appliance whose boot face is at `http_base`, on database `db`
/// (another appliance's, to make two share one).
pub async fn app_at(http_base: &str, db: Arc<TestDb>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let ramdisk = dir.path().join("ramdisk");
    std::fs::create_dir(&ramdisk).unwrap();
    std::fs::write(ramdisk.join("vmlinuz"), "kernel-bytes").unwrap();
    let ipxe = dir.path().join("ipxe");
    std::fs::create_dir(&ipxe).unwrap();
    std::fs::write(ipxe.join("snponly.efi"), "efi-bytes").unwrap();
    std::fs::write(dir.path().join("secret"), "secret").unwrap();
    let images_dir = dir.path().join("images");
    std::fs::create_dir(&images_dir).unwrap();
    serve_from(dir, db, store::random_token(), http_base).await
}

/// A second appliance on `t`'s database, its boot face at `http_base`,
/// with its own files and admin token.
pub async fn second_appliance(t: &TestApp, http_base: &str) -> TestApp {
    app_at(http_base, t.db.clone()).await
}

/// The same appliance after a restart: its database and files, new
/// processes' worth of state.
pub async fn restart(t: TestApp) -> TestApp {
    let TestApp { operator, boot, admin, state, _dir: dir, db } = t;
    let http_base = state.boot.as_ref().map_or(TEST_HTTP_BASE.to_string(), |b| b.http_base.clone());
    drop((operator, boot, state));
    serve_from(dir, db, admin, &http_base).await
}

async fn serve_from(dir: tempfile::TempDir, db: Arc<TestDb>, admin: String, http_base: &str) -> TestApp {
    let store = Store::connect(db.url()).await.unwrap();
    let (ramdisk, ipxe, images_dir) = (dir.path().join("ramdisk"), dir.path().join("ipxe"), dir.path().join("images"));
    let import_dir = dir.path().join("import");
    std::fs::create_dir_all(&import_dir).unwrap();
    let import_dir = import_dir.canonicalize().unwrap();
    let oob = crate::oob::Oob::new(
        store.clone(),
        crate::secrets::SecretBox::new([9; 32]),
        crate::oob::OobSettings {
            timeout: std::time::Duration::from_secs(2),
            max_requests_per_bmc: 2,
            power_poll: std::time::Duration::from_secs(1),
            ups_poll: std::time::Duration::from_secs(1),
            min_backoff: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(4),
        },
        60_000,
    );
    let state = AppState {
        oob,
        store,
        admin_token_digest: auth::digest(&admin),
        boot: Some(Arc::new(BootContext {
            http_base: http_base.into(),
            ramdisk_dir: ramdisk,
            ipxe_dir: ipxe,
            guard: Arc::new(crate::boot_guard::BootGuard::new(
                pxe::dhcp::DhcpMode::Authoritative,
                Default::default(),
                true,
            )),
            signer: Arc::new(crate::secrets::SecretBox::new([9; 32]).agent_signer()),
        })),
        discovery_timeout_ms: 60_000,
        deploy_timeout_ms: 600_000,
        join_timeout_ms: 600_000,
        images_dir: images_dir.clone(),
        image_fetches: Default::default(),
        import_dir,
        release_wipe: wire::WipeMode::Quick,
        work_posted: Default::default(),
        firmware_dir: dir.path().join("firmware"),
    };
    let boot = boot_router(state.clone()).layer(axum::middleware::map_request(from_test_peer));
    TestApp { operator: operator_router(state.clone()), boot, admin, state, _dir: dir, db }
}

/// Where boot-face requests come from in tests, unless one says otherwise.
pub const TEST_PEER: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 50)), 40_000);

async fn from_test_peer(mut request: Request<Body>) -> Request<Body> {
    use axum::extract::ConnectInfo;
    if request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().is_none() {
        request.extensions_mut().insert(ConnectInfo(TEST_PEER));
    }
    request
}

/// `mac` holds a DHCP lease on `ip`, as if the DHCP server had ACKed it.
pub fn lease(t: &TestApp, mac: &str, ip: std::net::Ipv4Addr) {
    let expires_at = u64::try_from(t.state.store.now_ms() / 1000).unwrap() + 86_400;
    let lease = pxe::dhcp::Lease { mac: mac.parse().unwrap(), ip, expires_at, state: pxe::dhcp::LeaseState::Bound };
    t.state.boot.as_ref().unwrap().guard.leases_changed(&[pxe::dhcp::LeaseOp::Upsert(lease)]);
}

/// `mac`'s iPXE script, fetched as the machine does: from [`TEST_PEER`],
/// which holds its lease.
pub async fn boot_script(t: &TestApp, mac: &str) -> (StatusCode, String) {
    let std::net::IpAddr::V4(ip) = TEST_PEER.ip() else { unreachable!() };
    lease(t, mac, ip);
    let dashed = mac.parse::<inventory::MacAddr>().unwrap().dashed();
    get_text(&t.boot, &format!("/boot/{dashed}.ipxe")).await
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, bytes.to_vec())
}

pub async fn get(router: &Router, path: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let (status, body) = send(router, req.body(Body::empty()).unwrap()).await;
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

pub async fn get_text(router: &Router, path: &str) -> (StatusCode, String) {
    let (status, body) = send(router, Request::get(path).body(Body::empty()).unwrap()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn post(
    router: &Router,
    path: &str,
    token: &str,
    body: &serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let req = Request::post(path)
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, body) = send(router, req).await;
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

pub async fn put_bytes(
    router: &Router,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::put(path).header("Authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let (status, body) = send(router, req.body(Body::from(body)).unwrap()).await;
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

pub async fn delete(router: &Router, path: &str, token: &str) -> StatusCode {
    delete_with_body(router, path, token).await.0
}

/// A DELETE; returns the status and the body (a problem document's text).
pub async fn delete_with_body(router: &Router, path: &str, token: &str) -> (StatusCode, String) {
    let req = Request::delete(path).header("Authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
    let (status, body) = send(router, req).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A GET with extra headers; returns the status, headers and raw body.
pub async fn get_raw(
    router: &Router,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::get(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, headers, bytes.to_vec())
}

/// The agent token in a discovery script.
pub fn token_from(script: &str) -> String {
    script.split("slipway.token=").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
}

pub fn inventory_json(mac: &str) -> serde_json::Value {
    serde_json::json!({
        "source": "in_band",
        "system": { "vendor": "QEMU", "product": "Standard PC", "serial": "S1", "uuid": null },
        "cpu": { "model": "QEMU Virtual CPU", "count": 2 },
        "memory": { "total_bytes": 1_000_000 },
        "disks": [{ "name": "vda", "size_bytes": 8_589_934_592u64, "model": null, "serial": "d1", "rotational": true }],
        "nics": [{ "name": "eth0", "mac": mac, "link": true, "speed_mbps": null }]
    })
}

/// Boots `mac` through discovery to `ready` the way a real machine does;
/// returns its id and agent token.
pub async fn ready_machine(t: &TestApp, mac: &str) -> (String, String) {
    let (_, script) = boot_script(t, mac).await;
    let token = token_from(&script);
    let (status, _) = post(&t.boot, wire::INVENTORY_PATH, &token, &inventory_json(mac)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, m) = get(&t.operator, &format!("/api/v1/machines/{mac}"), Some(&t.admin)).await;
    assert_eq!(m["state"], "ready");
    (m["id"].as_str().unwrap().to_string(), token)
}

/// Registers `name` with 1 MiB of content and waits until it is available;
/// returns the raw+zstd bytes.
pub async fn available_image(t: &TestApp, name: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let meta = serde_json::json!({ "name": name, "os": "debian", "version": "12" });
    let (status, image) = post(&t.operator, "/api/v1/images", &t.admin, &meta).await;
    assert_eq!((status, image["state"].as_str()), (StatusCode::ACCEPTED, Some("importing")), "{image}");
    let raw = image_content();
    let sha = hex::encode(Sha256::digest(&raw));
    let compressed = zstd::encode_all(&raw[..], 3).unwrap();
    let path = format!("/api/v1/images/{name}/content");
    let headers = [("Content-Type", "application/zstd"), ("X-Content-SHA256", sha.as_str())];
    let (status, image) = put_bytes(&t.operator, &path, &t.admin, &headers, compressed.clone()).await;
    assert_eq!((status, image["state"].as_str()), (StatusCode::OK, Some("available")), "{image}");
    assert_eq!((image["sha256"].as_str(), image["raw_bytes"].as_u64()), (Some(sha.as_str()), Some(raw.len() as u64)));
    compressed
}

/// 1 MiB of test image content.
pub fn image_content() -> Vec<u8> {
    (0..1u32 << 20).map(|i| (i % 253) as u8).collect()
}

/// Takes `mac` through discovery and a deploy (with `cluster` as its join
/// spec) to `deployed`, as the ramdisk agent would; returns the machine id
/// and the node credential the deploy handed out.
pub async fn deployed_machine(
    t: &TestApp,
    mac: &str,
    hostname: &str,
    cluster: Option<&serde_json::Value>,
) -> (String, String) {
    if get(&t.operator, "/api/v1/images/img", Some(&t.admin)).await.0 == StatusCode::NOT_FOUND {
        available_image(t, "img").await;
    }
    let (id, token) = ready_machine(t, mac).await;
    let mut req = serde_json::json!({ "image": "img", "hostname": hostname });
    if let Some(cluster) = cluster {
        req["cluster"] = cluster.clone();
    }
    let (status, d) = post(&t.operator, &format!("/api/v1/machines/{id}/deploy"), &t.admin, &req).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{d}");
    let (_, instruction) = get(&t.boot, wire::INSTRUCTIONS_PATH, Some(&token)).await;
    let node_token = instruction["node_token"].as_str().expect("a node credential travels with the image").to_string();
    let written = serde_json::json!({ "phase": "written", "bytes_written": 1u64 << 20, "disk": "/dev/vda" });
    assert_eq!(post(&t.boot, wire::DEPLOY_PATH, &token, &written).await.1["action"], "reboot");
    (id, node_token)
}

/// A real NUT UPS (upsd + dummy-ups) named `name`, online; `None` (the
/// test skips) without root or nut-server, unless SLIPWAY_LAB_TESTS=1,
/// where that is a failure. Keep the directory as long as the UPS.
pub async fn dummy_ups(name: &str) -> Option<(tempfile::TempDir, simulators::ups::DummyNut)> {
    use simulators::ups::{running_as_root, DummyNut};
    if !running_as_root() || !std::path::Path::new("/lib/nut/dummy-ups").exists() {
        assert!(std::env::var("SLIPWAY_LAB_TESTS").as_deref() != Ok("1"), "NUT dummy-ups and root are required");
        eprintln!("skipped: needs root and nut-server");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let name = name.to_string();
    let nut = tokio::task::spawn_blocking(move || DummyNut::start(&path, &name).unwrap()).await.unwrap();
    Some((dir, nut))
}
