//! Operator lifecycle actions on one machine: retry, mark failed, reset to
//! discovery, retire. Each is one transaction: the transition (through
//! `lifecycle::next`, recorded with its cause), what it clears, and the
//! machine's edit counter. The decisions are `lifecycle`'s; this module
//! only applies them.

use sqlx::Row;

use super::{DeployPhase, Result, Store, StoreError};
use model::lifecycle::{retry_target, MachineState, Trigger};

/// An operator action and what it needs.
#[derive(Debug, Clone)]
pub enum Action {
    Retry,
    MarkFailed { reason: String },
    Reset,
    Retire,
}

/// The deadlines of the waiting states an action may lead to, and the wipe
/// mode a retried release uses when its own is gone.
#[derive(Debug, Clone)]
pub struct ActionTimeouts {
    pub discovery_ms: i64,
    pub deploy_ms: i64,
    pub release_wipe: wire::WipeMode,
}

impl Store {
    /// Applies `action` to machine `id`; returns the state it led to, or
    /// `None` when there is no such machine. An action that does not apply
    /// to the machine's state is a conflict and changes nothing.
    pub async fn machine_action(&self, id: &str, action: &Action, t: &ActionTimeouts) -> Result<Option<MachineState>> {
        let Some(machine) = self.machine(id).await? else { return Ok(None) };
        let now = self.now_ms();
        let (trigger, reason, deadline) = match action {
            Action::Retry => {
                let phase = machine.failure.as_ref().and_then(|f| f.phase.parse::<MachineState>().ok());
                let has_deployment = self.deployment(id).await?.is_some();
                let to = match (machine.state, retry_target(phase, has_deployment)) {
                    (MachineState::Failed, Some(to)) => to,
                    (MachineState::Failed, None) => {
                        return Err(StoreError::Conflict(format!(
                            "machine {id} failed in phase {}; retry does not apply (release or reset it)",
                            phase.map_or("unknown", MachineState::as_str)
                        )))
                    }
                    (state, _) => {
                        return Err(StoreError::Conflict(format!(
                            "machine {id} is {state}; only a failed machine is retried"
                        )))
                    }
                };
                let deadline = match to {
                    MachineState::Discovering => Some(now + t.discovery_ms),
                    MachineState::Deploying | MachineState::Releasing => Some(now + t.deploy_ms),
                    _ => None,
                };
                (Trigger::RetryRequested(to), Trigger::RetryRequested(to).cause().to_string(), deadline)
            }
            Action::MarkFailed { reason } => (Trigger::MarkFailedRequested, reason.clone(), None),
            Action::Reset => {
                (Trigger::ResetRequested, Trigger::ResetRequested.cause().to_string(), Some(now + t.discovery_ms))
            }
            Action::Retire => (Trigger::RetireRequested, Trigger::RetireRequested.cause().to_string(), None),
        };
        if model::lifecycle::next(machine.state, trigger).is_none() {
            let state = machine.state;
            return Err(StoreError::Conflict(format!("machine {id} is {state}: {} does not apply", trigger.cause())));
        }
        let mut tx = self.writer.begin().await?;
        match self.fire_in(&mut tx, id, trigger, &reason, deadline).await? {
            None => return Ok(None),
            Some((from, _)) if from != machine.state => {
                return Err(StoreError::Conflict(format!("machine {id} changed to {from} meanwhile; try again")))
            }
            Some((from, to)) if from == to => {
                let detail = serde_json::json!({ "state": to, "cause": reason });
                Self::event_in(&mut *tx, Some(id), now, "state.restarted", detail).await?;
            }
            Some(_) => {}
        }
        // What each action clears. Reset and retire take the machine away
        // from its installed OS: its deployment and node credentials go.
        let clear: &[&str] = match action {
            Action::Reset | Action::Retire => &["deployments", "releases", "node_tokens", "node_status"],
            _ => &[],
        };
        for table in clear {
            sqlx::query(&format!("DELETE FROM {table} WHERE machine_id = $1")).bind(id).execute(&mut *tx).await?;
        }
        if matches!(action, Action::Retire) {
            sqlx::query("DELETE FROM agent_tokens WHERE machine_id = $1").bind(id).execute(&mut *tx).await?;
        }
        match trigger {
            Trigger::RetryRequested(MachineState::Deploying) => {
                // The same deployment is handed out again from the start.
                sqlx::query(
                    "UPDATE deployments SET phase = $1, bytes_written = 0, error = NULL, updated_at_ms = $2 WHERE machine_id = $3",
                )
                .bind(DeployPhase::Requested.as_str())
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            Trigger::RetryRequested(MachineState::Releasing) => {
                let mode = sqlx::query("SELECT mode FROM releases WHERE machine_id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get::<String, _>("mode"))
                    .transpose()?;
                if mode.is_none() {
                    sqlx::query("INSERT INTO releases (machine_id, mode, created_at_ms) VALUES ($1, $2, $3)")
                        .bind(id)
                        .bind(t.release_wipe.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            _ => {}
        }
        sqlx::query("UPDATE machines SET version = version + 1 WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let to = sqlx::query("SELECT state FROM machines WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        let to: MachineState = to.try_get::<String, _>("state")?.parse().map_err(StoreError::Corrupt)?;
        tx.commit().await?;
        Ok(Some(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db;

    test_db::on_both_databases!(operator_actions_follow_the_lifecycle);

    fn timeouts() -> ActionTimeouts {
        ActionTimeouts { discovery_ms: 60_000, deploy_ms: 600_000, release_wipe: wire::WipeMode::Quick }
    }

    async fn operator_actions_follow_the_lifecycle(store: Store) {
        let t = timeouts();
        let (id, _) = store.ensure_machine("52:54:00:00:04:01".parse().unwrap(), "test", 60_000).await.unwrap();
        let conflict = store.machine_action(&id, &Action::Retry, &t).await;
        assert!(matches!(conflict, Err(StoreError::Conflict(_))), "a discovering machine is not retried");
        let failed = Action::MarkFailed { reason: "bad DIMM".into() };
        assert_eq!(store.machine_action(&id, &failed, &t).await.unwrap(), Some(MachineState::Failed));
        let m = store.machine(&id).await.unwrap().unwrap();
        let failure = m.failure.clone().unwrap();
        assert_eq!((failure.phase.as_str(), failure.reason.as_str()), ("discovering", "bad DIMM"));
        assert_eq!(store.machine_action(&id, &Action::Retry, &t).await.unwrap(), Some(MachineState::Discovering));
        let m = store.machine(&id).await.unwrap().unwrap();
        assert!(m.state_deadline.is_some() && m.failure.is_none(), "a fresh deadline, no failure");
        assert_eq!(store.machine_action(&id, &Action::Retire, &t).await.unwrap(), Some(MachineState::Retired));
        for action in [Action::Retry, Action::Reset, Action::Retire, failed] {
            let refused = store.machine_action(&id, &action, &t).await;
            assert!(matches!(refused, Err(StoreError::Conflict(_))), "retired is terminal: {action:?}");
        }
        assert_eq!(store.machine("nope").await.unwrap().map(|m| m.id), None);
        assert_eq!(store.machine_action("nope", &Action::Reset, &t).await.unwrap(), None);
        let (other, _) = store.ensure_machine("52:54:00:00:04:02".parse().unwrap(), "test", 60_000).await.unwrap();
        store.fire(&other, Trigger::InventoryReceived).await.unwrap();
        assert_eq!(store.machine_action(&other, &Action::Reset, &t).await.unwrap(), Some(MachineState::Discovering));
        let m = store.machine(&other).await.unwrap().unwrap();
        assert!(m.inventory.is_none() && m.state_deadline.is_some());
        let kinds: Vec<String> =
            store.events(Some(&id), None, 100).await.unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["machine.created", "state.changed", "state.changed", "state.changed"]);
    }
}
