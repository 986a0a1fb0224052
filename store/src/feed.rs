//! The live event feed behind `GET /api/v1/events/stream`: committed
//! events, published on a `tokio::sync::broadcast` channel.
//!
//! The feed tails the `events` table rather than being handed events by
//! the code that writes them: an event is written inside its
//! transaction (some forty places), and only a read after the commit
//! sees exactly what was committed. Tailing also shows a stream the
//! events written by other appliances on the same PostgreSQL database.
//! UUIDv7 ids are taken before commit, so a transaction can commit an
//! event with an id below one already published; the tailer therefore
//! re-reads a window of [`WINDOW_MS`] behind the newest event it saw and
//! drops the ids it already published. An event committed more than that
//! after its timestamp is not streamed live (it is in `/events`).
//!
//! The tailer starts with the first subscriber and reads only while
//! somebody listens. It serves this appliance's own clients, so it runs on
//! every appliance, not only the leader. It does not own paging or
//! resuming (`Last-Event-ID`): the route reads those from the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};
use tokio::sync::broadcast;

use super::{rfc3339, Clock, Event, Result, StoreError};

/// How far behind the newest event seen the tailer looks again.
pub const WINDOW_MS: i64 = 2_000;
/// How often the tailer reads while somebody listens.
pub const POLL: Duration = Duration::from_millis(250);
/// Events a subscriber may fall behind before it is told it lagged.
pub const CAPACITY: usize = 1024;

pub struct EventFeed {
    pool: AnyPool,
    clock: Clock,
    tx: broadcast::Sender<Event>,
    started: AtomicBool,
}

impl EventFeed {
    pub fn new(pool: AnyPool, clock: Clock) -> EventFeed {
        EventFeed { pool, clock, tx: broadcast::channel(CAPACITY).0, started: AtomicBool::new(false) }
    }

    /// A receiver of events committed from now on; starts the tailer.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        let rx = self.tx.subscribe();
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(tail(self.pool.clone(), self.clock.clone(), self.tx.clone()));
        }
        rx
    }

    /// Publishes `event` to the current subscribers (the tailer's output;
    /// tests use it to overrun a subscriber).
    #[cfg(any(test, feature = "test-util"))]
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}

async fn tail(pool: AnyPool, clock: Clock, tx: broadcast::Sender<Event>) {
    let mut newest = clock.now_ms();
    let mut published: HashMap<String, i64> = HashMap::new();
    let mut failing = false;
    loop {
        tokio::time::sleep(POLL).await;
        if tx.receiver_count() == 0 {
            newest = clock.now_ms();
            published.clear();
            continue;
        }
        let rows = sqlx::query("SELECT * FROM events WHERE at_ms >= $1 ORDER BY at_ms, id LIMIT 5000")
            .bind(newest - WINDOW_MS)
            .fetch_all(&pool)
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %err, "the live event feed cannot read events");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        for row in &rows {
            match event_from_row(row) {
                Ok(event) if !published.contains_key(&event.id) => {
                    newest = newest.max(event.at_ms);
                    published.insert(event.id.clone(), event.at_ms);
                    let _ = tx.send(event);
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "the live event feed skipped an unreadable event"),
            }
        }
        published.retain(|_, at| *at >= newest - WINDOW_MS);
    }
}

pub(crate) fn event_from_row(r: &AnyRow) -> Result<Event> {
    let at_ms: i64 = r.try_get("at_ms")?;
    let detail: String = r.try_get("detail")?;
    Ok(Event {
        id: r.try_get("id")?,
        machine_id: r.try_get("machine_id")?,
        at: rfc3339(at_ms),
        at_ms,
        kind: r.try_get("kind")?,
        detail: serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use crate::{test_db, Store};
    use model::lifecycle::Trigger;

    test_db::on_both_databases!(committed_events_reach_subscribers_once);

    async fn committed_events_reach_subscribers_once(store: Store) {
        let mut rx = store.feed.subscribe();
        let (id, _) = store.ensure_machine("52:54:00:00:03:01".parse().unwrap(), "test", 60_000).await.unwrap();
        store.fire(&id, Trigger::InventoryReceived).await.unwrap();
        store.record_event(None, "test.plain", serde_json::json!({})).await.unwrap();
        let mut kinds = Vec::new();
        while kinds.len() < 3 {
            let event = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
            kinds.push(event.kind);
        }
        assert_eq!(kinds, ["machine.created", "state.changed", "test.plain"]);
        let again = tokio::time::timeout(super::POLL * 4, rx.recv()).await;
        assert!(again.is_err(), "the re-read window publishes nothing twice: {again:?}");
    }
}
