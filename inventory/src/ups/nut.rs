//! A client for NUT's network protocol (`upsd`, RFC 9271): lists the UPSes
//! a `upsd` serves and reads one UPS's variables, optionally after
//! `USERNAME`/`PASSWORD`, and maps them to [`UpsState`] with the pure
//! [`state_from_vars`].
//!
//! This module owns the TCP conversation with `upsd` and the parsing of
//! its reply lines (quoted words, `ERR` replies, `BEGIN LIST`/`END LIST`
//! blocks). It does not do `STARTTLS` (upsd on a management network is
//! plain text; add TLS here if a site needs it), does not send commands
//! that change the UPS (`SET VAR`, `INSTCMD`, `FSD`), and does not poll:
//! each call opens a connection, asks, says `LOGOUT` and closes.
//!
//! Every request (connect, each command and its reply) is bounded by the
//! client's timeout. Calls are cancel-safe: a dropped future drops its own
//! connection and nothing is shared between calls.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::oob::{Credentials, OobError, UpsState, UpsStatus};

/// The longest reply line accepted; upsd's own limit is far lower.
const MAX_LINE: u64 = 16 * 1024;
/// The most items accepted in one `LIST` reply.
const MAX_LIST_ITEMS: usize = 10_000;

/// A NUT client for one UPS behind one `upsd`.
#[derive(Debug, Clone)]
pub struct NutClient {
    addr: String,
    ups: String,
    creds: Option<Credentials>,
    timeout: Duration,
}

impl NutClient {
    /// `addr` is `host:port` of the upsd (NUT's port is 3493); `ups` the
    /// UPS name as upsd knows it (`upsc -l`).
    pub fn new(addr: String, ups: String, creds: Option<Credentials>, timeout: Duration) -> NutClient {
        NutClient { addr, ups, creds, timeout }
    }

    /// The UPSes this upsd serves: (name, description).
    pub async fn list_ups(&self) -> Result<Vec<(String, String)>, OobError> {
        let mut conn = self.open().await?;
        let items = conn.list(&["UPS"]).await?;
        conn.logout().await;
        items
            .iter()
            .map(|words| match words.as_slice() {
                [kind, name, desc] if kind == "UPS" => Ok((name.clone(), desc.clone())),
                _ => Err(conn.malformed("LIST UPS", format!("unexpected item {words:?}"))),
            })
            .collect()
    }

    /// All variables of the UPS, as upsd names them (`ups.status`, ...).
    pub async fn vars(&self) -> Result<Vec<(String, String)>, OobError> {
        let mut conn = self.open().await?;
        let items = conn.list(&["VAR", &self.ups]).await?;
        conn.logout().await;
        let what = format!("LIST VAR {}", self.ups);
        items
            .iter()
            .map(|words| match words.as_slice() {
                [kind, ups, name, value] if kind == "VAR" && *ups == self.ups => Ok((name.clone(), value.clone())),
                _ => Err(conn.malformed(&what, format!("unexpected item {words:?}"))),
            })
            .collect()
    }

    /// The UPS's state, from its variables.
    pub async fn state(&self) -> Result<UpsState, OobError> {
        Ok(state_from_vars(&self.vars().await?))
    }

    /// Connects and, with credentials, sends `USERNAME` and `PASSWORD`.
    async fn open(&self) -> Result<Conn, OobError> {
        let mut conn = Conn::connect(&self.addr, self.timeout).await?;
        if let Some(creds) = &self.creds {
            conn.expect_ok(&["USERNAME", &creds.username], "USERNAME").await?;
            conn.expect_ok(&["PASSWORD", &creds.password], "PASSWORD").await?;
        }
        Ok(conn)
    }
}

/// One connection to upsd.
struct Conn {
    peer: String,
    timeout: Duration,
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn connect(peer: &str, timeout: Duration) -> Result<Conn, OobError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(peer)).await {
            Err(_) => return Err(OobError::Timeout { peer: peer.to_string(), secs: timeout.as_secs() }),
            Ok(Err(e)) => return Err(OobError::Connect { peer: peer.to_string(), detail: e.to_string() }),
            Ok(Ok(s)) => s,
        };
        Ok(Conn { peer: peer.to_string(), timeout, stream: BufReader::new(stream) })
    }

    fn malformed(&self, what: &str, detail: String) -> OobError {
        OobError::Malformed { peer: self.peer.clone(), what: what.to_string(), detail }
    }

    fn timed_out(&self) -> OobError {
        OobError::Timeout { peer: self.peer.clone(), secs: self.timeout.as_secs() }
    }

    /// Sends one command line, its words quoted where needed.
    async fn send(&mut self, words: &[&str]) -> Result<(), OobError> {
        let line = command_line(words).map_err(|detail| OobError::Protocol { peer: self.peer.clone(), detail })?;
        let peer = self.peer.clone();
        match tokio::time::timeout(self.timeout, self.stream.get_mut().write_all(line.as_bytes())).await {
            Err(_) => Err(self.timed_out()),
            Ok(Err(e)) => Err(OobError::Connect {
                peer,
                detail: format!("sending {}: {e}", words.first().copied().unwrap_or_default()),
            }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Reads one reply line, without waiting longer than the timeout.
    async fn read_line(&mut self, what: &str) -> Result<String, OobError> {
        match tokio::time::timeout(self.timeout, self.read_line_unbounded(what)).await {
            Err(_) => Err(self.timed_out()),
            Ok(r) => r,
        }
    }

    async fn read_line_unbounded(&mut self, what: &str) -> Result<String, OobError> {
        let mut buf = Vec::new();
        let n = (&mut self.stream).take(MAX_LINE).read_until(b'\n', &mut buf).await.map_err(|e| OobError::Connect {
            peer: self.peer.clone(),
            detail: format!("reading the answer to {what}: {e}"),
        })?;
        if n == 0 {
            return Err(OobError::Protocol {
                peer: self.peer.clone(),
                detail: format!("closed the connection during {what}"),
            });
        }
        if buf.last() != Some(&b'\n') {
            let detail = if n as u64 >= MAX_LINE { "line too long" } else { "connection closed mid-line" };
            return Err(self.malformed(what, detail.to_string()));
        }
        Ok(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string())
    }

    /// Reads one reply line and splits it into words; an `ERR` reply
    /// becomes an error.
    async fn read_words(&mut self, what: &str) -> Result<Vec<String>, OobError> {
        let line = self.read_line(what).await?;
        let words = split_words(&line).map_err(|detail| self.malformed(what, format!("{detail}: {line:?}")))?;
        if let Some(err) = reply_error(&words) {
            return Err(err.into_oob(&self.peer, what));
        }
        Ok(words)
    }

    /// Sends a command whose answer is a single `OK ...` line.
    async fn expect_ok(&mut self, words: &[&str], what: &str) -> Result<(), OobError> {
        self.send(words).await?;
        let reply = self.read_words(what).await?;
        match reply.first().map(String::as_str) {
            Some("OK") => Ok(()),
            _ => Err(self.malformed(what, format!("expected OK, got {reply:?}"))),
        }
    }

    /// `LIST <args>`: the words of each line between `BEGIN LIST <args>`
    /// and `END LIST <args>`.
    async fn list(&mut self, args: &[&str]) -> Result<Vec<Vec<String>>, OobError> {
        let mut command = vec!["LIST"];
        command.extend_from_slice(args);
        let what = command.join(" ");
        self.send(&command).await?;
        let begin = self.read_words(&what).await?;
        if !starts_with(&begin, "BEGIN", &command) {
            return Err(self.malformed(&what, format!("expected BEGIN {what}, got {begin:?}")));
        }
        let mut items = Vec::new();
        loop {
            let words = self.read_words(&what).await?;
            if starts_with(&words, "END", &command) {
                return Ok(items);
            }
            if items.len() >= MAX_LIST_ITEMS {
                return Err(self.malformed(&what, format!("more than {MAX_LIST_ITEMS} items")));
            }
            items.push(words);
        }
    }

    /// Says goodbye. Failing to do so does not undo an answer already
    /// read, so errors are only logged.
    async fn logout(&mut self) {
        let result = match self.send(&["LOGOUT"]).await {
            Ok(()) => self.read_words("LOGOUT").await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "NUT LOGOUT failed");
        }
    }
}

/// Whether `words` is `marker` followed by exactly `command`
/// (`BEGIN LIST VAR ups`).
fn starts_with(words: &[String], marker: &str, command: &[&str]) -> bool {
    words.len() == command.len() + 1 && words[0] == marker && words[1..].iter().zip(command).all(|(a, b)| a == b)
}

/// An `ERR <code> [detail]` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReplyError {
    code: String,
    detail: Option<String>,
}

impl ReplyError {
    fn into_oob(self, peer: &str, what: &str) -> OobError {
        match self.code.as_str() {
            "ACCESS-DENIED" | "PASSWORD-REQUIRED" | "USERNAME-REQUIRED" | "INVALID-PASSWORD" | "INVALID-USERNAME" => {
                OobError::Auth { peer: peer.to_string() }
            }
            _ => {
                let detail = match self.detail {
                    Some(d) => format!("{what}: ERR {} ({d})", self.code),
                    None => format!("{what}: ERR {}", self.code),
                };
                OobError::Protocol { peer: peer.to_string(), detail }
            }
        }
    }
}

fn reply_error(words: &[String]) -> Option<ReplyError> {
    match words {
        [err, code, rest @ ..] if err == "ERR" => {
            Some(ReplyError { code: code.clone(), detail: (!rest.is_empty()).then(|| rest.join(" ")) })
        }
        [err] if err == "ERR" => Some(ReplyError { code: "(no code)".to_string(), detail: None }),
        _ => None,
    }
}

/// Splits a reply line into words: blank-separated, `"..."` quoting with
/// `\"` and `\\` escapes (RFC 9271 section 3).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let Some(first) = chars.next() else { return Ok(words) };
        let mut word = String::new();
        if first == '"' {
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted string".to_string()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => word.push(c),
                        None => return Err("backslash at end of line".to_string()),
                    },
                    Some(c) => word.push(c),
                }
            }
            if chars.peek().is_some_and(|c| *c != ' ' && *c != '\t') {
                return Err("text right after a closing quote".to_string());
            }
        } else {
            let mut c = first;
            loop {
                if c == '\\' {
                    match chars.next() {
                        Some(escaped) => word.push(escaped),
                        None => return Err("backslash at end of line".to_string()),
                    }
                } else {
                    word.push(c);
                }
                match chars.next_if(|c| *c != ' ' && *c != '\t') {
                    Some(next) => c = next,
                    None => break,
                }
            }
        }
        words.push(word);
    }
}

/// Builds a command line, quoting words that need it. Refuses control
/// characters, which would let a UPS name or password smuggle in a second
/// command.
fn command_line(words: &[&str]) -> Result<String, String> {
    let mut line = String::new();
    for (i, word) in words.iter().enumerate() {
        if word.chars().any(char::is_control) {
            let command = words.first().copied().unwrap_or_default();
            return Err(format!("refusing to send a {command} argument containing control characters"));
        }
        if i > 0 {
            line.push(' ');
        }
        let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
        if plain {
            line.push_str(word);
        } else {
            line.push('"');
            for c in word.chars() {
                if c == '"' || c == '\\' {
                    line.push('\\');
                }
                line.push(c);
            }
            line.push('"');
        }
    }
    line.push('\n');
    Ok(line)
}

/// Maps a UPS's NUT variables to [`UpsState`]. Values that do not parse
/// are left out rather than failing the whole reading.
///
/// - `ups.status`: the flags, blank-separated (`OL CHRG`, `OB DISCHRG LB`).
/// - `battery.charge` (%), `battery.runtime` (s), `ups.load` (%),
///   `input.voltage` (V).
/// - `device.mfr`/`device.model`, else the older `ups.mfr`/`ups.model`.
pub fn state_from_vars(vars: &[(String, String)]) -> UpsState {
    let get = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty());
    let number = |name: &str| get(name).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
    let flags: Vec<String> =
        get("ups.status").map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default();
    UpsState {
        status: UpsStatus::from_flags(&flags),
        flags,
        charge_percent: number("battery.charge"),
        runtime_secs: number("battery.runtime").filter(|v| *v >= 0.0).map(|v| v.round() as u64),
        load_percent: number("ups.load"),
        input_voltage: number("input.voltage"),
        manufacturer: get("device.mfr").or_else(|| get("ups.mfr")).map(str::to_string),
        model: get("device.model").or_else(|| get("ups.model")).map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_words(line: &str, expected: Result<&[&str], &str>) {
        let got = split_words(line);
        let expected = expected.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map_err(str::to_string);
        assert_eq!(got, expected, "line {line:?}");
    }

    #[test]
    fn reply_lines_split_into_words() {
        check_words("BEGIN LIST UPS", Ok(&["BEGIN", "LIST", "UPS"]));
        check_words(r#"UPS lab "Slipway lab UPS""#, Ok(&["UPS", "lab", "Slipway lab UPS"]));
        check_words(r#"VAR lab ups.status "OB DISCHRG LB""#, Ok(&["VAR", "lab", "ups.status", "OB DISCHRG LB"]));
        check_words(r#"VAR lab x "a \"quoted\" \\ word""#, Ok(&["VAR", "lab", "x", r#"a "quoted" \ word"#]));
        check_words(r#"VAR lab x """#, Ok(&["VAR", "lab", "x", ""]));
        check_words("  spaced\tout  ", Ok(&["spaced", "out"]));
        check_words("", Ok(&[]));
        check_words(r#"VAR lab x "open"#, Err("unterminated quoted string"));
        check_words(r#"VAR lab x "a"b"#, Err("text right after a closing quote"));
        check_words(r"VAR lab x \", Err("backslash at end of line"));
    }

    #[test]
    fn commands_quote_what_needs_quoting_and_refuse_line_breaks() {
        assert_eq!(command_line(&["LIST", "VAR", "lab"]).as_deref(), Ok("LIST VAR lab\n"));
        assert_eq!(command_line(&["PASSWORD", r#"p a"s\"#]).as_deref(), Ok("PASSWORD \"p a\\\"s\\\\\"\n"));
        assert_eq!(command_line(&["USERNAME", ""]).as_deref(), Ok("USERNAME \"\"\n"));
        assert!(command_line(&["LIST", "VAR", "lab\nFSD lab"]).is_err());
        // What we send, upsd's tokenizer (and ours) reads back word for word.
        let words = ["PASSWORD", "se cret\"\\"];
        let line = command_line(&words).unwrap();
        assert_eq!(split_words(line.trim_end()).unwrap(), words);
    }

    #[test]
    fn err_replies_name_their_code() {
        let words = |s: &str| split_words(s).unwrap();
        assert_eq!(
            reply_error(&words("ERR UNKNOWN-UPS")),
            Some(ReplyError { code: "UNKNOWN-UPS".into(), detail: None })
        );
        assert_eq!(
            reply_error(&words("ERR DATA-STALE extra words")),
            Some(ReplyError { code: "DATA-STALE".into(), detail: Some("extra words".into()) })
        );
        assert_eq!(reply_error(&words("OK")), None);
        let e = reply_error(&words("ERR UNKNOWN-UPS")).unwrap().into_oob("10.0.0.5:3493", "LIST VAR nope");
        assert_eq!(e.to_string(), "10.0.0.5:3493: LIST VAR nope: ERR UNKNOWN-UPS");
        let e = reply_error(&words("ERR ACCESS-DENIED")).unwrap().into_oob("10.0.0.5:3493", "PASSWORD");
        assert_eq!(e.kind(), "auth");
    }

    fn check(vars: &[(&str, &str)], expected: UpsState) {
        let vars: Vec<(String, String)> = vars.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(state_from_vars(&vars), expected, "vars {vars:?}");
    }

    fn flags(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn vars_map_to_state() {
        check(
            &[
                ("ups.status", "OL CHRG"),
                ("battery.charge", "97"),
                ("battery.runtime", "1830"),
                ("ups.load", "23.5"),
                ("input.voltage", "229.8"),
                ("device.mfr", "Eaton"),
                ("device.model", "5P 1550"),
                ("ups.mfr", "EATON"),
                ("ups.model", "5P1550"),
            ],
            UpsState {
                status: UpsStatus::Online,
                flags: flags("OL CHRG"),
                charge_percent: Some(97.0),
                runtime_secs: Some(1830),
                load_percent: Some(23.5),
                input_voltage: Some(229.8),
                manufacturer: Some("Eaton".into()),
                model: Some("5P 1550".into()),
            },
        );
        check(
            &[("ups.status", "OB DISCHRG"), ("battery.charge", "60"), ("battery.runtime", "900.4"), ("ups.mfr", "APC")],
            UpsState {
                status: UpsStatus::OnBattery,
                flags: flags("OB DISCHRG"),
                charge_percent: Some(60.0),
                runtime_secs: Some(900),
                manufacturer: Some("APC".into()),
                ..UpsState::default()
            },
        );
        check(
            &[("ups.status", "OB DISCHRG LB"), ("battery.charge", "10")],
            UpsState {
                status: UpsStatus::LowBattery,
                flags: flags("OB DISCHRG LB"),
                charge_percent: Some(10.0),
                ..UpsState::default()
            },
        );
        // RB alone says nothing about mains; the flag is kept.
        check(
            &[("ups.status", "OL RB")],
            UpsState { status: UpsStatus::Online, flags: flags("OL RB"), ..UpsState::default() },
        );
    }

    #[test]
    fn bad_or_missing_values_are_left_out() {
        check(&[], UpsState::default());
        check(
            &[
                ("ups.status", "  "),
                ("battery.charge", "n/a"),
                ("battery.runtime", "-5"),
                ("ups.load", "NaN"),
                ("input.voltage", ""),
                ("device.mfr", " "),
                ("ups.mfr", "CyberPower"),
            ],
            UpsState { manufacturer: Some("CyberPower".into()), ..UpsState::default() },
        );
        check(&[("ups.status", "WAIT")], UpsState { flags: flags("WAIT"), ..UpsState::default() });
    }
}
