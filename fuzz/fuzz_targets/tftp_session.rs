//! A TFTP conversation from an untrusted client: the first chunk is the
//! request, the rest are what the client sends next (an empty chunk is a
//! timeout). Beyond "no panic": a name that resolves lies inside the root,
//! and a session ends once its retry budget of timeouts in a row is spent.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pxe::tftp::server::TftpServer;
use pxe::tftp::{Output, Packet, Session, SessionOptions};

/// A root with one file and a symlink pointing out of it.
fn server() -> &'static (Arc<TftpServer>, PathBuf) {
    static SERVER: OnceLock<(Arc<TftpServer>, PathBuf)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("slipway-fuzz-tftp-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("snponly.efi"), vec![7u8; 3000]).unwrap();
        let _ = std::os::unix::fs::symlink("/etc", root.join("escape"));
        let server = TftpServer::new(&root, SessionOptions::default()).unwrap();
        let root = root.canonicalize().unwrap();
        (server, root)
    })
}

/// Splits `data` into length-prefixed chunks.
fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = (len as usize).min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let chunks = chunks(data);
    let Some(first) = chunks.first() else { return };
    let Ok(Packet::Read(req)) = Packet::parse(first) else { return };
    let (server, root) = server();
    if let Ok(path) = server.resolve(&req.filename) {
        assert!(path.starts_with(root), "{:?} resolved outside the root to {}", req.filename, path.display());
    }
    let limits = SessionOptions::default();
    let (mut session, _) = Session::start(&req, Arc::from(vec![7u8; 3000]), &limits);
    // Timeouts in a row; any packet from the client may be progress.
    let mut silent = 0;
    for chunk in &chunks[1..] {
        if session.is_finished() {
            break;
        }
        if chunk.is_empty() {
            silent += 1;
            let out = session.on_timeout();
            if silent > limits.max_retries {
                assert!(session.is_finished(), "a session outlived {silent} timeouts in a row");
                assert!(out.iter().any(|o| matches!(o, Output::Failed(_))), "gave up without saying so");
            }
        } else if let Ok(pkt) = Packet::parse(chunk) {
            silent = 0;
            session.on_packet(&pkt);
        }
    }
});
