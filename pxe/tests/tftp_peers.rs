//! The TFTP server against real clients: curl (blksize, tsize), the
//! tftp-hpa client and atftp (windowsize), on loopback. Plus a client that vanishes mid-transfer.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pxe::tftp::server::TftpServer;
use pxe::tftp::SessionOptions;
use tokio::net::UdpSocket;

/// A served root with a 1 MiB + 1 byte file, and a secret beside the root.
async fn start(limits: SessionOptions) -> (tempfile::TempDir, Arc<TftpServer>, SocketAddr, Vec<u8>) {
    use rand::{RngCore, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut data = vec![0u8; (1 << 20) + 1];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
    std::fs::write(root.join("snponly.efi"), &data).unwrap();
    std::fs::write(dir.path().join("secret"), b"not for clients").unwrap();
    let server = TftpServer::new(&root, limits).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(server.clone().run(socket));
    (dir, server, addr, data)
}

fn have(tool: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("SLIPWAY_LAB_TESTS").as_deref() != Ok("1"), "{tool} is required (SLIPWAY_LAB_TESTS=1)");
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

async fn run(cmd: Command) -> std::process::Output {
    tokio::process::Command::from(cmd).output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_with_blksize_and_tsize() {
    if !have("curl") {
        return;
    }
    let (dir, server, addr, data) = start(SessionOptions::default()).await;
    let out = dir.path().join("got");
    for blksize in ["512", "1468", "8192"] {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--tftp-blksize", blksize, "-o"]).arg(&out).arg(format!("tftp://{addr}/snponly.efi"));
        let result = run(curl).await;
        assert!(result.status.success(), "blksize {blksize}: {}", String::from_utf8_lossy(&result.stderr));
        assert_eq!(std::fs::read(&out).unwrap(), data, "blksize {blksize}");
    }
    let mut escape = Command::new("curl");
    escape.args(["-sS", "--path-as-is", "-o"]).arg(dir.path().join("escaped")).arg(format!("tftp://{addr}/../secret"));
    assert!(!run(escape).await.status.success(), "an escape attempt is refused");
    assert_eq!(server.stats.completed.load(Ordering::Relaxed), 3);
    assert!(server.stats.refused.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_client_fetches_and_is_refused_outside_the_root() {
    if !have("tftp") {
        return;
    }
    let (dir, _server, addr, data) = start(SessionOptions::default()).await;
    let out = dir.path().join("got");
    let get = |remote: &str| {
        let mut c = Command::new("tftp");
        c.args(["-m", "binary", "127.0.0.1", &addr.port().to_string(), "-c", "get", remote]).arg(&out);
        c
    };
    let result = run(get("snponly.efi")).await;
    assert!(result.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), data);
    std::fs::remove_file(&out).unwrap();
    for escape in ["../secret", "/../secret"] {
        let result = run(get(escape)).await;
        let said = String::from_utf8_lossy(&result.stdout).to_string() + &String::from_utf8_lossy(&result.stderr);
        assert!(said.contains("Error code 2") || said.contains("leaves the TFTP root"), "{escape}: {said}");
        assert_ne!(std::fs::read(&out).unwrap_or_default(), b"not for clients");
    }
}

/// RFC 7440 windowsize with a real client: atftp negotiates 16-block
/// windows (ACKing every 16th block) and gets the file intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_fetches_with_windowsize() {
    if !have("atftp") {
        return;
    }
    let (dir, server, addr, data) = start(SessionOptions::default()).await;
    for window in ["1", "16"] {
        let out = dir.path().join(format!("got-{window}"));
        let mut atftp = Command::new("atftp");
        atftp
            .args([
                "--option",
                &format!("windowsize {window}"),
                "--option",
                "blksize 1468",
                "-g",
                "-r",
                "snponly.efi",
                "-l",
            ])
            .arg(&out)
            .args(["127.0.0.1", &addr.port().to_string()]);
        let result = run(atftp).await;
        assert!(result.status.success(), "windowsize {window}: {}", String::from_utf8_lossy(&result.stderr));
        assert_eq!(std::fs::read(&out).unwrap(), data, "windowsize {window}");
    }
    // atftp exits once it has sent its last ACK; the server counts the
    // transfer complete when that ACK arrives, a moment later on a busy box.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.stats.completed.load(Ordering::Relaxed) < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.stats.completed.load(Ordering::Relaxed), 2);
}

/// A client that stops acknowledging costs nothing once retries run out.
#[tokio::test]
async fn a_vanished_client_leaks_nothing() {
    let limits = SessionOptions { default_timeout: Duration::from_millis(200), max_retries: 2, ..Default::default() };
    let (_dir, server, addr, _) = start(limits).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"\x00\x01snponly.efi\x00octet\x00", addr).await.unwrap();
    let mut buf = [0u8; 600];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..4], len), (&[0u8, 3, 0, 1][..], 516), "first DATA block");
    drop(client);
    assert_eq!(server.stats.active.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.stats.active.load(Ordering::Relaxed), 0, "the session ended");
    assert_eq!(server.stats.failed.load(Ordering::Relaxed), 1);
}

/// Sends `n` read requests from `ip`, each from its own port, and counts
/// the answers: first DATA blocks and "too many transfers" refusals. The
/// sockets are kept, so the started transfers stay open (unacknowledged).
async fn burst(addr: SocketAddr, ip: &str, n: usize, keep: &mut Vec<UdpSocket>) -> (usize, usize) {
    let mut sockets = Vec::new();
    for _ in 0..n {
        let s = UdpSocket::bind(format!("{ip}:0")).await.unwrap();
        s.send_to(b"\x00\x01snponly.efi\x00octet\x00", addr).await.unwrap();
        sockets.push(s);
    }
    let mut answers = (0, 0);
    for s in &sockets {
        let mut buf = [0u8; 600];
        match tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf)).await {
            Ok(Ok(_)) if buf[1] == 3 => answers.0 += 1,
            Ok(Ok((len, _))) if buf[1] == 5 => {
                assert!(String::from_utf8_lossy(&buf[4..len]).contains("too many transfers"));
                answers.1 += 1;
            }
            other => panic!("no answer: {other:?}"),
        }
    }
    keep.extend(sockets);
    answers
}

/// A client that opens transfers by the hundred without acknowledging
/// gets a few: the rest are refused at once, other clients still get
/// theirs up to the total cap, and when the stalled ones time out the
/// slots come back.
#[tokio::test]
async fn a_session_flood_is_capped_per_client_and_in_total() {
    let limits = SessionOptions {
        default_timeout: Duration::from_millis(300),
        max_retries: 1,
        max_sessions: 12,
        max_sessions_per_client: 4,
        ..Default::default()
    };
    let (_dir, server, addr, _) = start(limits).await;
    let mut open = Vec::new();
    assert_eq!(burst(addr, "127.0.0.1", 300, &mut open).await, (4, 296), "four for the flooding client");
    assert_eq!(burst(addr, "127.0.0.2", 1, &mut open).await, (1, 0), "another client is not shut out");
    assert_eq!(burst(addr, "127.0.0.3", 7, &mut open).await, (4, 3));
    assert_eq!(burst(addr, "127.0.0.4", 4, &mut open).await, (3, 1), "twelve at once in all");
    assert_eq!(server.stats.busy.load(Ordering::Relaxed), 300);
    drop(open);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.stats.active.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.stats.active.load(Ordering::Relaxed), 0, "every stalled transfer gave its slot back");
    assert_eq!(burst(addr, "127.0.0.1", 1, &mut Vec::new()).await, (1, 0), "and the flooder may fetch again");
}
