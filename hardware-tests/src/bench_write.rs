//! `slipway bench write`: the node's image write pipeline (fetch over HTTP,
//! zstd, hash, write, fsync, read back and verify) against the shell
//! pipeline an operator would use, `curl | zstd -d | dd conv=fsync` (which
//! verifies nothing), both fetching the same raw+zstd image from nginx on
//! loopback and writing the same target file. A report, not a test.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use images::tools::which;
use serde::Serialize;

const PORT: u16 = 18090;

#[derive(Debug, Serialize)]
pub struct WriteResult {
    pub pipeline: String,
    pub raw_bytes: u64,
    pub seconds: f64,
    /// Raw (decompressed) MB/s, 10^6 bytes.
    pub mb_per_s: f64,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    pub verified: bool,
}

#[derive(Debug, Serialize)]
pub struct WriteReport {
    pub image_raw_bytes: u64,
    pub image_stored_bytes: u64,
    pub runs: Vec<WriteResult>,
}

/// Synthetic disk content that compresses like an OS image (~3:1): runs of
/// zeros, repetitive text and incompressible noise.
struct OsLike {
    left: u64,
    state: u64,
    block: u64,
}

impl Read for OsLike {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left).min(64 << 10) as usize;
        let kind = (self.block / 16) % 4;
        for b in &mut buf[..n] {
            self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = match kind {
                0 => 0,
                1 => b"slipway lab image content; "[(self.state >> 59) as usize % 27],
                _ => (self.state >> 56) as u8,
            };
        }
        self.block += 1;
        self.left -= n as u64;
        Ok(n)
    }
}

pub fn run(size_mib: u64, agent_bin: &Path, cache_dir: &Path) -> anyhow::Result<WriteReport> {
    for tool in ["nginx", "curl", "zstd", "dd"] {
        if which(tool).is_none() {
            bail!("{tool} is missing (scripts/bench.sh installs nginx-light)");
        }
    }
    let dir = cache_dir.join("bench-write");
    std::fs::create_dir_all(&dir)?;
    let image = dir.join(format!("os-like-{size_mib}.raw.zst"));
    let digest_file = dir.join(format!("os-like-{size_mib}.sha256"));
    let raw_bytes = size_mib << 20;
    if !image.is_file() || !digest_file.is_file() {
        eprintln!("bench: generating a {size_mib} MiB OS-like image (cached in {})", dir.display());
        let content = OsLike { left: raw_bytes, state: 7, block: 0 };
        let imported =
            images::catalog::import_stream(content, images::catalog::SourceFormat::Raw, &image, None, &mut |_| {})?;
        std::fs::write(&digest_file, &imported.sha256)?;
    }
    let sha256 = std::fs::read_to_string(&digest_file)?;
    let stored = std::fs::metadata(&image)?.len();
    let target = dir.join("target.raw");
    std::fs::File::create(&target)?.set_len(raw_bytes)?;

    let _nginx = Nginx::start(&dir)?;
    let url = format!("http://127.0.0.1:{PORT}/{}", image.file_name().unwrap_or_default().to_string_lossy());
    // Warm the page cache with the source so both read it from memory.
    std::io::copy(&mut std::fs::File::open(&image)?, &mut std::io::sink())?;

    let shell =
        format!("curl -sf {url} | zstd -d -q | dd of={} bs=1M conv=notrunc,fsync status=none", target.display());
    let mut runs = Vec::new();
    for round in 0..2 {
        eprintln!("bench: round {} of 2", round + 1);
        runs.push(timed("curl | zstd -d | dd", raw_bytes, false, Command::new("sh").args(["-c", &shell]))?);
        let mut agent = Command::new(agent_bin);
        agent.arg("write-image").arg(&url).arg(&sha256).arg(raw_bytes.to_string()).arg(&target);
        runs.push(timed("slipway-agent write-image", raw_bytes, true, &mut agent)?);
    }
    let _ = std::fs::remove_file(&target);
    Ok(WriteReport { image_raw_bytes: raw_bytes, image_stored_bytes: stored, runs })
}

/// Runs `cmd` under GNU time for wall clock, CPU and peak RSS.
fn timed(name: &str, raw_bytes: u64, verified: bool, cmd: &mut Command) -> anyhow::Result<WriteResult> {
    let stats = tempfile::NamedTempFile::new()?;
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-f").arg("%U %S %M").arg("-o").arg(stats.path()).arg(cmd.get_program()).args(cmd.get_args());
    let started = Instant::now();
    let status = timed.stdout(Stdio::null()).stderr(Stdio::null()).status().context("running /usr/bin/time")?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{name} failed: {status}");
    }
    let text = std::fs::read_to_string(stats.path())?;
    let fields: Vec<f64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [user, sys, rss] = fields[..] else { bail!("unexpected /usr/bin/time output {text:?}") };
    Ok(WriteResult {
        pipeline: name.into(),
        raw_bytes,
        seconds,
        mb_per_s: raw_bytes as f64 / seconds / 1e6,
        cpu_seconds: user + sys,
        peak_rss_kib: rss as u64,
        verified,
    })
}

struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(root: &Path) -> anyhow::Result<Nginx> {
        let conf_dir = root.join("nginx");
        std::fs::create_dir_all(&conf_dir)?;
        let conf = conf_dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\n\
                 http {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  \
                 fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n  \
                 server {{ listen 127.0.0.1:{PORT}; root {root}; }}\n}}\n",
                dir = conf_dir.display(),
                root = root.display()
            ),
        )?;
        let child = Command::new(which("nginx").unwrap_or_else(|| PathBuf::from("nginx")))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let nginx = Nginx { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", PORT)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen on 127.0.0.1:{PORT}; see {}/error.log", conf_dir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master must stop its workers, or they
        // keep the port.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

pub fn table(report: &WriteReport) -> String {
    let mut out = format!(
        "image: {} MiB raw, {:.0} MiB stored (raw+zstd)\n{:<28} {:>8} {:>8} {:>9} {:>10} {:>8}\n",
        report.image_raw_bytes >> 20,
        report.image_stored_bytes as f64 / (1 << 20) as f64,
        "pipeline",
        "seconds",
        "MB/s",
        "CPU s",
        "peak RSS",
        "verified"
    );
    for r in &report.runs {
        out.push_str(&format!(
            "{:<28} {:>8.1} {:>8.0} {:>9.1} {:>7.1}MiB {:>8}\n",
            r.pipeline,
            r.seconds,
            r.mb_per_s,
            r.cpu_seconds,
            r.peak_rss_kib as f64 / 1024.0,
            if r.verified { "yes" } else { "no" }
        ));
    }
    out
}
