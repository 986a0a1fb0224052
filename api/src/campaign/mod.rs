//! Scheduled refresh campaigns at run time: roll an action (firmware, an
//! OS refresh) across target machines a few at a time, inside a schedule,
//! holding while a UPS feeding them is on battery, pausing after too many
//! failures.
//!
//! The data and the pure decisions are the `model` crate's: the campaign
//! (`model::campaign`), which nodes start and where the campaign goes
//! (`model::engine::step`), and the OS refresh's drain, tidy, progress and
//! rollback (`model::refresh_plan`). Here: `runner`, the one task that
//! gathers facts and applies decisions; `firmware` and `os_refresh`, the
//! actions on one node; `swarm`, the Swarm drain both actions share;
//! `hook`, the drain commands for other clusters. Persistence is
//! `store::campaign`'s; the HTTP resource is `routes::campaigns`'. A new
//! action kind is a variant of `model::campaign::Action`, a module beside
//! `firmware` and an arm in `runner::spawn_node`; a new gate is a fact in
//! `engine::Facts` and a rule in `engine::step`.

pub mod firmware;
pub mod hook;
pub mod os_refresh;
pub mod runner;
pub mod swarm;
