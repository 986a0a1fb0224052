//! The simulated BMC driving a real QEMU VM through QMP, checked over HTTP
//! the way a Redfish client sees it, and against QEMU's own view (a second
//! QMP socket, and SeaBIOS's debug console for the device it booted).
//!
//! No guest OS: SeaBIOS and the NIC's iPXE ROM are enough to show which
//! device boots first. The NIC sits on an unconnected QEMU hub, so nothing
//! is sent anywhere; every listener is on 127.0.0.1.
//!
//! Needs `qemu-system-x86_64` and `qemu-img`: skipped with a message when
//! they are missing, failed when `SLIPWAY_LAB_TESTS=1`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inventory::oob::Credentials;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use simulators::bmc::{router, BmcConfig, QmpBackend, QmpClient, SimState};

const MAC: &str = "52:54:00:aa:00:01";
const UUID: &str = "5f1a0000-0000-4000-8000-0000000000aa";
const RESET: &str = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset";
const UPDATE: &str = "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate";

/// False (after saying why) when QEMU is missing and lab tests are not
/// demanded.
fn qemu_present() -> bool {
    let ok = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if ok("qemu-system-x86_64") && ok("qemu-img") {
        return true;
    }
    if std::env::var("SLIPWAY_LAB_TESTS").as_deref() == Ok("1") {
        panic!("SLIPWAY_LAB_TESTS=1 but qemu-system-x86_64 or qemu-img is missing (apt-get install qemu-system-x86 qemu-utils)");
    }
    eprintln!("skipping: qemu-system-x86_64 or qemu-img is missing (set SLIPWAY_LAB_TESTS=1 to make this a failure)");
    false
}

/// A paused QEMU VM ("off"), killed by PID when dropped.
struct Vm {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start() -> Vm {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).display().to_string();
        let out =
            Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", &p("disk.qcow2"), "64M"]).output().unwrap();
        assert!(out.status.success(), "qemu-img: {}", String::from_utf8_lossy(&out.stderr));
        let log = std::fs::File::create(p("qemu.log")).unwrap();
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-machine", "q35", "-S", "-no-shutdown", "-nodefaults", "-display", "none"])
            .args(["-m", "64", "-smp", "1", "-uuid", UUID])
            .args(["-smbios", "type=1,manufacturer=Slipway Lab,product=QEMU Lab Node,serial=LAB-TEST"])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", p("bmc.qmp"))])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", p("check.qmp"))])
            .args(["-drive", &format!("file={},if=none,id=d0,format=qcow2", p("disk.qcow2"))])
            .args(["-device", "virtio-blk-pci,drive=d0,id=disk0,serial=DISK-TEST,bootindex=1"])
            .args(["-netdev", "hubport,id=n0,hubid=0"])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,id=nic0,mac={MAC},bootindex=2")])
            .args(["-chardev", &format!("file,id=dbg,path={}", p("seabios.log"))])
            .args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting qemu-system-x86_64");
        let vm = Vm { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(vm.path("bmc.qmp").exists() && vm.path("check.qmp").exists()) {
            assert!(Instant::now() < deadline, "QEMU made no QMP sockets in 20 s: {}", vm.qemu_log());
            std::thread::sleep(Duration::from_millis(50));
        }
        vm
    }

    fn qemu_log(&self) -> String {
        std::fs::read_to_string(self.path("qemu.log")).unwrap_or_default()
    }

    fn config(&self, listen: std::net::SocketAddr) -> BmcConfig {
        let config = json!({
            "name": "testvm", "listen": listen.to_string(), "qmp": self.path("bmc.qmp"),
            "username": "admin", "password": "pw",
            "smbios": { "serial": "LAB-TEST", "uuid": UUID, "manufacturer": "Slipway Lab", "product": "QEMU Lab Node" },
            "mac": MAC, "disk_serial": "DISK-TEST", "default_boot": "disk",
            "bios_version": "1.0", "bmc_version": "2.0",
        });
        serde_json::from_value(config).unwrap()
    }

    /// The SeaBIOS debug console: which devices it tried, in order.
    fn boot_attempts(&self) -> Vec<String> {
        let log = std::fs::read(self.path("seabios.log")).unwrap_or_default();
        String::from_utf8_lossy(&log).lines().filter(|l| l.starts_with("Booting from")).map(str::to_string).collect()
    }
}

struct Lab {
    vm: Vm,
    base: String,
    http: reqwest::Client,
    /// QEMU's own view, on the second QMP socket.
    check: QmpClient,
}

async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn lab() -> Lab {
    let vm = Vm::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = vm.config(listener.local_addr().unwrap());
    let backend = Arc::new(QmpBackend::new(&config));
    let creds = Credentials { username: config.username.clone(), password: config.password.clone() };
    let app = router(SimState::new(&config.name, &config.smbios.uuid, creds, false, backend));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let check = QmpClient::new(&vm.path("check.qmp"));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    Lab { base: format!("http://{}", config.listen), vm, http, check }
}

impl Lab {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).basic_auth("admin", Some("pw"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn reset(&self, reset_type: &str) {
        let (status, body) = self.call(Method::POST, RESET, Some(json!({ "ResetType": reset_type }))).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{reset_type}: {body}; QEMU: {}", self.vm.qemu_log());
    }

    async fn power(&self) -> String {
        self.get("/redfish/v1/Systems/1").await["PowerState"].as_str().unwrap().to_string()
    }

    async fn qemu_status(&mut self) -> String {
        self.check.execute("query-status", None).await.unwrap()["status"].as_str().unwrap().to_string()
    }

    async fn bootindex(&mut self, device: &str) -> i64 {
        let args = json!({ "path": device, "property": "bootindex" });
        self.check.execute("qom-get", Some(args)).await.unwrap().as_i64().unwrap()
    }

    /// Starts SimpleUpdate and waits (bounded) for its task to end.
    async fn update(&self, image_uri: &str, target: &str) -> Value {
        let body = json!({ "ImageURI": image_uri, "Targets": [format!("/redfish/v1/UpdateService/FirmwareInventory/{target}")] });
        let resp = self
            .http
            .post(format!("{}{UPDATE}", self.base))
            .basic_auth("admin", Some("pw"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let monitor = resp.headers()["location"].to_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, task) = self.call(Method::GET, &monitor, None).await;
            let running = status == StatusCode::ACCEPTED;
            assert!(running || status == StatusCode::OK, "{monitor}: {status} {task}");
            if !running {
                return task;
            }
            assert!(Instant::now() < deadline, "task {monitor} still running after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn firmware_server() -> String {
    let app = axum::Router::new()
        .route("/bios-1.1.fw", axum::routing::get(|| async { "slipway-lab-firmware BIOS 1.1\nlab payload\n" }))
        .route("/bmc-2.1.fw", axum::routing::get(|| async { "slipway-lab-firmware BMC 2.1\n" }))
        .route("/vendor.bin", axum::routing::get(|| async { vec![0x4du8, 0x5a, 0x90, 0, 3, 0xff] }));
    format!("http://{}", serve(app).await)
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {} s", timeout.as_secs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_powers_a_real_qemu_vm_and_sets_its_boot_device() {
    if !qemu_present() {
        return;
    }
    let mut lab = lab().await;
    assert_eq!(lab.power().await, "Off");
    assert_eq!(lab.qemu_status().await, "prelaunch");

    // What QMP says about the machine shows in Redfish.
    let system = lab.get("/redfish/v1/Systems/1").await;
    assert_eq!(system["UUID"], UUID);
    assert_eq!(system["SerialNumber"], "LAB-TEST");
    assert_eq!(system["MemorySummary"]["TotalSystemMemoryGiB"], 0.0625);
    assert_eq!(system["ProcessorSummary"]["LogicalProcessorCount"], 1);
    assert_eq!(lab.get("/redfish/v1/Systems/1/EthernetInterfaces/1").await["MACAddress"], MAC);
    let drive = lab.get("/redfish/v1/Systems/1/Storage/1/Drives/1").await;
    assert_eq!((drive["CapacityBytes"].as_u64(), drive["SerialNumber"].as_str()), (Some(64 << 20), Some("DISK-TEST")));

    // PXE once: QEMU's NIC goes first, SeaBIOS boots its ROM, then the
    // default order (disk first) is back.
    let patch = json!({ "Boot": { "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once" } });
    let (status, system) = lab.call(Method::PATCH, "/redfish/v1/Systems/1", Some(patch)).await;
    assert_eq!((status, system["Boot"]["BootSourceOverrideTarget"].as_str()), (StatusCode::OK, Some("Pxe")));
    assert_eq!((lab.bootindex("nic0").await, lab.bootindex("disk0").await), (1, 2));
    lab.reset("On").await;
    assert_eq!(lab.qemu_status().await, "running");
    assert_eq!(lab.power().await, "On");
    let vm = &lab.vm;
    wait_for("SeaBIOS boots something", Duration::from_secs(60), || !vm.boot_attempts().is_empty()).await;
    assert_eq!(vm.boot_attempts()[0], "Booting from ROM...", "the NIC's ROM first: {:?}", vm.boot_attempts());
    assert_eq!((lab.bootindex("nic0").await, lab.bootindex("disk0").await), (2, 1), "Once reverts after the boot");
    assert_eq!(lab.get("/redfish/v1/Systems/1").await["Boot"]["BootSourceOverrideEnabled"], "Disabled");

    lab.reset("ForceOff").await;
    assert_eq!(lab.power().await, "Off");
    assert_eq!(lab.qemu_status().await, "paused");

    // Firmware: the BMC's at once, the BIOS's from the next boot.
    let images = firmware_server().await;
    let task = lab.update(&format!("{images}/bmc-2.1.fw"), "BMC").await;
    assert_eq!(task["TaskState"], "Completed", "{task}");
    assert_eq!(lab.get("/redfish/v1/UpdateService/FirmwareInventory/BMC").await["Version"], "2.1");
    assert_eq!(lab.get("/redfish/v1/Managers/1").await["FirmwareVersion"], "2.1");
    let task = lab.update(&format!("{images}/bios-1.1.fw"), "BIOS").await;
    assert_eq!(task["TaskState"], "Completed", "{task}");
    assert_eq!(lab.get("/redfish/v1/UpdateService/FirmwareInventory/BIOS").await["Version"], "1.0");
    assert_eq!(lab.get("/redfish/v1/Systems/1").await["BiosVersion"], "1.0");
    lab.reset("On").await;
    assert_eq!(lab.qemu_status().await, "running", "On after ForceOff");
    assert_eq!(lab.get("/redfish/v1/Systems/1").await["BiosVersion"], "1.1");
    assert_eq!(lab.get("/redfish/v1/UpdateService/FirmwareInventory/BIOS").await["Version"], "1.1");

    // A reset of a running VM, and a power cycle, leave it running.
    lab.reset("ForceRestart").await;
    assert_eq!(lab.qemu_status().await, "running");
    lab.reset("PowerCycle").await;
    assert_eq!(lab.qemu_status().await, "running");
    // No guest OS answers ACPI: the request is passed on, the VM runs on.
    lab.reset("GracefulShutdown").await;
    assert_eq!(lab.power().await, "On");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_firmware_fails_its_task_and_no_credentials_get_401() {
    if !qemu_present() {
        return;
    }
    let mut lab = lab().await;
    for path in ["/redfish/v1/Systems/1", "/redfish/v1/UpdateService", "/redfish/v1/Chassis/1/PowerSubsystem"] {
        let resp = lab.http.get(format!("{}{path}", lab.base)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let resp = lab.http.post(format!("{}{RESET}", lab.base)).json(&json!({ "ResetType": "On" })).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(lab.qemu_status().await, "prelaunch", "an unauthenticated reset must not reach QEMU");

    let images = firmware_server().await;
    let task = lab.update(&format!("{images}/vendor.bin"), "BIOS").await;
    assert_eq!(task["TaskState"], "Exception", "{task}");
    assert!(task["Messages"][0]["Message"].as_str().unwrap().contains("not a lab firmware image"), "{task}");
    let task = lab.update(&format!("{images}/missing.fw"), "BIOS").await;
    assert_eq!(task["TaskState"], "Exception", "{task}");
    let task = lab.update(&format!("{images}/bmc-2.1.fw"), "BIOS").await;
    assert_eq!(task["TaskState"], "Exception", "an image for the BMC aimed at the BIOS: {task}");
    assert_eq!(lab.get("/redfish/v1/UpdateService/FirmwareInventory/BIOS").await["Version"], "1.0");
    assert_eq!(lab.get("/redfish/v1/UpdateService/FirmwareInventory/BMC").await["Version"], "2.0");

    // A session instead of basic auth, and a reset of a stopped VM powers it on.
    let resp = lab
        .http
        .post(format!("{}/redfish/v1/SessionService/Sessions", lab.base))
        .json(&json!({ "UserName": "admin", "Password": "pw" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token = resp.headers()["x-auth-token"].to_str().unwrap().to_string();
    let resp = lab
        .http
        .post(format!("{}{RESET}", lab.base))
        .header("X-Auth-Token", token)
        .json(&json!({ "ResetType": "ForceRestart" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(lab.qemu_status().await, "running");
}
