//! The machine routes: filters and paging, PATCH with ETags, lifecycle
//! actions, and `Idempotency-Key` on the POSTs that start work.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::routes::test_support::{app, available_image, boot_script, get, ready_machine};

/// Sends any request with headers; returns status, headers and JSON body.
async fn send(
    router: &Router,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path).header("Authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = match body {
        Some(b) => {
            req = req.header("Content-Type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn machines_need_the_admin_token() {
    let t = app().await;
    assert_eq!(get(&t.operator, "/api/v1/machines", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&t.operator, "/api/v1/machines", Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = get(&t.operator, "/api/v1/machines", Some(&t.admin)).await;
    assert_eq!((status, body["machines"].as_array().unwrap().len()), (StatusCode::OK, 0));
    assert_eq!(body["next"], Value::Null);
    assert_eq!(get(&t.operator, "/healthz", None).await.0, StatusCode::OK, "health needs no token");
}

#[tokio::test]
async fn unknown_machine_is_a_404_problem() {
    let t = app().await;
    let (status, body) = get(&t.operator, "/api/v1/machines/52:54:00:00:00:99", Some(&t.admin)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], 404);
    let (status, body) = get(&t.operator, "/api/v1/events?limit=0", Some(&t.admin)).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("limit")));
}

#[tokio::test]
async fn machine_lists_filter_page_and_name_bad_filters() {
    let t = app().await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let (id, _) = ready_machine(&t, &format!("52:54:00:00:10:0{i}")).await;
        let body = json!({ "labels": { "pool": if i == 2 { "b" } else { "a" } }, "rack": format!("r{i}") });
        let (status, _, m) =
            send(&t.operator, "PATCH", &format!("/api/v1/machines/{id}"), &t.admin, &[], Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{m}");
        ids.push(id);
    }
    let list = |q: &str| {
        let q = q.to_string();
        let t = &t;
        async move { get(&t.operator, &format!("/api/v1/machines?{q}"), Some(&t.admin)).await }
    };
    let ids_of = |body: &Value| -> Vec<String> {
        body["machines"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    };
    let (_, body) = list("label=pool=a&state=ready").await;
    assert_eq!(ids_of(&body), [ids[0].clone(), ids[2].clone()]);
    let (_, body) = list("rack=r2").await;
    assert_eq!(ids_of(&body), [ids[1].clone()]);
    let (_, body) = list("mac=52-54-00-00-10-03").await;
    assert_eq!(ids_of(&body), [ids[2].clone()]);
    let (_, first) = list("limit=2").await;
    assert_eq!((ids_of(&first).len(), first["next"].as_str()), (2, Some(ids[1].as_str())));
    let (_, rest) = list(&format!("limit=2&after={}", ids[1])).await;
    assert_eq!((ids_of(&rest), &rest["next"]), (vec![ids[2].clone()], &Value::Null));
    for (query, field) in [
        ("state=bogus", "state"),
        ("label=nopair", "label"),
        ("label=%20x=1", "label"),
        ("mac=zz", "mac"),
        ("limit=0", "limit"),
        ("after=nobody", "after"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = list(query).await;
        assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{query}: {body}");
    }
}

#[tokio::test]
async fn patch_merges_labels_and_honours_if_match() {
    let t = app().await;
    let (id, _) = ready_machine(&t, "52:54:00:00:11:01").await;
    let path = format!("/api/v1/machines/{id}");
    let (_, headers, m) = send(&t.operator, "GET", &path, &t.admin, &[], None).await;
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", m["etag"].as_str().unwrap()));

    let body = json!({ "labels": { "team": "storage", "gpu": "no" }, "rack": "r7" });
    let (status, headers, m) = send(&t.operator, "PATCH", &path, &t.admin, &[("If-Match", &etag)], Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!((m["labels"]["team"].as_str(), m["rack"].as_str()), (Some("storage"), Some("r7")));
    let fresh = headers["etag"].to_str().unwrap().to_string();
    assert_ne!(fresh, etag);

    let stale = json!({ "labels": { "team": "compute" } });
    let (status, headers, problem) =
        send(&t.operator, "PATCH", &path, &t.admin, &[("If-Match", &etag)], Some(stale.clone())).await;
    assert_eq!((status, problem["status"].as_u64()), (StatusCode::PRECONDITION_FAILED, Some(412)), "{problem}");
    assert_eq!(headers["etag"].to_str().unwrap(), fresh, "the 412 says the current ETag");
    assert_eq!(headers["content-type"], "application/problem+json");

    // If-Match is optional; null deletes a label and clears the rack.
    let merge = json!({ "labels": { "gpu": null }, "rack": null });
    let (status, _, m) = send(&t.operator, "PATCH", &path, &t.admin, &[], Some(merge)).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!((m["labels"].clone(), m["rack"].clone()), (json!({ "team": "storage" }), Value::Null));

    for (body, field) in [
        (json!({ "labels": { "-bad": "x" } }), "labels.-bad"),
        (json!({ "labels": { "ok": "a\u{7}" } }), "labels.ok"),
        (json!({ "rack": "r 7" }), "rack"),
        (json!({ "colour": "red" }), "colour"),
        (json!({}), "body"),
    ] {
        let (status, _, problem) = send(&t.operator, "PATCH", &path, &t.admin, &[], Some(body.clone())).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{body}: {problem}");
    }
    let (status, _, _) = send(&t.operator, "PATCH", "/api/v1/machines/nobody", &t.admin, &[], Some(stale)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lifecycle_actions_and_a_retired_machine_boots_locally() {
    let t = app().await;
    let mac = "52:54:00:00:12:01";
    let (id, _) = ready_machine(&t, mac).await;
    let act = |name: &str, body: Option<Value>| {
        let path = format!("/api/v1/machines/{id}/actions/{name}");
        let t = &t;
        async move { send(&t.operator, "POST", &path, &t.admin, &[], body).await }
    };
    let (status, _, problem) = act("mark-failed", None).await;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("reason")));
    let (status, _, m) = act("mark-failed", Some(json!({ "reason": "fan failure" }))).await;
    assert_eq!((status, m["state"].as_str()), (StatusCode::OK, Some("failed")), "{m}");
    assert_eq!((m["failure"]["phase"].as_str(), m["failure"]["reason"].as_str()), (Some("ready"), Some("fan failure")));
    let (status, _, problem) = act("retry", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a machine failed while ready has nothing to retry: {problem}");
    let (status, _, m) = act("reset", Some(json!({}))).await;
    assert_eq!((status, m["state"].as_str()), (StatusCode::OK, Some("discovering")), "{m}");
    assert!(m["inventory"].is_object(), "reset keeps the inventory");
    let (status, _, m) = act("retire", None).await;
    assert_eq!((status, m["state"].as_str()), (StatusCode::OK, Some("retired")), "{m}");
    for name in ["retry", "reset", "retire"] {
        assert_eq!(act(name, None).await.0, StatusCode::CONFLICT, "{name}: retired is terminal");
    }
    assert_eq!(act("reboot", None).await.0, StatusCode::NOT_FOUND);
    let (_, script) = boot_script(&t, mac).await;
    assert!(!script.contains("slipway.token="), "a retired machine gets no ramdisk:\n{script}");
}

#[tokio::test]
async fn retrying_a_failed_discovery_starts_it_over() {
    let t = app().await;
    let (_, script) = boot_script(&t, "52:54:00:00:13:01").await;
    assert!(script.contains("slipway.token="));
    let (_, m) = get(&t.operator, "/api/v1/machines/52:54:00:00:13:01", Some(&t.admin)).await;
    let id = m["id"].as_str().unwrap().to_string();
    t.state.store.fire(&id, model::lifecycle::Trigger::DeadlinePassed).await.unwrap();
    let path = format!("/api/v1/machines/{id}/actions/retry");
    let (status, _, m) = send(&t.operator, "POST", &path, &t.admin, &[], None).await;
    assert_eq!((status, m["state"].as_str()), (StatusCode::OK, Some("discovering")), "{m}");
    assert!(m["state_deadline"].is_string() && m["failure"].is_null(), "{m}");
}

#[tokio::test]
async fn an_idempotency_key_deploys_once() {
    let t = app().await;
    available_image(&t, "img").await;
    let (id, _) = ready_machine(&t, "52:54:00:00:14:01").await;
    let path = format!("/api/v1/machines/{id}/deploy");
    let req = json!({ "image": "img", "hostname": "node-1" });
    let key = [("Idempotency-Key", "deploy-node-1")];
    let (status, headers, first) = send(&t.operator, "POST", &path, &t.admin, &key, Some(req.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, again) = send(&t.operator, "POST", &path, &t.admin, &key, Some(req.clone())).await;
    assert_eq!((status, &again), (StatusCode::ACCEPTED, &first), "the stored response, not a 409");
    assert_eq!(headers["idempotent-replayed"], "true");
    let (_, events) = get(&t.operator, &format!("/api/v1/machines/{id}/events"), Some(&t.admin)).await;
    let requested = events["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "deploy.requested").count();
    assert_eq!(requested, 1, "the work ran once");

    let other = json!({ "image": "img", "hostname": "node-2" });
    let (status, _, problem) = send(&t.operator, "POST", &path, &t.admin, &key, Some(other.clone())).await;
    assert_eq!((status, problem["status"].as_u64()), (StatusCode::UNPROCESSABLE_ENTITY, Some(422)), "{problem}");
    let (status, _, _) = send(&t.operator, "POST", &path, &t.admin, &[], Some(other)).await;
    assert_eq!(status, StatusCode::CONFLICT, "without a key the second deploy runs and is refused");
    let (status, _, _) = send(&t.operator, "POST", &path, &t.admin, &[("Idempotency-Key", "")], Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn event_lists_page_with_next() {
    let t = app().await;
    ready_machine(&t, "52:54:00:00:15:01").await;
    let (_, all) = get(&t.operator, "/api/v1/events?limit=1000", Some(&t.admin)).await;
    let total = all["events"].as_array().unwrap().len();
    assert!(total >= 3, "{all}");
    assert_eq!(all["next"], Value::Null);
    let (_, first) = get(&t.operator, "/api/v1/events?limit=2", Some(&t.admin)).await;
    let next = first["next"].as_str().unwrap().to_string();
    assert_eq!(next, first["events"][1]["id"].as_str().unwrap());
    let (_, rest) = get(&t.operator, &format!("/api/v1/events?limit=1000&after={next}"), Some(&t.admin)).await;
    assert_eq!(rest["events"].as_array().unwrap().len(), total - 2);
}
