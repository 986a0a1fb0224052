//! TFTP wire format: parsing what clients send, encoding what we send.

use thiserror::Error;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// RFC 1350 error codes we send.
pub const ERR_NOT_DEFINED: u16 = 0;
pub const ERR_NOT_FOUND: u16 = 1;
pub const ERR_ACCESS: u16 = 2;
pub const ERR_ILLEGAL: u16 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub filename: String,
    pub mode: String,
    /// Option names lower-cased, in the order sent.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Read(ReadRequest),
    Write {
        filename: String,
    },
    Ack(u16),
    Error {
        code: u16,
        message: String,
    },
    /// DATA or OACK from a client: never valid toward a read-only server.
    Unexpected(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("datagram shorter than 4 bytes")]
    Truncated,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("request fields are not NUL-terminated strings")]
    BadStrings,
}

impl ParseError {
    pub fn label(&self) -> &'static str {
        match self {
            ParseError::Truncated => "truncated",
            ParseError::UnknownOpcode(_) => "unknown_opcode",
            ParseError::BadStrings => "bad_strings",
        }
    }
}

impl Packet {
    pub fn parse(bytes: &[u8]) -> Result<Packet, ParseError> {
        if bytes.len() < 4 {
            return Err(ParseError::Truncated);
        }
        let opcode = u16::from_be_bytes([bytes[0], bytes[1]]);
        let body = &bytes[2..];
        match opcode {
            OP_RRQ | OP_WRQ => {
                let fields = strings(body)?;
                let [filename, mode, rest @ ..] = fields.as_slice() else {
                    return Err(ParseError::BadStrings);
                };
                if opcode == OP_WRQ {
                    return Ok(Packet::Write { filename: filename.clone() });
                }
                let options = rest
                    .chunks(2)
                    .filter(|pair| pair.len() == 2)
                    .map(|pair| (pair[0].to_ascii_lowercase(), pair[1].clone()))
                    .collect();
                Ok(Packet::Read(ReadRequest { filename: filename.clone(), mode: mode.to_ascii_lowercase(), options }))
            }
            OP_ACK => Ok(Packet::Ack(u16::from_be_bytes([body[0], body[1]]))),
            OP_ERROR => {
                let code = u16::from_be_bytes([body[0], body[1]]);
                let message =
                    String::from_utf8_lossy(body[2..].split(|b| *b == 0).next().unwrap_or_default()).into_owned();
                Ok(Packet::Error { code, message })
            }
            OP_DATA | OP_OACK => Ok(Packet::Unexpected(opcode)),
            other => Err(ParseError::UnknownOpcode(other)),
        }
    }
}

/// NUL-terminated strings; the last must be terminated too.
fn strings(body: &[u8]) -> Result<Vec<String>, ParseError> {
    if body.last() != Some(&0) {
        return Err(ParseError::BadStrings);
    }
    body[..body.len() - 1]
        .split(|b| *b == 0)
        .map(|s| String::from_utf8(s.to_vec()).map_err(|_| ParseError::BadStrings))
        .collect()
}

pub fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + payload.len());
    b.extend_from_slice(&OP_DATA.to_be_bytes());
    b.extend_from_slice(&block.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

pub fn error(code: u16, message: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(5 + message.len());
    b.extend_from_slice(&OP_ERROR.to_be_bytes());
    b.extend_from_slice(&code.to_be_bytes());
    b.extend_from_slice(message.as_bytes());
    b.push(0);
    b
}

pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut b = OP_OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(value.as_bytes());
        b.push(0);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_read_request_with_options() {
        let pkt = Packet::parse(b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00TSIZE\x000\x00").unwrap();
        assert_eq!(
            pkt,
            Packet::Read(ReadRequest {
                filename: "undionly.kpxe".into(),
                mode: "octet".into(),
                options: vec![("blksize".into(), "1468".into()), ("tsize".into(), "0".into())],
            })
        );
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(Packet::parse(b"\x00\x01"), Err(ParseError::Truncated));
        assert_eq!(Packet::parse(b"\x00\x09abcd"), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(Packet::parse(b"\x00\x01file\x00octet"), Err(ParseError::BadStrings));
        assert_eq!(Packet::parse(b"\x00\x01file\x00"), Err(ParseError::BadStrings));
        assert_eq!(Packet::parse(b"\x00\x05\x00\x08\x00"), Ok(Packet::Error { code: 8, message: String::new() }));
    }
}
