//! The whole operator route table against the roles: every route, every
//! kind of caller. The table below is checked against the routes the
//! router really has (paths as registered through `Routes`, methods as the
//! router's `405 Allow` header lists them), so a route added without a
//! line here fails `the_route_table_is_complete`.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::json;
use tower::ServiceExt;

use super::operator_routes;
use super::test_support::{app, post, TestApp};
use crate::auth::Role::{self, Admin, Operator, Viewer};

/// Every operator route and the least role it needs (`None`: no token).
pub(super) const ROUTES: &[(&str, &str, Option<Role>)] = &[
    ("GET", "/healthz", None),
    ("GET", "/metrics", Some(Viewer)),
    ("GET", "/api/v1/openapi.json", Some(Viewer)),
    ("GET", "/api/v1/machines", Some(Viewer)),
    ("GET", "/api/v1/machines/{id}", Some(Viewer)),
    ("PATCH", "/api/v1/machines/{id}", Some(Operator)),
    ("POST", "/api/v1/machines/{id}/actions/{action}", Some(Operator)),
    ("GET", "/api/v1/machines/{id}/events", Some(Viewer)),
    ("GET", "/api/v1/events", Some(Viewer)),
    ("GET", "/api/v1/events/stream", Some(Viewer)),
    ("POST", "/api/v1/machines/{id}/deploy", Some(Operator)),
    ("GET", "/api/v1/machines/{id}/deployment", Some(Viewer)),
    ("POST", "/api/v1/machines/{id}/release", Some(Operator)),
    ("GET", "/api/v1/images", Some(Viewer)),
    ("POST", "/api/v1/images", Some(Operator)),
    ("GET", "/api/v1/images/{name}", Some(Viewer)),
    ("DELETE", "/api/v1/images/{name}", Some(Operator)),
    ("PUT", "/api/v1/images/{name}/content", Some(Operator)),
    ("GET", "/api/v1/machines/{id}/node", Some(Viewer)),
    ("GET", "/api/v1/clusters", Some(Viewer)),
    ("GET", "/api/v1/clusters/{name}", Some(Viewer)),
    ("GET", "/api/v1/bmcs", Some(Viewer)),
    ("POST", "/api/v1/bmcs", Some(Operator)),
    ("GET", "/api/v1/bmcs/{id}", Some(Viewer)),
    ("DELETE", "/api/v1/bmcs/{id}", Some(Operator)),
    ("POST", "/api/v1/bmcs/{id}/inventory", Some(Operator)),
    ("POST", "/api/v1/machines/{id}/power", Some(Operator)),
    ("GET", "/api/v1/machines/{id}/bmc", Some(Viewer)),
    ("GET", "/api/v1/ups", Some(Viewer)),
    ("POST", "/api/v1/ups", Some(Operator)),
    ("GET", "/api/v1/ups/{name}", Some(Viewer)),
    ("DELETE", "/api/v1/ups/{name}", Some(Operator)),
    ("GET", "/api/v1/firmware", Some(Viewer)),
    ("PUT", "/api/v1/firmware/{name}", Some(Operator)),
    ("GET", "/api/v1/campaigns", Some(Viewer)),
    ("POST", "/api/v1/campaigns", Some(Operator)),
    ("GET", "/api/v1/campaigns/{id}", Some(Viewer)),
    ("POST", "/api/v1/campaigns/{id}/pause", Some(Operator)),
    ("POST", "/api/v1/campaigns/{id}/resume", Some(Operator)),
    ("POST", "/api/v1/campaigns/{id}/cancel", Some(Operator)),
    ("GET", "/api/v1/tokens", Some(Admin)),
    ("POST", "/api/v1/tokens", Some(Admin)),
    ("DELETE", "/api/v1/tokens/{id}", Some(Admin)),
    ("GET", "/api/v1/audit", Some(Admin)),
];

/// `template` with each `{param}` replaced by a dummy value.
pub(super) fn fill(template: &str) -> String {
    template.split('/').map(|seg| if seg.starts_with('{') { "dummy-0" } else { seg }).collect::<Vec<_>>().join("/")
}

fn mutating(method: &str) -> bool {
    method != "GET"
}

/// Sends `method path` with an optional token (and `{}` as the body of a
/// mutation); returns the status and the body as JSON (null if not JSON).
async fn call(router: &Router, method: &str, path: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = if mutating(method) {
        req = req.header(header::CONTENT_TYPE, "application/json");
        Body::from("{}")
    } else {
        Body::empty()
    };
    let resp = router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    if resp.headers().get(header::CONTENT_TYPE).is_some_and(|ct| ct == "text/event-stream") {
        // A live stream (`/events/stream`) does not end: its status is the answer.
        return (status, serde_json::Value::Null);
    }
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// A token with `role`, created through the API by the admin.
pub(crate) async fn token(t: &TestApp, name: &str, role: Role) -> String {
    let (status, body) = post(&t.operator, "/api/v1/tokens", &t.admin, &json!({ "name": name, "role": role })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["secret"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_route_table_is_complete() {
    let t = app().await;
    let table: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    assert_eq!(table.len(), ROUTES.len(), "a route is in the table twice");

    let paths: BTreeSet<&str> = operator_routes().paths.into_iter().collect();
    let mut registered = BTreeSet::new();
    for path in paths {
        // A method no route takes: the router answers 405 and lists the
        // methods the path has.
        let req = Request::builder().method(Method::TRACE).uri(fill(path)).body(Body::empty()).unwrap();
        let resp = t.operator.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let allow = resp.headers()[header::ALLOW].to_str().unwrap().to_string();
        for method in allow.split(',').map(str::trim).filter(|m| *m != "HEAD") {
            registered.insert((method.to_string(), path.to_string()));
        }
    }
    let missing: Vec<_> = registered.difference(&table).collect();
    let stale: Vec<_> = table.difference(&registered).collect();
    assert!(missing.is_empty(), "routes the router has and the role table lacks: {missing:?}");
    assert!(stale.is_empty(), "routes in the role table the router lacks: {stale:?}");
    assert_eq!(ROUTES.len(), registered.len());
}

#[tokio::test]
async fn the_table_gives_mutations_and_token_routes_their_roles() {
    for (method, path, role) in ROUTES {
        if mutating(method) {
            assert!(*role >= Some(Operator), "{method} {path} changes something: operator at least");
        }
        if path.starts_with("/api/v1/tokens") || path.starts_with("/api/v1/audit") {
            assert_eq!(*role, Some(Admin), "{method} {path}");
        }
    }
}

#[tokio::test]
async fn every_route_refuses_the_roles_below_it() {
    let t = app().await;
    let viewer = token(&t, "viewer-bot", Viewer).await;
    let operator = token(&t, "ops", Operator).await;
    let callers = [(Viewer, viewer.as_str()), (Operator, operator.as_str()), (Admin, t.admin.as_str())];
    for (method, template, needed) in ROUTES {
        let path = fill(template);
        let (status, body) = call(&t.operator, method, &path, None).await;
        match needed {
            None => assert_eq!(status, StatusCode::OK, "{method} {path} needs no token"),
            Some(_) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} without a token: {body}");
                assert_eq!(call(&t.operator, method, &path, Some("not-a-token")).await.0, StatusCode::UNAUTHORIZED);
            }
        }
        for (role, secret) in callers {
            let (status, body) = call(&t.operator, method, &path, Some(secret)).await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} as {role}: {body}");
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} as {role}");
            if needed.is_some_and(|needed| role < needed) {
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} as {role}: {body}");
                assert_eq!(body["required_role"], json!(needed), "{method} {path} as {role}: {body}");
                assert_eq!(body["status"], 403);
            } else {
                assert_ne!(status, StatusCode::FORBIDDEN, "{method} {path} as {role}: {body}");
            }
        }
    }
}
