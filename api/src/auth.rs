//! Bearer-token authentication and roles.
//!
//! The operator API takes tokens with a [`Role`]: the appliance's own admin
//! token (`api.token` or `data_dir/admin-token`, compared as a digest held
//! in memory) and the tokens created through `/api/v1/tokens` (stored as
//! SHA-256 digests). Handlers state the least role they need by their
//! extractor: [`Viewer`], [`Operator`] or [`Admin`]; a valid token with too
//! small a role is refused with 403, a missing or invalid one with 401.
//! The audit layer resolves the token once per request ([`authenticate`])
//! and leaves the result in the request's extensions for the extractors.
//!
//! The agent endpoints take a per-machine token issued with each discovery
//! boot ([`AgentMachine`]), the node endpoints a per-deploy credential
//! ([`NodeMachine`]); neither is an operator token. Tokens are never logged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;
pub use model::Role;

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The id and name of the appliance's own admin token in the audit log.
pub const ADMIN_TOKEN_ID: &str = "admin-token";

/// Who made an operator request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id, or [`ADMIN_TOKEN_ID`].
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

/// A request's bearer token, looked at once.
#[derive(Debug, Clone)]
pub enum Authn {
    Missing,
    /// Why the token was refused (for the 401's detail).
    Invalid(&'static str),
    Valid(Caller),
}

/// `last_used_at` is written at most this often per token, so reads do not
/// each cost a database write.
const TOUCH_EVERY_MS: i64 = 60_000;

/// Resolves the request's bearer token to its caller.
pub async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Authn, ApiError> {
    let Some(token) = bearer(headers) else { return Ok(Authn::Missing) };
    if digest(token) == state.admin_token_digest {
        let caller = Caller { token_id: ADMIN_TOKEN_ID.into(), name: ADMIN_TOKEN_ID.into(), role: Role::Admin };
        return Ok(Authn::Valid(caller));
    }
    let Some(found) = state.store.api_token_by_secret(token).await? else {
        return Ok(Authn::Invalid("the bearer token is not valid"));
    };
    let now = state.store.now_ms();
    if found.expires_at_ms.is_some_and(|at| at <= now) {
        return Ok(Authn::Invalid("the bearer token has expired"));
    }
    if found.last_used_at_ms.is_none_or(|at| now - at >= TOUCH_EVERY_MS) {
        if let Err(err) = state.store.touch_api_token(&found.id, now).await {
            tracing::warn!(token = found.id, error = %err, "recording a token's last use failed");
        }
    }
    Ok(Authn::Valid(Caller { token_id: found.id, name: found.name, role: found.role }))
}

/// Refuses `field` of a request (one that runs commands as root on nodes)
/// to a caller below `node_root`.
pub fn may_run_root_commands(caller: &Caller, field: &str) -> Result<(), ApiError> {
    match caller.role >= Role::NodeRoot {
        true => Ok(()),
        false => Err(ApiError::ForbiddenField { field: field.into(), needed: Role::NodeRoot, role: caller.role }),
    }
}

/// The caller, if its role is at least `needed`.
async fn require(parts: &Parts, state: &AppState, needed: Role) -> Result<Caller, ApiError> {
    let authn = match parts.extensions.get::<Authn>() {
        Some(authn) => authn.clone(),
        None => authenticate(&parts.headers, state).await?,
    };
    match authn {
        Authn::Missing => Err(ApiError::Unauthorized("a bearer token is required")),
        Authn::Invalid(why) => Err(ApiError::Unauthorized(why)),
        Authn::Valid(caller) if caller.role >= needed => Ok(caller),
        Authn::Valid(caller) => Err(ApiError::Forbidden { needed, role: caller.role }),
    }
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        pub struct $name(pub Caller);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
                require(parts, state, $role).await.map($name)
            }
        }
    };
}

role_extractor!(
    /// An operator request with any valid token (viewer, operator or admin).
    Viewer,
    Role::Viewer
);
role_extractor!(
    /// An operator request with an operator or admin token.
    Operator,
    Role::Operator
);
role_extractor!(
    /// An operator request with an admin token.
    Admin,
    Role::Admin
);

/// An agent request; carries the id of the machine its token was issued to.
/// An agent can only ever report for that machine.
pub struct AgentMachine(pub String);

impl FromRequestParts<AppState> for AgentMachine {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
        let Some(holder) = state.store.agent_token_holder(token).await? else {
            return Err(ApiError::Unauthorized("the agent token is not valid (expired, or replaced by a newer boot)"));
        };
        // The token works only from the address its boot script went to.
        let peer = crate::boot_guard::peer_of(&parts.extensions);
        if holder.peer.is_some() && holder.peer != peer {
            let refusal = crate::boot_guard::Refusal::WrongAddress;
            let refusal =
                crate::boot_guard::refused(state, refusal, "agent", None, Some(&holder.machine_id), peer).await;
            return Err(ApiError::Refused(refusal));
        }
        if let Some(boot) = &state.boot {
            boot.guard.agent_called(&holder.machine_id);
            let refused = parts.headers.get(wire::REFUSED_ANSWERS_HEADER).and_then(|v| v.to_str().ok()?.parse().ok());
            if let Some(new) = refused.and_then(|count| boot.guard.answers_refused(&holder.machine_id, count)) {
                crate::boot_guard::impersonation_reported(state, &holder.machine_id, refused.unwrap_or(0), new).await;
            }
        }
        Ok(AgentMachine(holder.machine_id))
    }
}

/// A node agent's request (slipway-agent on a deployed OS); carries the id
/// of the machine its credential was issued to with the deploy.
pub struct NodeMachine(pub String);

impl FromRequestParts<AppState> for NodeMachine {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
        match state.store.machine_for_node_token(token).await? {
            Some(id) => Ok(NodeMachine(id)),
            None => Err(ApiError::Unauthorized("the node token is not valid (the machine was redeployed or released)")),
        }
    }
}
