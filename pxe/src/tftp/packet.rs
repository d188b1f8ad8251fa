//! TFTP packets (RFC 1350) and option negotiation (RFC 2347 with blksize RFC 2348,
//! timeout and tsize RFC 2349, windowsize RFC 7440). Pure: bytes in, values out.

use std::time::Duration;

pub const RRQ: u16 = 1;
pub const WRQ: u16 = 2;
pub const DATA: u16 = 3;
pub const ACK: u16 = 4;
pub const ERROR: u16 = 5;
pub const OACK: u16 = 6;

/// TFTP error codes used here (RFC 1350 §5, RFC 2347).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
}

/// A read request as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The file name, as sent (any bytes but NUL).
    pub file: Vec<u8>,
    /// Option names (lowercased) and values, in the order sent.
    pub options: Vec<(String, String)>,
    /// Netascii mode (RFC 1350 §1): line ends go out as CR LF. tftp-hpa's client
    /// asks for it unless told `-m binary`.
    pub netascii: bool,
}

/// Why a request packet is not served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("not a TFTP request")]
    NotARequest,
    #[error("write requests are refused: this server is read-only")]
    Write,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("transfer mode {0:?} is not served; use octet or netascii")]
    Mode(String),
}

/// Parse a request packet. Octet and netascii RRQs are served.
pub fn parse_request(packet: &[u8]) -> Result<ReadRequest, RequestError> {
    if packet.len() < 2 {
        return Err(RequestError::NotARequest);
    }
    match u16::from_be_bytes([packet[0], packet[1]]) {
        RRQ => {}
        WRQ => return Err(RequestError::Write),
        _ => return Err(RequestError::NotARequest),
    }
    let body = &packet[2..];
    let Some(body) = body.strip_suffix(&[0]) else {
        return Err(RequestError::Malformed("fields are not NUL-terminated"));
    };
    let mut fields = body.split(|&b| b == 0);
    let file = fields
        .next()
        .filter(|f| !f.is_empty())
        .ok_or(RequestError::Malformed("no file name"))?;
    let mode = fields
        .next()
        .ok_or(RequestError::Malformed("no transfer mode"))?;
    let mode = String::from_utf8_lossy(mode).to_ascii_lowercase();
    let netascii = match mode.as_str() {
        "octet" => false,
        "netascii" => true,
        _ => return Err(RequestError::Mode(mode)),
    };
    let rest: Vec<&[u8]> = fields.collect();
    if rest.len() % 2 != 0 {
        return Err(RequestError::Malformed("option without a value"));
    }
    let options = rest
        .chunks(2)
        .map(|pair| {
            (
                String::from_utf8_lossy(pair[0]).to_ascii_lowercase(),
                String::from_utf8_lossy(pair[1]).into_owned(),
            )
        })
        .collect();
    Ok(ReadRequest {
        file: file.to_vec(),
        options,
        netascii,
    })
}

/// `bytes` as netascii: LF becomes CR LF and a lone CR becomes CR NUL.
pub fn to_netascii(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    for &b in bytes {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
    out
}

/// The transfer parameters after negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub block_size: usize,
    pub window: u16,
    pub timeout: Duration,
    /// The options to acknowledge, in the client's order; empty means no OACK.
    pub acknowledged: Vec<(String, String)>,
}

/// Defaults of RFC 1350 and our limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest blksize we grant (fits the interface MTU).
    pub max_block_size: u16,
    /// Largest windowsize we grant.
    pub max_window: u16,
    /// Retransmission timeout when the client asks for none.
    pub default_timeout: Duration,
}

/// The longest retransmission timeout a client may ask for, in seconds.
pub const MAX_TIMEOUT_S: u64 = 5;

/// Negotiate the options a client asked for. Unknown or malformed options are left
/// out of the OACK, which RFC 2347 allows; the client then uses the defaults.
pub fn negotiate(options: &[(String, String)], size: u64, limits: Limits) -> Negotiated {
    let mut n = Negotiated {
        block_size: 512,
        window: 1,
        timeout: limits.default_timeout,
        acknowledged: Vec::new(),
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in options {
        // One value per option: a repeated one is ignored, never echoed twice.
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        let number = value.trim().parse::<u64>().ok();
        match (name.as_str(), number) {
            ("blksize", Some(v)) if v >= 8 => {
                let granted = v.min(u64::from(limits.max_block_size)).min(65_464);
                n.block_size = granted as usize;
                n.acknowledged.push((name.clone(), granted.to_string()));
            }
            ("tsize", Some(0)) => n.acknowledged.push((name.clone(), size.to_string())),
            // RFC 2349 lets a client pick up to 255 s; a slot then lives minutes per
            // lost ACK. Longer than MAX_TIMEOUT_S is not acknowledged (the default
            // applies), which the RFC allows.
            ("timeout", Some(v)) if (1..=MAX_TIMEOUT_S).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                n.acknowledged.push((name.clone(), v.to_string()));
            }
            ("windowsize", Some(v)) if (1..=65_535).contains(&v) => {
                let granted = v.min(u64::from(limits.max_window)) as u16;
                n.window = granted;
                n.acknowledged.push((name.clone(), granted.to_string()));
            }
            _ => {}
        }
    }
    n
}

/// An OACK packet.
pub fn oack(acknowledged: &[(String, String)]) -> Vec<u8> {
    let mut p = OACK.to_be_bytes().to_vec();
    for (name, value) in acknowledged {
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        p.push(0);
    }
    p
}

/// An ERROR packet.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut p = ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&(code as u16).to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

/// What a client sent during a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ack(u16),
    Error(u16),
    Other,
}

/// Parse a packet received during a transfer.
pub fn parse_reply(packet: &[u8]) -> Reply {
    if packet.len() < 4 {
        return Reply::Other;
    }
    let value = u16::from_be_bytes([packet[2], packet[3]]);
    match u16::from_be_bytes([packet[0], packet[1]]) {
        ACK => Reply::Ack(value),
        ERROR => Reply::Error(value),
        _ => Reply::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_block_size: 1468,
        max_window: 64,
        default_timeout: Duration::from_secs(1),
    };

    fn rrq(fields: &[&str]) -> Vec<u8> {
        let mut p = vec![0, 1];
        for f in fields {
            p.extend_from_slice(f.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn a_repeated_option_is_acknowledged_once_with_its_first_value() {
        let options = [
            ("blksize".to_owned(), "1024".to_owned()),
            ("blksize".to_owned(), "1400".to_owned()),
            ("tsize".to_owned(), "0".to_owned()),
            ("tsize".to_owned(), "0".to_owned()),
        ];
        let n = negotiate(&options, 70_000, LIMITS);
        assert_eq!(n.block_size, 1024);
        assert_eq!(
            n.acknowledged,
            [
                ("blksize".to_owned(), "1024".to_owned()),
                ("tsize".to_owned(), "70000".to_owned())
            ]
        );
    }

    #[test]
    fn a_client_timeout_above_five_seconds_is_not_acknowledged() {
        let ask = |v: &str| negotiate(&[("timeout".to_owned(), v.to_owned())], 1, LIMITS);
        let n = ask("5");
        assert_eq!(
            (n.timeout, n.acknowledged.len()),
            (Duration::from_secs(5), 1)
        );
        let n = ask("255");
        assert_eq!(
            (n.timeout, n.acknowledged.len()),
            (LIMITS.default_timeout, 0)
        );
        let n = ask("0");
        assert_eq!(
            (n.timeout, n.acknowledged.len()),
            (LIMITS.default_timeout, 0)
        );
    }

    #[test]
    fn read_request_with_options_parses_case_insensitively() {
        let req = parse_request(&rrq(&[
            "ipxe.efi", "OCTET", "BlkSize", "1468", "tsize", "0",
        ]))
        .unwrap();
        assert_eq!(req.file, b"ipxe.efi");
        assert_eq!(
            req.options,
            [
                ("blksize".to_owned(), "1468".to_owned()),
                ("tsize".to_owned(), "0".to_owned())
            ]
        );
    }

    #[test]
    fn malformed_requests_and_writes_are_refused() {
        assert_eq!(parse_request(&[0]), Err(RequestError::NotARequest));
        assert_eq!(parse_request(&[0, 3, 0, 1]), Err(RequestError::NotARequest));
        assert_eq!(
            parse_request(&rrq(&["f", "octet"])[..7]),
            Err(RequestError::Malformed("fields are not NUL-terminated"))
        );
        assert_eq!(
            parse_request(&rrq(&["", "octet"])),
            Err(RequestError::Malformed("no file name"))
        );
        assert_eq!(
            parse_request(&rrq(&["f"])),
            Err(RequestError::Malformed("no transfer mode"))
        );
        assert_eq!(
            parse_request(&rrq(&["f", "octet", "blksize"])),
            Err(RequestError::Malformed("option without a value"))
        );
        assert_eq!(
            parse_request(&rrq(&["f", "mail"])),
            Err(RequestError::Mode("mail".into()))
        );
        let mut wrq = rrq(&["f", "octet"]);
        wrq[1] = 2;
        assert_eq!(parse_request(&wrq), Err(RequestError::Write));
    }

    #[test]
    fn netascii_requests_parse_and_convert_line_ends() {
        assert!(parse_request(&rrq(&["f", "NetASCII"])).unwrap().netascii);
        assert!(!parse_request(&rrq(&["f", "octet"])).unwrap().netascii);
        assert_eq!(to_netascii(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
    }

    #[test]
    fn negotiation_clamps_blksize_and_window_and_answers_tsize() {
        let opts: Vec<(String, String)> = [
            ("blksize", "65464"),
            ("tsize", "0"),
            ("windowsize", "200"),
            ("timeout", "3"),
            ("multicast", ""),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let n = negotiate(&opts, 850_528, LIMITS);
        assert_eq!(n.block_size, 1468);
        assert_eq!(n.window, 64);
        assert_eq!(n.timeout, Duration::from_secs(3));
        let acked: Vec<(&str, &str)> = n
            .acknowledged
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            acked,
            [
                ("blksize", "1468"),
                ("tsize", "850528"),
                ("windowsize", "64"),
                ("timeout", "3")
            ]
        );
        assert_eq!(oack(&n.acknowledged)[..2], [0, 6]);
    }

    #[test]
    fn bad_option_values_are_left_out_and_defaults_kept() {
        let opts: Vec<(String, String)> = [
            ("blksize", "7"),
            ("windowsize", "0"),
            ("timeout", "0"),
            ("tsize", "12"),
            ("blksize", "x"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let n = negotiate(&opts, 10, LIMITS);
        assert_eq!((n.block_size, n.window), (512, 1));
        assert!(n.acknowledged.is_empty());
    }

    #[test]
    fn replies_parse_and_error_packets_encode() {
        assert_eq!(parse_reply(&[0, 4, 0xff, 0xfe]), Reply::Ack(0xfffe));
        assert_eq!(parse_reply(&[0, 5, 0, 8, 0]), Reply::Error(8));
        assert_eq!(parse_reply(&[0, 4, 1]), Reply::Other);
        assert_eq!(
            error(ErrorCode::FileNotFound, "no"),
            [0, 5, 0, 1, b'n', b'o', 0]
        );
    }
}
