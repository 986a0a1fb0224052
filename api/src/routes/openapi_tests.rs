//! The OpenAPI document against the code: the committed copy, the routes
//! the router really has, and the roles the role table gives them.

use std::collections::BTreeSet;

use axum::http::StatusCode;

use super::document_json;
use crate::routes::roles_tests::ROUTES;
use crate::routes::test_support::{app, get};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

/// The operations the document has, as (METHOD, path).
fn documented() -> Vec<(String, String, serde_json::Value)> {
    let doc: serde_json::Value = serde_json::from_str(&document_json()).unwrap();
    let mut out = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    out
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = document_json();
    if std::env::var_os("SLIPWAY_UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "api/openapi.json differs from the document the code generates; regenerate it with\n  \
         SLIPWAY_UPDATE_OPENAPI=1 cargo test -p api --lib openapi\nand commit it"
    );
}

#[test]
fn the_document_has_every_route_and_no_other() {
    let documented: BTreeSet<(String, String)> = documented().into_iter().map(|(m, p, _)| (m, p)).collect();
    // The role table is checked against the router by `roles_tests`.
    let routed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(undocumented.is_empty(), "routes without a #[utoipa::path] in routes::openapi::ApiDoc: {undocumented:?}");
    assert!(unrouted.is_empty(), "documented operations the router lacks: {unrouted:?}");
}

#[test]
fn each_operation_states_its_role_and_security() {
    for (method, path, op) in documented() {
        let role = ROUTES.iter().find(|(m, p, _)| *m == method && *p == path).and_then(|(_, _, role)| *role);
        let description = op["description"].as_str().unwrap_or_default();
        match role {
            Some(role) => {
                assert!(description.starts_with(&format!("Role: {role}.")), "{method} {path}: {description:?}");
                assert!(op.get("security").is_none(), "{method} {path} takes the document's bearer security");
                assert!(op["responses"]["401"].is_object(), "{method} {path} documents 401");
                if role > crate::auth::Role::Viewer {
                    assert!(op["responses"]["403"].is_object(), "{method} {path} documents 403");
                }
            }
            None => assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path} needs no token"),
        }
        // A PUT creates what it names.
        if path.contains('{') && method != "PUT" {
            assert!(op["responses"]["404"].is_object(), "{method} {path} has a path parameter: 404");
        }
        if op.get("requestBody").is_some() {
            let json = op["requestBody"]["content"].get("application/json").is_some();
            for status in if json { ["400", "413", "415"].as_slice() } else { ["400"].as_slice() } {
                assert!(op["responses"][status].is_object(), "{method} {path} takes a body: {status}");
            }
        }
    }
}

#[test]
fn exactly_the_routes_that_honour_idempotency_keys_document_the_header() {
    let documented: BTreeSet<String> = documented()
        .into_iter()
        .filter(|(_, _, op)| op["parameters"].as_array().into_iter().flatten().any(|p| p["name"] == "Idempotency-Key"))
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    let honoured: BTreeSet<String> = crate::idempotency::ROUTES.iter().map(|r| format!("POST {r}")).collect();
    assert_eq!(documented, honoured);
}

#[test]
fn operation_ids_are_unique() {
    let ids: Vec<String> = documented()
        .iter()
        .map(|(m, p, op)| op["operationId"].as_str().unwrap_or_else(|| panic!("{m} {p}")).into())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

#[tokio::test]
async fn the_api_serves_the_document() {
    let t = app().await;
    let viewer = crate::routes::roles_tests::token(&t, "docs", crate::auth::Role::Viewer).await;
    let (status, served) = get(&t.operator, "/api/v1/openapi.json", Some(&viewer)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(served, serde_json::from_str::<serde_json::Value>(&document_json()).unwrap());
    assert_eq!(get(&t.operator, "/api/v1/openapi.json", None).await.0, StatusCode::UNAUTHORIZED);
}
