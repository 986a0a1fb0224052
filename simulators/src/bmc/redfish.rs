//! The simulated BMC's Redfish service (axum): one `router` per machine,
//! over any `Backend`. Handlers are thin: read a `Snapshot` from the
//! backend, render it with `resources`, or turn a request into one backend
//! call. Every path answers with and without a trailing slash.
//!
//! Open without credentials: `/redfish`, `/redfish/v1` and creating a
//! session; everything else needs basic auth or `X-Auth-Token` (401 with a
//! Redfish error body otherwise, unknown paths included). Unknown paths
//! are 404 with a Redfish error body; backend failures are logged with
//! their whole chain and answered 500 with a generic message.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Value};

use inventory::oob::{BootTarget, Credentials, PowerAction};

use super::auth::Auth;
use super::backend::{Backend, FirmwareKind};
use super::resources::{self as res, Snapshot, CHASSIS, FIRMWARE_INVENTORY, MANAGER, SESSIONS, SYSTEM, TASKS};
use super::update::{self, TaskState, Tasks};
use super::SimError;

/// One simulated BMC: its machine, account, sessions and tasks.
pub struct SimState<B> {
    name: String,
    /// The service root's UUID (the machine's): the root answers even
    /// when the VM cannot be reached.
    uuid: String,
    uefi: bool,
    /// Secure Boot enforced (UEFI only), as the `SecureBoot` resource shows.
    secure_boot: bool,
    backend: Arc<B>,
    auth: Auth,
    tasks: Tasks,
}

impl<B: Backend> SimState<B> {
    pub fn new(name: &str, uuid: &str, credentials: Credentials, uefi: bool, backend: Arc<B>) -> Arc<SimState<B>> {
        SimState::with_secure_boot(name, uuid, credentials, uefi, false, backend)
    }

    pub fn with_secure_boot(
        name: &str,
        uuid: &str,
        credentials: Credentials,
        uefi: bool,
        secure_boot: bool,
        backend: Arc<B>,
    ) -> Arc<SimState<B>> {
        Arc::new(SimState {
            name: name.into(),
            uuid: uuid.into(),
            uefi,
            secure_boot: uefi && secure_boot,
            backend,
            auth: Auth::new(credentials),
            tasks: Tasks::default(),
        })
    }

    async fn snapshot(&self) -> Result<Snapshot, RfError> {
        let b = &self.backend;
        Ok(Snapshot {
            name: self.name.clone(),
            uefi: self.uefi,
            power: b.power_state().await?,
            boot: b.boot_override().await?,
            facts: b.facts().await?,
            firmware: b.firmware().await?,
        })
    }
}

/// Why a request failed, as a Redfish error response.
#[derive(Debug)]
pub enum RfError {
    NotFound(String),
    /// 400 with a `Base` registry message id.
    BadRequest(&'static str, String),
    Unauthorized,
    Internal(SimError),
}

impl From<SimError> for RfError {
    fn from(err: SimError) -> RfError {
        match err {
            SimError::Unsupported(what) => RfError::BadRequest("ActionParameterNotSupported", what),
            other => RfError::Internal(other),
        }
    }
}

impl IntoResponse for RfError {
    fn into_response(self) -> Response {
        let (status, id, message) = match self {
            RfError::NotFound(path) => {
                (StatusCode::NOT_FOUND, "ResourceNotFound", format!("the resource {path} was not found"))
            }
            RfError::BadRequest(id, message) => (StatusCode::BAD_REQUEST, id, message),
            RfError::Unauthorized => {
                let mut resp = (
                    StatusCode::UNAUTHORIZED,
                    Json(res::error("InsufficientPrivilege", "authentication required: basic auth or X-Auth-Token")),
                )
                    .into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Redfish\""));
                return resp;
            }
            RfError::Internal(err) => {
                let mut chain = err.to_string();
                let mut source = std::error::Error::source(&err);
                while let Some(s) = source {
                    chain.push_str(&format!(": {s}"));
                    source = s.source();
                }
                tracing::error!(error = %chain, "simulated BMC request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "GeneralError", "the BMC could not reach its machine".into())
            }
        };
        (status, Json(res::error(id, &message))).into_response()
    }
}

type St<B> = State<Arc<SimState<B>>>;
type Answer = Result<Json<Value>, RfError>;

/// Registers `path` and `path/`.
fn at<B: Backend>(
    r: Router<Arc<SimState<B>>>,
    path: &str,
    m: MethodRouter<Arc<SimState<B>>>,
) -> Router<Arc<SimState<B>>> {
    r.route(path, m.clone()).route(&format!("{path}/"), m)
}

/// The whole Redfish service of one simulated BMC.
pub fn router<B: Backend>(state: Arc<SimState<B>>) -> Router {
    let mut r = Router::new().route("/redfish", get(|| async { Json(json!({ "v1": "/redfish/v1/" })) }));
    let routes: Vec<(&str, MethodRouter<Arc<SimState<B>>>)> = vec![
        ("/redfish/v1", get(root::<B>)),
        (
            "/redfish/v1/Systems",
            get(|| async { collection("/redfish/v1/Systems", "ComputerSystemCollection", &[SYSTEM]) }),
        ),
        (SYSTEM, get(system::<B>).patch(patch_system::<B>)),
        ("/redfish/v1/Systems/1/SecureBoot", get(secure_boot::<B>)),
        ("/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", post(reset::<B>)),
        (
            "/redfish/v1/Systems/1/Processors",
            get(|| async {
                collection(&format!("{SYSTEM}/Processors"), "ProcessorCollection", &[&format!("{SYSTEM}/Processors/1")])
            }),
        ),
        ("/redfish/v1/Systems/1/Processors/1", get(processor::<B>)),
        (
            "/redfish/v1/Systems/1/Memory",
            get(|| async {
                collection(&format!("{SYSTEM}/Memory"), "MemoryCollection", &[&format!("{SYSTEM}/Memory/1")])
            }),
        ),
        ("/redfish/v1/Systems/1/Memory/1", get(dimm::<B>)),
        (
            "/redfish/v1/Systems/1/Storage",
            get(|| async {
                collection(&format!("{SYSTEM}/Storage"), "StorageCollection", &[&format!("{SYSTEM}/Storage/1")])
            }),
        ),
        ("/redfish/v1/Systems/1/Storage/1", get(storage::<B>)),
        ("/redfish/v1/Systems/1/Storage/1/Drives/{n}", get(drive::<B>)),
        ("/redfish/v1/Systems/1/EthernetInterfaces", get(ethernet_interfaces::<B>)),
        ("/redfish/v1/Systems/1/EthernetInterfaces/{n}", get(ethernet::<B>)),
        ("/redfish/v1/Chassis", get(|| async { collection("/redfish/v1/Chassis", "ChassisCollection", &[CHASSIS]) })),
        (CHASSIS, get(chassis::<B>)),
        ("/redfish/v1/Chassis/1/Power", get(legacy_power::<B>)),
        ("/redfish/v1/Chassis/1/PowerSubsystem", get(|| async { Json(res::power_subsystem()) })),
        (
            "/redfish/v1/Chassis/1/PowerSubsystem/PowerSupplies",
            get(|| async {
                collection(
                    &format!("{CHASSIS}/PowerSubsystem/PowerSupplies"),
                    "PowerSupplyCollection",
                    &[&format!("{CHASSIS}/PowerSubsystem/PowerSupplies/1")],
                )
            }),
        ),
        ("/redfish/v1/Chassis/1/PowerSubsystem/PowerSupplies/1", get(power_supply::<B>)),
        ("/redfish/v1/Managers", get(|| async { collection("/redfish/v1/Managers", "ManagerCollection", &[MANAGER]) })),
        (MANAGER, get(manager::<B>)),
        ("/redfish/v1/UpdateService", get(|| async { Json(res::update_service()) })),
        (
            "/redfish/v1/UpdateService/FirmwareInventory",
            get(|| async {
                collection(
                    FIRMWARE_INVENTORY,
                    "SoftwareInventoryCollection",
                    &[&format!("{FIRMWARE_INVENTORY}/BIOS"), &format!("{FIRMWARE_INVENTORY}/BMC")],
                )
            }),
        ),
        ("/redfish/v1/UpdateService/FirmwareInventory/{id}", get(firmware::<B>)),
        ("/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate", post(simple_update::<B>)),
        ("/redfish/v1/SessionService", get(|| async { Json(res::session_service()) })),
        (SESSIONS, get(sessions::<B>).post(login::<B>)),
        ("/redfish/v1/SessionService/Sessions/{id}", get(session::<B>).delete(logout::<B>)),
        ("/redfish/v1/TaskService", get(|| async { Json(res::task_service()) })),
        (TASKS, get(tasks::<B>)),
        ("/redfish/v1/TaskService/Tasks/{id}", get(task::<B>)),
        ("/redfish/v1/TaskService/TaskMonitors/{id}", get(task_monitor::<B>)),
    ];
    for (path, m) in routes {
        r = at(r, path, m);
    }
    r.fallback(|method: Method, uri: axum::http::Uri| async move {
        if method == Method::GET {
            RfError::NotFound(uri.path().to_string())
        } else {
            RfError::BadRequest("ActionNotSupported", format!("{method} {} is not supported", uri.path()))
        }
    })
    .layer(middleware::from_fn_with_state(state.clone(), authenticate::<B>))
    .with_state(state)
}

async fn authenticate<B: Backend>(State(s): St<B>, req: Request, next: Next) -> Response {
    let path = req.uri().path().trim_end_matches('/');
    let open = matches!(path, "/redfish" | "/redfish/v1") || (req.method() == Method::POST && path == SESSIONS);
    if open || s.auth.allows(req.headers()) {
        next.run(req).await
    } else {
        RfError::Unauthorized.into_response()
    }
}

fn collection(id: &str, kind: &str, members: &[&str]) -> Json<Value> {
    let name = kind.trim_end_matches("Collection");
    Json(res::collection(
        id,
        kind,
        &format!("{name} collection"),
        &members.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
    ))
}

fn body_json(body: &Bytes) -> Result<Value, RfError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| RfError::BadRequest("MalformedJSON", format!("the request body is not JSON: {e}")))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(RfError::BadRequest("MalformedJSON", "the request body must be a JSON object".into()))
    }
}

fn index(n: &str) -> usize {
    n.parse().unwrap_or(0)
}

async fn root<B: Backend>(State(s): St<B>) -> Json<Value> {
    Json(res::service_root(&s.uuid))
}

async fn system<B: Backend>(State(s): St<B>) -> Answer {
    Ok(Json(res::system(&s.snapshot().await?)))
}

async fn secure_boot<B: Backend>(State(s): St<B>) -> Answer {
    if !s.uefi {
        return Err(RfError::NotFound("/redfish/v1/Systems/1/SecureBoot".into()));
    }
    Ok(Json(res::secure_boot(s.secure_boot)))
}

async fn processor<B: Backend>(State(s): St<B>) -> Answer {
    Ok(Json(res::processor(&s.snapshot().await?)))
}

async fn dimm<B: Backend>(State(s): St<B>) -> Answer {
    Ok(Json(res::dimm(&s.snapshot().await?)))
}

async fn storage<B: Backend>(State(s): St<B>) -> Answer {
    Ok(Json(res::storage(&s.snapshot().await?)))
}

async fn drive<B: Backend>(State(s): St<B>, Path(n): Path<String>) -> Answer {
    let path = format!("{SYSTEM}/Storage/1/Drives/{n}");
    res::drive(&s.snapshot().await?, index(&n)).map(Json).ok_or(RfError::NotFound(path))
}

async fn ethernet_interfaces<B: Backend>(State(s): St<B>) -> Answer {
    let nics = s.backend.facts().await?.nics.len();
    let members: Vec<String> = (1..=nics).map(|n| format!("{SYSTEM}/EthernetInterfaces/{n}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    Ok(collection(&format!("{SYSTEM}/EthernetInterfaces"), "EthernetInterfaceCollection", &members))
}

async fn ethernet<B: Backend>(State(s): St<B>, Path(n): Path<String>) -> Answer {
    let path = format!("{SYSTEM}/EthernetInterfaces/{n}");
    res::ethernet(&s.snapshot().await?, index(&n)).map(Json).ok_or(RfError::NotFound(path))
}

async fn chassis<B: Backend>(State(s): St<B>) -> Answer {
    Ok(Json(res::chassis(&s.snapshot().await?)))
}

async fn legacy_power<B: Backend>(State(s): St<B>) -> Answer {
    Ok(Json(res::legacy_power(&s.snapshot().await?)))
}

async fn power_supply<B: Backend>(State(s): St<B>) -> Answer {
    Ok(Json(res::power_supply(&s.snapshot().await?)))
}

async fn manager<B: Backend>(State(s): St<B>) -> Answer {
    Ok(Json(res::manager(&s.snapshot().await?)))
}

async fn firmware<B: Backend>(State(s): St<B>, Path(id): Path<String>) -> Answer {
    let kind = FirmwareKind::from_id(&id).ok_or_else(|| RfError::NotFound(format!("{FIRMWARE_INVENTORY}/{id}")))?;
    Ok(Json(res::firmware_component(&s.backend.firmware().await?, kind)))
}

async fn reset<B: Backend>(State(s): St<B>, body: Bytes) -> Result<StatusCode, RfError> {
    let body = body_json(&body)?;
    let reset_type = body["ResetType"]
        .as_str()
        .ok_or_else(|| RfError::BadRequest("ActionParameterMissing", "ResetType is required".into()))?;
    let action = match reset_type {
        "On" => PowerAction::On,
        "ForceOff" => PowerAction::ForceOff,
        "GracefulShutdown" => PowerAction::GracefulOff,
        "ForceRestart" => PowerAction::Reset,
        "PowerCycle" => PowerAction::Cycle,
        other => {
            return Err(RfError::BadRequest(
                "ActionParameterValueNotInList",
                format!("ResetType {other:?} is not one of {}", res::RESET_TYPES.join(", ")),
            ))
        }
    };
    s.backend.power(action).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH Systems/1`: only `Boot` is writable. A target without
/// `BootSourceOverrideEnabled` keeps the current setting (`Once` when
/// there was none); `None` or `Disabled` clears the override.
async fn patch_system<B: Backend>(State(s): St<B>, body: Bytes) -> Answer {
    let body = body_json(&body)?;
    if let Some(boot) = body.get("Boot") {
        let field = |name: &str, allowed: &[&str]| -> Result<Option<String>, RfError> {
            match boot.get(name) {
                None => Ok(None),
                Some(Value::String(v)) if allowed.contains(&v.as_str()) => Ok(Some(v.clone())),
                Some(v) => Err(RfError::BadRequest(
                    "PropertyValueNotInList",
                    format!("Boot.{name} {v} is not one of {}", allowed.join(", ")),
                )),
            }
        };
        let target = field("BootSourceOverrideTarget", &res::BOOT_TARGETS)?;
        let enabled = field("BootSourceOverrideEnabled", &["Disabled", "Once", "Continuous"])?;
        field("BootSourceOverrideMode", &[if s.uefi { "UEFI" } else { "Legacy" }])?;
        let current = s.backend.boot_override().await?;
        let target = match target.as_deref() {
            Some("Pxe") => Some(BootTarget::Pxe),
            Some("Hdd") => Some(BootTarget::Disk),
            Some(_) => None,
            None => current.map(|c| c.target),
        };
        let once = match enabled.as_deref() {
            Some(e) => e == "Once",
            None => current.is_none_or(|c| c.once),
        };
        let target = if enabled.as_deref() == Some("Disabled") { None } else { target };
        if target.is_none() && matches!(enabled.as_deref(), Some("Once" | "Continuous")) {
            return Err(RfError::BadRequest(
                "PropertyMissing",
                "Boot.BootSourceOverrideTarget is needed to enable an override".into(),
            ));
        }
        tracing::info!(bmc = %s.name, ?target, once, "boot override");
        s.backend.set_boot(target, once).await?;
    }
    Ok(Json(res::system(&s.snapshot().await?)))
}

async fn simple_update<B: Backend>(State(s): St<B>, body: Bytes) -> Result<Response, RfError> {
    let body = body_json(&body)?;
    let uri = body["ImageURI"]
        .as_str()
        .ok_or_else(|| RfError::BadRequest("ActionParameterMissing", "ImageURI is required".into()))?
        .to_string();
    let protocol_ok = body.get("TransferProtocol").is_none_or(|p| p == "HTTP");
    if !uri.starts_with("http://") || !protocol_ok {
        return Err(RfError::BadRequest("ActionParameterNotSupported", "only HTTP image URIs are supported".into()));
    }
    let targets: Vec<String> = match body.get("Targets") {
        None => vec![],
        Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        Some(_) => return Err(RfError::BadRequest("PropertyValueTypeError", "Targets must be a list of URIs".into())),
    };
    let task = s.tasks.start(&format!("fetching {uri}"));
    tracing::info!(bmc = %s.name, task = task.id, %uri, "firmware update started");
    let state = s.clone();
    tokio::spawn(async move { update::run(&*state.backend, &state.tasks, task.id, uri, targets).await });
    let mut resp = (StatusCode::ACCEPTED, Json(task.to_json())).into_response();
    if let Ok(location) = HeaderValue::from_str(&task.monitor()) {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    Ok(resp)
}

async fn tasks<B: Backend>(State(s): St<B>) -> Json<Value> {
    let members: Vec<String> = s.tasks.ids().iter().map(|id| format!("{TASKS}/{id}")).collect();
    Json(res::collection(TASKS, "TaskCollection", "Task collection", &members))
}

fn find_task<B: Backend>(s: &SimState<B>, id: &str, path: String) -> Result<update::Task, RfError> {
    id.parse().ok().and_then(|id| s.tasks.get(id)).ok_or(RfError::NotFound(path))
}

async fn task<B: Backend>(State(s): St<B>, Path(id): Path<String>) -> Answer {
    Ok(Json(find_task(&s, &id, format!("{TASKS}/{id}"))?.to_json()))
}

/// A task monitor answers 202 while its task runs, then the task.
async fn task_monitor<B: Backend>(State(s): St<B>, Path(id): Path<String>) -> Result<Response, RfError> {
    let task = find_task(&s, &id, format!("{}/{id}", update::TASK_MONITORS))?;
    let status = if task.state == TaskState::Running { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(task.to_json())).into_response())
}

async fn sessions<B: Backend>(State(s): St<B>) -> Json<Value> {
    let members: Vec<String> = s.auth.session_ids().iter().map(|id| format!("{SESSIONS}/{id}")).collect();
    Json(res::collection(SESSIONS, "SessionCollection", "Session collection", &members))
}

async fn login<B: Backend>(State(s): St<B>, body: Bytes) -> Result<Response, RfError> {
    let body = body_json(&body)?;
    let (Some(user), Some(password)) = (body["UserName"].as_str(), body["Password"].as_str()) else {
        return Err(RfError::BadRequest("PropertyMissing", "UserName and Password are required".into()));
    };
    if !s.auth.check_password(user, password) {
        tracing::warn!(bmc = %s.name, user, "login refused");
        return Err(RfError::Unauthorized);
    }
    let (session, token) = s.auth.login(user);
    let mut headers = HeaderMap::new();
    let location = format!("{SESSIONS}/{}", session.id);
    if let (Ok(t), Ok(l)) = (HeaderValue::from_str(&token), HeaderValue::from_str(&location)) {
        headers.insert("x-auth-token", t);
        headers.insert(header::LOCATION, l);
    }
    Ok((StatusCode::CREATED, headers, Json(res::session(&session.id, &session.user))).into_response())
}

async fn session<B: Backend>(State(s): St<B>, Path(id): Path<String>) -> Answer {
    let session = s.auth.session(&id).ok_or_else(|| RfError::NotFound(format!("{SESSIONS}/{id}")))?;
    Ok(Json(res::session(&session.id, &session.user)))
}

async fn logout<B: Backend>(State(s): St<B>, Path(id): Path<String>) -> Result<StatusCode, RfError> {
    if s.auth.logout(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(RfError::NotFound(format!("{SESSIONS}/{id}")))
    }
}
