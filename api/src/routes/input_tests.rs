//! Bad input gets a 4xx problem document naming what was wrong, never a
//! 5xx and never axum's plain-text rejections: malformed JSON, unknown
//! fields, wrong types, oversized bodies, a body that is not JSON, bad
//! query parameters, unknown routes and methods.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use tower::ServiceExt;

use super::test_support::{app, TestApp};

/// Sends a request as the admin; returns the status and the problem.
async fn send(
    t: &TestApp,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    let mut req =
        Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {}", t.admin));
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let resp = t.operator.clone().oneshot(req.body(body.into()).unwrap()).await.unwrap();
    let status = resp.status();
    let ct = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    assert_eq!(ct.as_deref(), Some("application/problem+json"), "{path}: {}", String::from_utf8_lossy(&bytes));
    let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(problem["status"], status.as_u16(), "{problem}");
    (status, problem)
}

fn check(got: (StatusCode, serde_json::Value), status: StatusCode, field: Option<&str>) {
    assert_eq!((got.0, got.1["field"].as_str()), (status, field), "{}", got.1);
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn bodies_that_are_not_what_the_route_reads_are_named() {
    let t = app().await;
    let tokens = "/api/v1/tokens";
    let truncated = send(&t, Method::POST, tokens, JSON, "{\"name\":").await;
    check(truncated, StatusCode::BAD_REQUEST, Some("name"));
    check(send(&t, Method::POST, tokens, JSON, "[]").await, StatusCode::BAD_REQUEST, Some("body"));
    check(
        send(&t, Method::POST, tokens, JSON, r#"{"name":"a","role":"viewer"} {}"#).await,
        StatusCode::BAD_REQUEST,
        Some("body"),
    );
    check(send(&t, Method::POST, tokens, JSON, "").await, StatusCode::BAD_REQUEST, Some("body"));
    let unknown = r#"{"name":"a","role":"viewer","colour":"red"}"#;
    check(send(&t, Method::POST, tokens, JSON, unknown).await, StatusCode::BAD_REQUEST, Some("colour"));
    let wrong_type = r#"{"name":"a","role":"viewer","expires_in_secs":"soon"}"#;
    check(send(&t, Method::POST, tokens, JSON, wrong_type).await, StatusCode::BAD_REQUEST, Some("expires_in_secs"));
    let negative = r#"{"name":"a","role":"viewer","expires_in_secs":-1}"#;
    check(send(&t, Method::POST, tokens, JSON, negative).await, StatusCode::BAD_REQUEST, Some("expires_in_secs"));
    let huge = format!(r#"{{"name":"{}","role":"viewer"}}"#, "x".repeat(crate::extract::MAX_JSON_BODY));
    check(send(&t, Method::POST, tokens, JSON, huge).await, StatusCode::PAYLOAD_TOO_LARGE, Some("body"));
    let ok = r#"{"name":"a","role":"viewer"}"#;
    check(
        send(&t, Method::POST, tokens, Some("text/plain"), ok).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Some("Content-Type"),
    );
    check(
        send(&t, Method::POST, "/api/v1/machines/x/deploy", JSON, r#"{"image":"i","hostname":"h","disk":{"size":1}}"#)
            .await,
        StatusCode::BAD_REQUEST,
        Some("disk.size"),
    );
}

#[tokio::test]
async fn query_parameters_are_named() {
    let t = app().await;
    check(
        send(&t, Method::GET, "/api/v1/events?limit=x", None, Body::empty()).await,
        StatusCode::BAD_REQUEST,
        Some("limit"),
    );
    check(
        send(&t, Method::GET, "/api/v1/events?limit=0", None, Body::empty()).await,
        StatusCode::BAD_REQUEST,
        Some("limit"),
    );
    check(
        send(&t, Method::GET, "/api/v1/events?colour=red", None, Body::empty()).await,
        StatusCode::BAD_REQUEST,
        Some("colour"),
    );
    check(
        send(&t, Method::GET, "/api/v1/audit?limit=1&limit=2", None, Body::empty()).await,
        StatusCode::BAD_REQUEST,
        Some("limit"),
    );
    check(
        send(&t, Method::GET, "/api/v1/machines?state=asleep", None, Body::empty()).await,
        StatusCode::BAD_REQUEST,
        Some("state"),
    );
    check(
        send(&t, Method::GET, "/api/v1/events/stream?machine=a&machine=b", None, Body::empty()).await,
        StatusCode::BAD_REQUEST,
        Some("machine"),
    );
}

#[tokio::test]
async fn what_no_handler_answers_is_a_problem_too() {
    let t = app().await;
    let (status, problem) = send(&t, Method::GET, "/api/v1/nothing-here", None, Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    let (status, problem) = send(&t, Method::POST, "/api/v1/nothing-here", JSON, "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    let (_, audit) = super::test_support::get(&t.operator, "/api/v1/audit", Some(&t.admin)).await;
    let last = audit["entries"].as_array().unwrap().last().cloned().unwrap_or_default();
    assert_eq!((last["path"].as_str(), last["status"].as_u64()), (Some("/api/v1/nothing-here"), Some(404)), "{audit}");
    // Without a token, writes to routes the API does not have leave no row:
    // a flood of them cannot grow the database.
    for i in 0..200 {
        let req = Request::post(format!("/api/v1/nothing-{i}")).body(Body::empty()).unwrap();
        assert_eq!(t.operator.clone().oneshot(req).await.unwrap().status(), StatusCode::NOT_FOUND);
    }
    let (_, after) = super::test_support::get(&t.operator, "/api/v1/audit?limit=500", Some(&t.admin)).await;
    assert_eq!(after["entries"].as_array().unwrap().len(), audit["entries"].as_array().unwrap().len(), "{after}");
    // On the API's own routes they are recorded, up to a budget a minute.
    for _ in 0..150 {
        let req = Request::post("/api/v1/machines/m1/release").body(Body::empty()).unwrap();
        assert_eq!(t.operator.clone().oneshot(req).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let (_, flooded) = super::test_support::get(&t.operator, "/api/v1/audit?limit=500", Some(&t.admin)).await;
    let refused = flooded["entries"].as_array().unwrap().iter().filter(|e| e["status"] == 401).count();
    // (A minute boundary mid-loop gives two minutes' budgets: still < 150.)
    let budget = crate::audit::ANONYMOUS_PER_MINUTE as usize;
    assert!((budget..=2 * budget).contains(&refused), "a minute's budget of anonymous rows: {refused}");
    let (status, problem) = send(&t, Method::PATCH, "/api/v1/tokens", JSON, "{}").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("PATCH"), "{problem}");
    let req = Request::patch("/api/v1/tokens").body(Body::empty()).unwrap();
    let resp = t.operator.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()[header::ALLOW], "GET,HEAD,POST", "the 405 keeps its Allow");
    let (status, problem) = send(&t, Method::GET, "/api/v1/machines/%FF%FE", None, Body::empty()).await;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("path")), "{problem}");
}

/// The fuzz run enrolled BMCs at addresses no client can use (`+Xi|` for
/// Redfish, `https://10.0.1.21:623` for IPMI): they were stored and only
/// ever failed. They are refused, naming the address.
#[tokio::test]
async fn bmc_addresses_no_client_can_use_are_refused() {
    let t = app().await;
    for (protocol, address) in [("redfish", "+Xi|"), ("redfish", "ftp://10.0.1.21"), ("ipmi", "https://10.0.1.21:623")]
    {
        let body = serde_json::json!({ "address": address, "protocol": protocol, "username": "u", "password": "p" });
        let got = send(&t, Method::POST, "/api/v1/bmcs", JSON, body.to_string()).await;
        check(got, StatusCode::BAD_REQUEST, Some("address"));
    }
    let pem = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
    let body = serde_json::json!({ "address": "https://10.0.1.21", "protocol": "redfish", "username": "u",
                                   "password": "p", "ca_pem": pem });
    check(
        send(&t, Method::POST, "/api/v1/bmcs", JSON, body.to_string()).await,
        StatusCode::BAD_REQUEST,
        Some("ca_pem"),
    );
    let (_, bmcs) = super::test_support::get(&t.operator, "/api/v1/bmcs", Some(&t.admin)).await;
    assert_eq!(bmcs["bmcs"], serde_json::json!([]), "nothing was enrolled");
}

/// The same for UPSes: an address the protocol's client cannot use is
/// refused before anything is stored.
#[tokio::test]
async fn ups_addresses_no_client_can_use_are_refused() {
    let t = app().await;
    for (protocol, address) in [("nut", "http://10.0.1.5:3493"), ("snmp", "ftp://x"), ("redfish", "+Xi|")] {
        let body = serde_json::json!({ "name": "u1", "protocol": protocol, "address": address, "ups": "eaton1",
                                       "username": "u", "password": "p" });
        let got = send(&t, Method::POST, "/api/v1/ups", JSON, body.to_string()).await;
        check(got, StatusCode::BAD_REQUEST, Some("address"));
    }
    let (_, ups) = super::test_support::get(&t.operator, "/api/v1/ups", Some(&t.admin)).await;
    assert_eq!(ups["ups"], serde_json::json!([]), "nothing was enrolled");
}
