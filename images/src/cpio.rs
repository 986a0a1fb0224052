//! A minimal writer for the `newc` cpio format the kernel unpacks as its
//! initramfs. Written here (60 lines) so the archive is reproducible from
//! our inputs alone: fixed owners, modes and timestamps, sorted entries.

use std::io::{self, Write};

pub enum Entry<'a> {
    Dir,
    File { data: &'a [u8], executable: bool },
    Symlink { target: &'a str },
}

pub struct Writer<W: Write> {
    out: W,
    written: u64,
    ino: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out, written: 0, ino: 1 }
    }

    pub fn add(&mut self, path: &str, entry: Entry<'_>) -> io::Result<()> {
        let (mode, data): (u32, &[u8]) = match entry {
            Entry::Dir => (0o040_755, &[]),
            Entry::File { data, executable } => (if executable { 0o100_755 } else { 0o100_644 }, data),
            Entry::Symlink { target } => (0o120_777, target.as_bytes()),
        };
        self.record(path, mode, data)
    }

    fn record(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let name_len = path.len() + 1;
        let nlink = if mode & 0o040_000 != 0 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name_len,
            0
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(path.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (4 - self.written % 4) % 4;
        self.put(&[0u8; 3][..rem as usize])
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.record("TRAILER!!!", 0, &[])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GNU cpio lists what we wrote: the format is the kernel's.
    #[test]
    fn gnu_cpio_reads_our_archive() {
        let mut w = Writer::new(Vec::new());
        w.add("bin", Entry::Dir).unwrap();
        w.add("bin/hello", Entry::File { data: b"hi\n", executable: true }).unwrap();
        w.add("bin/sh", Entry::Symlink { target: "busybox" }).unwrap();
        let bytes = w.finish().unwrap();
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("skipped: cpio is not installed");
            return;
        };
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "bin\nbin/hello\nbin/sh\n");
    }
}
