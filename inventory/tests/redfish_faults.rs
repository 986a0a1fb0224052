//! Fault injection: a BMC that never answers, answers garbage, answers
//! 500, hangs up mid-answer or is not there at all. Each must end in a
//! clear `OobError` naming the BMC (and the resource where there is one),
//! within the configured timeout, without slowing a healthy BMC queried
//! at the same time.
#![cfg(feature = "oob")]

#[path = "redfish_common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Reply, Request, Server};
use inventory::oob::{Credentials, OobError, PowerState, TlsTrust};
use inventory::redfish::RedfishClient;
use serde_json::json;

const SYSTEM: &str = "/redfish/v1/Systems/1";

/// A BMC without SessionService (basic auth) whose System answers with
/// `system()`; everything else is a healthy minimal tree.
async fn fault_bmc(system: fn() -> Reply) -> Server {
    Server::start(move |req: &Request| match req.path.trim_end_matches('/') {
        "/redfish/v1" => Reply::json(200, &json!({"Systems": {"@odata.id": "/redfish/v1/Systems"}})),
        "/redfish/v1/Systems" => Reply::json(200, &json!({"Members": [{"@odata.id": SYSTEM}]})),
        SYSTEM => system(),
        _ => Reply::json(404, &json!({"error": {"message": "not found"}})),
    })
    .await
}

fn healthy() -> Reply {
    Reply::json(
        200,
        &json!({"@odata.id": SYSTEM, "@odata.type": "#ComputerSystem.v1_0_0.ComputerSystem",
        "PowerState": "Off", "SerialNumber": "FAULT-0"}),
    )
}

fn client(base: &str, timeout: Duration) -> RedfishClient {
    let creds = Credentials { username: "admin".into(), password: "s3cret-pw".into() };
    RedfishClient::new(base, creds, TlsTrust::Verify, timeout).unwrap()
}

fn assert_clear(err: &OobError, peer: &str) {
    let text = err.to_string();
    assert!(text.starts_with(peer), "error does not name the BMC {peer}: {text}");
    assert!(!text.contains("s3cret-pw") && !format!("{err:?}").contains("s3cret-pw"), "{err:?}");
}

#[tokio::test]
async fn a_bmc_that_never_answers_times_out_within_the_configured_time() {
    let server = Server::start(|_: &Request| Reply::Hang).await;
    let c = client(&server.base, Duration::from_millis(800));
    let start = Instant::now();
    let err = c.power_state().await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, OobError::Timeout { secs: 1, .. }), "{err:?}");
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(3), "{took:?}");
    assert_clear(&err, &server.addr.to_string());
    // The whole inventory fails too: the service itself is unreachable.
    assert!(matches!(c.inventory().await, Err(OobError::Timeout { .. })));
}

#[tokio::test]
async fn malformed_json_is_malformed_naming_the_resource() {
    let server = fault_bmc(|| Reply::Full(200, vec![], "{\"PowerState\": \"On\", ".into())).await;
    let err = client(&server.base, Duration::from_secs(5)).power_state().await.unwrap_err();
    match &err {
        OobError::Malformed { what, .. } => assert_eq!(what, SYSTEM),
        other => panic!("{other:?}"),
    }
    assert_clear(&err, &server.addr.to_string());
}

#[tokio::test]
async fn http_500_is_http_500_with_the_bmc_message() {
    let server = fault_bmc(|| {
        Reply::json(500, &json!({"error": {"code": "Base.1.8.InternalError", "message": "The request failed due to an internal service error."}}))
    })
    .await;
    let err = client(&server.base, Duration::from_secs(5)).power_state().await.unwrap_err();
    match &err {
        OobError::Http { status: 500, what, detail, .. } => {
            assert_eq!(what, &format!("GET {SYSTEM}"));
            assert!(detail.contains("internal service error"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_clear(&err, &server.addr.to_string());
}

#[tokio::test]
async fn a_connection_dropped_mid_answer_is_a_protocol_error() {
    let server = fault_bmc(|| Reply::Truncate(healthy_body())).await;
    let err = client(&server.base, Duration::from_secs(5)).power_state().await.unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, OobError::Protocol { .. } | OobError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(SYSTEM) || matches!(err, OobError::Connect { .. }), "{err}");
    assert_clear(&err, &server.addr.to_string());
}

fn healthy_body() -> String {
    json!({"@odata.id": SYSTEM, "PowerState": "On", "SerialNumber": "A-LONG-ENOUGH-SERIAL-NUMBER-TO-CUT"}).to_string()
}

#[tokio::test]
async fn nobody_listening_is_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = client(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
    let err = c.inventory().await.unwrap_err();
    assert!(matches!(err, OobError::Connect { .. }), "{err:?}");
    assert_clear(&err, &format!("127.0.0.1:{port}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_bmc_does_not_slow_a_healthy_one() {
    let hung = Server::start(|_: &Request| Reply::Hang).await;
    let good = fault_bmc(healthy).await;
    let (hung_c, good_c) = (client(&hung.base, Duration::from_secs(3)), client(&good.base, Duration::from_secs(3)));
    let start = Instant::now();
    let slow = tokio::spawn(async move { (hung_c.inventory().await.map(|_| ()), start.elapsed()) });
    let fast = tokio::spawn(async move {
        let mut states = Vec::new();
        for _ in 0..5 {
            states.push(good_c.power_state().await);
        }
        (good_c.inventory().await, states, start.elapsed())
    });
    let (inv, states, fast_took) = fast.await.unwrap();
    assert!(fast_took < Duration::from_secs(1), "healthy BMC took {fast_took:?}");
    assert!(states.iter().all(|s| matches!(s, Ok(PowerState::Off))), "{states:?}");
    assert_eq!(inv.unwrap().system.serial.as_deref(), Some("FAULT-0"));
    let (res, slow_took) = slow.await.unwrap();
    assert!(matches!(res, Err(OobError::Timeout { .. })), "{res:?}");
    assert!(slow_took >= Duration::from_millis(2900), "{slow_took:?}");
}

#[tokio::test]
async fn paged_collections_and_same_host_redirects_are_followed() {
    let server = Server::start(|req: &Request| match req.path.as_str() {
        "/redfish/v1/" => Reply::json(200, &json!({"Systems": {"@odata.id": "/redfish/v1/Systems"}})),
        // The first page has only a chassis-like member; the System is on page 2.
        "/redfish/v1/Systems" => Reply::json(
            200,
            &json!({"Members": [{"@odata.id": "/redfish/v1/Systems/Other"}],
            "Members@odata.nextLink": "/redfish/v1/Systems?$skip=1"}),
        ),
        "/redfish/v1/Systems?$skip=1" => {
            Reply::json(200, &json!({"Members": [{"@odata.id": "/redfish/v1/Systems/Old"}]}))
        }
        "/redfish/v1/Systems/Other" => Reply::json(200, &json!({"@odata.type": "#Chassis.v1_0_0.Chassis"})),
        "/redfish/v1/Systems/Old" => Reply::Full(301, vec![("Location".into(), SYSTEM.into())], String::new()),
        SYSTEM => healthy(),
        "/loop" => Reply::Full(302, vec![("Location".into(), "/loop".into())], String::new()),
        _ => Reply::json(404, &json!({})),
    })
    .await;
    let c = client(&server.base, Duration::from_secs(5));
    assert_eq!(c.power_state().await.unwrap(), PowerState::Off);
    let inv = c.inventory().await.unwrap();
    assert_eq!(inv.system.serial.as_deref(), Some("FAULT-0"));
    assert!(inv.errors.is_empty(), "{:?}", inv.errors);
}

#[tokio::test]
async fn a_redirect_loop_is_a_protocol_error() {
    let server = Server::start(|req: &Request| match req.path.as_str() {
        "/redfish/v1/" => Reply::json(200, &json!({"Systems": {"@odata.id": "/loop"}})),
        _ => Reply::Full(302, vec![("Location".into(), "/loop".into())], String::new()),
    })
    .await;
    let err = client(&server.base, Duration::from_secs(5)).power_state().await.unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, OobError::Protocol { .. }) && err.to_string().contains("redirect"), "{err:?}");
}

#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed() {
    let server = Server::start(|req: &Request| match req.path.as_str() {
        "/redfish/v1/" => Reply::json(200, &json!({"Systems": {"@odata.id": "/redfish/v1/Systems"}})),
        _ => Reply::Full(302, vec![("Location".into(), "http://127.0.0.2:9/steal".into())], String::new()),
    })
    .await;
    let err = client(&server.base, Duration::from_secs(5)).power_state().await.unwrap_err();
    assert!(matches!(err, OobError::Http { status: 302, .. }), "{err:?}");
}
