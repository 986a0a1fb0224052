//! Running one ipmitool process: spawn it with the password in its
//! environment, collect stdout and stderr, and kill it when the deadline
//! passes or the caller's future is dropped.
//!
//! What it does not own: the arguments (built by `super`), what the output
//! means (`parse`) and retries.
//!
//! The workspace's tokio has no `process` feature, so this uses
//! `std::process` with [`KillOnDrop`] (the `kill_on_drop` behaviour): the
//! child is polled with `try_wait` between short async sleeps and its pipes
//! are drained by two threads, so a chatty ipmitool never blocks on a full
//! pipe. Cancel-safe: dropping the future kills and reaps the child.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// How often the child is checked for exit.
const POLL: Duration = Duration::from_millis(10);

/// What a finished ipmitool run printed.
#[derive(Debug)]
pub(crate) struct Captured {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

#[derive(Debug)]
pub(crate) enum RunError {
    /// ipmitool could not be started (not installed, not executable).
    Spawn(std::io::Error),
    /// Still running at the deadline; it has been killed.
    Deadline,
}

/// A child that is killed and reaped when dropped, whatever happened.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Drains a pipe on its own thread; the receiver gets everything read.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> oneshot::Receiver<Vec<u8>> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Runs `program args` with `IPMI_PASSWORD` set (for ipmitool's `-E`) and
/// `LC_ALL=C`, until it exits or `deadline` passes.
pub(crate) async fn run(
    program: &Path,
    args: &[String],
    password: &str,
    deadline: Instant,
) -> Result<Captured, RunError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("IPMI_PASSWORD", password)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().map_err(RunError::Spawn)?);
    let stdout = drain(child.0.stdout.take());
    let stderr = drain(child.0.stderr.take());
    let status: ExitStatus = loop {
        if let Some(status) = child.0.try_wait().map_err(RunError::Spawn)? {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(RunError::Deadline); // `child` is killed on drop
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    };
    // The pipes close when the child exits; the deadline still bounds the wait.
    let read = async { (stdout.await.unwrap_or_default(), stderr.await.unwrap_or_default()) };
    let (out, err) = tokio::time::timeout_at(deadline, read).await.map_err(|_| RunError::Deadline)?;
    Ok(Captured {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        success: status.success(),
    })
}
