//! Running the Debian tools image building relies on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `cmd` (feeding it `stdin` when given); on failure the error holds
/// its stderr.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<(), String> {
    let name = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
    }
    let output = child.wait_with_output().map_err(|e| format!("{name}: {e}"))?;
    if !output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = stdout.lines().rev().take(5).collect();
        return Err(format!("{name} failed: {} {}", String::from_utf8_lossy(&output.stderr).trim(), tail.join(" | ")));
    }
    Ok(())
}

/// Where `tool` is installed, if it is.
pub fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}
