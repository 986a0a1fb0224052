//! Bearer-token authentication. The operator API takes the admin token;
//! the agent endpoints take a per-machine token issued with each discovery
//! boot. Tokens are compared as SHA-256 digests, never logged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

/// 256 random bits, hex encoded.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// An operator request carrying the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(token) if digest(token) == state.admin_token_digest => Ok(Admin),
            Some(_) => Err(ApiError::Unauthorized("the bearer token is not valid")),
            None => Err(ApiError::Unauthorized("a bearer token is required")),
        }
    }
}

/// An agent request; carries the id of the machine its token was issued to.
/// An agent can only ever report for that machine.
pub struct AgentMachine(pub String);

impl FromRequestParts<AppState> for AgentMachine {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
        match state.store.machine_for_agent_token(token).await? {
            Some(id) => Ok(AgentMachine(id)),
            None => Err(ApiError::Unauthorized("the agent token is not valid (expired, or replaced by a newer boot)")),
        }
    }
}

/// A node agent's request (slipway-agent on a deployed OS); carries the id
/// of the machine its credential was issued to with the deploy.
pub struct NodeMachine(pub String);

impl FromRequestParts<AppState> for NodeMachine {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
        match state.store.machine_for_node_token(token).await? {
            Some(id) => Ok(NodeMachine(id)),
            None => Err(ApiError::Unauthorized("the node token is not valid (the machine was redeployed or released)")),
        }
    }
}
