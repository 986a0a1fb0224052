//! The control plane's model: the data and the pure decisions on it that
//! persistence (`store`) keeps and the appliance (`api`) acts on. Nothing
//! here does I/O or reads the clock; callers pass `now`.

pub mod campaign;
pub mod deploy;
pub mod drain;
pub mod engine;
pub mod firmware;
pub mod hook;
pub mod join;
pub mod lifecycle;
pub mod refresh;
pub mod refresh_plan;
pub mod role;
pub mod saga;

pub use role::Role;
