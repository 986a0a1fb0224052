//! Operator roles: what a token may do.

use serde::{Deserialize, Serialize};

/// What an operator token may do. Ordered: each role includes the ones
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every GET except tokens and the audit log.
    Viewer,
    /// Everything a viewer may, and every mutation except token management
    /// and running commands on nodes: deploy, release, power, images, BMC
    /// and UPS enrolment, campaigns.
    Operator,
    /// Everything an operator may, and requests that run commands as root
    /// on the nodes: deploy user data, `command` cluster joins, campaign
    /// drain commands.
    #[serde(rename = "node_root")]
    NodeRoot,
    /// Everything, including tokens and the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::NodeRoot, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::NodeRoot => "node_root",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::NodeRoot && Role::NodeRoot < Role::Admin);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        assert_eq!(Role::parse("root"), None);
    }
}
