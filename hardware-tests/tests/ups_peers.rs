//! The UPS clients against real peers on loopback: NUT's `dummy-ups` and
//! `upsd` (through `simulators::ups::DummyNut`, as root) and `snmpsimd` serving
//! the UPS-MIB recordings in `fixtures/ups/` (the file name is the
//! community). Plus the failures a client must name clearly: unknown UPS,
//! nothing listening, a silent peer, a peer talking nonsense.
//!
//! A missing peer binary (or not being root, for NUT) skips a test with a
//! message, unless `SLIPWAY_LAB_TESTS=1`, where it fails: the lab must not
//! pass by testing nothing.
//!
//! Run: `cargo test -p hardware-tests --test ups_peers`.

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inventory::oob::{OobError, UpsState, UpsStatus};
use inventory::ups::{NutClient, SnmpUps};
use simulators::ups::{self as dummy, DummyNut, DummyNutError, DummyState};

const TIMEOUT: Duration = Duration::from_secs(2);

fn lab_required() -> bool {
    std::env::var("SLIPWAY_LAB_TESTS").is_ok_and(|v| v == "1")
}

/// Skips (returns false) or, under `SLIPWAY_LAB_TESTS=1`, fails.
fn peer_missing(test: &str, why: &str) -> bool {
    if lab_required() {
        panic!("{test}: SLIPWAY_LAB_TESTS=1 but the peer cannot run: {why}");
    }
    eprintln!("SKIP {test}: {why} (set SLIPWAY_LAB_TESTS=1 to make this a failure)");
    false
}

/// A DummyNut in a fresh temp dir, or `None` when the test must skip.
fn start_nut(test: &str) -> Option<(DummyNut, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("temp dir");
    match DummyNut::start(dir.path(), "lab") {
        Ok(nut) => Some((nut, dir)),
        Err(e @ (DummyNutError::MissingBinary { .. } | DummyNutError::NotRoot)) => {
            peer_missing(test, &e.to_string());
            None
        }
        Err(e) => panic!("{test}: the dummy UPS did not start: {e}"),
    }
}

/// Polls until the client reads `expected`, for at most `within`.
async fn wait_for(client: &NutClient, expected: UpsStatus, within: Duration) -> UpsState {
    let deadline = Instant::now() + within;
    loop {
        let last = match client.state().await {
            Ok(state) if state.status == expected => return state,
            Ok(state) => format!("{state:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            panic!("no {expected:?} within {within:?}; last reading: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn nut_client_follows_online_battery_low_online() {
    let Some((nut, _dir)) = start_nut("nut_client_follows_online_battery_low_online") else { return };
    let client = NutClient::new(nut.addr(), nut.ups_name().to_string(), None, TIMEOUT);
    let within = Duration::from_secs(10);

    let online = wait_for(&client, UpsStatus::Online, within).await;
    assert_eq!(online.flags, ["OL"]);
    assert_eq!(online.charge_percent, Some(100.0));
    assert_eq!(online.input_voltage, Some(230.0));
    assert_eq!(online.load_percent, Some(25.0));
    assert_eq!(online.manufacturer.as_deref(), Some("Slipway"));
    assert_eq!(online.model.as_deref(), Some("Lab UPS 1500"));

    nut.set(DummyState::Battery).unwrap();
    let battery = wait_for(&client, UpsStatus::OnBattery, within).await;
    assert_eq!(battery.flags, ["OB", "DISCHRG"]);
    assert_eq!(battery.charge_percent, Some(60.0));
    assert_eq!(battery.runtime_secs, Some(900));

    // The lab changes state from another process, knowing only the dir.
    dummy::write_state(nut.dir(), DummyState::Low).unwrap();
    let low = wait_for(&client, UpsStatus::LowBattery, within).await;
    assert_eq!(low.flags, ["OB", "DISCHRG", "LB"]);
    assert_eq!(low.charge_percent, Some(10.0));

    nut.set(DummyState::Online).unwrap();
    let back = wait_for(&client, UpsStatus::Online, within).await;
    assert_eq!(back.charge_percent, Some(100.0));
    assert_eq!(dummy::read_addr(nut.dir()).unwrap(), nut.addr());
}

#[tokio::test]
async fn nut_lists_the_ups_and_logs_in() {
    let Some((nut, _dir)) = start_nut("nut_lists_the_ups_and_logs_in") else { return };
    let client = NutClient::new(nut.addr(), "lab".into(), Some(nut.credentials()), TIMEOUT);
    let upses = client.list_ups().await.unwrap();
    assert_eq!(upses, [("lab".to_string(), "Slipway lab UPS".to_string())]);
    let state = client.state().await.unwrap();
    assert_eq!(state.status, UpsStatus::Online, "{state:?}");
}

#[tokio::test]
async fn nut_unknown_ups_is_a_protocol_error_naming_the_peer() {
    let Some((nut, _dir)) = start_nut("nut_unknown_ups_is_a_protocol_error_naming_the_peer") else { return };
    let client = NutClient::new(nut.addr(), "nope".into(), None, TIMEOUT);
    let err = client.state().await.unwrap_err();
    assert!(matches!(err, OobError::Protocol { .. }), "{err:?}");
    let shown = err.to_string();
    assert_eq!(shown, format!("{}: LIST VAR nope: ERR UNKNOWN-UPS", nut.addr()));
}

#[tokio::test]
async fn nut_nothing_listening_is_a_connect_error() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let err = NutClient::new(addr.clone(), "lab".into(), None, TIMEOUT).state().await.unwrap_err();
    assert!(matches!(&err, OobError::Connect { peer, .. } if *peer == addr), "{err:?}");
}

#[tokio::test]
async fn nut_silent_peer_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let silent = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(socket);
    });
    let started = Instant::now();
    let err = NutClient::new(addr.clone(), "lab".into(), None, Duration::from_millis(300)).state().await.unwrap_err();
    assert!(matches!(&err, OobError::Timeout { peer, .. } if *peer == addr), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    silent.abort();
}

#[tokio::test]
async fn nut_garbage_reply_is_malformed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 256];
        let _ = socket.read(&mut buf).await;
        let _ = socket.write_all(b"BEGIN LIST VAR lab\nVAR lab \"unterminated\n").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let err = NutClient::new(addr.clone(), "lab".into(), None, TIMEOUT).state().await.unwrap_err();
    assert!(matches!(&err, OobError::Malformed { peer, .. } if *peer == addr), "{err:?}");
    peer.abort();
}

#[test]
fn dummy_nut_refuses_a_bad_ups_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = DummyNut::start(dir.path(), "lab\nFSD").unwrap_err();
    assert!(matches!(err, DummyNutError::BadName(_)), "{err:?}");
}

/// `snmpsimd` serving `fixtures/ups/*.snmprec` on a free loopback port.
struct SnmpSim {
    child: Child,
    addr: String,
    work: tempfile::TempDir,
}

impl Drop for SnmpSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ups")
}

impl SnmpSim {
    /// Starts snmpsimd and waits until it answers for `mains`.
    async fn start(test: &str) -> Option<SnmpSim> {
        let Some(bin) = find_in_path("snmpsimd") else {
            peer_missing(test, "snmpsimd not found in PATH (Debian package snmpsim)");
            return None;
        };
        let work = tempfile::tempdir().unwrap();
        // snmpsimd refuses to run as root; it drops to nobody, who must be
        // able to write its index cache.
        let cache = work.path().join("cache");
        fs::create_dir(&cache).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let log = fs::File::create(work.path().join("snmpsimd.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--data-dir={}", fixtures().display()))
            .arg(format!("--cache-dir={}", cache.display()))
            .arg(format!("--agent-udpv4-endpoint={addr}"))
            .arg("--logging-method=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if dummy::running_as_root() {
            cmd.args(["--process-user=nobody", "--process-group=nogroup"]);
        }
        let child = cmd.spawn().unwrap();
        let mut sim = SnmpSim { child, addr, work };
        let probe = SnmpUps::new(sim.addr.clone(), "mains".into(), Duration::from_millis(500));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = sim.child.try_wait() {
                panic!("{test}: snmpsimd exited ({status}):\n{}", sim.log());
            }
            match probe.state().await {
                Ok(_) => return Some(sim),
                Err(e) if Instant::now() >= deadline => {
                    panic!("{test}: snmpsimd not answering after 30 s ({e}):\n{}", sim.log())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.work.path().join("snmpsimd.log")).unwrap_or_default()
    }
}

#[tokio::test]
async fn snmpsimd_recordings_map_to_online_and_low_battery() {
    let test = "snmpsimd_recordings_map_to_online_and_low_battery";
    let Some(sim) = SnmpSim::start(test).await else { return };

    let mains = SnmpUps::new(sim.addr.clone(), "mains".into(), TIMEOUT).state().await.unwrap();
    assert_eq!(
        mains,
        UpsState {
            status: UpsStatus::Online,
            flags: vec!["OL".into()],
            charge_percent: Some(100.0),
            runtime_secs: Some(52 * 60),
            load_percent: Some(34.0),
            input_voltage: Some(231.0),
            manufacturer: Some("Slipway".into()),
            model: Some("Lab UPS 3000 SNMP".into()),
        }
    );

    // This recording has no upsInputVoltage: the agent answers
    // noSuchInstance for it and the rest still reads.
    let low = SnmpUps::new(sim.addr.clone(), "battery-low".into(), TIMEOUT).state().await.unwrap();
    assert_eq!(
        low,
        UpsState {
            status: UpsStatus::LowBattery,
            flags: vec!["OB".into(), "DISCHRG".into(), "LB".into()],
            charge_percent: Some(8.0),
            runtime_secs: Some(120),
            load_percent: Some(41.0),
            input_voltage: None,
            manufacturer: Some("Slipway".into()),
            model: Some("Lab UPS 3000 SNMP".into()),
        }
    );

    // An unknown community gets no answer at all from a v2c agent.
    let err = SnmpUps::new(sim.addr.clone(), "wrong".into(), Duration::from_millis(500)).state().await.unwrap_err();
    assert!(matches!(&err, OobError::Timeout { peer, .. } if *peer == sim.addr), "{err:?}");
}

#[tokio::test]
async fn snmp_garbage_answer_is_malformed_not_a_panic() {
    let agent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = agent.local_addr().unwrap().to_string();
    let peer = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        if let Ok((_, from)) = agent.recv_from(&mut buf).await {
            // A SEQUENCE that claims more bytes than it has.
            let _ = agent.send_to(&[0x30, 0x82, 0xff, 0xff, 0x02, 0x01, 0x01], from).await;
        }
    });
    let err = SnmpUps::new(addr.clone(), "public".into(), TIMEOUT).state().await.unwrap_err();
    assert!(matches!(&err, OobError::Malformed { peer, .. } if *peer == addr), "{err:?}");
    peer.abort();
}

#[tokio::test]
async fn snmp_nothing_listening_is_an_error_naming_the_peer() {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let err = SnmpUps::new(addr.clone(), "public".into(), Duration::from_millis(500)).state().await.unwrap_err();
    // Loopback reports the closed port (ICMP unreachable) as a receive
    // error; elsewhere it would be a timeout.
    assert!(
        matches!(&err, OobError::Connect { peer, .. } | OobError::Timeout { peer, .. } if *peer == addr),
        "{err:?}"
    );
}
