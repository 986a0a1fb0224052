//! Leader election for background work, so appliances sharing one
//! PostgreSQL database reap deadlines and poll BMCs and UPSes once, not
//! once each. Request handling is not elected: every appliance serves the
//! API from the shared database.
//!
//! The design is a lease row per kind of work (`leader_leases`, see
//! `Store::try_lease`), renewed every [`RENEW`] with a conditional upsert
//! and valid for [`LEASE`]. It is plain portable SQL, so the single
//! appliance on SQLite runs the same code (and always wins). An appliance
//! considers itself leader only until `LEASE - MARGIN` after the start of
//! its last successful renewal: a leader that cannot reach the database
//! stops before anyone else may take over. Expiry is compared on the
//! appliances' wall clocks, so their skew must stay well under `MARGIN`
//! (NTP keeps it in milliseconds).
//!
//! This module does not stop work already running when the lease is lost;
//! the workers ask [`Leader::is_leader`] before each round.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use store::{wall_clock_ms as now_ms, Store};

/// How long a lease is valid after it was taken or renewed.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often the holder renews (and others try to take over).
pub const RENEW: Duration = Duration::from_secs(2);
/// How much sooner than the lease's expiry the holder stops.
pub const MARGIN: Duration = Duration::from_secs(2);

/// The lease for all of an appliance's background work.
pub const BACKGROUND: &str = "background";

/// This appliance's view of one lease. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    holder: String,
    /// Until when this appliance may act as leader.
    valid_until: Mutex<Option<Instant>>,
}

impl Leader {
    /// Starts contending for lease `name` as `holder` (unique per process)
    /// in a background task; the first attempt is made before this returns.
    pub async fn start(store: Store, name: &str, holder: String) -> Leader {
        let leader =
            Leader { inner: Arc::new(Inner { name: name.to_string(), holder, valid_until: Mutex::new(None) }) };
        leader.round(&store).await;
        let me = leader.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                me.round(&store).await;
            }
        });
        leader
    }

    /// A leader that always is one (tests, and work with no peers).
    pub fn always() -> Leader {
        Leader {
            inner: Arc::new(Inner {
                name: BACKGROUND.into(),
                holder: "always".into(),
                valid_until: Mutex::new(Some(Instant::now() + Duration::from_secs(100 * 365 * 86_400))),
            }),
        }
    }

    /// Whether this appliance holds the lease now.
    pub fn is_leader(&self) -> bool {
        self.valid_until().is_some_and(|until| Instant::now() < until)
    }

    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    fn valid_until(&self) -> Option<Instant> {
        *self.inner.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_valid_until(&self, until: Option<Instant>) {
        *self.inner.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// One attempt to take or renew the lease.
    async fn round(&self, store: &Store) {
        let was = self.is_leader();
        let started = Instant::now();
        let now = now_ms();
        let lease_ms = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        let (name, holder) = (&self.inner.name, &self.inner.holder);
        match store.try_lease(name, holder, now + lease_ms, now).await {
            Ok(true) => {
                self.set_valid_until(Some(started + LEASE - MARGIN));
                if !was {
                    info!(lease = name, holder, "leader: this appliance runs the background work");
                }
            }
            Ok(false) => {
                self.set_valid_until(None);
                if was {
                    warn!(lease = name, holder, "leader: lease lost to another appliance");
                } else if let Ok(Some((other, _))) = store.lease_holder(name).await {
                    tracing::debug!(lease = name, holder = other, "leader: another appliance holds the lease");
                }
            }
            // The lease runs out on its own (valid_until) if this persists.
            Err(err) => warn!(lease = name, error = %err, "leader: renewing the lease failed"),
        }
        metrics::gauge!("slipway_leader").set(if self.is_leader() { 1.0 } else { 0.0 });
    }

    /// Runs the future `start` makes while this appliance leads: started
    /// on gaining the lease, dropped (cancelled) within a second of losing
    /// it, started again on regaining it. Returns when the work does.
    pub async fn while_leading<F, Fut>(&self, what: &str, mut start: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let check = Duration::from_secs(1);
        loop {
            while !self.is_leader() {
                tokio::time::sleep(check).await;
            }
            info!(work = what, "leader: starting");
            let work = start();
            tokio::pin!(work);
            loop {
                tokio::select! {
                    () = &mut work => return,
                    () = tokio::time::sleep(check) => if !self.is_leader() { break },
                }
            }
            warn!(work = what, "leader: stopped, no longer the leader");
        }
    }

    /// Gives the lease up so another appliance takes over at its next
    /// renewal instead of after expiry (at shutdown).
    pub async fn release(&self, store: &Store) {
        self.set_valid_until(None);
        if let Err(err) = store.release_lease(&self.inner.name, &self.inner.holder).await {
            warn!(lease = self.inner.name, error = %err, "leader: releasing the lease failed");
        }
    }
}

/// A holder name unique to this process, readable in logs: host, API
/// address and a random suffix.
pub fn holder_name(api: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{} {api} {}", host.trim(), &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::test_db::on_both_databases;

    on_both_databases!(one_of_two_appliances_leads);

    async fn one_of_two_appliances_leads(store: Store) {
        let a = Leader::start(store.clone(), "work", "a".into()).await;
        let b = Leader::start(store.clone(), "work", "b".into()).await;
        assert!(a.is_leader() && !b.is_leader(), "the first to ask leads");
        a.release(&store).await;
        assert!(!a.is_leader());
        b.round(&store).await;
        assert!(b.is_leader(), "a released lease is taken at the next round");
        a.round(&store).await;
        assert!(!a.is_leader(), "and then held");
    }
}
