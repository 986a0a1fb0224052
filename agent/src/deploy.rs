//! Writing an image to a disk: fetch over HTTP (resuming with Range after a
//! broken connection), decompress zstd on the fly, hash, write; then flush,
//! drop the page cache and read the disk back to check the SHA-256 of what
//! is really on it. Nothing is reported `written` unless that matches. A
//! stream that is not the image (tampered with on the way, or cut short)
//! is fetched again from the start a few times before the deploy fails: the
//! network between here and the appliance may be hostile only for a while.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inventory::Disk;
use sha2::{Digest, Sha256};
use wire::{DeployPhase, DeploySpec, DiskHint};

const BUF: usize = 1 << 20;
/// Reconnections allowed for one image before the deploy fails.
const MAX_RESUMES: u32 = 20;
/// Downloads from the first byte before a stream that is not the image
/// fails the deploy.
const DOWNLOADS: u32 = 3;
/// The pause before downloading again (times the attempt).
#[cfg(not(test))]
const DOWNLOAD_AGAIN_AFTER: Duration = Duration::from_secs(5);
#[cfg(test)]
const DOWNLOAD_AGAIN_AFTER: Duration = Duration::from_millis(10);
/// How often progress is reported while writing.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Where the image goes and how much room there is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    pub capacity: u64,
}

/// The disk matching every field of `hint`; with no hint, the largest disk.
pub fn choose_disk(disks: &[Disk], hint: &DiskHint) -> Result<Target, String> {
    let matches = |d: &&Disk| {
        hint.name.as_ref().is_none_or(|n| *n == d.name)
            && hint.serial.as_ref().is_none_or(|s| d.serial.as_ref() == Some(s))
            && hint.min_size_bytes.is_none_or(|min| d.size_bytes >= min)
    };
    let disk = disks.iter().filter(matches).max_by_key(|d| d.size_bytes).ok_or_else(|| {
        let seen: Vec<String> = disks.iter().map(|d| format!("{} ({} bytes)", d.name, d.size_bytes)).collect();
        format!("no disk matches {hint:?}; disks: {}", if seen.is_empty() { "none".into() } else { seen.join(", ") })
    })?;
    Ok(Target { path: Path::new("/dev").join(&disk.name), capacity: disk.size_bytes })
}

/// Every disk, as wipe targets.
pub fn all_disks(disks: &[Disk]) -> Vec<Target> {
    disks.iter().map(|d| Target { path: Path::new("/dev").join(&d.name), capacity: d.size_bytes }).collect()
}

/// Wipes `targets`: `full` overwrites every byte with zeros; otherwise the
/// first and last MiB, where partition tables (MBR, both GPT headers) and
/// most signatures (filesystems, LVM, RAID) live. Returns the paths wiped.
pub fn wipe(targets: &[Target], full: bool) -> Result<Vec<String>, String> {
    let zeros = vec![0u8; BUF];
    let mut wiped = Vec::new();
    for t in targets {
        let fail = |what: &str, e: io::Error| format!("wiping {}: {what}: {e}", t.path.display());
        let mut disk = OpenOptions::new().write(true).open(&t.path).map_err(|e| fail("open", e))?;
        let spans: Vec<(u64, u64)> = if full {
            vec![(0, t.capacity)]
        } else {
            let head = t.capacity.min(BUF as u64);
            let tail = t.capacity.saturating_sub(BUF as u64).max(head);
            vec![(0, head), (tail, t.capacity)]
        };
        for (start, end) in spans {
            disk.seek(SeekFrom::Start(start)).map_err(|e| fail("seek", e))?;
            let mut at = start;
            while at < end {
                let n = (end - at).min(BUF as u64) as usize;
                disk.write_all(&zeros[..n]).map_err(|e| fail("write", e))?;
                at += n as u64;
            }
        }
        disk.sync_all().map_err(|e| fail("flush", e))?;
        wiped.push(t.path.display().to_string());
    }
    Ok(wiped)
}

/// Writes the image at `url` to `target` and verifies it; `report` hears
/// the phase and the raw bytes done (at most every couple of seconds).
pub fn write_image(
    http: &ureq::Agent,
    url: &str,
    spec: &DeploySpec,
    target: &Target,
    report: &mut dyn FnMut(DeployPhase, u64),
) -> Result<(), String> {
    if spec.raw_bytes > target.capacity {
        return Err(format!(
            "disk {} ({} bytes) is smaller than the image ({} bytes)",
            target.path.display(),
            target.capacity,
            spec.raw_bytes
        ));
    }
    let mut disk = OpenOptions::new()
        .write(true)
        .open(&target.path)
        .map_err(|e| format!("opening {}: {e}", target.path.display()))?;
    let mut download = 1;
    let written = loop {
        let problem = match download_to(http, url, &mut disk, spec, report) {
            Ok(written) if written.sha256 == spec.sha256 => break written,
            Ok(written) => {
                format!("checksum mismatch in the image stream: got {}, want {}", written.sha256, spec.sha256)
            }
            Err(problem) => problem,
        };
        if download == DOWNLOADS {
            return Err(format!("{problem} (after {DOWNLOADS} downloads)"));
        }
        crate::log(&format!("download {download} was not the image ({problem}); downloading it again"));
        std::thread::sleep(DOWNLOAD_AGAIN_AFTER * download);
        download += 1;
    };
    disk.sync_all().map_err(|e| format!("flushing {}: {e}", target.path.display()))?;
    drop(disk);
    report(DeployPhase::Verifying, written.bytes);
    // Read back what the disk holds, not what the page cache remembers.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let on_disk = hash_prefix(&target.path, spec.raw_bytes)?;
    if on_disk != spec.sha256 {
        return Err(format!(
            "checksum mismatch on disk {}: got {on_disk}, want {}",
            target.path.display(),
            spec.sha256
        ));
    }
    Ok(())
}

struct Written {
    bytes: u64,
    sha256: String,
}

/// One download of the image from its first byte onto the start of `disk`.
fn download_to(
    http: &ureq::Agent,
    url: &str,
    disk: &mut File,
    spec: &DeploySpec,
    report: &mut dyn FnMut(DeployPhase, u64),
) -> Result<Written, String> {
    let source = ResumingBody::open(http.clone(), url.to_string())?;
    disk.seek(SeekFrom::Start(0)).map_err(|e| format!("seeking to the start of the disk: {e}"))?;
    decompress_to(source, disk, spec, &mut |n| report(DeployPhase::Writing, n))
}

/// Decompresses on one thread while hashing and writing on this one, so a
/// two-core node does both at once (as `curl | zstd -d | dd` does with
/// three processes).
fn decompress_to(
    source: impl Read + Send,
    out: &mut impl Write,
    spec: &DeploySpec,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, String> {
    let mut decoder = zstd::Decoder::new(source).map_err(|e| format!("starting zstd: {e}"))?;
    let limit = spec.raw_bytes;
    std::thread::scope(|scope| {
        let (chunks, received) = pipeline(scope, move |buf: &mut Vec<u8>| fill(&mut decoder, buf));
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        let mut last_report = Instant::now();
        for chunk in received {
            let chunk = chunk.map_err(|e| format!("reading the image after {bytes} bytes: {e}"))?;
            bytes += chunk.len() as u64;
            if bytes > limit {
                return Err(format!("the image is longer than the {limit} bytes announced"));
            }
            hash.update(&chunk);
            out.write_all(&chunk).map_err(|e| format!("writing at byte {}: {e}", bytes - chunk.len() as u64))?;
            let _ = chunks.send(chunk);
            if last_report.elapsed() >= REPORT_EVERY {
                progress(bytes);
                last_report = Instant::now();
            }
        }
        if bytes != limit {
            return Err(format!("the image ended after {bytes} of {limit} bytes"));
        }
        progress(bytes);
        Ok(Written { bytes, sha256: hex::encode(hash.finalize()) })
    })
}

/// Reads into `buf` until it is full or the source ends; an empty buffer
/// means the end.
fn fill(source: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(BUF, 0);
    let mut filled = 0;
    while filled < BUF {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(())
}

/// Runs `produce` on its own thread, filling buffers that come back through
/// the returned sender (so a few buffers are reused for the whole image);
/// the receiver yields them full, and stops after an empty one or an error.
fn pipeline<'scope, 'env, F>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    mut produce: F,
) -> (std::sync::mpsc::Sender<Vec<u8>>, impl Iterator<Item = io::Result<Vec<u8>>> + 'scope)
where
    F: FnMut(&mut Vec<u8>) -> io::Result<()> + Send + 'scope,
{
    const IN_FLIGHT: usize = 4;
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let _ = empty_tx.send(Vec::with_capacity(BUF));
    }
    scope.spawn(move || {
        while let Ok(mut buf) = empty_rx.recv() {
            let result = produce(&mut buf);
            let end = result.is_err() || buf.is_empty();
            if full_tx.send(result.map(|()| buf)).is_err() || end {
                return;
            }
        }
    });
    (empty_tx, full_rx.into_iter().take_while(|r| r.as_ref().map_or(true, |b| !b.is_empty())))
}

fn hash_prefix(path: &Path, len: u64) -> Result<String, String> {
    let file = File::open(path).map_err(|e| format!("reopening {}: {e}", path.display()))?;
    let mut reader = file.take(len);
    std::thread::scope(|scope| {
        let (buffers, received) = pipeline(scope, move |buf: &mut Vec<u8>| fill(&mut reader, buf));
        let mut hash = Sha256::new();
        let mut read = 0u64;
        for chunk in received {
            let chunk = chunk.map_err(|e| format!("reading back {}: {e}", path.display()))?;
            hash.update(&chunk);
            read += chunk.len() as u64;
            let _ = buffers.send(chunk);
        }
        if read != len {
            return Err(format!("{} holds only {read} of {len} bytes", path.display()));
        }
        Ok(hex::encode(hash.finalize()))
    })
}

/// An HTTP body that survives broken connections: on an error or an early
/// end it asks again from the next byte (`Range: bytes=N-`), so the
/// decompressor downstream sees one unbroken stream.
struct ResumingBody {
    http: ureq::Agent,
    url: String,
    body: Box<dyn Read + Send + Sync>,
    /// Bytes delivered so far.
    offset: u64,
    length: u64,
    resumes: u32,
}

impl ResumingBody {
    fn open(http: ureq::Agent, url: String) -> Result<ResumingBody, String> {
        let resp = http.get(&url).call().map_err(|e| format!("fetching {url}: {e}"))?;
        let length = resp
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{url} sent no Content-Length"))?;
        Ok(ResumingBody { http, url, body: resp.into_reader(), offset: 0, length, resumes: 0 })
    }

    fn resume(&mut self, why: &str) -> io::Result<()> {
        loop {
            self.resumes += 1;
            if self.resumes > MAX_RESUMES {
                return Err(io::Error::other(format!("{why}; gave up after {MAX_RESUMES} reconnections")));
            }
            eprintln!("slipway-agent: image stream broke at byte {} ({why}); resuming", self.offset);
            std::thread::sleep(Duration::from_millis(500 * u64::from(self.resumes.min(10))));
            let range = format!("bytes={}-", self.offset);
            match self.http.get(&self.url).set("Range", &range).call() {
                Ok(resp) if resp.status() == 206 => {
                    self.body = resp.into_reader();
                    return Ok(());
                }
                // A 200 would restart from byte 0 under a decoder mid-frame.
                Ok(resp) => return Err(io::Error::other(format!("resume got HTTP {}, not 206", resp.status()))),
                Err(err) => eprintln!("slipway-agent: resuming failed: {err}"),
            }
        }
    }
}

impl Read for ResumingBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.offset >= self.length || buf.is_empty() {
                return Ok(0);
            }
            match self.body.read(buf) {
                Ok(0) => self.resume("connection closed early")?,
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.resume(&e.to_string())?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn disk(name: &str, size: u64, serial: &str) -> Disk {
        Disk { name: name.into(), size_bytes: size, model: None, serial: Some(serial.into()), rotational: None }
    }

    #[test]
    fn disk_choice_follows_the_hint() {
        let disks = [disk("vda", 8 << 30, "a"), disk("vdb", 16 << 30, "b")];
        assert_eq!(choose_disk(&disks, &DiskHint::default()).unwrap().path, Path::new("/dev/vdb"));
        let by_serial = DiskHint { serial: Some("a".into()), ..Default::default() };
        assert_eq!(choose_disk(&disks, &by_serial).unwrap(), Target { path: "/dev/vda".into(), capacity: 8 << 30 });
        let too_big = DiskHint { min_size_bytes: Some(32 << 30), ..Default::default() };
        assert!(choose_disk(&disks, &too_big).unwrap_err().contains("vda (8589934592 bytes)"));
    }

    /// An HTTP server for one file that honours `Range: bytes=N-`; on its
    /// first response it drops the connection after `drop_after` bytes, and
    /// its first `tampered` responses have one byte in the middle changed.
    fn serve(content: Vec<u8>, drop_after: Option<usize>, tampered: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/image.raw.zst", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut start = 0usize;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        start = v.trim().trim_end_matches('-').parse().unwrap();
                    }
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let mut body = content[start..].to_vec();
                if n < tampered {
                    let middle = body.len() / 2;
                    body[middle] ^= 0x55;
                }
                let head = if start == 0 {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                } else {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                        body.len(),
                        content.len() - 1,
                        content.len()
                    )
                };
                stream.write_all(head.as_bytes()).unwrap();
                let cut = if n == 0 { drop_after.unwrap_or(body.len()) } else { body.len() };
                let _ = stream.write_all(&body[..cut]);
            }
        });
        (url, requests)
    }

    fn image() -> (Vec<u8>, Vec<u8>, DeploySpec) {
        let raw: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        let compressed = zstd::encode_all(&raw[..], 3).unwrap();
        let spec = DeploySpec {
            image: "test".into(),
            url_path: String::new(),
            sha256: hex::encode(Sha256::digest(&raw)),
            raw_bytes: raw.len() as u64,
            disk: DiskHint::default(),
            hostname: "node1".into(),
            ..Default::default()
        };
        (raw, compressed, spec)
    }

    fn target(dir: &Path, capacity: u64) -> Target {
        let path = dir.join("disk");
        File::create(&path).unwrap().set_len(capacity).unwrap();
        Target { path, capacity }
    }

    #[test]
    fn a_broken_connection_is_resumed_and_the_disk_verified() {
        let (raw, compressed, spec) = image();
        let (url, requests) = serve(compressed.clone(), Some(compressed.len() / 3), 0);
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), 8 << 20);
        let mut phases = Vec::new();
        write_image(&ureq::agent(), &url, &spec, &t, &mut |p, n| phases.push((p, n))).unwrap();
        assert_eq!(requests.load(Ordering::SeqCst), 2, "one drop, one resume from where it stopped");
        assert_eq!(std::fs::read(&t.path).unwrap()[..raw.len()], raw[..]);
        assert_eq!(phases.last(), Some(&(DeployPhase::Verifying, raw.len() as u64)));
    }

    /// A man in the middle changes the image on the way for a while: the
    /// agent downloads it again from the start, and the disk ends up right.
    #[test]
    fn a_tampered_stream_is_downloaded_again_from_the_start() {
        let (raw, compressed, spec) = image();
        let (url, requests) = serve(compressed.clone(), None, 2);
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), 8 << 20);
        write_image(&ureq::agent(), &url, &spec, &t, &mut |_, _| {}).unwrap();
        assert_eq!(requests.load(Ordering::SeqCst), 3, "two tampered downloads, then the image");
        assert_eq!(std::fs::read(&t.path).unwrap()[..raw.len()], raw[..]);

        // Tampered with every time: the deploy fails, saying why.
        let (url, requests) = serve(compressed, None, usize::MAX);
        let err = write_image(&ureq::agent(), &url, &spec, &t, &mut |_, _| {}).unwrap_err();
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        assert!(err.contains("after 3 downloads"), "{err}");
    }

    #[test]
    fn quick_wipe_clears_both_ends_and_full_wipe_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let size = 4u64 << 20;
        std::fs::write(&path, vec![0xffu8; size as usize]).unwrap();
        let target = Target { path: path.clone(), capacity: size };
        assert_eq!(wipe(std::slice::from_ref(&target), false).unwrap(), [path.display().to_string()]);
        let after = std::fs::read(&path).unwrap();
        let mib = 1 << 20;
        assert!(after[..mib].iter().all(|b| *b == 0), "partition table and signatures at the start");
        assert!(after[after.len() - mib..].iter().all(|b| *b == 0), "the backup GPT header at the end");
        assert!(after[mib..after.len() - mib].iter().all(|b| *b == 0xff), "a quick wipe leaves the middle");
        wipe(&[target], true).unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn a_wrong_checksum_or_small_disk_fails_cleanly() {
        let (_, compressed, spec) = image();
        let (url, _) = serve(compressed, None, 0);
        let dir = tempfile::tempdir().unwrap();
        let bad = DeploySpec { sha256: "0".repeat(64), ..spec.clone() };
        let err = write_image(&ureq::agent(), &url, &bad, &target(dir.path(), 8 << 20), &mut |_, _| {}).unwrap_err();
        assert!(err.contains("checksum mismatch in the image stream") && err.contains("after 3 downloads"), "{err}");
        let err = write_image(&ureq::agent(), &url, &spec, &target(dir.path(), 1 << 20), &mut |_, _| {}).unwrap_err();
        assert!(err.contains("smaller than the image"), "{err}");
        let short = DeploySpec { raw_bytes: spec.raw_bytes - 1, ..spec };
        let err = write_image(&ureq::agent(), &url, &short, &target(dir.path(), 8 << 20), &mut |_, _| {}).unwrap_err();
        assert!(err.contains("longer than"), "{err}");
    }
}
