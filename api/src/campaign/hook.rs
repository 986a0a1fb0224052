//! Drain commands: how a campaign drains a node of a cluster Slipway did
//! not form (kubeadm, k3s, a `command` join, a Swarm joined by endpoint).
//! The operator gives the commands (`gates.drain`); the node's own agent
//! runs them. The wanted command is stored as the campaign node's `task`,
//! the agent is handed it at its next report and reports how it ended
//! (matched by a fresh id, so an old result never counts), and the wait
//! is bounded by the command's own time plus two heartbeats. A command
//! still pending across an appliance restart keeps its id: it runs once.

use std::time::Duration;

use serde_json::json;

use super::swarm::NodeHand;
use crate::join::{JoinSpec, HEARTBEAT_SECONDS};
use model::campaign::DrainCommands;
use model::hook::NodeHook;
use model::refresh::Wanted;
use store::StoreError;

type Step<T> = Result<T, StoreError>;

/// Whether a deployment's join spec puts the node in a cluster Slipway
/// did not form: the one case the drain commands are for.
pub fn foreign_cluster(spec: Option<&JoinSpec>) -> bool {
    spec.is_some_and(|s| s.managed_cluster().is_none())
}

impl NodeHand<'_> {
    /// Runs the drain command; when it fails, the undo too (a half-done
    /// drain leaves the node cordoned). `Err` says why.
    pub async fn drain_by_command(&self, commands: &DrainCommands) -> Step<Result<(), String>> {
        match self.hook("drain", &commands.run, commands.timeout_seconds).await? {
            Ok(output) => {
                self.event("campaign.node_drained", json!({ "by": "command", "output": output })).await?;
                Ok(Ok(()))
            }
            Err(why) => {
                let _ = self.hook("undrain", &commands.undo, commands.timeout_seconds).await?;
                Ok(Err(why))
            }
        }
    }

    /// Runs the undo command on the node as it is now.
    pub async fn undrain_by_command(&self, commands: &DrainCommands) -> Step<Result<(), String>> {
        match self.hook("undrain", &commands.undo, commands.timeout_seconds).await? {
            Ok(output) => {
                self.event("campaign.node_undrained", json!({ "by": "command", "output": output })).await?;
                Ok(Ok(()))
            }
            Err(why) => Ok(Err(format!("{why}; the node may be left drained"))),
        }
    }

    /// Asks the node's agent to run `run` and waits for its result: its
    /// output when it exits 0.
    async fn hook(&self, which: &str, run: &str, timeout_seconds: u32) -> Step<Result<String, String>> {
        let prefix = format!("{}:{}:{which}:", self.campaign_id, self.machine_id);
        // Handed out before an appliance restart and not reported yet: the
        // agent may be running it now, so wait for that one rather than
        // have it run twice.
        let pending = self.app.store.node_hook(self.machine_id).await?;
        let hook = match pending {
            Some(h) if h.hook_id.starts_with(&prefix) && h.run == run && h.timeout_seconds == timeout_seconds => h,
            _ => NodeHook { hook_id: format!("{prefix}{}", self.app.store.now_ms()), run: run.into(), timeout_seconds },
        };
        let limit = Duration::from_secs(u64::from(timeout_seconds) + 2 * u64::from(HEARTBEAT_SECONDS) + 15);
        let (store, id) = (&self.app.store, hook.hook_id.as_str());
        let reported = self
            .while_wanted(Wanted::Hook(hook.clone()), limit, || async move {
                let report = store.node_report(self.machine_id).await?;
                Ok(report.and_then(|r| r.status.hook).filter(|r| r.id == id))
            })
            .await?;
        Ok(match reported {
            Some(r) if r.exit_code == 0 => Ok(r.output),
            Some(r) => Err(format!("the {which} command exited {}: {}", r.exit_code, r.output)),
            None => Err(format!(
                "the node agent did not report the {which} command within {} s (is it running?)",
                limit.as_secs()
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_commands_are_for_clusters_slipway_did_not_form() {
        let spec = |json: serde_json::Value| serde_json::from_value::<JoinSpec>(json).unwrap();
        assert!(!foreign_cluster(None), "no cluster, nothing to drain");
        assert!(!foreign_cluster(Some(&spec(json!({ "kind": "swarm", "cluster": "rack7" })))), "Slipway's own");
        for s in [
            json!({ "kind": "swarm", "endpoint": "10.0.0.1:2377", "token": "SWMTKN-1" }),
            json!({ "kind": "kubeadm", "endpoint": "10.0.0.1:6443", "token": "a.b", "ca_cert_hash": "sha256:00" }),
            json!({ "kind": "command", "run": "join", "check": "check" }),
        ] {
            assert!(foreign_cluster(Some(&spec(s.clone()))), "{s}");
        }
    }
}
