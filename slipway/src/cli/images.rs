//! `slipway images`: the catalog, and uploads that stream a file to the
//! API (never read whole into memory) with a progress line on stderr.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::client::{seg, Client};
use super::{print, views, ApiArgs, CliError};

#[derive(Subcommand, Debug, Clone)]
pub enum ImagesCmd {
    /// All of them (the default).
    List,
    Show {
        name: String,
    },
    /// Register NAME and stream FILE into it (raw, or raw+zstd by its magic).
    Upload {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        meta: MetaArgs,
    },
    /// Register NAME and import it from a file in the appliance's import directory (in the background).
    Import {
        name: String,
        /// A path in the appliance's `import_dir` (relative to it, or absolute inside it).
        #[arg(long, value_name = "PATH")]
        source_path: PathBuf,
        #[arg(long, value_enum)]
        format: Format,
        #[command(flatten)]
        meta: MetaArgs,
        /// Wait until the import finished.
        #[arg(long)]
        wait: bool,
    },
    Delete {
        name: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct MetaArgs {
    #[arg(long, default_value = "linux")]
    os: String,
    #[arg(long, value_name = "VERSION", default_value = "unknown")]
    os_version: String,
    #[arg(long, default_value = "x86_64", value_parser = ["x86_64", "arm64"])]
    arch: String,
    /// SHA-256 of the raw content; the import fails when it differs.
    #[arg(long)]
    sha256: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Raw,
    #[value(name = "raw+zstd")]
    RawZstd,
    Qcow2,
}

pub fn run(api: &ApiArgs, client: Client, cmd: ImagesCmd) -> Result<(), CliError> {
    match cmd {
        ImagesCmd::List => print(api, &client.get("/api/v1/images")?, views::images),
        ImagesCmd::Show { name } => print(api, &client.get(&format!("/api/v1/images/{}", seg(&name)))?, views::image),
        ImagesCmd::Delete { name } => {
            client.delete(&format!("/api/v1/images/{}", seg(&name)))?;
            eprintln!("image {name} deleted");
        }
        ImagesCmd::Upload { name, file, meta } => print(api, &upload(&client, &name, &file, &meta)?, views::image),
        ImagesCmd::Import { name, source_path, format, meta, wait } => {
            let mut body = register_body(&name, &meta);
            body["source_path"] = json!(source_path);
            body["format"] = json!(match format {
                Format::Raw => "raw",
                Format::RawZstd => "raw+zstd",
                Format::Qcow2 => "qcow2",
            });
            let mut image = client.post("/api/v1/images", &body)?;
            while wait && views::text(&image, "/state") == "importing" {
                std::thread::sleep(Duration::from_secs(1));
                image = client.get(&format!("/api/v1/images/{}", seg(&name)))?;
            }
            print(api, &image, views::image);
        }
    }
    Ok(())
}

fn register_body(name: &str, meta: &MetaArgs) -> Value {
    let mut body = json!({ "name": name, "os": meta.os, "version": meta.os_version, "arch": meta.arch });
    if let Some(sha) = &meta.sha256 {
        body["sha256"] = json!(sha);
    }
    body
}

/// The Content-Type for a file starting with `magic`.
fn content_type(magic: &[u8]) -> Result<&'static str, CliError> {
    match magic {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok("application/zstd"),
        [b'Q', b'F', b'I', 0xfb, ..] => Err(CliError::Usage(
            "qcow2 cannot be uploaded: copy it to the appliance and use `slipway images import --format qcow2`, \
             or convert it (qemu-img convert -O raw)"
                .into(),
        )),
        _ => Ok("application/octet-stream"),
    }
}

/// Registers the image (or reuses a registration still waiting for its
/// content, after a failed upload) and streams the file into it.
fn upload(client: &Client, name: &str, path: &PathBuf, meta: &MetaArgs) -> Result<Value, CliError> {
    let open_err = |source| CliError::File { what: "reading", path: path.clone(), source };
    let mut file = File::open(path).map_err(open_err)?;
    let len = file.metadata().map_err(open_err)?.len();
    let mut magic = Vec::with_capacity(4);
    (&mut file).take(4).read_to_end(&mut magic).map_err(open_err)?;
    file.rewind().map_err(open_err)?;
    let content_type = content_type(&magic)?;

    match client.post("/api/v1/images", &register_body(name, meta)) {
        Ok(_) => {}
        Err(CliError::Problem { status: 409, .. })
            if views::text(&client.get(&format!("/api/v1/images/{}", seg(name)))?, "/state") == "importing" => {}
        Err(err) => return Err(err),
    }
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(sha) = &meta.sha256 {
        headers.push(("X-Content-SHA256", sha));
    }
    let reader = Progress::new(file, len, format!("upload {name}"));
    let image = client.put_stream(&format!("/api/v1/images/{}/content", seg(name)), &headers, len, reader)?;
    eprintln!("upload {name}: {} sent, image {}", views::bytes(len), views::text(&image, "/state"));
    Ok(image)
}

/// Counts what is read through it and reports on stderr: one line
/// rewritten in place on a terminal, a line per quarter otherwise.
struct Progress<R> {
    inner: R,
    done: u64,
    total: u64,
    label: String,
    tty: bool,
    last: Instant,
    quarter: u64,
}

impl<R> Progress<R> {
    fn new(inner: R, total: u64, label: String) -> Self {
        let tty = std::io::stderr().is_terminal();
        Progress { inner, done: 0, total, label, tty, last: Instant::now(), quarter: 0 }
    }

    fn report(&mut self) {
        let percent = (self.done * 100).checked_div(self.total).unwrap_or(100);
        let line = format!("{}: {} of {} ({percent}%)", self.label, views::bytes(self.done), views::bytes(self.total));
        if self.tty {
            let finished = self.done == self.total;
            if finished || self.last.elapsed() >= Duration::from_millis(200) {
                eprint!("\r{line}\x1b[K{}", if finished { "\n" } else { "" });
                self.last = Instant::now();
            }
        } else if percent / 25 > self.quarter {
            self.quarter = percent / 25;
            eprintln!("{line}");
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        self.report();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_follows_the_magic() {
        assert_eq!(content_type(&[0x28, 0xb5, 0x2f, 0xfd]).unwrap(), "application/zstd");
        assert_eq!(content_type(b"\xebc\x90\x00").unwrap(), "application/octet-stream");
        assert_eq!(content_type(b"").unwrap(), "application/octet-stream");
        assert!(content_type(b"QFI\xfb").unwrap_err().to_string().contains("import"));
    }

    #[test]
    fn progress_passes_every_byte_through() {
        let data = vec![7u8; 100_000];
        let mut reader = Progress::new(&data[..], data.len() as u64, "test".into());
        let mut out = vec![];
        reader.read_to_end(&mut out).unwrap();
        assert_eq!((out, reader.done), (data, 100_000));
    }
}
