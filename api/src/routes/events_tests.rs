//! The live event stream: live events, `Last-Event-ID` resume, the
//! machine filter and the `lagged` notice.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use tower::ServiceExt;

use crate::routes::test_support::{app, get, TestApp};
use store::Event;

/// Opens the stream; returns its body as a stream of text chunks.
async fn open(t: &TestApp, query: &str, last_id: Option<&str>) -> axum::body::BodyDataStream {
    let mut req =
        Request::get(format!("/api/v1/events/stream{query}")).header("Authorization", format!("Bearer {}", t.admin));
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = t.operator.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp.into_body().into_data_stream()
}

/// Reads until the text so far contains `needle` (or 10 s pass).
async fn read_until(body: &mut axum::body::BodyDataStream, needle: &str) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains(needle) {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("waiting for {needle:?}: {other:?}; so far:\n{text}"),
        }
    }
    text
}

#[tokio::test]
async fn the_stream_sends_live_events_and_resumes_by_id() {
    let t = app().await;
    let (first, _) = t.state.store.ensure_machine("52:54:00:00:20:01".parse().unwrap(), "test", 60_000).await.unwrap();
    let mut live = open(&t, "", None).await;
    t.state.store.record_event(Some(&first), "test.live", serde_json::json!({ "n": 1 })).await.unwrap();
    let text = read_until(&mut live, "event: test.live").await;
    assert!(text.contains(&format!("\"machine_id\":\"{first}\"")), "{text}");

    // Resume from the first event: the database replays what followed.
    let (_, events) = get(&t.operator, "/api/v1/events", Some(&t.admin)).await;
    let created = events["events"][0]["id"].as_str().unwrap().to_string();
    let mut resumed = open(&t, "", Some(&created)).await;
    let text = read_until(&mut resumed, "event: test.live").await;
    assert!(!text.contains("event: machine.created"), "only what came after the id:\n{text}");

    // The machine filter.
    let (second, _) = t.state.store.ensure_machine("52:54:00:00:20:02".parse().unwrap(), "test", 60_000).await.unwrap();
    let mut one = open(&t, &format!("?machine={second}"), None).await;
    t.state.store.record_event(Some(&first), "test.other", serde_json::json!({})).await.unwrap();
    t.state.store.record_event(Some(&second), "test.mine", serde_json::json!({})).await.unwrap();
    let text = read_until(&mut one, "event: test.mine").await;
    assert!(!text.contains("test.other"), "{text}");
    assert_eq!(get(&t.operator, "/api/v1/events/stream?machine=nobody", Some(&t.admin)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&t.operator, "/api/v1/events/stream?colour=red", Some(&t.admin)).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_slow_client_is_told_it_lagged() {
    let t = app().await;
    let mut slow = open(&t, "", None).await;
    for i in 0..store::feed::CAPACITY + 10 {
        let at_ms = store::wall_clock_ms();
        t.state.store.feed.publish(Event {
            id: format!("{i:08}"),
            machine_id: None,
            at: store::rfc3339(at_ms),
            at_ms,
            kind: "test.flood".into(),
            detail: serde_json::json!({}),
        });
    }
    let text = read_until(&mut slow, "event: lagged").await;
    assert!(text.contains("\"missed\":"), "{text}");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = slow.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ends after lagged, for the client to resume by id");
}
