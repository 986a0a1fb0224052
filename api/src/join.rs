//! Cluster join specs and the pure decision of what a deployed node's
//! agent does next about its cluster.
//!
//! Kinds:
//! - `swarm` with `endpoint` and `token`: join an existing Docker Swarm.
//! - `swarm` with only `cluster` (a name): Slipway forms the Swarm. The
//!   first node of that name to report creates it and hands back its join
//!   tokens; every later one joins as `role` (worker by default).
//! - `kubeadm` (`endpoint`, `token`, `ca_cert_hash`) and `k3s` (`endpoint`
//!   as the server URL, `token`): the join command, and a check that the
//!   node is registered.
//! - `command`: `run` joins, `check` exits 0 once the node is a member.

use model::join::JoinKind;
pub use model::join::JoinSpec;
use store::Cluster;
use wire::NodeInstruction;

/// How often a node agent that has nothing to do reports.
pub const HEARTBEAT_SECONDS: u32 = 15;
/// How soon a node waiting for its cluster's first manager asks again.
const CLUSTER_WAIT_SECONDS: u32 = 2;

/// What a node not yet a member does next. `cluster` is the Slipway-formed
/// cluster of the spec's name (claimed for this node if it was the first).
pub fn plan(spec: &JoinSpec, machine_id: &str, cluster: Option<&Cluster>) -> NodeInstruction {
    let wait = NodeInstruction::Wait { poll_seconds: CLUSTER_WAIT_SECONDS };
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    match spec.kind {
        JoinKind::Swarm => match (&spec.endpoint, &spec.token, cluster) {
            (Some(endpoint), Some(token), _) => {
                NodeInstruction::SwarmJoin { endpoint: endpoint.clone(), token: token.clone() }
            }
            // Created once: a reinstalled initiator joins like any other.
            (_, _, Some(c)) if c.initiator == machine_id && c.endpoint.is_none() => NodeInstruction::SwarmInit,
            (_, _, Some(c)) => {
                let token = if spec.is_manager() { &c.manager_token } else { &c.worker_token };
                match (&c.endpoint, token) {
                    (Some(endpoint), Some(token)) => {
                        NodeInstruction::SwarmJoin { endpoint: endpoint.clone(), token: token.clone() }
                    }
                    // The first node is still creating it.
                    _ => wait,
                }
            }
            _ => wait,
        },
        JoinKind::Kubeadm => NodeInstruction::Command {
            run: format!(
                "kubeadm join {} --token {} --discovery-token-ca-cert-hash {}{}",
                opt(&spec.endpoint),
                opt(&spec.token),
                opt(&spec.ca_cert_hash),
                if spec.is_manager() { " --control-plane" } else { "" }
            ),
            check: "kubectl --kubeconfig /etc/kubernetes/kubelet.conf get node \"$(hostname)\"".into(),
        },
        JoinKind::K3s => NodeInstruction::Command {
            run: format!(
                "K3S_URL={} K3S_TOKEN={} sh -c 'systemctl is-enabled k3s-agent || k3s agent --server \"$K3S_URL\" --token \"$K3S_TOKEN\" >/var/log/k3s-agent.log 2>&1 &'",
                opt(&spec.endpoint),
                opt(&spec.token)
            ),
            check: "k3s kubectl --kubeconfig /var/lib/rancher/k3s/agent/kubelet.kubeconfig get node \"$(hostname)\""
                .into(),
        },
        JoinKind::Command => NodeInstruction::Command { run: opt(&spec.run), check: opt(&spec.check) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swarm(name: &str) -> JoinSpec {
        JoinSpec { kind: JoinKind::Swarm, cluster: Some(name.into()), ..Default::default() }
    }

    fn cluster(initiator: &str, tokens: bool) -> Cluster {
        Cluster {
            name: "lab".into(),
            kind: JoinKind::Swarm,
            initiator: initiator.into(),
            endpoint: tokens.then(|| "10.77.0.100:2377".into()),
            members: vec![],
            created_at: String::new(),
            updated_at: String::new(),
            worker_token: tokens.then(|| "SWMTKN-w".into()),
            manager_token: tokens.then(|| "SWMTKN-m".into()),
        }
    }

    #[test]
    fn the_first_node_creates_the_swarm_and_the_rest_join_it() {
        let spec = swarm("lab");
        assert_eq!(plan(&spec, "m1", Some(&cluster("m1", false))), NodeInstruction::SwarmInit);
        assert!(
            matches!(plan(&spec, "m2", Some(&cluster("m1", false))), NodeInstruction::Wait { .. }),
            "no tokens yet: wait for the first node"
        );
        assert_eq!(
            plan(&spec, "m2", Some(&cluster("m1", true))),
            NodeInstruction::SwarmJoin { endpoint: "10.77.0.100:2377".into(), token: "SWMTKN-w".into() }
        );
        let manager = JoinSpec { role: Some(model::join::JoinRole::Manager), ..spec };
        assert_eq!(
            plan(&manager, "m3", Some(&cluster("m1", true))),
            NodeInstruction::SwarmJoin { endpoint: "10.77.0.100:2377".into(), token: "SWMTKN-m".into() }
        );
        assert_eq!(
            plan(&manager, "m1", Some(&cluster("m1", true))),
            NodeInstruction::SwarmJoin { endpoint: "10.77.0.100:2377".into(), token: "SWMTKN-m".into() },
            "the first node, reinstalled (an OS refresh), joins the Swarm it created instead of a new one"
        );
    }

    #[test]
    fn an_existing_swarm_is_joined_with_the_given_token() {
        let spec = JoinSpec {
            kind: JoinKind::Swarm,
            endpoint: Some("10.0.0.5:2377".into()),
            token: Some("SWMTKN-x".into()),
            ..Default::default()
        };
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.managed_cluster(), None);
        assert_eq!(
            plan(&spec, "m1", None),
            NodeInstruction::SwarmJoin { endpoint: "10.0.0.5:2377".into(), token: "SWMTKN-x".into() }
        );
    }

    #[test]
    fn kubeadm_and_k3s_become_commands_with_a_membership_check() {
        let spec = JoinSpec {
            kind: JoinKind::Kubeadm,
            endpoint: Some("10.0.0.5:6443".into()),
            token: Some("abcdef.0123456789abcdef".into()),
            ca_cert_hash: Some("sha256:00ff".into()),
            ..Default::default()
        };
        assert_eq!(spec.validate(), Ok(()));
        let NodeInstruction::Command { run, check } = plan(&spec, "m1", None) else { panic!() };
        assert_eq!(
            run,
            "kubeadm join 10.0.0.5:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00ff"
        );
        assert!(check.contains("get node"), "{check}");
        let k3s = JoinSpec {
            kind: JoinKind::K3s,
            endpoint: Some("https://10.0.0.5:6443".into()),
            token: Some("K10abc::server:x".into()),
            ..Default::default()
        };
        assert_eq!(k3s.validate(), Ok(()));
        assert!(matches!(plan(&k3s, "m1", None), NodeInstruction::Command { .. }));
    }

    #[test]
    fn invalid_specs_name_their_field() {
        let field = |spec: JoinSpec| spec.validate().unwrap_err().field;
        assert_eq!(field(JoinSpec { kind: JoinKind::Swarm, ..Default::default() }), "cluster.cluster");
        assert_eq!(
            field(JoinSpec { kind: JoinKind::Swarm, endpoint: Some("h:2377".into()), ..Default::default() }),
            "cluster.token"
        );
        assert_eq!(
            field(JoinSpec { kind: JoinKind::Swarm, cluster: Some("a; rm -rf /".into()), ..Default::default() }),
            "cluster.cluster",
            "nothing that could break out of a shell command"
        );
        assert_eq!(
            field(JoinSpec { kind: JoinKind::Command, run: Some("join".into()), ..Default::default() }),
            "cluster.check"
        );
    }
}
