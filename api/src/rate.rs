//! A per-minute budget for writes that anonymous callers can cause (audit
//! rows, refusal events): anyone on the network could otherwise grow the
//! database at will. Past the budget the caller is only counted.

use std::sync::Mutex;

pub struct MinuteBudget {
    per_minute: u32,
    /// (minute, writes in it).
    used: Mutex<(i64, u32)>,
}

impl MinuteBudget {
    pub const fn new(per_minute: u32) -> MinuteBudget {
        MinuteBudget { per_minute, used: Mutex::new((0, 0)) }
    }

    /// Takes one write from the budget of the minute `now_ms` falls in.
    pub fn take(&self, now_ms: i64) -> bool {
        let minute = now_ms / 60_000;
        let mut used = self.used.lock().expect("budget lock");
        if used.0 != minute {
            *used = (minute, 0);
        }
        let allowed = used.1 < self.per_minute;
        if allowed {
            used.1 += 1;
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_budget_refills_each_minute() {
        let budget = super::MinuteBudget::new(2);
        assert!(budget.take(0) && budget.take(59_999));
        assert!(!budget.take(59_999));
        assert!(budget.take(60_000));
    }
}
