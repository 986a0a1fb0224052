//! kill -9 during a PXE storm, then restart: no ACKed lease is lost and no
//! address is handed out twice. Real `slipway serve`, real sockets, the
//! storm client retransmitting as iPXE does.

use std::time::Duration;

use hardware_tests::bench::{self, BenchNet, CLIENT_IF};
use hardware_tests::storm;
use hardware_tests::support::{lab_tests_enabled, slipway_bin};

#[test]
fn leases_survive_kill_9_mid_storm() {
    if !lab_tests_enabled("dhcp_crash", &["ip"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _net = BenchNet::create().unwrap();
    let mut server = bench::start("slipway", &slipway_bin(), dir.path()).unwrap();
    bench::wait_ready(0xa0).unwrap();

    // A: 200 clients bound before the crash.
    let first = storm::run(CLIENT_IF, 200, 0xa1, 2, Duration::from_secs(60)).unwrap();
    assert_eq!(first.completed, 200, "completed {} of 200", first.completed);

    // B: 800 more, arriving over 1 s, with the server killed 300 ms in and
    // restarted 1 s later; the clients' retransmissions carry them across.
    let storm_b = std::thread::spawn(|| {
        storm::run_spread(CLIENT_IF, 800, 0xa2, 2, Duration::from_secs(1), Duration::from_secs(60)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    server.kill9();
    std::thread::sleep(Duration::from_secs(1));
    let _restarted = bench::start("slipway", &slipway_bin(), dir.path()).unwrap();
    let second = storm_b.join().unwrap();
    let summary = format!(
        "completed {}, retransmissions {}, offer p99 {:.0} ms",
        second.completed, second.retransmissions, second.offer_p99_ms
    );
    assert_eq!(second.completed, 800, "every client of the interrupted storm got a lease: {summary}");
    // Clients that arrived while the server was down waited for a retransmission.
    assert!(second.offer_p99_ms > 1000.0 && second.retransmissions > 0, "the crash interrupted the storm: {summary}");

    // Nobody shares an address across both storms.
    let mut owners = std::collections::HashMap::new();
    for (mac, ip) in first.leases.iter().chain(second.leases.iter()) {
        if let Some(other) = owners.insert(*ip, *mac) {
            panic!("{ip} ACKed to {other:?} and {mac:?}");
        }
    }

    // A's clients boot again: each gets back the address it had.
    let again = storm::run(CLIENT_IF, 200, 0xa1, 2, Duration::from_secs(60)).unwrap();
    assert_eq!(again.completed, 200);
    for (mac, ip) in &first.leases {
        assert_eq!(again.leases.get(mac), Some(ip), "{mac:?} lost its lease across kill -9");
    }
}
