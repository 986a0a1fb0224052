//! `POST /api/v1/machines/{id}/deploy` and the deployment it starts;
//! `POST /api/v1/machines/{id}/release`, which wipes the disks and returns
//! the machine to `ready`.
//!
//! A deploy moves a `ready` machine to `deploying`. Its discovery agent,
//! which waits in the ramdisk, is handed the image at its next poll (and a
//! machine that reboots meanwhile gets the ramdisk again and the same
//! deployment): no separate installer boot.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::Routes;
use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::AppState;
use model::deploy::DeploymentSpec;
use store::{Deployment, ImageState};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/api/v1/machines/{id}/deploy", post(deploy))
        .route("/api/v1/machines/{id}/deployment", get(show))
        .route("/api/v1/machines/{id}/release", post(release))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"wipe": "quick"}))]
pub(super) struct ReleaseRequest {
    /// The configured default when absent.
    #[serde(default)]
    wipe: Option<wire::WipeMode>,
}

/// Releases a machine: its disks are wiped and it is `ready` again.
///
/// Releasing needs the machine's agent: a machine with a BMC is
/// network-booted into the ramdisk through it; without one, a deployed
/// machine gets the ramdisk at its next network boot (by hand), and a
/// failed one is often still running it.
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/release",
    operation_id = "release_machine",
    tag = "deploys",
    description = "Role: operator. A deployed, joined or failed machine moves to `releasing`. The body is optional. \
        Honours `Idempotency-Key`.",
    params(
        ("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs"),
        crate::idempotency::KeyParam,
    ),
    request_body(content = Option<ReleaseRequest>, description = "Optional"),
    responses(
        (status = 202, description = "The machine, releasing", body = store::Machine),
        super::openapi::NeedsRole, super::openapi::TakesJson,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 422, response = super::openapi::Unprocessable),
    )
)]
async fn release(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<Option<ReleaseRequest>>,
) -> Result<(StatusCode, Json<store::Machine>), ApiError> {
    let req = req.unwrap_or_default();
    let mode = req.wipe.unwrap_or(state.release_wipe);
    let machine = super::machines::find(&state, &id).await?;
    state.store.start_release(&machine.id, mode, state.store.now_ms() + state.deploy_timeout_ms).await?;
    state.work_posted.posted(&machine.id);
    state.oob.boot_for_work(&machine.id, false, "release: boot into the ramdisk to wipe");
    tracing::info!(machine = machine.id, wipe = mode.as_str(), "release requested");
    let machine = super::machines::find(&state, &machine.id).await?;
    Ok((StatusCode::ACCEPTED, Json(machine)))
}

/// What serde cannot check in a deploy request, with the field to blame.
fn validate(req: &DeploymentSpec) -> Result<(), ApiError> {
    if !valid_hostname(&req.hostname) {
        return Err(bad("hostname", format!("{:?} is not an RFC 1123 host name", req.hostname)));
    }
    let one_key_each =
        |keys: &[String], field: &str| match keys.iter().position(|k| k.trim().is_empty() || k.contains('\n')) {
            Some(i) => Err(bad(&format!("{field}[{i}]"), "one non-empty key per entry")),
            None => Ok(()),
        };
    one_key_each(&req.ssh_authorized_keys, "ssh_authorized_keys")?;
    for (i, user) in req.users.iter().enumerate() {
        if !valid_user_name(&user.name) || user.name == "root" {
            return Err(bad(&format!("users[{i}].name"), "a POSIX user name other than root: [a-z_][a-z0-9_-]{0,31}"));
        }
        one_key_each(&user.ssh_authorized_keys, &format!("users[{i}].ssh_authorized_keys"))?;
        if let Some(g) = user.groups.iter().position(|g| !valid_user_name(g)) {
            return Err(bad(&format!("users[{i}].groups[{g}]"), "a POSIX group name"));
        }
    }
    if let Some(net) = &req.network {
        let ok = net.address.split_once('/').is_some_and(|(ip, len)| {
            ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| (1..=32).contains(&l))
        });
        if !ok {
            return Err(bad(
                "network.address",
                format!("{:?}: an IPv4 address with its prefix, 10.0.0.5/24", net.address),
            ));
        }
        if net.gateway.as_ref().is_some_and(|g| g.parse::<std::net::Ipv4Addr>().is_err()) {
            return Err(bad("network.gateway", "an IPv4 address"));
        }
        if let Some(i) = net.dns.iter().position(|d| d.parse::<std::net::IpAddr>().is_err()) {
            return Err(bad(&format!("network.dns[{i}]"), "an IP address"));
        }
    }
    if let Some(cluster) = &req.cluster {
        cluster.validate().map_err(|e| bad(&e.field, e.detail))?;
    }
    Ok(())
}

/// POSIX portable user and group names, as `useradd` accepts them.
fn valid_user_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn bad(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field: field.into(), detail: detail.into() }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and
/// inner hyphens, each 1-63 long, 253 in all.
fn valid_hostname(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Deploys an available image to a ready machine.
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/deploy",
    operation_id = "deploy_machine",
    tag = "deploys",
    description = "Role: operator. With commands run as root on the node (`user_data`, a `command` join): \
                   `node_root`. A ready machine moves to `deploying`; its agent writes, verifies and configures \
        the image. Honours `Idempotency-Key`.",
    params(
        ("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs"),
        crate::idempotency::KeyParam,
    ),
    request_body = DeploymentSpec,
    responses(
        (status = 202, description = "The deployment, requested", body = Deployment),
        super::openapi::NeedsRole, super::openapi::TakesJson,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 422, response = super::openapi::Unprocessable),
    )
)]
async fn deploy(
    Operator(caller): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<DeploymentSpec>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    validate(&req)?;
    if let Some(field) = req.root_commands() {
        crate::auth::may_run_root_commands(&caller, field)?;
    }
    let machine = super::machines::find(&state, &id).await?;
    let image = match state.store.image(&req.image).await? {
        Some(image) if image.state == ImageState::Available => image,
        Some(image) => return Err(bad("image", format!("image {:?} is {:?}, not available", req.image, image.state))),
        None => return Err(bad("image", format!("no image named {:?}", req.image))),
    };
    if let (Some(min), Some(size)) = (req.disk.min_size_bytes, image.raw_bytes) {
        if min < size as u64 {
            return Err(bad("disk.min_size_bytes", format!("the image needs {size} bytes")));
        }
    }
    check_firmware(&machine, &image)?;
    let deployment =
        state.store.start_deployment(&machine.id, &image, &req, state.store.now_ms() + state.deploy_timeout_ms).await?;
    state.work_posted.posted(&machine.id);
    state.oob.boot_for_work(&machine.id, true, "deploy: power on into the installer");
    tracing::info!(machine = machine.id, image = req.image, hostname = req.hostname, "deployment requested");
    metrics::counter!("slipway_deployments_requested_total").increment(1);
    Ok((StatusCode::ACCEPTED, Json(deployment)))
}

/// Refuses an image the machine's firmware (known from its in-band
/// inventory) cannot boot.
fn check_firmware(machine: &store::Machine, image: &store::Image) -> Result<(), ApiError> {
    match image.meta.boot_mode.refusal(&image.meta.name, &machine.id, machine.firmware_mode()) {
        Some(detail) => Err(ApiError::Unprocessable { field: "image".into(), detail }),
        None => Ok(()),
    }
}

/// The machine's deployment: its image, spec and progress.
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}/deployment",
    operation_id = "get_deployment",
    tag = "deploys",
    description = "Role: viewer. For a viewer, `spec.user_data` and the cluster's `token`, `run` and `check` \
        read `(redacted)`.",
    params(("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs")),
    responses(
        (status = 200, description = "The deployment", body = Deployment),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn show(
    Viewer(caller): Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    let machine = super::machines::find(&state, &id).await?;
    let mut deployment = state
        .store
        .deployment(&machine.id)
        .await?
        .ok_or_else(|| ApiError::NotFound { what: format!("deployment of machine {id}") })?;
    // User data, join tokens and join commands are for those who may deploy.
    if caller.role < model::role::Role::Operator {
        deployment.spec = deployment.spec.redacted();
    }
    Ok(Json(deployment))
}

#[cfg(test)]
mod tests {
    use super::valid_hostname;

    #[test]
    fn hostnames() {
        assert!(valid_hostname("node-1"));
        assert!(valid_hostname("node1.rack7.example"));
        for bad in ["", "-node", "node-", "no_de", "a..b", &"x".repeat(64)] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
    }

    /// API clients validate with the schema: it must take exactly the
    /// host names the handler takes.
    #[test]
    fn the_documented_host_name_schema_is_the_handlers_rule() {
        let doc = serde_json::to_value(crate::routes::openapi::document()).unwrap();
        let field = &doc["components"]["schemas"]["DeployRequest"]["properties"]["hostname"];
        let pattern = regex::Regex::new(field["pattern"].as_str().unwrap()).unwrap();
        let max = field["maxLength"].as_u64().unwrap() as usize;
        let label = |n| "x".repeat(n);
        let longest = [label(63), label(63), label(63), label(61)].join(".");
        let samples = [
            "node-1",
            "node1.rack7.example",
            "1",
            "a",
            "a-b",
            "A9.b-0",
            "",
            "-node",
            "node-",
            "no_de",
            "a..b",
            "a.",
            ".a",
            "nöde",
            "node\n",
            "node 1",
            "a.-b",
        ];
        let mut samples: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
        samples.extend([label(63), label(64), longest.clone(), format!("{longest}x"), format!("{longest}.a")]);
        for name in &samples {
            let documented = pattern.is_match(name) && name.chars().count() <= max;
            assert_eq!(documented, valid_hostname(name), "{name:?}");
        }
        assert!(valid_hostname(&longest) && !valid_hostname(&format!("{longest}x")), "the 253 limit is tested");
    }
}

#[cfg(test)]
mod flow_tests {
    use axum::http::StatusCode;
    use serde_json::json;

    use crate::routes::test_support::{
        app, available_image, boot_script, delete, get, get_raw, image_content as content, post, put_bytes,
        ready_machine,
    };

    #[tokio::test]
    async fn images_upload_serve_with_range_and_refuse_bad_content() {
        let t = app().await;
        assert_eq!(post(&t.operator, "/api/v1/images", "nope", &json!({})).await.0, StatusCode::UNAUTHORIZED);
        let compressed = available_image(&t, "tiny").await;
        let (status, headers, body) =
            get_raw(&t.boot, "/boot/images/tiny.raw.zst", &[("Range", "bytes=100-199")]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, compressed[100..200], "agents resume from the byte they stopped at");
        assert_eq!(headers["content-range"], format!("bytes 100-199/{}", compressed.len()));

        let dup = json!({ "name": "tiny", "os": "debian", "version": "12" });
        assert_eq!(post(&t.operator, "/api/v1/images", &t.admin, &dup).await.0, StatusCode::CONFLICT);
        let (status, problem) =
            post(&t.operator, "/api/v1/images", &t.admin, &json!({ "name": "../etc", "os": "x", "version": "1" }))
                .await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("name")));

        // Content that does not match its digest: refused, never served.
        let meta = json!({ "name": "bad", "os": "debian", "version": "12" });
        assert_eq!(post(&t.operator, "/api/v1/images", &t.admin, &meta).await.0, StatusCode::ACCEPTED);
        let wrong = "0".repeat(64);
        let headers = [("Content-Type", "application/octet-stream"), ("X-Content-SHA256", wrong.as_str())];
        let (status, problem) =
            put_bytes(&t.operator, "/api/v1/images/bad/content", &t.admin, &headers, content()).await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("content")),
            "{problem}"
        );
        let (_, image) = get(&t.operator, "/api/v1/images/bad", Some(&t.admin)).await;
        assert_eq!(image["state"], "failed");
        assert!(image["error"].as_str().unwrap().contains("sha256"), "{image}");
        assert_eq!(get_raw(&t.boot, "/boot/images/bad.raw.zst", &[]).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get_raw(&t.boot, "/boot/images/bad.raw.zst.partial", &[]).await.0, StatusCode::NOT_FOUND);
    }

    /// Two appliances on one database: an image uploaded to one is served
    /// by the other's boot face, fetched from the first and checked
    /// against its digest; content that does not hash to it is never
    /// served, and nothing half-fetched is kept.
    #[tokio::test]
    async fn an_image_held_by_another_appliance_is_fetched_from_it_and_checked() {
        use crate::routes::test_support::{app_at, second_appliance};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a_base = format!("http://{}", listener.local_addr().unwrap());
        let db = std::sync::Arc::new(store::test_db::TestDb::from_env("peers").await);
        let a = app_at(&a_base, db).await;
        tokio::spawn(std::future::IntoFuture::into_future(axum::serve(listener, a.boot.clone().into_make_service())));
        available_image(&a, "shared").await;
        let (_, image) = get(&a.operator, "/api/v1/images/shared", Some(&a.admin)).await;
        assert_eq!(image["held_at"], a_base.as_str(), "{image}");

        let b = second_appliance(&a, "http://10.77.0.2:8081").await;
        let (status, _, body) = get_raw(&b.boot, "/boot/images/shared.raw.zst", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(zstd::decode_all(&body[..]).unwrap(), content(), "B serves A's image");
        let (status, _, part) = get_raw(&b.boot, "/boot/images/shared.raw.zst", &[("Range", "bytes=10-19")]).await;
        assert_eq!((status, &part[..]), (StatusCode::PARTIAL_CONTENT, &body[10..20]), "from its own copy, with Range");

        // A's file no longer matches the digest the database holds: a third
        // appliance refuses it (502 naming the holder) and keeps nothing.
        let held = a.state.images_dir.join("shared.raw.zst");
        std::fs::write(&held, zstd::encode_all(&b"not the image"[..], 3).unwrap()).unwrap();
        let c = second_appliance(&a, "http://10.77.0.3:8081").await;
        let (status, _, problem) = get_raw(&c.boot, "/boot/images/shared.raw.zst", &[]).await;
        let problem = String::from_utf8_lossy(&problem);
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{problem}");
        assert!(problem.contains(&a_base) && problem.contains("sha256"), "{problem}");
        let peer_dir = c.state.images_dir.join("peer");
        let left: Vec<_> =
            std::fs::read_dir(&peer_dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "nothing half-fetched is kept: {left:?}");
        // B's checked copy still serves.
        assert_eq!(get_raw(&b.boot, "/boot/images/shared.raw.zst", &[]).await.2, body);
    }

    /// A viewer sees a deployment without its user data, join token or
    /// join commands; an operator sees all of it.
    #[tokio::test]
    async fn a_viewer_reads_a_deployment_without_its_secrets() {
        use model::role::Role;
        let t = app().await;
        available_image(&t, "img").await;
        let (id, _) = ready_machine(&t, "52:54:00:00:0b:01").await;
        let request = json!({
            "image": "img", "hostname": "n1", "user_data": "#cloud-config\npassword: hunter2",
            "cluster": { "kind": "command", "run": "join --token s3cret", "check": "test -f /joined" }
        });
        let path = format!("/api/v1/machines/{id}/deploy");
        let viewer = crate::routes::roles_tests::token(&t, "dashboard", Role::Viewer).await;
        let operator = crate::routes::roles_tests::token(&t, "ops", Role::Operator).await;
        let node_root = crate::routes::roles_tests::token(&t, "root-ops", Role::NodeRoot).await;
        // Commands run as root on the node need the role that says so.
        let (status, refused) = post(&t.operator, &path, &operator, &request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
        assert_eq!(
            (refused["field"].as_str(), refused["required_role"].as_str()),
            (Some("user_data"), Some("node_root"))
        );
        let mut command_join = request.clone();
        command_join.as_object_mut().unwrap().remove("user_data");
        let (status, refused) = post(&t.operator, &path, &operator, &command_join).await;
        assert_eq!((status, refused["field"].as_str()), (StatusCode::FORBIDDEN, Some("cluster.run")), "{refused}");
        assert_eq!(post(&t.operator, &path, &node_root, &request).await.0, StatusCode::ACCEPTED);
        let deployment = format!("/api/v1/machines/{id}/deployment");
        let (status, seen) = get(&t.operator, &deployment, Some(&viewer)).await;
        assert_eq!(status, StatusCode::OK);
        for secret in ["hunter2", "s3cret", "/joined"] {
            assert!(!seen.to_string().contains(secret), "a viewer read {secret}: {seen}");
        }
        assert_eq!(
            (seen["spec"]["user_data"].as_str(), seen["spec"]["hostname"].as_str()),
            (Some("(redacted)"), Some("n1"))
        );
        let (_, full) = get(&t.operator, &deployment, Some(&operator)).await;
        assert_eq!(full["spec"]["cluster"]["run"], "join --token s3cret", "an operator reads what it may deploy");
    }

    /// A stop in the middle of an import by path: at the next start its
    /// scratch files go and the import runs again; one whose source left
    /// the import directory fails, saying why.
    #[tokio::test]
    async fn an_import_cut_off_by_a_stop_runs_again_at_start() {
        let t = app().await;
        std::fs::write(t.state.import_dir.join("tiny.raw"), content()).unwrap();
        let meta = |name: &str| store::ImageMeta {
            name: name.into(),
            os: "x".into(),
            version: "1".into(),
            arch: model::deploy::Arch::X86_64,
            boot_mode: model::deploy::BootMode::Neither,
        };
        // As a stopped appliance left them: rows importing, a scratch file.
        for (name, path) in [("cut", t.state.import_dir.join("tiny.raw")), ("gone", "/etc/passwd".into())] {
            t.state.store.create_image(&meta(name)).await.unwrap();
            let source = json!({ "path": path, "format": "raw", "sha256": null }).to_string();
            t.state.store.set_import_source(name, &source).await.unwrap();
        }
        let scratch = t.state.images_dir.join("cut.raw.zst.0123456789abcdef.content.partial");
        std::fs::write(&scratch, b"half an image").unwrap();

        crate::routes::resume_imports(&t.state).await.unwrap();
        assert!(!scratch.exists(), "the scratch file of the cut import is gone");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let t = &t;
        let state = |name: &'static str| async move {
            get(&t.operator, &format!("/api/v1/images/{name}"), Some(&t.admin)).await.1
        };
        while std::time::Instant::now() < deadline && state("cut").await["state"] != "available" {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(state("cut").await["state"], "available");
        let gone = state("gone").await;
        assert_eq!(gone["state"], "failed", "{gone}");
        assert!(gone.to_string().contains("no longer in the import directory"), "{gone}");
    }

    /// An import by path reads the import directory only: not the
    /// appliance's secrets beside it, not through a symlink, not by `..`.
    #[tokio::test]
    async fn imports_by_path_read_only_the_import_directory() {
        let t = app().await;
        let import = t.state.import_dir.clone();
        std::fs::write(import.join("tiny.raw"), content()).unwrap();
        let secret = import.parent().unwrap().join("secret");
        std::os::unix::fs::symlink(&secret, import.join("link.raw")).unwrap();
        let register = |name: &str, path: &str| json!({ "name": name, "os": "x", "version": "1", "format": "raw", "source_path": path });
        for (name, path) in [
            ("a", secret.to_str().unwrap()),
            ("b", "../secret"),
            ("c", "link.raw"),
            ("d", "/etc/passwd"),
            ("e", import.to_str().unwrap()),
        ] {
            let (status, problem) = post(&t.operator, "/api/v1/images", &t.admin, &register(name, path)).await;
            assert_eq!(
                (status, problem["field"].as_str()),
                (StatusCode::BAD_REQUEST, Some("source_path")),
                "{path}: {problem}"
            );
            assert_eq!(
                get(&t.operator, &format!("/api/v1/images/{name}"), Some(&t.admin)).await.0,
                StatusCode::NOT_FOUND
            );
        }
        let absolute = import.join("tiny.raw");
        for (name, path) in [("rel", "tiny.raw"), ("abs", absolute.to_str().unwrap())] {
            let (status, image) = post(&t.operator, "/api/v1/images", &t.admin, &register(name, path)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{image}");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut state = String::new();
            while std::time::Instant::now() < deadline && state != "available" {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                state = get(&t.operator, &format!("/api/v1/images/{name}"), Some(&t.admin)).await.1["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
            assert_eq!(state, "available", "{path}");
        }
    }

    #[tokio::test]
    async fn deploy_hands_the_image_to_the_agent_and_ends_on_local_disk() {
        let t = app().await;
        available_image(&t, "debian-12").await;
        let (id, token) = ready_machine(&t, "52:54:00:00:00:31").await;
        let deploy = format!("/api/v1/machines/{id}/deploy");

        let (status, problem) =
            post(&t.operator, &deploy, &t.admin, &json!({ "image": "debian-12", "hostname": "bad_name" })).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("hostname")));
        let (status, problem) =
            post(&t.operator, &deploy, &t.admin, &json!({ "image": "nope", "hostname": "node1" })).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("image")));

        let req = json!({ "image": "debian-12", "hostname": "node1", "disk": { "name": "vda" } });
        let (status, deployment) = post(&t.operator, &deploy, &t.admin, &req).await;
        assert_eq!((status, deployment["phase"].as_str()), (StatusCode::ACCEPTED, Some("requested")), "{deployment}");
        assert_eq!(post(&t.operator, &deploy, &t.admin, &req).await.0, StatusCode::CONFLICT, "already deploying");
        assert_eq!(delete(&t.operator, "/api/v1/images/debian-12", &t.admin).await, StatusCode::CONFLICT, "in use");

        let (_, instruction) = get(&t.boot, wire::INSTRUCTIONS_PATH, Some(&token)).await;
        assert_eq!(instruction["action"], "deploy", "{instruction}");
        assert_eq!(instruction["url_path"], "/boot/images/debian-12.raw.zst");
        assert_eq!(instruction["raw_bytes"], 1u64 << 20);
        assert_eq!(instruction["disk"]["name"], "vda");
        assert_eq!(instruction["hostname"], "node1", "first-boot configuration travels with the image");

        let writing = json!({ "phase": "writing", "bytes_written": 4096, "disk": "/dev/vda" });
        assert_eq!(post(&t.boot, wire::DEPLOY_PATH, &token, &writing).await.1["action"], "wait");
        let (_, m) = get(&t.operator, &format!("/api/v1/machines/{id}"), Some(&t.admin)).await;
        assert_eq!(m["state"], "deploying", "a half-written image is not deployed");
        let written = json!({ "phase": "written", "bytes_written": 1u64 << 20 });
        assert_eq!(post(&t.boot, wire::DEPLOY_PATH, &token, &written).await.1["action"], "reboot");

        let (_, m) = get(&t.operator, &format!("/api/v1/machines/{id}"), Some(&t.admin)).await;
        assert_eq!(m["state"], "deployed");
        let (_, d) = get(&t.operator, &format!("/api/v1/machines/{id}/deployment"), Some(&t.admin)).await;
        assert_eq!((d["phase"].as_str(), d["disk"].as_str()), (Some("written"), Some("/dev/vda")));
        let (_, script) = boot_script(&t, "52:54:00:00:00:31").await;
        assert!(script.contains("sanboot"), "a deployed machine boots its disk, never reinstalls: {script}");
        let (_, events) = get(&t.operator, &format!("/api/v1/machines/{id}/events"), Some(&t.admin)).await;
        let kinds: Vec<&str> =
            events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        for kind in ["deploy.requested", "deploy.phase", "state.changed"] {
            assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
        }
        assert_eq!(
            post(&t.boot, wire::DEPLOY_PATH, &token, &written).await.0,
            StatusCode::CONFLICT,
            "a late report changes nothing"
        );
    }

    /// Registers `name` with `raw` as its content and returns what the
    /// catalog read of it.
    async fn imported(t: &crate::routes::test_support::TestApp, name: &str, raw: Vec<u8>) -> serde_json::Value {
        let meta = json!({ "name": name, "os": "lab", "version": "1" });
        assert_eq!(post(&t.operator, "/api/v1/images", &t.admin, &meta).await.0, StatusCode::ACCEPTED);
        let path = format!("/api/v1/images/{name}/content");
        let (status, image) =
            put_bytes(&t.operator, &path, &t.admin, &[("Content-Type", "application/octet-stream")], raw).await;
        assert_eq!(status, StatusCode::OK, "{image}");
        image
    }

    /// A machine whose agent reported `firmware`, ready.
    async fn ready_with(t: &crate::routes::test_support::TestApp, mac: &str, firmware: serde_json::Value) -> String {
        use crate::routes::test_support::{boot_script, inventory_json, token_from};
        let (_, script) = boot_script(t, mac).await;
        let mut inventory = inventory_json(mac);
        inventory["firmware"] = firmware;
        let (status, _) = post(&t.boot, wire::INVENTORY_PATH, &token_from(&script), &inventory).await;
        assert_eq!(status, StatusCode::OK);
        let (_, m) = get(&t.operator, &format!("/api/v1/machines/{mac}"), Some(&t.admin)).await;
        assert_eq!(m["inventory"]["firmware"], inventory["firmware"], "the API shows the firmware mode");
        m["id"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn an_image_the_machines_firmware_cannot_boot_is_refused_naming_both() {
        let t = app().await;
        // MBR boot code and signature, no EFI System Partition: BIOS only.
        let mut bios_only = content();
        bios_only[..440].fill(0x90);
        bios_only[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(imported(&t, "bios-only", bios_only).await["boot_mode"], "bios");
        assert_eq!(imported(&t, "no-loader", vec![0u8; 1 << 20]).await["boot_mode"], "none");

        let uefi = ready_with(&t, "52:54:00:0f:00:01", json!({ "mode": "uefi", "secure_boot": true })).await;
        for (image, says) in [("bios-only", "boots bios only"), ("no-loader", "boots neither BIOS nor UEFI")] {
            let req = json!({ "image": image, "hostname": "n1" });
            let (status, problem) = post(&t.operator, &format!("/api/v1/machines/{uefi}/deploy"), &t.admin, &req).await;
            assert_eq!(
                (status, problem["field"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("image")),
                "{problem}"
            );
            let detail = problem["detail"].as_str().unwrap();
            assert!(detail.contains(says) && detail.contains("uefi firmware"), "names both: {detail}");
        }
        let (_, m) = get(&t.operator, &format!("/api/v1/machines/{uefi}"), Some(&t.admin)).await;
        assert_eq!(m["state"], "ready", "a refused deploy changes nothing");
        // Nor can a refresh campaign roll it onto that image.
        let campaign = json!({ "name": "to bios-only", "targets": { "machines": [uefi] },
                               "action": { "os_refresh": { "image": "bios-only" } } });
        let (status, problem) = post(&t.operator, "/api/v1/campaigns", &t.admin, &campaign).await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("action.os_refresh.image"))
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(&format!("machine {uefi} starts through uefi")),
            "{problem}"
        );
        let (_, campaigns) = get(&t.operator, "/api/v1/campaigns", Some(&t.admin)).await;
        assert_eq!(campaigns["campaigns"].as_array().map(Vec::len), Some(0), "{campaigns}");

        let bios = ready_with(&t, "52:54:00:0f:00:02", json!({ "mode": "bios", "secure_boot": null })).await;
        let req = json!({ "image": "bios-only", "hostname": "n2" });
        let (status, d) = post(&t.operator, &format!("/api/v1/machines/{bios}/deploy"), &t.admin, &req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{d}");
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_machine_with_the_agents_reason() {
        let t = app().await;
        available_image(&t, "debian-12").await;
        let (id, token) = ready_machine(&t, "52:54:00:00:00:32").await;
        let req = json!({ "image": "debian-12", "hostname": "node2" });
        assert_eq!(
            post(&t.operator, &format!("/api/v1/machines/{id}/deploy"), &t.admin, &req).await.0,
            StatusCode::ACCEPTED
        );
        let failed =
            json!({ "phase": "failed", "bytes_written": 0, "error": "disk vda (1 MiB) is smaller than the image" });
        assert_eq!(post(&t.boot, wire::DEPLOY_PATH, &token, &failed).await.1["action"], "wait");
        let (_, m) = get(&t.operator, &format!("/api/v1/machines/{id}"), Some(&t.admin)).await;
        assert_eq!((m["state"].as_str(), m["failure"]["phase"].as_str()), (Some("failed"), Some("deploying")));
        assert!(m["failure"]["reason"].as_str().unwrap().contains("smaller than the image"), "{m}");
        let (_, instruction) = get(&t.boot, wire::INSTRUCTIONS_PATH, Some(&token)).await;
        assert_eq!(instruction["action"], "wait", "a failed machine is not handed the image again");
        let (status, problem) =
            post(&t.boot, wire::DEPLOY_PATH, &token, &json!({ "phase": "done", "bytes_written": 0 })).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("phase")));
        // `requested` is the appliance's own phase: no agent may report it.
        let (status, problem) =
            post(&t.boot, wire::DEPLOY_PATH, &token, &json!({ "phase": "requested", "bytes_written": 0 })).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("phase")));
    }

    #[tokio::test]
    async fn release_wipes_then_the_machine_is_ready_and_the_image_free() {
        let t = app().await;
        available_image(&t, "debian-12").await;
        let (id, token) = ready_machine(&t, "52:54:00:00:00:33").await;
        let release = format!("/api/v1/machines/{id}/release");
        assert_eq!(
            post(&t.operator, &release, &t.admin, &json!({})).await.0,
            StatusCode::CONFLICT,
            "nothing to release"
        );
        let req = json!({ "image": "debian-12", "hostname": "node3" });
        assert_eq!(
            post(&t.operator, &format!("/api/v1/machines/{id}/deploy"), &t.admin, &req).await.0,
            StatusCode::ACCEPTED
        );
        let written = json!({ "phase": "written", "bytes_written": 1u64 << 20, "disk": "/dev/vda" });
        post(&t.boot, wire::DEPLOY_PATH, &token, &written).await;

        let (status, problem) = post(&t.operator, &release, &t.admin, &json!({ "wipe": "shred" })).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("wipe")));
        let (status, m) = post(&t.operator, &release, &t.admin, &json!({ "wipe": "full" })).await;
        assert_eq!((status, m["state"].as_str()), (StatusCode::ACCEPTED, Some("releasing")));
        let (_, script) = boot_script(&t, "52:54:00:00:00:33").await;
        assert!(script.contains("slipway.token="), "a releasing machine boots the ramdisk: {script}");
        let token = crate::routes::test_support::token_from(&script);
        let (_, instruction) = get(&t.boot, wire::INSTRUCTIONS_PATH, Some(&token)).await;
        assert_eq!((instruction["action"].as_str(), instruction["mode"].as_str()), (Some("wipe"), Some("full")));
        let report = json!({ "mode": "full", "disks": ["/dev/vda"] });
        assert_eq!(post(&t.boot, wire::WIPED_PATH, &token, &report).await.0, StatusCode::OK);
        let (_, m) = get(&t.operator, &format!("/api/v1/machines/{id}"), Some(&t.admin)).await;
        assert_eq!(m["state"], "ready");
        assert_eq!(
            get(&t.operator, &format!("/api/v1/machines/{id}/deployment"), Some(&t.admin)).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            delete(&t.operator, "/api/v1/images/debian-12", &t.admin).await,
            StatusCode::NO_CONTENT,
            "no longer in use"
        );
        assert_eq!(
            post(&t.boot, wire::WIPED_PATH, &token, &report).await.0,
            StatusCode::CONFLICT,
            "a late report changes nothing"
        );
    }

    #[tokio::test]
    async fn a_held_instructions_request_returns_the_deploy_at_once() {
        let t = app().await;
        available_image(&t, "debian-12").await;
        let (id, token) = ready_machine(&t, "52:54:00:00:00:34").await;
        let boot = t.boot.clone();
        let started = std::time::Instant::now();
        let held = tokio::spawn(async move {
            get(&boot, &format!("{}?wait_seconds=10", wire::INSTRUCTIONS_PATH), Some(&token)).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let req = json!({ "image": "debian-12", "hostname": "node4" });
        assert_eq!(
            post(&t.operator, &format!("/api/v1/machines/{id}/deploy"), &t.admin, &req).await.0,
            StatusCode::ACCEPTED
        );
        let (status, instruction) = held.await.unwrap();
        assert_eq!((status, instruction["action"].as_str()), (StatusCode::OK, Some("deploy")));
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "woken by the deploy, not by the timeout");
    }

    /// The appliance restarts mid-write: the deploy resumes where the agent
    /// is, and only a verified write makes the machine deployed.
    #[tokio::test]
    async fn an_appliance_restart_mid_deploy_resumes_it() {
        let t = app().await;
        available_image(&t, "debian-12").await;
        let (id, token) = ready_machine(&t, "52:54:00:00:00:35").await;
        let req = json!({ "image": "debian-12", "hostname": "node5" });
        assert_eq!(
            post(&t.operator, &format!("/api/v1/machines/{id}/deploy"), &t.admin, &req).await.0,
            StatusCode::ACCEPTED
        );
        assert_eq!(get(&t.boot, wire::INSTRUCTIONS_PATH, Some(&token)).await.1["action"], "deploy");
        let writing = json!({ "phase": "writing", "bytes_written": 4096, "disk": "/dev/vda" });
        post(&t.boot, wire::DEPLOY_PATH, &token, &writing).await;

        let t = crate::routes::test_support::restart(t).await;
        let (_, m) = get(&t.operator, &format!("/api/v1/machines/{id}"), Some(&t.admin)).await;
        assert_eq!(m["state"], "deploying", "the deploy survives the restart, not counted as done");
        assert!(m["state_deadline"].is_string(), "and keeps its deadline: {m}");
        let (_, instruction) = get(&t.boot, wire::INSTRUCTIONS_PATH, Some(&token)).await;
        assert_eq!(instruction["action"], "deploy", "an agent that asks again gets the same image");
        let written = json!({ "phase": "written", "bytes_written": 1u64 << 20, "disk": "/dev/vda" });
        assert_eq!(post(&t.boot, wire::DEPLOY_PATH, &token, &written).await.1["action"], "reboot");
        let (_, m) = get(&t.operator, &format!("/api/v1/machines/{id}"), Some(&t.admin)).await;
        assert_eq!(m["state"], "deployed");
    }
}
