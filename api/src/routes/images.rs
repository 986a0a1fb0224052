//! `/api/v1/images`: the OS image catalog, and `/boot/images/` where agents
//! stream an available image from.
//!
//! Imports run beside the request (a multi-GB import outlives any HTTP
//! timeout): `POST` with `source_path` returns 202 and the image in
//! `importing`; `PUT .../content` streams an upload straight into the
//! importer, never holding more than a buffer of it.

use std::path::{Path as FsPath, PathBuf};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use images::catalog::{self, ImportError, SourceFormat};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Routes;
use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::AppState;
use anyhow::Context;
use model::deploy::{Arch, BootMode};
use serde_json::json;
use store::{Image, ImageMeta, ImageState, StoreError};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/api/v1/images", get(list).post(register))
        .route("/api/v1/images/{name}", get(show).delete(remove))
        .route("/api/v1/images/{name}/content", put(upload))
}

pub fn boot_router() -> Router<AppState> {
    Router::new().route("/boot/images/{file}", get(serve_content))
}

/// Where an image's content is stored.
pub fn content_path(images_dir: &FsPath, name: &str) -> PathBuf {
    images_dir.join(format!("{name}.raw.zst"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewImage, example = json!({"name": "debian-12-1", "os": "debian", "version": "12"}))]
pub(super) struct Register {
    /// Becomes a file name: 1-64 of `a-z0-9._-`, starting with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    name: String,
    os: String,
    version: String,
    #[serde(default)]
    #[schema(default = "x86_64")]
    arch: Arch,
    /// Format of the content given by `source_path` (uploads say theirs in
    /// Content-Type).
    #[serde(default)]
    format: Option<SourceFormat>,
    /// SHA-256 of the raw content; the import fails when it differs.
    #[serde(default)]
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    sha256: Option<String>,
    /// A file on the appliance to import from.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    source_path: Option<PathBuf>,
}

fn bad(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field: field.into(), detail: detail.into() }
}

/// Names become file names: keep them to a safe alphabet.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(bad("name", format!("{name:?}: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")))
    }
}

/// `path` (relative to the import directory, or absolute) as a file
/// inside the import directory once symlinks are resolved. Anything else
/// would let an operator read (and serve to the boot network) any file
/// the appliance can read, its own admin token and sealing key included.
fn in_import_dir(import_dir: &FsPath, path: &FsPath) -> Result<PathBuf, ApiError> {
    let refused = || {
        bad("source_path", format!("{} is not a file in the import directory {}", path.display(), import_dir.display()))
    };
    let real = import_dir.join(path).canonicalize().map_err(|_| refused())?;
    if !real.starts_with(import_dir) || !real.is_file() {
        return Err(refused());
    }
    Ok(real)
}

fn check_sha256(sha: &Option<String>) -> Result<(), ApiError> {
    match sha {
        Some(s) if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(bad("sha256", "64 hexadecimal digits"))
        }
        _ => Ok(()),
    }
}

/// Registers an image; with `source_path`, imports it from that file in
/// the background.
#[utoipa::path(
    post,
    path = "/api/v1/images",
    operation_id = "register_image",
    tag = "images",
    description = "Role: operator. Without `source_path` the image waits in `importing` for \
        `PUT /api/v1/images/{name}/content`.",
    request_body = Register,
    responses(
        (status = 202, description = "The image, importing", body = Image),
        super::openapi::NeedsRole, super::openapi::TakesJson,
        (status = 409, response = super::openapi::Conflict),
    )
)]
async fn register(
    _: Operator,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<Register>,
) -> Result<Response, ApiError> {
    check_name(&req.name)?;
    check_sha256(&req.sha256)?;
    let source = match &req.source_path {
        Some(path) => Some((
            in_import_dir(&state.import_dir, path)?,
            req.format.ok_or_else(|| bad("format", "raw, raw+zstd or qcow2 is required"))?,
        )),
        None => None,
    };
    // What the image boots is read from its content when the import ends.
    let meta =
        ImageMeta { name: req.name, os: req.os, version: req.version, arch: req.arch, boot_mode: BootMode::Neither };
    let image = state.store.create_image(&meta).await?;
    if let Some((path, format)) = source {
        let source = ImportSource { path, format, sha256: req.sha256.clone() };
        // Kept so a crash mid-import starts it again (`resume_imports`).
        let noted = serde_json::to_string(&source).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        state.store.set_import_source(&meta.name, &noted).await?;
        spawn_import(state.clone(), meta.name.clone(), source);
    }
    Ok((StatusCode::ACCEPTED, Json(image)).into_response())
}

/// Where an import by path reads from.
#[derive(Serialize, Deserialize)]
struct ImportSource {
    path: PathBuf,
    format: SourceFormat,
    sha256: Option<String>,
}

fn spawn_import(state: AppState, name: String, source: ImportSource) {
    tokio::spawn(async move {
        let dest = content_path(&state.images_dir, &name);
        let scratch = state.images_dir.clone();
        let label = name.clone();
        let ImportSource { path, format, sha256 } = source;
        let outcome = tokio::task::spawn_blocking(move || {
            catalog::import_path(&path, format, &dest, &scratch, sha256.as_deref(), &mut progress(&label))
        })
        .await;
        finish(&state, &name, flatten(outcome)).await;
    });
}

/// At start: removes the scratch files of imports and uploads a crash cut
/// off, and starts each interrupted import by path again (or fails it, if
/// its source is no longer in the import directory). An upload cut off
/// stays `importing`, waiting for its content to be sent again.
pub async fn resume_imports(state: &AppState) -> anyhow::Result<()> {
    for dir in [&state.images_dir, &state.firmware_dir] {
        match catalog::remove_partials(dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!(dir = %dir.display(), files = n, "removed scratch files a stop left behind"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("clearing scratch files in {}", dir.display())),
        }
    }
    let needed = state.store.images().await?.into_iter().filter_map(|image| image.sha256).collect();
    match crate::image_peers::prune(&state.images_dir, &needed) {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed copies of image content no image needs"),
        Err(e) => return Err(e).context("pruning copies of other appliances' image content"),
    }
    for (name, noted) in state.store.interrupted_imports().await? {
        let source: Option<ImportSource> = serde_json::from_str(&noted).ok();
        let source = source.filter(|s| in_import_dir(&state.import_dir, &s.path).is_ok());
        match source {
            Some(source) => {
                tracing::warn!(image = name, path = %source.path.display(), "an import was cut off by a stop; starting it again");
                state.store.record_event(None, "image.import_resumed", json!({ "image": name })).await?;
                spawn_import(state.clone(), name, source);
            }
            None => {
                let why = "the appliance stopped during the import and its source is no longer in the import directory";
                finish(state, &name, Err(why.to_string())).await;
            }
        }
    }
    Ok(())
}

/// Logs import progress every 256 MiB.
fn progress(name: &str) -> impl FnMut(u64) + '_ {
    let mut next = 0u64;
    move |bytes| {
        if bytes >= next {
            tracing::info!(image = name, mib = bytes >> 20, "importing image");
            next = bytes + (256 << 20);
        }
    }
}

fn flatten(
    outcome: Result<Result<catalog::Imported, ImportError>, tokio::task::JoinError>,
) -> Result<catalog::Imported, String> {
    match outcome {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(join) => Err(format!("import task failed: {join}")),
    }
}

async fn finish(state: &AppState, name: &str, outcome: Result<catalog::Imported, String>) {
    match &outcome {
        Ok(done) => tracing::info!(image = name, raw_bytes = done.raw_bytes, sha256 = done.sha256, "image available"),
        Err(error) => tracing::warn!(image = name, error, "image import failed"),
    }
    let held_at = state.boot.as_ref().map(|boot| boot.http_base.as_str());
    if let Err(err) = state.store.finish_image(name, outcome.as_ref().map_err(String::as_str), held_at).await {
        tracing::error!(image = name, error = %err, "recording the end of an import failed");
    }
}

/// `PUT /api/v1/images/{name}/content`: the body is the content, raw
/// (`application/octet-stream`) or raw+zstd (`application/zstd`). Answers
/// once the import finished: 200 with the image, or 422 with why.
#[utoipa::path(
    put,
    path = "/api/v1/images/{name}/content",
    operation_id = "upload_image_content",
    tag = "images",
    description = "Role: operator. Streams the content into the catalog, never holding it in memory. The image \
        must be `importing`.",
    params(
        ("name" = String, Path, example = "debian-12-1", description = "The image's name"),
        ("X-Content-SHA256" = Option<String>, Header, description = "SHA-256 of the raw content, 64 hex digits"),
    ),
    request_body(content((Vec<u8> = "application/octet-stream"), (Vec<u8> = "application/zstd")),
                 description = "The image: raw, or raw+zstd"),
    responses(
        (status = 200, description = "The image, available", body = Image),
        (status = 400, response = super::openapi::BadRequest),
        super::openapi::NeedsRole,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 422, response = super::openapi::Unprocessable),
    )
)]
async fn upload(
    _: Operator,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let image = find(&state, &name).await?;
    if image.state != ImageState::Importing {
        return Err(
            store::StoreError::Conflict(format!("image {name:?} is {:?}; register a new one", image.state)).into()
        );
    }
    let format = match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some("application/zstd") => SourceFormat::RawZstd,
        Some("application/octet-stream") | None => SourceFormat::Raw,
        Some(other) => {
            return Err(bad("Content-Type", format!("{other}: application/octet-stream (raw) or application/zstd")))
        }
    };
    let expected = headers.get("x-content-sha256").and_then(|v| v.to_str().ok()).map(str::to_string);
    check_sha256(&expected)?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let dest = content_path(&state.images_dir, &name);
    let label = name.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        catalog::import_stream(reader, format, &dest, expected.as_deref(), &mut progress(&label))
    })
    .await;
    let outcome = flatten(outcome);
    finish(&state, &name, outcome.clone()).await;
    match outcome {
        Ok(_) => Ok(Json(find(&state, &name).await?).into_response()),
        Err(error) => Ok(crate::error::problem_with_field(StatusCode::UNPROCESSABLE_ENTITY, Some("content"), error)),
    }
}

async fn find(state: &AppState, name: &str) -> Result<Image, ApiError> {
    state.store.image(name).await?.ok_or_else(|| ApiError::NotFound { what: format!("image {name}") })
}

/// The image catalog.
#[derive(Serialize, ToSchema)]
pub(super) struct ImageList {
    pub images: Vec<Image>,
}

/// Every image.
#[utoipa::path(
    get,
    path = "/api/v1/images",
    operation_id = "list_images",
    tag = "images",
    description = "Role: viewer.",
    responses(
        (status = 200, description = "Every image", body = ImageList),
        super::openapi::NeedsToken,
    )
)]
async fn list(_: Viewer, State(state): State<AppState>) -> Result<Json<ImageList>, ApiError> {
    Ok(Json(ImageList { images: state.store.images().await? }))
}

/// One image.
#[utoipa::path(
    get,
    path = "/api/v1/images/{name}",
    operation_id = "get_image",
    tag = "images",
    description = "Role: viewer.",
    params(("name" = String, Path, example = "debian-12", description = "The image's name")),
    responses(
        (status = 200, description = "The image", body = Image),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn show(_: Viewer, State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Image>, ApiError> {
    Ok(Json(find(&state, &name).await?))
}

/// Deletes an image and its content.
#[utoipa::path(
    delete,
    path = "/api/v1/images/{name}",
    operation_id = "delete_image",
    tag = "images",
    description = "Role: operator. Refused (409) while a machine is deploying or running it.",
    params(("name" = String, Path, description = "The image's name")),
    responses(
        (status = 204, description = "Deleted"),
        super::openapi::NeedsRole,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    )
)]
async fn remove(_: Operator, State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let sha256 = state.store.image(&name).await?.and_then(|image| image.sha256);
    if !state.store.delete_image(&name).await? {
        return Err(ApiError::NotFound { what: format!("image {name}") });
    }
    let _ = std::fs::remove_file(content_path(&state.images_dir, &name));
    if let Some(copy) = sha256.and_then(|digest| crate::image_peers::copy_path(&state.images_dir, &digest)) {
        let _ = std::fs::remove_file(copy);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Streams an available image's content, with HEAD and Range (agents
/// resume a broken download where it stopped).
async fn serve_content(
    State(state): State<AppState>,
    Path(file): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound { what: format!("image file {file}") };
    let name = file.strip_suffix(".raw.zst").ok_or_else(not_found)?;
    check_name(name).map_err(|_| not_found())?;
    let image = match state.store.image(name).await? {
        Some(image) if image.state == ImageState::Available => image,
        _ => return Err(not_found()),
    };
    let here = state.boot.as_ref().map(|boot| boot.http_base.as_str());
    let path = match (image.held_at.as_deref(), image.sha256.as_deref()) {
        // Another appliance on this database imported it.
        (Some(held_at), Some(sha256)) if Some(held_at) != here => state
            .image_fetches
            .local_copy(&state.images_dir, name, sha256, held_at)
            .await
            .map_err(|why| ApiError::Device(format!("image {name}'s content from {held_at}: {why}")))?,
        _ => content_path(&state.images_dir, name),
    };
    Ok(super::confine::serve_file(path, req).await)
}
