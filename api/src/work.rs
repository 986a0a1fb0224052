//! Wake-ups for held instruction requests, one per machine: work posted
//! for a machine (a deploy, a release, a refresh) wakes that machine's
//! agent alone. One wake-up for all made every held agent re-read its
//! machine on every deploy asked for: with 5,000 machines waiting in
//! discovery, 5,000 reads per deploy, and the fleet simulator's 5,000
//! deploys never finished being asked for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

#[derive(Default)]
pub struct WorkPosted {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Machine id -> the wake-up its held requests wait on (gone when
    /// they are).
    by_machine: HashMap<String, Weak<Notify>>,
    /// Entries at which the map is next swept of wake-ups nobody holds.
    sweep_at: usize,
}

impl WorkPosted {
    /// Machine `id`'s wake-up; a held request keeps the `Arc` while it
    /// waits.
    pub fn for_machine(&self, id: &str) -> Arc<Notify> {
        let mut held = self.held.lock().expect("work wake-ups lock");
        if let Some(notify) = held.by_machine.get(id).and_then(Weak::upgrade) {
            return notify;
        }
        if held.by_machine.len() >= held.sweep_at {
            held.by_machine.retain(|_, w| w.strong_count() > 0);
            held.sweep_at = (held.by_machine.len() * 2).max(1024);
        }
        let notify = Arc::new(Notify::new());
        held.by_machine.insert(id.to_string(), Arc::downgrade(&notify));
        notify
    }

    /// Work was posted for machine `id`: its held requests look again.
    pub fn posted(&self, id: &str) {
        let notify = self.held.lock().expect("work wake-ups lock").by_machine.get(id).and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Wake-ups tracked (held or not yet swept), for tests.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.held.lock().expect("work wake-ups lock").by_machine.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_for_one_machine_wakes_its_agent_alone() {
        let work = WorkPosted::default();
        let (a, b) = (work.for_machine("a"), work.for_machine("b"));
        let (woken_a, woken_b) = (a.notified(), b.notified());
        tokio::pin!(woken_a, woken_b);
        woken_a.as_mut().enable();
        woken_b.as_mut().enable();
        work.posted("a");
        assert!(tokio::time::timeout(std::time::Duration::from_millis(100), woken_a).await.is_ok());
        assert!(tokio::time::timeout(std::time::Duration::from_millis(100), woken_b).await.is_err(), "b slept on");
        assert!(Arc::ptr_eq(&a, &work.for_machine("a")), "one wake-up per machine while held");
    }

    #[test]
    fn wake_ups_nobody_holds_are_swept() {
        let work = WorkPosted::default();
        for i in 0..5000 {
            drop(work.for_machine(&format!("m{i}")));
        }
        assert!(work.tracked() <= 1024, "{} tracked", work.tracked());
        work.posted("m1"); // nobody holds it: nothing to wake, no error
    }
}
