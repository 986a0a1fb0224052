//! The fleet operator's client of the real API: whichever appliance
//! answers (a request that cannot connect goes to the next one, as a
//! load balancer in front of several would send it), requests a few at a
//! time, waits on machine states, and the latency and event-stream lag
//! samplers that run meanwhile.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Requests an operator script keeps in flight while enrolling, deploying
/// or releasing.
const IN_FLIGHT: usize = 8;

pub struct Driver {
    http: reqwest::Client,
    /// Every appliance's operator face.
    apis: Vec<String>,
    /// The one asked first.
    current: std::sync::atomic::AtomicUsize,
    token: String,
    started: Instant,
}

/// One BMC to enrol.
pub struct Enrolment {
    pub url: String,
    pub username: String,
    pub password: String,
    pub rack: String,
}

/// API latencies seen while the fleet ran, by what was asked.
#[derive(Default)]
pub struct Latencies {
    pub list: Vec<f64>,
    pub show: Vec<f64>,
    pub events: Vec<f64>,
    /// From an event's commit time to its arrival on the live stream.
    pub sse_lag: Vec<f64>,
    pub errors: u64,
}

impl Driver {
    pub fn new(apis: Vec<String>, token: &str) -> anyhow::Result<Driver> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        let current = Default::default();
        Ok(Driver { http, apis, current, token: token.to_string(), started: Instant::now() })
    }

    pub fn api(&self, index: usize) -> &str {
        &self.apis[index]
    }

    /// Sends `build(base)` to the current appliance, and on a connection
    /// failure to the next, each once.
    async fn send(&self, build: impl Fn(&str) -> reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
        use std::sync::atomic::Ordering;
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..self.apis.len() {
            let at = (first + step) % self.apis.len();
            match build(&self.apis[at]).bearer_auth(&self.token).send().await {
                Err(err) if err.is_connect() => {
                    last = Some(err);
                    self.current.store((at + 1) % self.apis.len(), Ordering::Relaxed);
                }
                other => return other,
            }
        }
        Err(last.expect("at least one appliance"))
    }

    pub fn progress(&self, what: &str) {
        eprintln!("fleet: [{:7.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.send(|base| self.http.get(format!("{base}{path}"))).await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("GET {path}: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self.send(|base| self.http.post(format!("{base}{path}")).json(body)).await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("POST {path}: HTTP {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Waits until every appliance answers /healthz.
    pub async fn wait_healthy(&self) -> anyhow::Result<()> {
        for api in &self.apis {
            let mut tries = 0;
            while !self.http.get(format!("{api}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
                tries += 1;
                if tries > 300 {
                    bail!("{api} did not answer /healthz within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Which appliance (index into the APIs) holds the leader lease, by
    /// each one's `slipway_leader` gauge.
    pub async fn leader(&self) -> Option<usize> {
        for (index, api) in self.apis.iter().enumerate() {
            let Ok(resp) = self.http.get(format!("{api}/metrics")).bearer_auth(&self.token).send().await else {
                continue;
            };
            let text = resp.text().await.unwrap_or_default();
            if text.lines().any(|l| l.trim() == "slipway_leader 1") {
                return Some(index);
            }
        }
        None
    }

    /// Registers `name` (version `version`) from `content` (raw) on the
    /// first appliance and waits until it is available.
    pub async fn upload_image(&self, name: &str, version: &str, content: Vec<u8>) -> anyhow::Result<()> {
        self.post("/api/v1/images", &json!({ "name": name, "os": "fleet", "version": version })).await?;
        let resp = self
            .http
            .put(format!("{}/api/v1/images/{name}/content", self.apis[0]))
            .bearer_auth(&self.token)
            .header("Content-Type", "application/octet-stream")
            .body(content)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("uploading {name}: HTTP {}: {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        for _ in 0..600 {
            let image = self.get(&format!("/api/v1/images/{name}")).await?;
            match image["state"].as_str() {
                Some("available") => return Ok(()),
                Some("failed") => bail!("image {name} failed: {}", image["error"]),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        bail!("image {name} not available within 120 s")
    }

    /// Enrols every BMC (commissioning on: Slipway powers each machine on,
    /// PXE once), a few requests at a time.
    pub async fn enrol(self: &Arc<Self>, bmcs: Vec<Enrolment>) -> anyhow::Result<()> {
        let bodies = bmcs
            .into_iter()
            .map(|b| {
                let body = json!({
                    "address": b.url, "protocol": "redfish", "username": b.username, "password": b.password,
                    "rack": b.rack, "commission": true,
                });
                ("/api/v1/bmcs".to_string(), body)
            })
            .collect();
        self.post_all(bodies).await
    }

    /// POSTs each `(path, body)`, [`IN_FLIGHT`] at a time; fails with the
    /// first error after all have run.
    pub async fn post_all(self: &Arc<Self>, requests: Vec<(String, Value)>) -> anyhow::Result<()> {
        let limit = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        for (path, body) in requests {
            let permit = limit.clone().acquire_owned().await?;
            let me = self.clone();
            tasks.spawn(async move {
                let result = me.post(&path, &body).await;
                drop(permit);
                result
            });
        }
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            if let Err(err) = done? {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every machine, as pages of 1,000.
    pub async fn machines(&self, filter: &str) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.get(&format!("/api/v1/machines?limit=1000{filter}{after}")).await?;
            all.extend(page["machines"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => return Ok(all),
            }
        }
    }

    /// The ids of every machine in `state`.
    pub async fn ids_in(&self, state: &str) -> anyhow::Result<Vec<String>> {
        let machines = self.machines(&format!("&state={state}")).await?;
        Ok(machines.iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect())
    }

    /// Waits until `count` machines are in `state`; fails early if any is
    /// `failed`. Returns the seconds it took.
    pub async fn until_all(&self, state: &str, count: usize, timeout: Duration) -> anyhow::Result<f64> {
        let began = Instant::now();
        let mut last_said = Instant::now();
        loop {
            let there = self.machines(&format!("&state={state}")).await?.len();
            let failed = self.machines("&state=failed").await?;
            if let Some(m) = failed.first() {
                bail!("{} machines failed; first: {} ({})", failed.len(), m["id"], m["last_error"]);
            }
            if there >= count {
                self.progress(&format!("{there}/{count} {state}"));
                return Ok(began.elapsed().as_secs_f64());
            }
            if began.elapsed() > timeout {
                bail!("only {there}/{count} machines {state} after {} s", timeout.as_secs());
            }
            if last_said.elapsed() > Duration::from_secs(10) {
                self.progress(&format!("{there}/{count} {state}"));
                last_said = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits until the node agent of each of `ids` has reported (its
    /// `GET .../node` answers 200), asking a few at a time.
    pub async fn until_reported(self: &Arc<Self>, ids: Vec<String>, timeout: Duration) -> anyhow::Result<()> {
        let began = Instant::now();
        let mut pending = ids;
        let total = pending.len();
        while !pending.is_empty() {
            if began.elapsed() > timeout {
                bail!("{} of {total} nodes never reported within {} s", pending.len(), timeout.as_secs());
            }
            let limit = Arc::new(Semaphore::new(IN_FLIGHT));
            let mut tasks = tokio::task::JoinSet::new();
            for id in pending.drain(..) {
                let permit = limit.clone().acquire_owned().await?;
                let me = self.clone();
                tasks.spawn(async move {
                    let reported = me.get(&format!("/api/v1/machines/{id}/node")).await.is_ok();
                    drop(permit);
                    (!reported).then_some(id)
                });
            }
            while let Some(done) = tasks.join_next().await {
                pending.extend(done?);
            }
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        self.progress(&format!("{total}/{total} node agents reported"));
        Ok(())
    }

    /// Samples a list, a show and an event page once a second until
    /// `stop` is set; the latencies go to `into`.
    pub async fn sample_latency(
        self: Arc<Self>,
        into: Arc<Mutex<Latencies>>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let mut ids: Vec<String> = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let timed = |started: Instant, ok: bool, pick: fn(&mut Latencies) -> &mut Vec<f64>| {
                let mut l = into.lock().expect("latency lock");
                if ok {
                    pick(&mut l).push(started.elapsed().as_secs_f64() * 1000.0);
                } else {
                    l.errors += 1;
                }
            };
            let t = Instant::now();
            let page = self.get("/api/v1/machines?limit=100").await;
            if let Ok(page) = &page {
                ids = page["machines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect();
            }
            timed(t, page.is_ok(), |l| &mut l.list);
            if !ids.is_empty() {
                let id = ids[rand::random::<usize>() % ids.len()].clone();
                let t = Instant::now();
                let shown = self.get(&format!("/api/v1/machines/{id}")).await;
                timed(t, shown.is_ok(), |l| &mut l.show);
            }
            let t = Instant::now();
            let events = self.get("/api/v1/events?limit=100").await;
            timed(t, events.is_ok(), |l| &mut l.events);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Driver {
    /// Follows the live event stream until `stop` is set, timing each
    /// event from its commit (`at_ms`) to its arrival; reconnects (to the
    /// next appliance) when the stream breaks.
    pub async fn sample_sse_lag(
        self: Arc<Self>,
        into: Arc<Mutex<Latencies>>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let stream = self
                .send(|base| {
                    self.http.get(format!("{base}/api/v1/events/stream")).timeout(Duration::from_secs(24 * 3600))
                })
                .await;
            let Ok(mut resp) = stream else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let mut pending = String::new();
            loop {
                let chunk = tokio::select! {
                    chunk = resp.chunk() => chunk,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) { return } else { continue }
                    }
                };
                let Ok(Some(chunk)) = chunk else { break };
                pending.push_str(&String::from_utf8_lossy(&chunk));
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let Some(data) = line.trim_end().strip_prefix("data:") else { continue };
                    let Ok(event) = serde_json::from_str::<Value>(data.trim()) else { continue };
                    if let Some(at_ms) = event["at_ms"].as_i64() {
                        into.lock().expect("latency lock").sse_lag.push((now_ms - at_ms).max(0) as f64);
                    }
                }
            }
        }
    }
}

/// The `q` quantile (0..=1) of `values`, in their unit; 0 with none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_pick_from_the_sorted_values() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(super::quantile(&v, 0.5), 3.0);
        assert_eq!(super::quantile(&v, 0.99), 5.0);
        assert_eq!(super::quantile(&[], 0.5), 0.0);
    }
}
