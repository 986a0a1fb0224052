//! Firmware files for refresh campaigns: `PUT /api/v1/firmware/{name}`
//! streams an upload to `data_dir/firmware/NAME.bin` (size-limited, its
//! SHA-256 computed on the way, renamed into place only when whole), `GET
//! /api/v1/firmware` lists them, and the boot HTTP face serves them at
//! `/boot/firmware/{name}`, where a BMC's SimpleUpdate fetches them.
//! Whether a file is valid firmware is the BMC's to say (its task fails).

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use super::Routes;
use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::firmware_files::{content_path, find, meta_path, pinned_path, valid_name, FirmwareFile};
use crate::AppState;
use store::{rfc3339, wall_clock_ms, StoreError};

/// Larger uploads are refused (413).
pub const MAX_FIRMWARE_BYTES: u64 = 256 << 20;

pub(super) fn router() -> Routes {
    Routes::new().route("/api/v1/firmware", get(list)).route("/api/v1/firmware/{name}", put(upload))
}

pub fn boot_router() -> Router<AppState> {
    Router::new().route("/boot/firmware/{name}", get(serve)).route("/boot/firmware/sha256/{sha256}", get(serve_pinned))
}

/// Streams the content a campaign pinned by its SHA-256, with HEAD and Range.
async fn serve_pinned(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let path = pinned_path(&state.firmware_dir, &sha256)
        .filter(|p| p.is_file())
        .ok_or_else(|| ApiError::NotFound { what: format!("firmware with SHA-256 {sha256}") })?;
    Ok(super::confine::serve_file(path, req).await)
}

/// An RFC 9457 problem for statuses `ApiError` has no variant for.
pub(super) fn problem(status: StatusCode, field: &str, detail: impl Into<String>) -> Response {
    let body = json!({
        "type": "about:blank", "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(), "detail": detail.into(), "field": field,
    });
    (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

/// Uploads a firmware file (streamed; its SHA-256 computed on the way).
#[utoipa::path(
    put,
    path = "/api/v1/firmware/{name}",
    operation_id = "upload_firmware",
    tag = "campaigns",
    description = "Role: operator. At most 256 MiB; replaces a file of the same name.",
    params(("name" = String, Path, description = "1-64 of `A-Za-z0-9._-`, starting with a letter or digit")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file"),
    responses(
        (status = 201, description = "The file, stored", body = FirmwareFile),
        (status = 400, response = super::openapi::BadRequest),
        super::openapi::NeedsRole,
        (status = 413, response = super::openapi::PayloadTooLarge),
    )
)]
async fn upload(
    _: Operator,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    if !valid_name(&name) {
        let detail = format!("{name:?}: use 1-64 of a-z, A-Z, 0-9, '.', '_', '-', starting with a letter or digit");
        return Err(ApiError::BadRequest { field: "name".into(), detail });
    }
    let dir = state.firmware_dir.clone();
    let io =
        |what: &str, e: std::io::Error| ApiError::Store(StoreError::Corrupt(format!("{what} {}: {e}", dir.display())));
    tokio::fs::create_dir_all(&dir).await.map_err(|e| io("creating", e))?;
    // Unique: two uploads of one name never write into one file.
    let partial = dir.join(format!(".{name}.{:016x}.partial", rand::random::<u64>()));
    let mut file = tokio::fs::File::create(&partial).await.map_err(|e| io("writing into", e))?;
    let (mut hasher, mut size) = (Sha256::new(), 0u64);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(ApiError::BadRequest {
                    field: "content".into(),
                    detail: format!("the upload broke off: {e}"),
                });
            }
        };
        size += chunk.len() as u64;
        if size > MAX_FIRMWARE_BYTES {
            let _ = tokio::fs::remove_file(&partial).await;
            let detail = format!("firmware files are at most {} MiB", MAX_FIRMWARE_BYTES >> 20);
            return Ok(problem(StatusCode::PAYLOAD_TOO_LARGE, "content", detail));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| io("writing into", e))?;
    }
    if size == 0 {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(ApiError::BadRequest { field: "content".into(), detail: "the file is empty".into() });
    }
    file.sync_all().await.map_err(|e| io("writing into", e))?;
    drop(file);
    let record = FirmwareFile {
        name: name.clone(),
        size_bytes: size,
        sha256: hex::encode(hasher.finalize()),
        uploaded_at: rfc3339(wall_clock_ms()),
    };
    // The content under its digest first: what a campaign pins and serves.
    let pinned = pinned_path(&dir, &record.sha256).expect("a SHA-256 in hex");
    tokio::fs::create_dir_all(dir.join("sha256")).await.map_err(|e| io("creating", e))?;
    match tokio::fs::hard_link(&partial, &pinned).await {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io("linking in", e)),
        _ => {}
    }
    let meta = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tokio::fs::write(meta_path(&dir, &name), meta).await.map_err(|e| io("writing into", e))?;
    tokio::fs::rename(&partial, content_path(&dir, &name)).await.map_err(|e| io("renaming in", e))?;
    state.store.record_event(None, "firmware.uploaded", json!(record)).await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// The uploaded firmware files.
#[derive(Serialize, ToSchema)]
pub(super) struct FirmwareList {
    pub firmware: Vec<FirmwareFile>,
}

/// Every uploaded firmware file, by name.
#[utoipa::path(
    get,
    path = "/api/v1/firmware",
    operation_id = "list_firmware",
    tag = "campaigns",
    description = "Role: viewer.",
    responses(
        (status = 200, description = "Every firmware file", body = FirmwareList),
        super::openapi::NeedsToken,
    )
)]
async fn list(_: Viewer, State(state): State<AppState>) -> Result<Json<FirmwareList>, ApiError> {
    let mut files = vec![];
    if let Ok(entries) = std::fs::read_dir(&state.firmware_dir) {
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(found) = file_name.strip_suffix(".bin").and_then(|n| find(&state.firmware_dir, n)) {
                files.push(found);
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(FirmwareList { firmware: files }))
}

/// For BMCs: no token (a BMC's SimpleUpdate sends none), only whole files.
async fn serve(State(state): State<AppState>, Path(name): Path<String>, req: Request) -> Result<Response, ApiError> {
    if find(&state.firmware_dir, &name).is_none() {
        return Err(ApiError::NotFound { what: format!("firmware {name}") });
    }
    Ok(super::confine::serve_file(content_path(&state.firmware_dir, &name), req).await)
}
