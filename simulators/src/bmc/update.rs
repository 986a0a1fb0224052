//! `UpdateService.SimpleUpdate` for the simulated BMC: the lab firmware
//! image format, fetching an image over HTTP (bounded in size and time),
//! and the TaskService tasks that report how an update went.
//!
//! Lab firmware format: a text file whose first line is
//! `slipway-lab-firmware COMPONENT VERSION` (`COMPONENT` is `BIOS` or
//! `BMC`; `VERSION` is 1 to 64 printable ASCII characters); the rest is
//! ignored. Anything else fails the task. A BIOS update runs from the next
//! boot, a BMC update at once (`backend::MachineState::install`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::backend::{Backend, FirmwareKind};
use super::resources::{FIRMWARE_INVENTORY, TASKS};

pub const IMAGE_MAGIC: &str = "slipway-lab-firmware";
/// Larger images are refused while downloading.
pub const MAX_IMAGE_BYTES: usize = 64 << 20;
/// The whole download, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Tasks kept; the oldest finished ones go first.
const MAX_TASKS: usize = 64;
pub const TASK_MONITORS: &str = "/redfish/v1/TaskService/TaskMonitors";

/// What a lab firmware image says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabImage {
    pub kind: FirmwareKind,
    pub version: String,
}

/// Reads the first line of a lab firmware image. The error is the task's
/// message.
pub fn parse_image(bytes: &[u8]) -> Result<LabImage, String> {
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = std::str::from_utf8(first).map_err(|_| "not a lab firmware image: the first line is not text")?;
    let words: Vec<&str> = first.trim_end_matches('\r').split(' ').collect();
    let [magic, component, version] = words[..] else {
        return Err(format!("not a lab firmware image: the first line must be `{IMAGE_MAGIC} COMPONENT VERSION`"));
    };
    if magic != IMAGE_MAGIC {
        return Err(format!("not a lab firmware image: it does not start with `{IMAGE_MAGIC}`"));
    }
    let kind = FirmwareKind::from_id(component)
        .ok_or_else(|| format!("lab firmware image for unknown component {component:?} (BIOS or BMC)"))?;
    if version.is_empty() || version.len() > 64 || !version.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("lab firmware image with a bad version {version:?}"));
    }
    Ok(LabImage { kind, version: version.into() })
}

/// Downloads `uri` (plain HTTP), refusing bodies over `MAX_IMAGE_BYTES`.
pub async fn fetch(uri: &str) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("building an HTTP client: {e}"))?;
    let mut resp = client.get(uri).send().await.map_err(|e| format!("fetching {uri}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("fetching {uri}: HTTP {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n > MAX_IMAGE_BYTES as u64) {
        return Err(format!("{uri} is larger than {} MiB", MAX_IMAGE_BYTES >> 20));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("fetching {uri}: {e}"))? {
        if body.len() + chunk.len() > MAX_IMAGE_BYTES {
            return Err(format!("{uri} is larger than {} MiB", MAX_IMAGE_BYTES >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Running,
    Completed,
    Exception,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: u64,
    pub state: TaskState,
    pub message: String,
}

impl Task {
    pub fn uri(&self) -> String {
        format!("{TASKS}/{}", self.id)
    }

    pub fn monitor(&self) -> String {
        format!("{TASK_MONITORS}/{}", self.id)
    }

    pub fn to_json(&self) -> Value {
        let (state, status, percent, message_id) = match self.state {
            TaskState::Running => ("Running", "OK", 10, "TaskEvent.1.0.TaskStarted"),
            TaskState::Completed => ("Completed", "OK", 100, "TaskEvent.1.0.TaskCompletedOK"),
            TaskState::Exception => ("Exception", "Critical", 100, "TaskEvent.1.0.TaskAborted"),
        };
        json!({
            "@odata.id": self.uri(),
            "@odata.type": "#Task.v1_7_3.Task",
            "Id": self.id.to_string(),
            "Name": "SimpleUpdate",
            "TaskState": state,
            "TaskStatus": status,
            "PercentComplete": percent,
            "TaskMonitor": self.monitor(),
            "Messages": [{ "MessageId": message_id, "Message": self.message, "Severity": status }],
        })
    }
}

/// The BMC's tasks, bounded.
#[derive(Debug, Default)]
pub struct Tasks {
    inner: Mutex<(u64, BTreeMap<u64, Task>)>,
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Task>)> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new running task.
    pub fn start(&self, message: &str) -> Task {
        let mut guard = self.lock();
        let (next, tasks) = &mut *guard;
        *next += 1;
        if tasks.len() >= MAX_TASKS {
            let done = tasks.values().find(|t| t.state != TaskState::Running).map(|t| t.id);
            if let Some(old) = done.or_else(|| tasks.keys().next().copied()) {
                tasks.remove(&old);
            }
        }
        let task = Task { id: *next, state: TaskState::Running, message: message.into() };
        tasks.insert(task.id, task.clone());
        task
    }

    pub fn finish(&self, id: u64, state: TaskState, message: String) {
        if let Some(t) = self.lock().1.get_mut(&id) {
            t.state = state;
            t.message = message;
        }
    }

    pub fn get(&self, id: u64) -> Option<Task> {
        self.lock().1.get(&id).cloned()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.lock().1.keys().copied().collect()
    }
}

/// Fetches, checks and installs one image, finishing `task`. `targets`
/// are the request's `Targets` (FirmwareInventory URIs); when given, the
/// image's component must be among them.
pub async fn run<B: Backend>(backend: &B, tasks: &Tasks, task: u64, uri: String, targets: Vec<String>) {
    let outcome = async {
        let bytes = fetch(&uri).await?;
        let image = parse_image(&bytes)?;
        let target = format!("{FIRMWARE_INVENTORY}/{}", image.kind.id());
        if !targets.is_empty() && !targets.iter().any(|t| t.trim_end_matches('/') == target) {
            return Err(format!("the image is for {target}, not for {}", targets.join(", ")));
        }
        backend.update_firmware(image.kind, image.version.clone()).await.map_err(|e| format!("installing: {e}"))?;
        Ok(match image.kind {
            FirmwareKind::Bios => format!("BIOS {} installed; it runs from the next boot", image.version),
            FirmwareKind::Bmc => format!("BMC firmware {} installed and running", image.version),
        })
    }
    .await;
    match outcome {
        Ok(message) => {
            tracing::info!(task, %uri, %message, "firmware update done");
            tasks.finish(task, TaskState::Completed, message);
        }
        Err(message) => {
            tracing::warn!(task, %uri, %message, "firmware update failed");
            tasks.finish(task, TaskState::Exception, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(image: &str, expected: Result<(FirmwareKind, &str), &str>) {
        let got = parse_image(image.as_bytes());
        match expected {
            Ok((kind, version)) => assert_eq!(got, Ok(LabImage { kind, version: version.into() }), "{image:?}"),
            Err(fragment) => {
                let err = got.expect_err(image);
                assert!(err.contains(fragment), "{image:?}: {err}");
            }
        }
    }

    #[test]
    fn lab_firmware_images() {
        check("slipway-lab-firmware BIOS 1.2.3\npayload", Ok((FirmwareKind::Bios, "1.2.3")));
        check("slipway-lab-firmware BMC 2.0-lab\r\n", Ok((FirmwareKind::Bmc, "2.0-lab")));
        check("slipway-lab-firmware BMC 2.0", Ok((FirmwareKind::Bmc, "2.0")));
        check("slipway-lab-firmware NIC 1.0\n", Err("unknown component"));
        check("slipway-lab-firmware BIOS\n", Err("COMPONENT VERSION"));
        check("slipway-lab-firmware BIOS 1 2\n", Err("COMPONENT VERSION"));
        check("MZ\u{90}\0binary", Err("COMPONENT VERSION"));
        check("other-firmware BIOS 1.0\n", Err("does not start with"));
        check(&format!("slipway-lab-firmware BIOS {}\n", "9".repeat(65)), Err("bad version"));
        assert!(parse_image(b"\xff\xfe BIOS 1\n").unwrap_err().contains("not text"));
    }

    #[test]
    fn tasks_are_bounded_and_drop_finished_ones_first() {
        let tasks = Tasks::default();
        let first = tasks.start("running");
        let second = tasks.start("x");
        tasks.finish(second.id, TaskState::Completed, "done".into());
        for _ in 0..MAX_TASKS - 1 {
            tasks.start("more");
        }
        assert!(tasks.get(second.id).is_none(), "the finished task goes first");
        assert!(tasks.get(first.id).is_some());
        assert_eq!(tasks.ids().len(), MAX_TASKS);
        let json = tasks.get(first.id).unwrap().to_json();
        assert_eq!((json["TaskState"].as_str(), json["Id"].as_str()), (Some("Running"), Some("1")));
    }
}
