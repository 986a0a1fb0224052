//! Scheduled refresh campaigns at run time: roll an action (firmware, an
//! OS refresh) across target machines a few at a time, inside a schedule,
//! holding while a UPS feeding them is on battery, pausing after too many
//! failures.
//!
//! The data and the pure decisions are the `model` crate's: the campaign
//! (`model::campaign`), which nodes start and where the campaign goes
//! (`model::engine::step`), and each node's saga: a stored phase and a
//! pure step (`model::refresh` for an OS refresh, `model::firmware` for a
//! firmware update, the drain and undrain both share in `model::drain`).
//! Here: `runner`, the one task that gathers facts and applies decisions,
//! and steps every node in progress; `os_refresh` and `firmware`, which
//! gather a node's facts and carry out its saga's effects. Persistence is
//! `store::campaign`'s and `store::refresh`'s; the HTTP resource is
//! `routes::campaigns`'. A new action kind is a variant of
//! `model::campaign::Action`, a saga in `model`, a module here and an arm
//! in `runner::step_nodes`; a new gate is a fact in `engine::Facts` and a
//! rule in `engine::step`.

pub mod firmware;
pub mod os_refresh;
pub mod runner;

use crate::join::{JoinSpec, HEARTBEAT_SECONDS};
use model::campaign::Campaign;
use model::drain::Waits;
use runner::RunnerSettings;

/// Stores the saga a node's step moved to (with what it wants of an
/// agent); a step that stayed in its phase writes nothing.
async fn save_if_moved<S: serde::Serialize + PartialEq>(
    store: &store::Store,
    (campaign_id, machine_id): (&str, &str),
    stored: Option<&S>,
    next: &S,
    wanted: Option<model::drain::Wanted>,
) -> Result<(), store::StoreError> {
    if stored == Some(next) {
        return Ok(());
    }
    store.save_campaign_saga(campaign_id, machine_id, next, wanted.as_ref()).await
}

/// Whether a deployment's join spec puts the node in a cluster Slipway
/// did not form: the one case the campaign's drain commands are for.
pub fn foreign_cluster(spec: Option<&JoinSpec>) -> bool {
    spec.is_some_and(|s| s.managed_cluster().is_none())
}

/// The waits of a node's drain and undrain, the same for both actions.
pub fn waits<'a>(settings: &RunnerSettings, campaign: &'a Campaign, machine_id: &'a str) -> Waits<'a> {
    Waits {
        campaign_id: &campaign.id,
        machine_id,
        drain: campaign.gates.drain.as_ref(),
        drain_ms: i64::try_from(settings.drain_timeout.as_millis()).unwrap_or(i64::MAX),
        hook_grace_ms: 2 * i64::from(HEARTBEAT_SECONDS) * 1000 + 15_000,
    }
}
