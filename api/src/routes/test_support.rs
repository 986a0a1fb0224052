//! A fresh app per test: its own SQLite database and ramdisk directory.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use std::sync::Arc;
use tower::ServiceExt;

use crate::{auth, boot_router, operator_router, store::Store, AppState, BootContext};

pub struct TestApp {
    pub operator: Router,
    pub boot: Router,
    pub admin: String,
    _dir: tempfile::TempDir,
}

pub async fn app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display())).await.unwrap();
    let ramdisk = dir.path().join("ramdisk");
    std::fs::create_dir(&ramdisk).unwrap();
    std::fs::write(ramdisk.join("vmlinuz"), "kernel-bytes").unwrap();
    let ipxe = dir.path().join("ipxe");
    std::fs::create_dir(&ipxe).unwrap();
    std::fs::write(ipxe.join("snponly.efi"), "efi-bytes").unwrap();
    std::fs::write(dir.path().join("secret"), "secret").unwrap();
    let admin = auth::random_token();
    let state = AppState {
        store,
        admin_token_digest: auth::digest(&admin),
        boot: Some(Arc::new(BootContext {
            http_base: "http://10.77.0.1:8081".into(),
            ramdisk_dir: ramdisk,
            ipxe_dir: ipxe,
        })),
        discovery_timeout_ms: 60_000,
    };
    TestApp { operator: operator_router(state.clone()), boot: boot_router(state), admin, _dir: dir }
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
