//! The operator CLI end to end: a real `slipway serve` on 127.0.0.1 (its
//! own data directory and a free port), driven by the `slipway` binary as
//! an operator runs it. Also the API over TLS with a self-signed
//! certificate.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "cli-test-admin-token";
const BIN: &str = env!("CARGO_BIN_EXE_slipway");

struct Appliance {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Appliance {
    /// `slipway serve` with `dir` as its data directory; waits for /healthz.
    fn start(dir: &Path, tls: &str) -> Appliance {
        let port = free_port();
        let log = std::fs::File::create(dir.join(format!("serve-{port}.log"))).unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SLIPWAY_DATA_DIR", dir)
            .env("SLIPWAY_CACHE_DIR", dir.join("cache"))
            .env("SLIPWAY_API_LISTEN", format!("127.0.0.1:{port}"))
            .env("SLIPWAY_API_TOKEN", TOKEN)
            .env("SLIPWAY_API_TLS", tls)
            .env("SLIPWAY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let scheme = if tls == "off" { "http" } else { "https" };
        let mut appliance = Appliance { child, dir: dir.into(), url: format!("{scheme}://127.0.0.1:{port}") };
        appliance.wait_healthy();
        appliance
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("slipway serve exited ({status}):\n{}", self.log());
            }
            let agent = match self.url.starts_with("https") {
                true if self.cert().is_file() => agent_trusting(&self.cert()),
                true => ureq::agent(),
                false => ureq::agent(),
            };
            if agent.get(&format!("{}/healthz", self.url)).call().is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "slipway serve never became healthy:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("api-tls-cert.pem")
    }

    fn log(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with("serve-") {
                std::fs::File::open(entry.path()).unwrap().read_to_string(&mut all).unwrap();
            }
        }
        all
    }

    /// `slipway ARGS --api URL --token TOKEN` against this appliance.
    fn cli(&self, args: &[&str]) -> Output {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--api", &self.url, "--token", TOKEN]);
        slipway(&full, &[])
    }
}

/// The CLI with a clean environment (no operator's config file or
/// SLIPWAY_API_* leaking in) plus `env`.
fn slipway(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("SLIPWAY_CLI_CONFIG", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn agent_trusting(ca: &Path) -> ureq::Agent {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ureq::AgentBuilder::new().tls_config(Arc::new(config)).build()
}

#[test]
fn machines_list_is_an_empty_table_with_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let api = Appliance::start(dir.path(), "off");
    let out = api.cli(&["machines", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ID   STATE   MAC   CPUS   MEMORY   DISKS   RACK   AGE\n");
    let out = api.cli(&["machines"]);
    assert_eq!(stdout(&out), "ID   STATE   MAC   CPUS   MEMORY   DISKS   RACK   AGE\n", "list is the default");
}

#[test]
fn json_output_is_the_apis_json() {
    let dir = tempfile::tempdir().unwrap();
    let api = Appliance::start(dir.path(), "off");
    let out = api.cli(&["machines", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(doc, serde_json::json!({ "machines": [], "next": null }), "the API's page, as it is");
    let out = api.cli(&["events", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert!(doc["events"].is_array());
}

#[test]
fn images_upload_streams_the_file_then_list_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let api = Appliance::start(dir.path(), "off");
    let file = dir.path().join("tiny.raw");
    let content: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let out = api.cli(&["images", "upload", "tiny", file.to_str().unwrap(), "--os", "lab", "--os-version", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("upload tiny: 3.0 MiB of 3.0 MiB (100%)"), "progress on stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("State:") && stdout(&out).contains("available"), "{}", stdout(&out));

    let out = api.cli(&["images", "list"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("NAME   OS    VERSION   ARCH     BOOT   STATE"), "{text}");
    let cells: Vec<&str> = lines[1].split("   ").map(str::trim).filter(|c| !c.is_empty()).collect();
    // BOOT is read from the content, which has no boot loader: "none".
    assert_eq!(&cells[..7], ["tiny", "lab", "1", "x86_64", "none", "available", "3.0 MiB"], "{text}");

    let out = api.cli(&["images", "show", "tiny", "-o", "json"]);
    let image: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(image["raw_bytes"], 3 << 20);

    // A second upload under the same name is the API's conflict, printed.
    let out = api.cli(&["images", "upload", "tiny", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: Conflict: "), "{}", stderr(&out));
}

#[test]
fn deploy_to_an_unknown_machine_prints_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let api = Appliance::start(dir.path(), "off");
    let out = api.cli(&["deploy", "no-such-machine", "--image", "tiny", "--hostname", "node1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: Not Found: machine no-such-machine not found\n");
    assert!(out.stdout.is_empty());
    let out = api.cli(&["deploy", "no-such-machine", "--image", "tiny", "--hostname", "bad_name"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: Bad Request: invalid hostname: ") && err.ends_with(" (field: hostname)\n"),
        "{err}"
    );
}

#[test]
fn firmware_uploads_and_campaign_commands_reach_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let api = Appliance::start(dir.path(), "off");
    let file = dir.path().join("bios-2.1.bin");
    std::fs::write(&file, b"slipway-lab-firmware BIOS 2.1\n").unwrap();
    let out = api.cli(&["firmware", "upload", "bios-2.1", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("firmware bios-2.1: 30 B, sha256 "), "{}", stdout(&out));
    let out = api.cli(&["firmware"]);
    let text = stdout(&out);
    assert!(text.starts_with("NAME") && text.lines().nth(1).unwrap().starts_with("bios-2.1   30 B"), "{text}");

    let out = api.cli(&["campaigns"]);
    assert_eq!(stdout(&out), "ID   NAME   ACTION   STATE   PROGRESS   REASON\n", "{}", stderr(&out));
    // The API checks the request; the CLI prints its problem, field named.
    let out = api.cli(&["campaigns", "create", "r7", "--machines", "m-x", "--os-image", "debian-12.8"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: Bad Request: invalid action.os_refresh.image: no image named \"debian-12.8\" (field: action.os_refresh.image)\n"
    );
    let out = api.cli(&["campaigns", "pause", "c-none"]);
    assert_eq!(stderr(&out), "error: Not Found: campaign c-none not found\n");
}

#[test]
fn token_and_url_from_the_environment_or_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let api = Appliance::start(dir.path(), "off");
    let env = [("SLIPWAY_API_URL", api.url.as_str()), ("SLIPWAY_API_TOKEN", TOKEN)];
    let out = slipway(&["machines"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ID "));

    let out = slipway(&["machines"], &[("SLIPWAY_API_URL", &api.url), ("SLIPWAY_API_TOKEN", "wrong")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: Unauthorized: the bearer token is not valid\n");
    let out =
        slipway(&["machines", "--token", TOKEN], &[("SLIPWAY_API_URL", &api.url), ("SLIPWAY_API_TOKEN", "wrong")]);
    assert!(out.status.success(), "a flag beats the environment: {}", stderr(&out));

    let config = dir.path().join("cli.toml");
    std::fs::write(&config, format!("url = \"{}\"\ntoken = \"{TOKEN}\"\n", api.url)).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = slipway(&["machines"], &[("SLIPWAY_CLI_CONFIG", config.to_str().unwrap())]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "no warning for a private config file");

    let out = slipway(&["machines"], &[("SLIPWAY_API_URL", &api.url)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: no API token"), "{}", stderr(&out));
}

#[test]
fn connection_errors_name_the_url() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = slipway(&["machines", "--api", &url, "--token", TOKEN], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with(&format!("error: cannot reach the Slipway API at {url}: ")), "{}", stderr(&out));
}

#[test]
fn bmc_passwords_are_not_taken_from_argv_or_printed() {
    let out = slipway(&["bmcs", "enrol", "--address", "10.0.1.21", "--username", "root", "--password", "x"], &[]);
    assert_eq!(out.status.code(), Some(2), "there is no --password flag");
    let dir = tempfile::tempdir().unwrap();
    let api = Appliance::start(dir.path(), "off");
    // No terminal here and no file or variable given: refused before any request.
    let out = api.cli(&["bmcs", "enrol", "--address", "127.0.0.1:9", "--username", "root"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--password-file"), "{}", stderr(&out));
}

#[test]
fn self_signed_api_serves_https_to_clients_that_pin_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let api = Appliance::start(dir.path(), "self-signed");
    assert!(api.log().contains("SHA-256 "), "the fingerprint is printed at generation:\n{}", api.log());
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(dir.path().join("api-tls-key.pem")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let health = agent_trusting(&api.cert()).get(&format!("{}/healthz", api.url)).call().unwrap();
    assert_eq!(health.status(), 200);
    let plain = api.url.replace("https://", "http://");
    assert!(ureq::get(&format!("{plain}/healthz")).call().is_err(), "plain HTTP to the TLS port fails");

    let cert = api.cert();
    let out = api.cli(&["machines", "--ca", cert.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = api.cli(&["machines"]);
    assert_eq!(out.status.code(), Some(1), "an unknown issuer is refused");
    assert!(stderr(&out).contains("--ca FILE"), "{}", stderr(&out));
    let out = api.cli(&["machines", "--insecure"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A restart reuses the certificate and does not print it again.
    let before = std::fs::read(&cert).unwrap();
    drop(api);
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("serve-") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let api = Appliance::start(dir.path(), "self-signed");
    assert_eq!(std::fs::read(&cert).unwrap(), before);
    assert!(!api.log().contains("SHA-256 "), "{}", api.log());
}

#[test]
fn tokens_are_created_listed_used_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let api = Appliance::start(dir.path(), "off");
    let out = api.cli(&["tokens", "create", "ci", "--role", "viewer"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let secret = stdout(&out).trim().to_string();
    assert!(!secret.is_empty() && !secret.contains(' '), "the secret alone on stdout: {secret:?}");
    let out = slipway(&["machines"], &[("SLIPWAY_API_URL", &api.url), ("SLIPWAY_API_TOKEN", &secret)]);
    assert!(out.status.success(), "a viewer lists machines: {}", stderr(&out));
    let out = api.cli(&["tokens", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = list["tokens"][0]["id"].as_str().unwrap().to_string();
    assert!(stdout(&api.cli(&["tokens"])).contains("viewer"));
    let out = api.cli(&["tokens", "revoke", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = slipway(&["machines"], &[("SLIPWAY_API_URL", &api.url), ("SLIPWAY_API_TOKEN", &secret)]);
    assert_eq!(out.status.code(), Some(1), "revoked");
}
