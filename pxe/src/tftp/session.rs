//! One TFTP read transfer as a state machine: packets and timeouts in,
//! datagrams to send out. No sockets, no clocks.

use std::sync::Arc;
use std::time::Duration;

use super::packet::{self, Packet, ReadRequest, ERR_ILLEGAL};

/// Server-side limits applied to what clients ask for.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    pub default_timeout: Duration,
    pub max_blksize: usize,
    pub max_windowsize: u16,
    /// Retransmissions of one window before giving up.
    pub max_retries: u32,
    /// Transfers at once, all clients together; more are refused.
    pub max_sessions: usize,
    /// Transfers at once from one client address (a firmware opens one or
    /// two: a size probe, then the file).
    pub max_sessions_per_client: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            default_timeout: Duration::from_secs(2),
            max_blksize: 65464,
            max_windowsize: 64,
            max_retries: 5,
            max_sessions: 1024,
            max_sessions_per_client: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send(Vec<u8>),
    /// The transfer completed: the last block was acknowledged, or the
    /// client ended it with an ERROR (a `tsize` probe does that).
    Done {
        completed: bool,
    },
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// OACK sent; waiting for ACK 0.
    Negotiating,
    Transferring,
    Finished,
}

#[derive(Debug)]
pub struct Session {
    data: Arc<[u8]>,
    blksize: usize,
    window: u64,
    timeout: Duration,
    max_retries: u32,
    phase: Phase,
    oack: Option<Vec<u8>>,
    /// First block (1-based, absolute) not yet acknowledged.
    base: u64,
    retries: u32,
}

impl Session {
    /// Starts a transfer of `data` for `req`; returns the session and the
    /// first datagrams to send (an OACK, or the first window).
    pub fn start(req: &ReadRequest, data: Arc<[u8]>, limits: &SessionOptions) -> (Session, Vec<Output>) {
        let mut s = Session {
            data,
            blksize: 512,
            window: 1,
            timeout: limits.default_timeout,
            max_retries: limits.max_retries,
            phase: Phase::Transferring,
            oack: None,
            base: 1,
            retries: 0,
        };
        let mut accepted = Vec::new();
        for (name, value) in &req.options {
            let Ok(n) = value.parse::<u64>() else {
                continue;
            };
            match name.as_str() {
                "blksize" if n >= 8 => {
                    s.blksize = (n as usize).min(limits.max_blksize);
                    accepted.push((name.clone(), s.blksize.to_string()));
                }
                "windowsize" if n >= 1 => {
                    s.window = n.min(u64::from(limits.max_windowsize));
                    accepted.push((name.clone(), s.window.to_string()));
                }
                "timeout" if (1..=255).contains(&n) => {
                    s.timeout = Duration::from_secs(n);
                    accepted.push((name.clone(), n.to_string()));
                }
                "tsize" => accepted.push((name.clone(), s.data.len().to_string())),
                _ => {} // unknown or out-of-range options are ignored (RFC 2347)
            }
        }
        let out = if accepted.is_empty() {
            s.send_window()
        } else {
            s.phase = Phase::Negotiating;
            let oack = packet::oack(&accepted);
            s.oack = Some(oack.clone());
            vec![Output::Send(oack)]
        };
        (s, out)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn blksize(&self) -> usize {
        self.blksize
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    fn total_blocks(&self) -> u64 {
        // A file whose size is a multiple of blksize ends with an empty block.
        self.data.len() as u64 / self.blksize as u64 + 1
    }

    fn block(&self, n: u64) -> Vec<u8> {
        let start = ((n - 1) as usize * self.blksize).min(self.data.len());
        let end = (start + self.blksize).min(self.data.len());
        packet::data(n as u16, &self.data[start..end]) // wire numbers wrap at 65536
    }

    fn send_window(&self) -> Vec<Output> {
        let last = (self.base + self.window - 1).min(self.total_blocks());
        (self.base..=last).map(|n| Output::Send(self.block(n))).collect()
    }

    fn finish(&mut self, completed: bool) -> Vec<Output> {
        self.phase = Phase::Finished;
        vec![Output::Done { completed }]
    }

    pub fn on_packet(&mut self, pkt: &Packet) -> Vec<Output> {
        match (self.phase, pkt) {
            (Phase::Finished, _) => vec![],
            (_, Packet::Error { .. }) => self.finish(false),
            (Phase::Negotiating, Packet::Ack(0)) => {
                self.phase = Phase::Transferring;
                self.retries = 0;
                self.send_window()
            }
            (Phase::Transferring, Packet::Ack(wire)) => {
                // Map the 16-bit number onto the blocks in flight; anything
                // else is a stale duplicate and is ignored (no Sorcerer's
                // Apprentice resend).
                let last_sent = (self.base + self.window - 1).min(self.total_blocks());
                let Some(acked) = (self.base..=last_sent).find(|n| *n as u16 == *wire) else {
                    return vec![];
                };
                if acked == self.total_blocks() {
                    return self.finish(true);
                }
                self.base = acked + 1;
                self.retries = 0;
                self.send_window()
            }
            (_, Packet::Ack(_)) => vec![],
            (_, Packet::Read(_) | Packet::Write { .. } | Packet::Unexpected(_)) => {
                self.phase = Phase::Finished;
                vec![
                    Output::Send(packet::error(ERR_ILLEGAL, "unexpected packet")),
                    Output::Failed("illegal operation from client".into()),
                ]
            }
        }
    }

    pub fn on_timeout(&mut self) -> Vec<Output> {
        if self.phase == Phase::Finished {
            return vec![];
        }
        self.retries += 1;
        if self.retries > self.max_retries {
            self.phase = Phase::Finished;
            return vec![Output::Failed(format!("no acknowledgement after {} retries", self.max_retries))];
        }
        match (&self.phase, &self.oack) {
            (Phase::Negotiating, Some(oack)) => vec![Output::Send(oack.clone())],
            _ => self.send_window(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(options: &[(&str, &str)]) -> ReadRequest {
        ReadRequest {
            filename: "f".into(),
            mode: "octet".into(),
            options: options.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        }
    }

    fn sent(out: &[Output]) -> Vec<(u16, usize)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(b) if b[1] == 3 => Some((u16::from_be_bytes([b[2], b[3]]), b.len() - 4)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn plain_transfer_ends_with_a_short_block() {
        let (mut s, out) = Session::start(&req(&[]), vec![7u8; 1000].into(), &SessionOptions::default());
        assert_eq!(sent(&out), vec![(1, 512)]);
        assert_eq!(sent(&s.on_packet(&Packet::Ack(1))), vec![(2, 488)]);
        assert_eq!(s.on_packet(&Packet::Ack(2)), vec![Output::Done { completed: true }]);
    }

    #[test]
    fn exact_multiple_sends_an_empty_last_block() {
        let (mut s, _) = Session::start(&req(&[]), vec![0u8; 1024].into(), &SessionOptions::default());
        s.on_packet(&Packet::Ack(1));
        assert_eq!(sent(&s.on_packet(&Packet::Ack(2))), vec![(3, 0)]);
    }

    #[test]
    fn options_are_acknowledged_then_windows_flow() {
        let opts = [("blksize", "1468"), ("tsize", "0"), ("windowsize", "4")];
        let (mut s, out) = Session::start(&req(&opts), vec![1u8; 10_000].into(), &SessionOptions::default());
        assert_eq!(
            out,
            vec![Output::Send(packet::oack(&[
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "10000".into()),
                ("windowsize".into(), "4".into()),
            ]))]
        );
        assert_eq!(sent(&s.on_packet(&Packet::Ack(0))), vec![(1, 1468), (2, 1468), (3, 1468), (4, 1468)]);
        // A partial ACK slides the window from the block after it.
        assert_eq!(sent(&s.on_packet(&Packet::Ack(2))), vec![(3, 1468), (4, 1468), (5, 1468), (6, 1468)]);
        assert!(s.on_packet(&Packet::Ack(1)).is_empty(), "stale duplicate ACKs are ignored");
        assert_eq!(sent(&s.on_packet(&Packet::Ack(6))), vec![(7, 10_000 - 6 * 1468)]);
        assert_eq!(s.on_packet(&Packet::Ack(7)), vec![Output::Done { completed: true }]);
    }

    /// UEFI firmware asks for tsize, reads the OACK, and sends ERROR: the
    /// session must end at once, not re-send its OACK.
    #[test]
    fn regression_uefi_tsize_probe_ends_the_session() {
        let (mut s, _) = Session::start(&req(&[("tsize", "0")]), vec![0u8; 100].into(), &SessionOptions::default());
        assert_eq!(
            s.on_packet(&Packet::Error { code: 8, message: String::new() }),
            vec![Output::Done { completed: false }]
        );
        assert!(s.on_timeout().is_empty());
    }

    #[test]
    fn timeouts_resend_then_give_up() {
        let limits = SessionOptions { max_retries: 2, ..Default::default() };
        let (mut s, _) = Session::start(&req(&[]), vec![0u8; 2000].into(), &limits);
        assert_eq!(sent(&s.on_timeout()), vec![(1, 512)]);
        assert_eq!(sent(&s.on_timeout()), vec![(1, 512)]);
        assert!(matches!(s.on_timeout().as_slice(), [Output::Failed(_)]));
        assert!(s.is_finished());
    }

    #[test]
    fn block_numbers_wrap_past_65535() {
        let (mut s, _) =
            Session::start(&req(&[("blksize", "8")]), vec![0u8; 8 * 70_000].into(), &SessionOptions::default());
        let mut out = s.on_packet(&Packet::Ack(0));
        for n in 1..=66_000u64 {
            assert_eq!(sent(&out)[0].0, n as u16);
            out = s.on_packet(&Packet::Ack(n as u16));
        }
    }
}
