//! Properties of the OS refresh saga (`model::refresh`) driven through a
//! simulated machine, its installer, its node agent and its Swarm manager
//! that act (or fail, or stay silent) as generated choices say, with the
//! saga read back from its stored form before every step, as after an
//! appliance restart, and now and then a step's new phase lost after its
//! effects (a crash between the two): every node ends, never gets an image installed
//! twice, ends on the image its outcome names, and is not left drained
//! by Slipway when its peers cooperate.

use model::campaign::DrainCommands;
use model::deploy::DeployPhase;
use model::drain::{Waits, Wanted};
use model::lifecycle::MachineState;
use model::refresh::{Effect, Facts, Next, Outcome, Plan, Saga};
use model::refresh_plan::{DeployView, OpKind};
use proptest::prelude::*;
use wire::{HookResult, Member};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cluster {
    None,
    Swarm,
    /// A cluster Slipway did not form, drained by the campaign's commands.
    Foreign,
}

#[derive(Debug, Clone)]
struct Script {
    cluster: Cluster,
    /// The installer writes the target image (else it fails its verify).
    target_writes: bool,
    rollback_writes: bool,
    /// The new OS's node agent reports (else the return times out).
    agent_reports: bool,
    /// The manager (or the node's agent) carries out what it is asked
    /// (else it stays silent, and Slipway's waits run out).
    peers_cooperate: bool,
    drain_exit: i32,
    /// Each tick's dice: whether each peer acts this tick, how much time
    /// passes.
    dice: Vec<u8>,
}

fn script() -> impl Strategy<Value = Script> {
    (
        prop_oneof![Just(Cluster::None), Just(Cluster::Swarm), Just(Cluster::Foreign)],
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.8),
        prop_oneof![4 => Just(0), 1 => Just(1)],
        prop::collection::vec(any::<u8>(), 64..256),
    )
        .prop_map(|(cluster, target_writes, rollback_writes, agent_reports, peers_cooperate, drain_exit, dice)| {
            Script { cluster, target_writes, rollback_writes, agent_reports, peers_cooperate, drain_exit, dice }
        })
}

/// The machine and its peers.
struct World {
    now: i64,
    state: MachineState,
    image: String,
    phase: DeployPhase,
    error: Option<String>,
    booted: bool,
    node_image: Option<String>,
    node_id: Option<String>,
    joins: u32,
    hook: Option<HookResult>,
    cordoned: bool,
    members: Vec<Member>,
    installs: Vec<String>,
}

fn member(id: &str, manager: bool) -> Member {
    Member {
        id: id.into(),
        hostname: if manager { "mgr".into() } else { "node1".into() },
        status: "Ready".into(),
        availability: "Active".into(),
        manager,
    }
}

impl World {
    fn new(cluster: Cluster) -> World {
        let swarm = cluster == Cluster::Swarm;
        World {
            now: 1_000_000,
            state: if cluster == Cluster::None { MachineState::Deployed } else { MachineState::Joined },
            image: "img-1".into(),
            phase: DeployPhase::Written,
            error: None,
            booted: false,
            node_image: Some("img-1".into()),
            node_id: (cluster != Cluster::None).then(|| "n1".into()),
            joins: 1,
            hook: None,
            cordoned: false,
            members: if swarm { vec![member("mgr", true), member("n1", false)] } else { vec![] },
            installs: vec![],
        }
    }

    fn facts<'a>(&'a self, cluster: Cluster, available: &'a [&'a str]) -> Facts<'a> {
        Facts {
            now_ms: self.now,
            machine: Some((self.state, Some("deadline passed"))),
            deployment: Some(DeployView { image: &self.image, phase: self.phase, error: self.error.as_deref() }),
            clustered: cluster != Cluster::None,
            managed_cluster: (cluster == Cluster::Swarm).then_some("rack7"),
            foreign_cluster: cluster == Cluster::Foreign,
            node_image: self.node_image.as_deref(),
            node_id: self.node_id.as_deref(),
            hook: self.hook.as_ref(),
            members: &self.members,
            has_bmc: true,
            available,
        }
    }

    fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::Deploy { image } => {
                self.installs.push(image.clone());
                (self.state, self.image, self.phase, self.error) =
                    (MachineState::Refreshing, image.clone(), DeployPhase::Requested, None);
                self.booted = false;
            }
            Effect::NetworkBoot { .. } => {
                self.booted = true;
                // The old OS goes down; its Swarm entry with it.
                (self.node_image, self.node_id, self.hook) = (None, None, None);
                for m in self.members.iter_mut().filter(|m| !m.manager) {
                    m.status = "Down".into();
                }
            }
            Effect::RollbackFailed(_) => self.state = MachineState::Failed,
            Effect::NotePrevious(_) | Effect::NoteVerifying | Effect::Event(..) => {}
        }
    }

    /// The peers' turn: what each does this tick, as the dice say.
    fn act(&mut self, s: &Script, wanted: Option<Wanted>, die: u8) {
        let acts = !die.is_multiple_of(3);
        if self.state == MachineState::Refreshing && self.booted && acts && self.phase != DeployPhase::Failed {
            let writes = if self.image == "img-2" { s.target_writes } else { s.rollback_writes };
            if writes {
                (self.state, self.phase) = (MachineState::Deployed, DeployPhase::Written);
            } else {
                (self.phase, self.error) = (DeployPhase::Failed, Some("verify: sha256 mismatch".into()));
            }
        } else if self.state == MachineState::Deployed && self.node_image.is_none() && s.agent_reports && acts {
            self.node_image = Some(self.image.clone());
            if s.cluster != Cluster::None {
                self.joins += 1;
                let id = format!("n{}", self.joins);
                if s.cluster == Cluster::Swarm {
                    self.members.push(member(&id, false));
                }
                (self.state, self.node_id) = (MachineState::Joined, Some(id));
            }
        }
        if !s.peers_cooperate {
            return;
        }
        match wanted {
            Some(Wanted::ClusterOp(op)) => match op.op {
                OpKind::Remove => self.members.retain(|m| m.id != op.node),
                OpKind::Drain | OpKind::Active => {
                    let availability = if op.op == OpKind::Drain { "Drain" } else { "Active" };
                    for m in self.members.iter_mut().filter(|m| m.id == op.node) {
                        m.availability = availability.into();
                    }
                }
            },
            Some(Wanted::Hook(hook)) if self.node_image.is_some() => {
                let drain = hook.run == "drain-node";
                let exit_code = if drain { s.drain_exit } else { 0 };
                if exit_code == 0 {
                    self.cordoned = drain;
                }
                self.hook = Some(HookResult { id: hook.hook_id, exit_code, output: String::new() });
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_refresh_ends_once_on_the_image_it_names(s in script()) {
        let drain = DrainCommands { run: "drain-node".into(), undo: "undrain-node".into(), timeout_seconds: 60 };
        let waits = Waits { campaign_id: "c1", machine_id: "m1", drain: Some(&drain), drain_ms: 600_000, hook_grace_ms: 45_000 };
        let plan = Plan {
            waits,
            write_ms: 1_710_000,
            come_back_ms: 570_000,
            back_within_ms: Some(300_000),
        };
        let mut world = World::new(s.cluster);
        let mut stored = serde_json::to_string(&Saga::new("img-2", world.now)).unwrap();
        let available = ["img-1", "img-2"];
        let mut outcome = None;
        for tick in 0..2_000usize {
            // Read back as a restarted appliance would.
            let saga: Saga = serde_json::from_str(&stored).unwrap();
            let step = saga.step(&plan, &world.facts(s.cluster, &available));
            for effect in &step.effects {
                world.apply(effect);
            }
            match step.next {
                Next::Go(next) => {
                    let die = s.dice[tick % s.dice.len()];
                    world.act(&s, next.wanted(), die);
                    world.now += 1_000 + i64::from(die) * 400;
                    // Now and then the appliance dies after the effects,
                    // before the new phase is stored.
                    if die % 7 != 3 {
                        stored = serde_json::to_string(&next).unwrap();
                    }
                }
                Next::Finish(o) => {
                    outcome = Some(o);
                    break;
                }
            }
        }
        let outcome = outcome.expect("the refresh ended");
        // Each image installed at most once: the target, then the way back.
        prop_assert!(world.installs.len() <= 2, "{:?}", world.installs);
        if let Some(first) = world.installs.first() {
            prop_assert_eq!(first.as_str(), "img-2");
        }
        if world.installs.len() == 2 {
            prop_assert_eq!(world.installs[1].as_str(), "img-1");
        }
        match &outcome {
            Outcome::Done(_) => {
                prop_assert_eq!((world.image.as_str(), world.node_image.as_deref()), ("img-2", Some("img-2")));
            }
            Outcome::RolledBack(_) => {
                prop_assert_eq!((world.image.as_str(), world.node_image.as_deref()), ("img-1", Some("img-1")));
            }
            Outcome::Failed(why) => prop_assert!(!why.is_empty()),
        }
        // With peers that do as asked, Slipway leaves nothing drained: not
        // after a refresh or a rollback, not after a drain that failed.
        if s.peers_cooperate && !matches!(outcome, Outcome::Failed(_)) {
            prop_assert!(!world.cordoned, "{outcome:?}");
            prop_assert!(world.members.iter().all(|m| m.availability == "Active"), "{:?}", world.members);
        }
        // A failed drain touches nothing.
        if s.cluster == Cluster::Foreign && s.drain_exit != 0 {
            prop_assert!(world.installs.is_empty());
        }
    }
}
