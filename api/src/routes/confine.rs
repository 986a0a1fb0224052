//! Boot files never come from outside their directory. `ServeDir` refuses
//! `..` but follows a symlink placed inside its root; this wraps it so the
//! resolved path of every request must lie under the canonical root, the
//! rule the TFTP server keeps too.

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// Streams one file the caller has already checked, with HEAD and Range
/// (agents resume a broken image download, BMCs fetch firmware).
pub async fn serve_file(path: PathBuf, req: Request<Body>) -> Response {
    match tower_http::services::ServeFile::new(path).oneshot(req).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}

/// `ServeDir` over `root`, refusing (404) any request whose file resolves
/// outside it.
pub fn confined_dir(
    root: &Path,
) -> impl tower::Service<Request<Body>, Response = Response, Error = Infallible, Future = impl Send> + Clone + Send {
    let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let serve = ServeDir::new(root);
    tower::service_fn(move |req: Request<Body>| {
        let (canonical, serve) = (canonical.clone(), serve.clone());
        async move {
            if let Some(outside) = resolves_outside(&canonical, req.uri().path()) {
                tracing::warn!(path = %req.uri().path(), resolved = %outside.display(), "boot file outside its root refused");
                metrics::counter!("slipway_boot_http_refused_total", "reason" => "outside_root").increment(1);
                return Ok(StatusCode::NOT_FOUND.into_response());
            }
            Ok(serve.oneshot(req).await.map(IntoResponse::into_response).unwrap_or_else(|e| match e {}))
        }
    })
}

/// Where `uri_path` leads when it leads outside `root`; `None` when it
/// stays inside or does not exist (then `ServeDir` answers 404 itself).
fn resolves_outside(root: &Path, uri_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(uri_path).decode_utf8().ok()?;
    let resolved = root.join(decoded.trim_start_matches('/')).canonicalize().ok()?;
    (!resolved.starts_with(root)).then_some(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_symlink_out_of_the_root_is_refused_and_files_inside_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("vmlinuz"), "kernel").unwrap();
        std::fs::write(dir.path().join("secret"), "not for clients").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink("vmlinuz", root.join("alias")).unwrap();
        let service = confined_dir(&root);
        let get = |path: &str| {
            let service = service.clone();
            let req = Request::get(path).body(Body::empty()).unwrap();
            async move {
                let resp = service.oneshot(req).await.unwrap();
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        assert_eq!(get("/vmlinuz").await, (StatusCode::OK, "kernel".into()));
        assert_eq!(get("/alias").await, (StatusCode::OK, "kernel".into()), "a link that stays inside is fine");
        assert_eq!(get("/escape").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get("/%65scape").await.0, StatusCode::NOT_FOUND, "percent-encoded too");
        assert_eq!(get("/../secret").await.0, StatusCode::NOT_FOUND);
    }
}
