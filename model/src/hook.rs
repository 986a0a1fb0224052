//! A drain command a campaign node waits for its node agent to run (the
//! runtime side is `api::campaign::hook`).

use serde::{Deserialize, Serialize};
use wire::{HookResult, NodeInstruction};

/// A command a refresh node waits for its agent to run, as stored in the
/// node's `task` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeHook {
    pub hook_id: String,
    pub run: String,
    pub timeout_seconds: u32,
}

impl NodeHook {
    /// What the agent is told, unless its last report already has this
    /// hook's result.
    pub fn instruction_unless_done(&self, last: Option<&HookResult>) -> Option<NodeInstruction> {
        (last.map(|r| r.id.as_str()) != Some(self.hook_id.as_str())).then(|| NodeInstruction::RunHook {
            id: self.hook_id.clone(),
            run: self.run.clone(),
            timeout_seconds: self.timeout_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_is_handed_out_until_its_result_is_reported() {
        let hook = NodeHook { hook_id: "c:m:drain:1".into(), run: "kubectl drain n1".into(), timeout_seconds: 60 };
        let result = |id: &str| HookResult { id: id.into(), exit_code: 1, output: String::new() };
        let want =
            NodeInstruction::RunHook { id: "c:m:drain:1".into(), run: "kubectl drain n1".into(), timeout_seconds: 60 };
        assert_eq!(hook.instruction_unless_done(None), Some(want.clone()));
        assert_eq!(hook.instruction_unless_done(Some(&result("c:m:drain:0"))), Some(want), "an older result");
        assert_eq!(hook.instruction_unless_done(Some(&result("c:m:drain:1"))), None, "ran, even if it failed");
        // Never mistaken for the other things a node's task holds.
        assert!(serde_json::from_str::<NodeHook>(r#"{"cluster":"rack7","op":"drain","node":"a"}"#).is_err());
        assert!(serde_json::from_str::<NodeHook>(r#""/redfish/v1/TaskService/Tasks/7""#).is_err());
    }
}
