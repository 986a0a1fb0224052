//! `/api/v1/events`, `/api/v1/machines/{id}/events` (paged by id:
//! `{"events": [...], "next": ID|null}`) and `/api/v1/events/stream`, the
//! live feed as server-sent events.
//!
//! The stream subscribes to the store's feed (`store::feed`) first, then
//! replays from the database what came after `Last-Event-ID` (or
//! `?after=`), then goes live, skipping what the replay already sent. Each
//! SSE event has the event's id as `id:` and its kind as `event:`, so a
//! reconnecting `EventSource` resumes where it stopped. A client too slow
//! for the feed gets `event: lagged` and the stream ends; reconnecting with
//! `Last-Event-ID` fills the gap from the database.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::Json;
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa::{IntoParams, ToSchema};

use super::machines::{find, limit, Page};
use super::Routes;
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::extract::Query;
use crate::AppState;
use store::{Event, Store};

/// How often an idle stream sends a comment, so proxies keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events read from the database per replay query.
const REPLAY_PAGE: i64 = 500;

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/api/v1/machines/{id}/events", get(machine_events))
        .route("/api/v1/events", get(all_events))
        .route("/api/v1/events/stream", get(stream))
}

/// A page of events, oldest first.
#[derive(Serialize, ToSchema)]
pub(super) struct EventPage {
    pub events: Vec<Event>,
    /// The `after` for the next page; null when there are no more yet.
    pub next: Option<String>,
}

/// One page and the id to pass as `after` for the next (`null`: none yet).
async fn page(store: &Store, machine: Option<&str>, page: &Page) -> Result<Json<EventPage>, ApiError> {
    let n = limit(page)?;
    let mut events = store.events(machine, page.after.as_deref(), n + 1).await?;
    let more = events.len() as i64 > n;
    events.truncate(n as usize);
    let next = if more { events.last().map(|e| e.id.clone()) } else { None };
    Ok(Json(EventPage { events, next }))
}

/// One machine's events, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}/events",
    operation_id = "list_machine_events",
    tag = "events",
    description = "Role: viewer.",
    params(("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs"), Page),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, response = super::openapi::BadRequest),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn machine_events(
    _: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<Page>,
) -> Result<Json<EventPage>, ApiError> {
    let machine = find(&state, &id).await?;
    page(&state.store, Some(&machine.id), &p).await
}

/// Every event, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    operation_id = "list_events",
    tag = "events",
    description = "Role: viewer.",
    params(Page),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, response = super::openapi::BadRequest),
        super::openapi::NeedsToken,
    )
)]
async fn all_events(
    _: Viewer,
    State(state): State<AppState>,
    Query(p): Query<Page>,
) -> Result<Json<EventPage>, ApiError> {
    page(&state.store, None, &p).await
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Only this machine's events (its id or a MAC).
    machine: Option<String>,
    /// Resume after this event id (as `Last-Event-ID`, which wins).
    after: Option<String>,
}

struct Feed {
    store: Store,
    rx: broadcast::Receiver<Event>,
    machine: Option<String>,
    /// The last event id sent; `None`: live only.
    last: Option<String>,
    /// Whether the database still has events after `last` to replay.
    replaying: bool,
    /// The highest id the replay sent: live events up to it were sent.
    replayed_up_to: Option<String>,
    queued: VecDeque<Event>,
    done: bool,
}

fn sse(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_default();
    SseEvent::default().id(event.id.clone()).event(event.kind.clone()).data(data)
}

/// The next SSE event: replayed ones first, then live ones.
async fn next(mut f: Feed) -> Option<(Result<SseEvent, Infallible>, Feed)> {
    loop {
        if f.done {
            return None;
        }
        if let Some(event) = f.queued.pop_front() {
            f.last = Some(event.id.clone());
            return Some((Ok(sse(&event)), f));
        }
        if f.replaying {
            match f.store.events(f.machine.as_deref(), f.last.as_deref(), REPLAY_PAGE).await {
                Ok(events) => {
                    f.replaying = events.len() as i64 == REPLAY_PAGE;
                    if let Some(last) = events.last() {
                        f.replayed_up_to = Some(last.id.clone());
                    }
                    f.queued.extend(events);
                    continue;
                }
                Err(err) => {
                    tracing::error!(error = %err, "replaying events for a stream");
                    f.done = true;
                    let detail = json!({ "error": "the event log could not be read; reconnect to resume" });
                    return Some((Ok(SseEvent::default().event("error").data(detail.to_string())), f));
                }
            }
        }
        match f.rx.recv().await {
            Ok(event) => {
                let wanted = f.machine.is_none() || event.machine_id == f.machine;
                let replayed = f.replayed_up_to.as_ref().is_some_and(|up_to| event.id <= *up_to);
                if wanted && !replayed {
                    f.queued.push_back(event);
                }
            }
            Err(RecvError::Lagged(missed)) => {
                f.done = true;
                let detail = json!({ "missed": missed, "last_event_id": f.last });
                let lagged = SseEvent::default().event("lagged").data(detail.to_string());
                return Some((Ok(lagged), f));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

/// Live events as server-sent events: each event's id is its SSE `id`,
/// its kind the SSE `event`, the event as JSON its `data`.
#[utoipa::path(
    get,
    path = "/api/v1/events/stream",
    operation_id = "stream_events",
    tag = "events",
    description = "Role: viewer. Resumes after `Last-Event-ID` (or `after`) from the database, then goes live; \
        a keep-alive comment every 15 s; a client too far behind gets `event: lagged` and the stream ends.",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (wins over `after`)"),
    ),
    responses(
        (status = 200, description = "The stream; it does not end by itself", content_type = "text/event-stream",
         body = String),
        (status = 400, response = super::openapi::BadRequest),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn stream(
    _: Viewer,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let machine = match &q.machine {
        Some(id) => Some(find(&state, id).await?.id),
        None => None,
    };
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest { field: "Last-Event-ID".into(), detail: "an event id".into() })?
                .to_string(),
        ),
        None => q.after.clone(),
    };
    // Subscribe before reading the database, so nothing falls between.
    let rx = state.store.feed.subscribe();
    let feed = Feed {
        store: state.store.clone(),
        rx,
        machine,
        replaying: resume.is_some(),
        last: resume,
        replayed_up_to: None,
        queued: VecDeque::new(),
        done: false,
    };
    let events = futures_util::stream::unfold(feed, next);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
