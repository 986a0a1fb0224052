//! Scheduled refresh campaigns: roll an action (firmware today, an OS
//! refresh next) across target machines a few at a time, inside a
//! schedule, holding while a UPS feeding them is on battery, pausing
//! after too many failures.
//!
//! `model` is the data, `engine` the pure decision, `runner` the one task
//! that gathers facts and applies decisions, `firmware` and `os_refresh`
//! the actions on one node (`refresh_plan` holds the OS refresh's pure
//! decisions: drain, tidy, progress, rollback; `swarm` the Swarm drain
//! both actions share, `hook` the drain commands for other clusters). Persistence is `store::campaign`'s; the HTTP resource is
//! `routes::campaigns`'. A new action kind is a variant of
//! `model::Action`, a module beside `firmware` and an arm in
//! `runner::spawn_node`; a new gate is a fact in `engine::Facts` and a
//! rule in `engine::step`.

pub mod engine;
pub mod firmware;
pub mod hook;
pub mod os_refresh;
pub mod runner;
pub mod swarm;
