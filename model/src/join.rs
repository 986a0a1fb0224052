//! A deployment's cluster join spec and its validation. What a node does
//! about it next is `api::join::plan`'s.
//!
//! Kinds:
//! - `swarm` with `endpoint` and `token`: join an existing Docker Swarm.
//! - `swarm` with only `cluster` (a name): Slipway forms the Swarm.
//! - `kubeadm` (`endpoint`, `token`, `ca_cert_hash`) and `k3s` (`endpoint`
//!   as the server URL, `token`).
//! - `command`: `run` joins, `check` exits 0 once the node is a member.

use serde::{Deserialize, Serialize};

inventory::closed_enum!(
    /// Which kind of cluster a node joins.
    #[derive(Default, utoipa::ToSchema)]
    JoinKind {
        #[default]
        Swarm => "swarm",
        Kubeadm => "kubeadm",
        K3s => "k3s",
        Command => "command",
    }
);

/// How a node joins its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JoinRole {
    Worker,
    Manager,
}

/// The `cluster` field of a deploy request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    pub kind: JoinKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `worker` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<JoinRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

/// A spec that cannot work, with the field (under `cluster.`) to blame.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub detail: String,
}

fn invalid(field: &str, detail: impl Into<String>) -> Invalid {
    Invalid { field: format!("cluster.{field}"), detail: detail.into() }
}

/// Values go into shell commands on the node: allow only what tokens,
/// addresses and URLs are made of.
fn shell_safe(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@=+".contains(&b))
}

impl JoinSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let need = |field: &str, value: &Option<String>| -> Result<(), Invalid> {
            match value {
                Some(v) if shell_safe(v) => Ok(()),
                Some(_) => Err(invalid(field, "letters, digits and -_.:/@=+ only")),
                None => Err(invalid(field, format!("required for kind {}", self.kind.as_str()))),
            }
        };
        match self.kind {
            JoinKind::Swarm => match (&self.endpoint, &self.token, &self.cluster) {
                (None, None, Some(_)) => need("cluster", &self.cluster),
                (Some(_), Some(_), _) => need("endpoint", &self.endpoint).and(need("token", &self.token)),
                (None, None, None) => {
                    Err(invalid("cluster", "a cluster name for Slipway to form, or endpoint and token"))
                }
                (Some(_), None, _) => Err(invalid("token", "required with endpoint")),
                (None, Some(_), _) => Err(invalid("endpoint", "required with token")),
            },
            JoinKind::Kubeadm => need("endpoint", &self.endpoint)
                .and(need("token", &self.token))
                .and(need("ca_cert_hash", &self.ca_cert_hash)),
            JoinKind::K3s => need("endpoint", &self.endpoint).and(need("token", &self.token)),
            JoinKind::Command => match (&self.run, &self.check) {
                (Some(r), Some(c)) if !r.trim().is_empty() && !c.trim().is_empty() => Ok(()),
                (Some(r), _) if !r.trim().is_empty() => Err(invalid("check", "a command that exits 0 once joined")),
                _ => Err(invalid("run", "the join command")),
            },
        }
    }

    /// The name of the cluster Slipway forms for this spec, if it forms one.
    pub fn managed_cluster(&self) -> Option<&str> {
        self.cluster.as_deref().filter(|_| self.kind == JoinKind::Swarm && self.endpoint.is_none())
    }

    /// Joins as a manager (`role: manager`).
    pub fn is_manager(&self) -> bool {
        self.role == Some(JoinRole::Manager)
    }
}
