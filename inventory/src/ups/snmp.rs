//! A UPS read over SNMP v2c with the standard UPS-MIB (RFC 1628): one GET
//! of the values below, mapped to [`UpsState`] with NUT-style flags by the
//! pure [`state_from_mib`], so a campaign gate reads the same `OL`/`OB`/`LB`
//! whichever protocol the UPS speaks.
//!
//! This module owns the SNMP request and the mapping. It does not walk
//! vendor MIBs (APC PowerNet, Eaton XUPS): a UPS whose card only speaks
//! those needs NUT's `snmp-ups` driver in front and the `nut` client. No
//! SNMP v1 or v3, no SET, no traps.
//!
//! Crate choice: `snmp2` (a maintained fork of the `snmp` crate) with its
//! `tokio` feature and `default-features = false`, so no v3 crypto stack is
//! built, plus `heap_buffers` so its 64 KiB receive buffer is not carried
//! inside every future. Its decoder is a hand-written BER reader over
//! slices that returns errors instead of indexing past the end, and a
//! response with the wrong request id or community is rejected; we fuzz it
//! through our own decode path in this module's tests (random and mutated
//! packets must give an error, never a panic). `csnmp` was the other
//! candidate; it fails a whole multi-OID GET when one OID is missing
//! (`noSuchObject`), which real UPS cards do for optional UPS-MIB objects,
//! and it depends on the unmaintained `derivative`. Writing our own BER
//! codec would be another untrusted-bytes parser to own and fuzz.
//!
//! Each [`SnmpUps::state`] opens its own UDP socket (bound to the wildcard
//! address of the peer's family and connected to the peer, so only the
//! peer's datagrams are read), sends one GET, and is bounded by the
//! timeout as a whole; no retry (the poller calls again). Cancel-safe:
//! nothing outlives a dropped call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snmp2::{AsyncSession, Oid, Pdu, Value};

use crate::oob::{OobError, UpsState, UpsStatus};

/// The UPS-MIB objects read, with RFC 1628's names.
pub mod oids {
    pub const UPS_IDENT_MANUFACTURER: &str = "1.3.6.1.2.1.33.1.1.1.0";
    pub const UPS_IDENT_MODEL: &str = "1.3.6.1.2.1.33.1.1.2.0";
    /// unknown(1), batteryNormal(2), batteryLow(3), batteryDepleted(4).
    pub const UPS_BATTERY_STATUS: &str = "1.3.6.1.2.1.33.1.2.1.0";
    /// 0 unless on battery.
    pub const UPS_SECONDS_ON_BATTERY: &str = "1.3.6.1.2.1.33.1.2.2.0";
    pub const UPS_ESTIMATED_MINUTES_REMAINING: &str = "1.3.6.1.2.1.33.1.2.3.0";
    pub const UPS_ESTIMATED_CHARGE_REMAINING: &str = "1.3.6.1.2.1.33.1.2.4.0";
    /// RMS volts of input line 1.
    pub const UPS_INPUT_VOLTAGE: &str = "1.3.6.1.2.1.33.1.3.3.1.3.1";
    /// other(1), none(2), normal(3), bypass(4), battery(5), booster(6),
    /// reducer(7). The brief calls it upsBasicOutputSource; RFC 1628
    /// names it upsOutputSource.
    pub const UPS_OUTPUT_SOURCE: &str = "1.3.6.1.2.1.33.1.4.1.0";
    /// Percent of rated load on output line 1.
    pub const UPS_OUTPUT_PERCENT_LOAD: &str = "1.3.6.1.2.1.33.1.4.4.1.5.1";

    /// Everything one GET asks for.
    pub const ALL: [&str; 9] = [
        UPS_OUTPUT_SOURCE,
        UPS_BATTERY_STATUS,
        UPS_ESTIMATED_CHARGE_REMAINING,
        UPS_ESTIMATED_MINUTES_REMAINING,
        UPS_SECONDS_ON_BATTERY,
        UPS_INPUT_VOLTAGE,
        UPS_OUTPUT_PERCENT_LOAD,
        UPS_IDENT_MANUFACTURER,
        UPS_IDENT_MODEL,
    ];
}

/// A UPS-MIB agent.
#[derive(Debug, Clone)]
pub struct SnmpUps {
    addr: String,
    community: String,
    timeout: Duration,
}

impl SnmpUps {
    /// `addr` is `host:port` (SNMP's port is 161).
    pub fn new(addr: String, community: String, timeout: Duration) -> SnmpUps {
        SnmpUps { addr, community, timeout }
    }

    /// The UPS's state, from one GET of [`oids::ALL`].
    pub async fn state(&self) -> Result<UpsState, OobError> {
        match tokio::time::timeout(self.timeout, self.get()).await {
            Err(_) => Err(OobError::Timeout { peer: self.addr.clone(), secs: self.timeout.as_secs() }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(varbinds)) => Ok(state_from_mib(&UpsMib::from_varbinds(&varbinds))),
        }
    }

    async fn get(&self) -> Result<Vec<(String, MibValue)>, OobError> {
        let peer = || self.addr.clone();
        let request: Vec<Oid<'static>> = oids::ALL
            .iter()
            .map(|s| {
                s.parse::<Oid<'static>>()
                    .map_err(|e| OobError::Protocol { peer: peer(), detail: format!("bad OID {s}: {e:?}") })
            })
            .collect::<Result<_, _>>()?;
        let request: Vec<&Oid<'_>> = request.iter().collect();
        let mut session = AsyncSession::new_v2c(self.addr.as_str(), self.community.as_bytes(), request_id())
            .await
            .map_err(|e| OobError::Connect { peer: peer(), detail: e.to_string() })?;
        let pdu = session.get_many(&request).await.map_err(|e| match e {
            snmp2::Error::Send | snmp2::Error::Receive => {
                OobError::Connect { peer: peer(), detail: format!("no SNMP agent answering ({e})") }
            }
            e => OobError::Malformed { peer: peer(), what: "SNMP GET".to_string(), detail: e.to_string() },
        })?;
        varbinds_from_response(&pdu, request.len())
            .map_err(|detail| OobError::Malformed { peer: peer(), what: "SNMP GET".to_string(), detail })
            .and_then(|r| r.map_err(|detail| OobError::Protocol { peer: peer(), detail }))
    }
}

/// A request id that differs between calls and processes, so a late
/// answer to an earlier call is not taken for this one.
fn request_id() -> i32 {
    let nanos =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() ^ d.as_secs() as u32).unwrap_or(1);
    (nanos & 0x3fff_ffff) as i32
}

/// An SNMP value as the mapping needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MibValue {
    /// INTEGER, Gauge32, Counter32/64, TimeTicks.
    Int(i64),
    /// OCTET STRING (DisplayString), lossily decoded as UTF-8 and trimmed.
    Text(String),
    /// `noSuchObject`, `noSuchInstance`, `endOfMibView` or NULL.
    Missing,
    /// Any other type: not what UPS-MIB defines for these objects.
    Other,
}

impl MibValue {
    fn from_snmp(value: &Value<'_>) -> MibValue {
        match value {
            Value::Integer(n) => MibValue::Int(*n),
            Value::Counter32(n) | Value::Unsigned32(n) | Value::Timeticks(n) => MibValue::Int(i64::from(*n)),
            Value::Counter64(n) => i64::try_from(*n).map(MibValue::Int).unwrap_or(MibValue::Other),
            Value::OctetString(s) => MibValue::Text(String::from_utf8_lossy(s).trim().to_string()),
            Value::NoSuchObject | Value::NoSuchInstance | Value::EndOfMibView | Value::Null => MibValue::Missing,
            _ => MibValue::Other,
        }
    }
}

/// A decoded GET response: `Err` if it is not one (malformed), `Ok(Err)`
/// if the agent answered with an error status, else the (OID, value)
/// pairs. Every requested OID must come back once (RFC 3416 4.2.1).
fn varbinds_from_response(pdu: &Pdu<'_>, expected: usize) -> Result<Result<Vec<(String, MibValue)>, String>, String> {
    if pdu.error_status != 0 {
        return Ok(Err(format!(
            "SNMP GET answered error-status {} ({}) at index {}",
            pdu.error_status,
            error_status_name(pdu.error_status),
            pdu.error_index
        )));
    }
    let varbinds: Vec<(String, MibValue)> =
        pdu.varbinds.clone().map(|(oid, value)| (oid.to_id_string(), MibValue::from_snmp(&value))).collect();
    if varbinds.len() != expected {
        return Err(format!("expected {expected} variable bindings, got {}", varbinds.len()));
    }
    Ok(Ok(varbinds))
}

fn error_status_name(status: u32) -> &'static str {
    match status {
        1 => "tooBig",
        2 => "noSuchName",
        3 => "badValue",
        4 => "readOnly",
        5 => "genErr",
        6 => "noAccess",
        _ => "other",
    }
}

/// The UPS-MIB values read, each `None` when absent or of the wrong type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpsMib {
    pub output_source: Option<i64>,
    pub battery_status: Option<i64>,
    pub charge_remaining: Option<i64>,
    pub minutes_remaining: Option<i64>,
    pub seconds_on_battery: Option<i64>,
    pub input_voltage: Option<i64>,
    pub output_percent_load: Option<i64>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
}

impl UpsMib {
    /// Picks the objects out of a GET response by OID; anything else in
    /// it is ignored.
    pub fn from_varbinds(varbinds: &[(String, MibValue)]) -> UpsMib {
        let find = |oid: &str| varbinds.iter().find(|(o, _)| o == oid).map(|(_, v)| v);
        let int = |oid: &str| match find(oid) {
            Some(MibValue::Int(n)) => Some(*n),
            _ => None,
        };
        let text = |oid: &str| match find(oid) {
            Some(MibValue::Text(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        UpsMib {
            output_source: int(oids::UPS_OUTPUT_SOURCE),
            battery_status: int(oids::UPS_BATTERY_STATUS),
            charge_remaining: int(oids::UPS_ESTIMATED_CHARGE_REMAINING),
            minutes_remaining: int(oids::UPS_ESTIMATED_MINUTES_REMAINING),
            seconds_on_battery: int(oids::UPS_SECONDS_ON_BATTERY),
            input_voltage: int(oids::UPS_INPUT_VOLTAGE),
            output_percent_load: int(oids::UPS_OUTPUT_PERCENT_LOAD),
            manufacturer: text(oids::UPS_IDENT_MANUFACTURER),
            model: text(oids::UPS_IDENT_MODEL),
        }
    }
}

/// Maps UPS-MIB values to [`UpsState`], deriving NUT's flags the way NUT's
/// own `snmp-ups` driver does for this MIB:
///
/// - upsOutputSource: normal(3) `OL`, battery(5) `OB DISCHRG`, bypass(4)
///   `OL BYPASS`, booster(6) `OL BOOST`, reducer(7) `OL TRIM`, none(2)
///   `OFF`, other(1) or absent: nothing, unless upsSecondsOnBattery > 0,
///   which says `OB DISCHRG`.
/// - upsBatteryStatus: batteryLow(3) and batteryDepleted(4) add `LB`.
/// - No `CHRG`: UPS-MIB does not say whether the battery is charging.
///
/// Values outside the MIB's ranges are dropped: charge outside 0..=100,
/// negative minutes, load or voltage.
pub fn state_from_mib(mib: &UpsMib) -> UpsState {
    let mut flags: Vec<&str> = match mib.output_source {
        Some(3) => vec!["OL"],
        Some(4) => vec!["OL", "BYPASS"],
        Some(5) => vec!["OB", "DISCHRG"],
        Some(6) => vec!["OL", "BOOST"],
        Some(7) => vec!["OL", "TRIM"],
        Some(2) => vec!["OFF"],
        _ if mib.seconds_on_battery.is_some_and(|s| s > 0) => vec!["OB", "DISCHRG"],
        _ => vec![],
    };
    if matches!(mib.battery_status, Some(3) | Some(4)) {
        flags.push("LB");
    }
    let flags: Vec<String> = flags.into_iter().map(str::to_string).collect();
    let non_negative = |v: Option<i64>| v.filter(|n| *n >= 0);
    UpsState {
        status: UpsStatus::from_flags(&flags),
        flags,
        charge_percent: mib.charge_remaining.filter(|c| (0..=100).contains(c)).map(|c| c as f64),
        runtime_secs: non_negative(mib.minutes_remaining).map(|m| (m as u64).saturating_mul(60)),
        load_percent: non_negative(mib.output_percent_load).map(|l| l as f64),
        input_voltage: non_negative(mib.input_voltage).map(|v| v as f64),
        manufacturer: mib.manufacturer.clone(),
        model: mib.model.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mib: UpsMib, expected: UpsState) {
        assert_eq!(state_from_mib(&mib), expected, "mib {mib:?}");
    }

    fn flags(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn with_source(source: i64, battery: i64) -> UpsMib {
        UpsMib { output_source: Some(source), battery_status: Some(battery), ..UpsMib::default() }
    }

    #[test]
    fn mib_maps_to_state_and_nut_flags() {
        check(
            UpsMib {
                output_source: Some(3),
                battery_status: Some(2),
                charge_remaining: Some(100),
                minutes_remaining: Some(45),
                seconds_on_battery: Some(0),
                input_voltage: Some(230),
                output_percent_load: Some(31),
                manufacturer: Some("Eaton".into()),
                model: Some("9PX 3000".into()),
            },
            UpsState {
                status: UpsStatus::Online,
                flags: flags("OL"),
                charge_percent: Some(100.0),
                runtime_secs: Some(2700),
                load_percent: Some(31.0),
                input_voltage: Some(230.0),
                manufacturer: Some("Eaton".into()),
                model: Some("9PX 3000".into()),
            },
        );
        let status = |source, battery, fl: &str, status| {
            check(with_source(source, battery), UpsState { status, flags: flags(fl), ..UpsState::default() })
        };
        status(5, 2, "OB DISCHRG", UpsStatus::OnBattery);
        status(5, 3, "OB DISCHRG LB", UpsStatus::LowBattery);
        status(5, 4, "OB DISCHRG LB", UpsStatus::LowBattery);
        status(4, 2, "OL BYPASS", UpsStatus::Online);
        status(6, 2, "OL BOOST", UpsStatus::Online);
        status(7, 1, "OL TRIM", UpsStatus::Online);
        status(2, 2, "OFF", UpsStatus::Unknown);
        status(1, 2, "", UpsStatus::Unknown);
        status(99, 2, "", UpsStatus::Unknown);
        // On mains with a low battery: LB outranks OL.
        status(3, 3, "OL LB", UpsStatus::LowBattery);
    }

    #[test]
    fn seconds_on_battery_stand_in_for_a_missing_output_source() {
        let mib = UpsMib { seconds_on_battery: Some(42), ..UpsMib::default() };
        check(mib, UpsState { status: UpsStatus::OnBattery, flags: flags("OB DISCHRG"), ..UpsState::default() });
        check(UpsMib { seconds_on_battery: Some(0), ..UpsMib::default() }, UpsState::default());
    }

    #[test]
    fn out_of_range_values_are_dropped() {
        check(
            UpsMib {
                charge_remaining: Some(101),
                minutes_remaining: Some(-1),
                input_voltage: Some(-230),
                output_percent_load: Some(-5),
                ..UpsMib::default()
            },
            UpsState::default(),
        );
        // Overload is a real reading (RFC 1628 allows up to 200 %... and more is still news).
        check(
            UpsMib { output_percent_load: Some(130), minutes_remaining: Some(i64::MAX), ..UpsMib::default() },
            UpsState { load_percent: Some(130.0), runtime_secs: Some(u64::MAX), ..UpsState::default() },
        );
    }

    #[test]
    fn varbinds_are_picked_by_oid_and_type() {
        let vb = |oid: &str, v: MibValue| (oid.to_string(), v);
        let got = UpsMib::from_varbinds(&[
            vb(oids::UPS_IDENT_MODEL, MibValue::Text("Smart-UPS 1500".into())),
            vb(oids::UPS_OUTPUT_SOURCE, MibValue::Int(5)),
            vb(oids::UPS_BATTERY_STATUS, MibValue::Text("low".into())),
            vb(oids::UPS_IDENT_MANUFACTURER, MibValue::Text(String::new())),
            vb(oids::UPS_INPUT_VOLTAGE, MibValue::Missing),
            vb(oids::UPS_ESTIMATED_CHARGE_REMAINING, MibValue::Other),
            vb("1.3.6.1.2.1.1.1.0", MibValue::Int(7)),
        ]);
        assert_eq!(got, UpsMib { output_source: Some(5), model: Some("Smart-UPS 1500".into()), ..UpsMib::default() });
    }

    /// BER type-length-value, for building test packets.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 128 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    fn int(tag: u8, n: i64) -> Vec<u8> {
        let bytes = n.to_be_bytes();
        // Minimal two's complement: drop leading bytes that only repeat the sign.
        let mut start = 0;
        while start < 7
            && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
                || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
        {
            start += 1;
        }
        tlv(tag, &bytes[start..])
    }

    /// A GET response as an agent would send it (snmp2's own builder is
    /// crate-private).
    fn response(req_id: i32, error_status: u32, values: &[(&str, Value<'_>)]) -> Vec<u8> {
        let mut varbinds = Vec::new();
        for (oid, value) in values {
            let oid: Oid<'static> = oid.parse().unwrap();
            let mut pair = tlv(0x06, oid.as_bytes());
            pair.extend(match value {
                Value::Integer(n) => int(0x02, *n),
                Value::OctetString(s) => tlv(0x04, s),
                Value::Unsigned32(n) => int(0x42, i64::from(*n)),
                Value::Counter64(n) => {
                    let mut b = vec![0];
                    b.extend(n.to_be_bytes());
                    tlv(0x46, &b)
                }
                Value::NoSuchObject => tlv(0x80, &[]),
                Value::NoSuchInstance => tlv(0x81, &[]),
                _ => tlv(0x05, &[]),
            });
            varbinds.extend(tlv(0x30, &pair));
        }
        let mut pdu = int(0x02, i64::from(req_id));
        pdu.extend(int(0x02, i64::from(error_status)));
        pdu.extend(int(0x02, 0));
        pdu.extend(tlv(0x30, &varbinds));
        let mut message = int(0x02, 1);
        message.extend(tlv(0x04, b"public"));
        message.extend(tlv(0xa2, &pdu));
        tlv(0x30, &message)
    }

    /// Everything the client does with untrusted bytes, minus the socket.
    fn decode(bytes: &[u8], expected: usize) -> Result<Result<Vec<(String, MibValue)>, String>, String> {
        let pdu = Pdu::from_bytes(bytes).map_err(|e| e.to_string())?;
        let r = varbinds_from_response(&pdu, expected)?;
        if let Ok(varbinds) = &r {
            let _ = state_from_mib(&UpsMib::from_varbinds(varbinds));
        }
        Ok(r)
    }

    #[test]
    fn responses_decode_including_missing_objects() {
        let bytes = response(
            7,
            0,
            &[
                (oids::UPS_OUTPUT_SOURCE, Value::Integer(5)),
                (oids::UPS_IDENT_MODEL, Value::OctetString(b"Lab UPS ")),
                (oids::UPS_INPUT_VOLTAGE, Value::NoSuchInstance),
                (oids::UPS_ESTIMATED_CHARGE_REMAINING, Value::Unsigned32(60)),
            ],
        );
        let got = decode(&bytes, 4).unwrap().unwrap();
        assert_eq!(
            got,
            vec![
                (oids::UPS_OUTPUT_SOURCE.to_string(), MibValue::Int(5)),
                (oids::UPS_IDENT_MODEL.to_string(), MibValue::Text("Lab UPS".into())),
                (oids::UPS_INPUT_VOLTAGE.to_string(), MibValue::Missing),
                (oids::UPS_ESTIMATED_CHARGE_REMAINING.to_string(), MibValue::Int(60)),
            ]
        );
        assert_eq!(decode(&bytes, 9), Err("expected 9 variable bindings, got 4".to_string()));
        let err = decode(&response(7, 5, &[(oids::UPS_OUTPUT_SOURCE, Value::Null)]), 1).unwrap();
        assert_eq!(err, Err("SNMP GET answered error-status 5 (genErr) at index 0".to_string()));
    }

    /// A small deterministic generator, so a failure reproduces.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn untrusted_bytes_never_panic() {
        let valid = response(
            1234,
            0,
            &[
                (oids::UPS_OUTPUT_SOURCE, Value::Integer(3)),
                (oids::UPS_BATTERY_STATUS, Value::Integer(2)),
                (oids::UPS_IDENT_MANUFACTURER, Value::OctetString(b"Slipway")),
                (oids::UPS_SECONDS_ON_BATTERY, Value::Counter64(u64::MAX)),
                (oids::UPS_INPUT_VOLTAGE, Value::NoSuchObject),
            ],
        );
        let mut rng = XorShift(0x5eed_1234_abcd_0001);
        // Truncations at every length.
        for len in 0..valid.len() {
            let _ = decode(&valid[..len], 5);
        }
        // Random mutations of a valid packet: flips, insertions, deletions.
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..(1 + rng.next() % 4) {
                let at = (rng.next() as usize) % bytes.len().max(1);
                match rng.next() % 3 {
                    0 if !bytes.is_empty() => bytes[at] = rng.next() as u8,
                    1 => bytes.insert(at.min(bytes.len()), rng.next() as u8),
                    _ if !bytes.is_empty() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            let _ = decode(&bytes, 5);
        }
        // Pure noise, some of it starting like a SEQUENCE.
        for _ in 0..20_000 {
            let len = (rng.next() % 96) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                if rng.next().is_multiple_of(2) {
                    *first = 0x30;
                }
            }
            let _ = decode(&bytes, 5);
        }
    }
}
