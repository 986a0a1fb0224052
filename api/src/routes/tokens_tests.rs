//! Tokens (create, list, revoke, expiry), the bootstrap token and the
//! audit log, through the operator API.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::auth::Role;
use crate::routes::roles_tests::token;
use crate::routes::test_support::{app, available_image, delete, get, post, ready_machine, TestApp};

async fn audit(t: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = get(&t.operator, &format!("/api/v1/audit{query}"), Some(&t.admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked() {
    let t = app().await;
    let (status, created) =
        post(&t.operator, "/api/v1/tokens", &t.admin, &json!({ "name": "ci", "role": "operator" })).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (id, secret) = (created["id"].as_str().unwrap().to_string(), created["secret"].as_str().unwrap().to_string());
    assert_eq!((created["role"].as_str(), created["created_by"].as_str()), (Some("operator"), Some("admin-token")));
    assert_eq!(created["expires_at"], Value::Null);

    assert_eq!(get(&t.operator, "/api/v1/machines", Some(&secret)).await.0, StatusCode::OK);
    let (status, list) = get(&t.operator, "/api/v1/tokens", Some(&t.admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!list.to_string().contains(&secret), "the secret is shown once: {list}");
    assert!(!list.to_string().contains("sha256"), "nor its digest: {list}");
    let listed = &list["tokens"][0];
    assert_eq!((listed["id"].as_str(), listed["name"].as_str()), (Some(id.as_str()), Some("ci")));
    assert!(listed["created_at"].is_string() && listed["last_used_at"].is_string(), "{listed}");

    assert_eq!(delete(&t.operator, &format!("/api/v1/tokens/{id}"), &t.admin).await, StatusCode::NO_CONTENT);
    let (status, body) = get(&t.operator, "/api/v1/machines", Some(&secret)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked token is refused: {body}");
    assert_eq!(delete(&t.operator, &format!("/api/v1/tokens/{id}"), &t.admin).await, StatusCode::NOT_FOUND);
    assert_eq!(get(&t.operator, "/api/v1/tokens", Some(&t.admin)).await.1["tokens"], json!([]));
    assert_eq!(delete(&t.operator, "/api/v1/tokens/admin-token", &t.admin).await, StatusCode::CONFLICT);
}

#[tokio::test]
async fn token_requests_name_the_bad_field() {
    let t = app().await;
    for (body, field) in [
        (json!({ "name": "x", "role": "root" }), "role"),
        (json!({ "name": " ", "role": "viewer" }), "name"),
        (json!({ "name": "anonymous", "role": "viewer" }), "name"),
        (json!({ "name": "x", "role": "viewer", "expires_in_secs": 0 }), "expires_in_secs"),
        (json!({ "name": "x", "role": "viewer", "secret": "mine" }), "secret"),
    ] {
        let (status, problem) = post(&t.operator, "/api/v1/tokens", &t.admin, &body).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{body}: {problem}");
    }
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let t = app().await;
    let body = json!({ "name": "short", "role": "viewer", "expires_in_secs": 1 });
    let (status, created) = post(&t.operator, "/api/v1/tokens", &t.admin, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(created["expires_at"].is_string(), "{created}");
    let secret = created["secret"].as_str().unwrap();
    t.state.store.clock().advance(Duration::from_secs(2));
    let (status, problem) = get(&t.operator, "/api/v1/machines", Some(secret)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(problem["detail"].as_str().unwrap().contains("expired"), "{problem}");
}

#[tokio::test]
async fn the_bootstrap_token_becomes_the_first_admin_token() {
    use crate::serve::admin_token_in;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let seeded = "automation-seeded-0123456789abcdef-0123";
    assert_eq!(admin_token_in("", dir.path(), Some(seeded)).unwrap(), seeded);
    let file = dir.path().join("admin-token");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), seeded);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let other = "a-different-bootstrap-token-0123456789abcdef";
    assert_eq!(admin_token_in("", dir.path(), Some(other)).unwrap(), seeded, "an admin token exists already");
    assert_eq!(admin_token_in("", dir.path(), None).unwrap(), seeded, "kept across restarts");
    assert_eq!(admin_token_in("from-config", dir.path(), Some(other)).unwrap(), "from-config");

    let fresh = tempfile::tempdir().unwrap();
    assert!(admin_token_in("", fresh.path(), Some("short")).is_err(), "a weak bootstrap token is refused");
    assert!(!fresh.path().join("admin-token").exists());
    let generated = admin_token_in("", fresh.path(), None).unwrap();
    assert_eq!(generated.len(), 64);
    assert_ne!(generated, seeded);
}

#[tokio::test]
async fn audit_records_a_deploy_and_a_refused_request() {
    let t = app().await;
    available_image(&t, "img").await;
    let (id, _) = ready_machine(&t, "52:54:00:00:0a:01").await;
    let ops = token(&t, "ops", Role::Operator).await;
    let viewer = token(&t, "dashboard", Role::Viewer).await;
    let before = audit(&t, "").await;

    let deploy = format!("/api/v1/machines/{id}/deploy");
    let (status, body) = post(&t.operator, &deploy, &ops, &json!({ "image": "img", "hostname": "n1" })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let release = format!("/api/v1/machines/{id}/release");
    assert_eq!(post(&t.operator, &release, &viewer, &json!({})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(post(&t.operator, &release, "forged", &json!({})).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&t.operator, "/api/v1/machines", Some(&viewer)).await.0, StatusCode::OK);

    let last = before.last().unwrap()["id"].as_str().unwrap().to_string();
    let entries = audit(&t, &format!("?after={last}")).await;
    let summary: Vec<_> = entries
        .iter()
        .map(|e| (e["method"].as_str(), e["route"].as_str(), e["target"].as_str(), e["status"].as_u64()))
        .collect();
    let route = Some("/api/v1/machines/{id}/deploy");
    assert_eq!(summary[0], (Some("POST"), route, Some(id.as_str()), Some(202)), "{entries:?}");
    assert_eq!(summary[1], (Some("POST"), Some("/api/v1/machines/{id}/release"), Some(id.as_str()), Some(403)));
    assert_eq!(summary[2].3, Some(401));
    assert_eq!(entries.len(), 3, "reads are not audited: {entries:?}");

    let who = |e: &Value| (e["token_name"].as_str().map(str::to_string), e["role"].as_str().map(str::to_string));
    assert_eq!(who(&entries[0]), (Some("ops".into()), Some("operator".into())));
    assert!(entries[0]["token_id"].is_string());
    assert_eq!(entries[0]["path"], deploy);
    assert_eq!(who(&entries[1]), (Some("dashboard".into()), Some("viewer".into())));
    assert_eq!(who(&entries[2]), (Some("anonymous".into()), None));
    assert_eq!(entries[2]["token_id"], Value::Null);

    // The admin's own requests are there too (the image upload, token creation).
    assert!(before.iter().any(|e| e["route"] == "/api/v1/images/{name}/content" && e["token_name"] == "admin-token"));
    assert!(before.iter().any(|e| e["route"] == "/api/v1/tokens" && e["status"] == 201));
    // Paging.
    let first = audit(&t, "?limit=1").await;
    assert_eq!(first.len(), 1);
    let next = audit(&t, &format!("?limit=1&after={}", first[0]["id"].as_str().unwrap())).await;
    assert_eq!(next[0]["id"], before[1]["id"]);
}

#[tokio::test]
async fn no_audit_row_contains_an_enrolment_password() {
    let t = app().await;
    let ops = token(&t, "ops", Role::Operator).await;
    let password = "pw-that-must-never-be-logged-7f3a";
    // Nothing listens on port 1 of loopback: the BMC is enrolled with its error.
    let bmc =
        json!({ "address": "http://127.0.0.1:1", "protocol": "redfish", "username": "root", "password": password });
    let (status, body) = post(&t.operator, "/api/v1/bmcs", &ops, &bmc).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ups = json!({ "name": "ups1", "protocol": "nut", "address": "127.0.0.1:1", "ups": "ups",
                      "username": "monuser", "password": password });
    let (status, body) = post(&t.operator, "/api/v1/ups", &ops, &ups).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Refused ones too, and a password in the query string.
    let mut bad = bmc.clone();
    bad["protocol"] = json!("telnet");
    assert_eq!(post(&t.operator, "/api/v1/bmcs", &ops, &bad).await.0, StatusCode::BAD_REQUEST);
    let query = format!("/api/v1/bmcs?password={password}");
    assert_eq!(post(&t.operator, &query, "forged", &bmc).await.0, StatusCode::UNAUTHORIZED);

    let entries = audit(&t, "").await;
    assert!(entries.len() >= 4, "{entries:?}");
    assert!(entries.iter().any(|e| e["path"] == "/api/v1/bmcs" && e["status"] == 201));
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains(password), "{text}");
}
