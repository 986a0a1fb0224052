//! The lease journal: the appliance's leases on its own disk, as an
//! append-only text file of [`LeaseOp`]s, one line each:
//!
//! ```text
//! + 52:54:00:12:34:56 10.77.0.100 bound 1732300000
//! - 52:54:00:12:34:56
//! q 10.77.0.101 1732300600
//! ```
//!
//! Why not the database: a lease write sits between a client's REQUEST and
//! its ACK. Here it is one `write` (and, when `sync`, one `fdatasync`) per
//! batch of requests, never queued behind API writes, and independent of a
//! shared PostgreSQL's round trips. A line is complete or ignored: a torn
//! last line (power cut mid-write) is dropped at load and counted.
//! The file is rewritten from the table (write, fsync, rename) at start and
//! whenever it has grown to several times the live table.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::leases::{Lease, LeaseOp, LeaseState, LeaseTable};
use crate::boot::{dashed_mac, parse_dashed_mac};

/// A journal rewritten once it holds this many lines more than the table.
const COMPACT_SLACK: usize = 10_000;

pub struct LeaseJournal {
    path: PathBuf,
    file: File,
    /// Lines in the file now.
    lines: usize,
    /// fdatasync after every append: leases survive a power cut, not only
    /// a crash of the process.
    sync: bool,
}

/// What loading found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub ops: usize,
    /// Lines that did not parse (a torn last write, or damage), skipped.
    pub skipped: usize,
}

impl LeaseJournal {
    /// Opens (or creates) the journal at `path`, replays it into a table
    /// and compacts it.
    pub fn open(path: &Path, sync: bool) -> io::Result<(LeaseJournal, LeaseTable, Loaded)> {
        let mut table = LeaseTable::default();
        let mut loaded = Loaded::default();
        match File::open(path) {
            Ok(file) => {
                for line in BufReader::new(file).split(b'\n') {
                    match std::str::from_utf8(&line?).ok().and_then(parse_line) {
                        Some(op) => {
                            table.apply(&op);
                            loaded.ops += 1;
                        }
                        None => loaded.skipped += 1,
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut journal = LeaseJournal { path: path.to_path_buf(), file, lines: loaded.ops + loaded.skipped, sync };
        journal.compact(&table)?;
        Ok((journal, table, loaded))
    }

    /// Appends `ops` in one write; durable when this returns.
    pub fn append(&mut self, ops: &[LeaseOp]) -> io::Result<()> {
        let mut text = String::with_capacity(ops.len() * 48);
        for op in ops {
            text.push_str(&format_line(op));
        }
        self.file.write_all(text.as_bytes())?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.lines += ops.len();
        Ok(())
    }

    /// Whether the file has grown enough past `table` to rewrite it.
    pub fn wants_compaction(&self, table: &LeaseTable) -> bool {
        self.lines > table.len() * 4 + COMPACT_SLACK
    }

    /// Replaces the file with `table`'s contents, atomically: a crash
    /// leaves either the old file or the new one.
    pub fn compact(&mut self, table: &LeaseTable) -> io::Result<()> {
        let ops = table.as_ops();
        let tmp = self.path.with_extension("compacting");
        {
            let mut out = File::create(&tmp)?;
            let text: String = ops.iter().map(format_line).collect();
            out.write_all(text.as_bytes())?;
            out.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = ops.len();
        Ok(())
    }
}

fn format_line(op: &LeaseOp) -> String {
    let mac = |m: &[u8; 6]| dashed_mac(m).replace('-', ":");
    match op {
        LeaseOp::Upsert(l) => {
            let state = match l.state {
                LeaseState::Offered => "offered",
                LeaseState::Bound => "bound",
            };
            format!("+ {} {} {state} {}\n", mac(&l.mac), l.ip, l.expires_at)
        }
        LeaseOp::Remove { mac: m } => format!("- {}\n", mac(m)),
        LeaseOp::Quarantine { ip, until } => format!("q {ip} {until}\n"),
    }
}

fn parse_line(line: &str) -> Option<LeaseOp> {
    let mac = |t: &str| parse_dashed_mac(&t.replace(':', "-"));
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["+", m, ip, state, expires] => Some(LeaseOp::Upsert(Lease {
            mac: mac(m)?,
            ip: ip.parse::<Ipv4Addr>().ok()?,
            state: match *state {
                "offered" => LeaseState::Offered,
                "bound" => LeaseState::Bound,
                _ => return None,
            },
            expires_at: expires.parse().ok()?,
        })),
        ["-", m] => Some(LeaseOp::Remove { mac: mac(m)? }),
        ["q", ip, until] => Some(LeaseOp::Quarantine { ip: ip.parse().ok()?, until: until.parse().ok()? }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(n: u8, state: LeaseState) -> Lease {
        Lease { mac: [0x52, 0x54, 0, 0, 0, n], ip: Ipv4Addr::new(10, 0, 0, n), expires_at: 1000 + n as u64, state }
    }

    #[test]
    fn replays_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        let (mut journal, table, _) = LeaseJournal::open(&path, true).unwrap();
        assert!(table.is_empty());
        let ops = [
            LeaseOp::Upsert(lease(1, LeaseState::Bound)),
            LeaseOp::Upsert(lease(2, LeaseState::Offered)),
            LeaseOp::Remove { mac: lease(2, LeaseState::Offered).mac },
            LeaseOp::Quarantine { ip: Ipv4Addr::new(10, 0, 0, 3), until: 99 },
        ];
        journal.append(&ops).unwrap();
        drop(journal);
        let (_, table, loaded) = LeaseJournal::open(&path, true).unwrap();
        assert_eq!(loaded, Loaded { ops: 4, skipped: 0 });
        assert_eq!(table.leases().cloned().collect::<Vec<_>>(), vec![lease(1, LeaseState::Bound)]);
        assert_eq!(table.as_ops().len(), 2, "the lease and the quarantine");
        // Loading compacted the file to the live table.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_torn_last_line_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        std::fs::write(&path, "+ 52:54:00:00:00:01 10.0.0.1 bound 1001\n+ 52:54:00:00:00:02 10.0.").unwrap();
        let (_, table, loaded) = LeaseJournal::open(&path, false).unwrap();
        assert_eq!(loaded, Loaded { ops: 1, skipped: 1 });
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn compaction_keeps_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        let (mut journal, mut table, _) = LeaseJournal::open(&path, false).unwrap();
        for round in 0..50u64 {
            let ops: Vec<LeaseOp> =
                (1..=20).map(|n| LeaseOp::Upsert(Lease { expires_at: round, ..lease(n, LeaseState::Bound) })).collect();
            journal.append(&ops).unwrap();
            ops.iter().for_each(|op| table.apply(op));
        }
        assert_eq!(journal.lines, 1000);
        journal.compact(&table).unwrap();
        journal.append(&[LeaseOp::Remove { mac: lease(20, LeaseState::Bound).mac }]).unwrap();
        let (_, reloaded, loaded) = LeaseJournal::open(&path, false).unwrap();
        assert_eq!(loaded, Loaded { ops: 21, skipped: 0 });
        assert_eq!(reloaded.len(), 19);
        assert!(reloaded.leases().all(|l| l.expires_at == 49));
    }
}
