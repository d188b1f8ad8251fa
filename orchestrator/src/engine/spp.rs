//! What a station's Software Protection Platform says about KMS activation, as the
//! thin agent reports it (agent protocol v2): the raw XML of Application-log events
//! 12288 (activation request sent to the KMS host) and 12289 (the host's reply
//! processed), and the station's `SoftwareLicensingProduct` rows. This module owns
//! the daemon's reading of them: [`parse`] turns one event into a [`Record`], [`pair`]
//! credits each reply to the request it answers and yields one [`Attempt`] per
//! request, and [`channel`] judges whether a family's product is a volume KMS client
//! at all. It sits between the agent API (which hands it a report) and the ledger and
//! campaign (which take the attempts). It is pure: no I/O, no clock, every time comes
//! from the events. [`render_request`] and [`render_reply`] write events in the
//! recorded shape for the simulated stations.

use serde::{Deserialize, Serialize};

use super::Family;

/// `SoftwareLicensingProduct.ApplicationID` of Windows.
pub const WINDOWS_APP_ID: &str = "55c92734-d682-4d71-983e-d6ec3f16059f";
/// `SoftwareLicensingProduct.ApplicationID` of Office 2013 and later.
pub const OFFICE_APP_ID: &str = "0ff1ce15-a989-479d-af46-f275c6370663";
/// The event provider both events come from.
pub const PROVIDER: &str = "Microsoft-Windows-Security-SPP";
/// Event id of an activation request sent to the KMS host.
pub const EVENT_REQUEST: u32 = 12288;
/// Event id of a KMS host's reply, processed.
pub const EVENT_REPLY: u32 = 12289;
/// The largest event XML [`parse`] reads; a real one is under 2 KiB.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// The largest count or N-policy [`parse`] accepts. A KMS host's table holds at most
/// 50 CMIDs (twice the highest threshold), so anything near this is not a count.
pub const MAX_COUNT: u32 = 1000;
/// Status flag of a 12289 whose host count is below the client's N-policy.
pub const STATUS_COUNT_INSUFFICIENT: u32 = 0x0400_0000;

const EVENT_NS: &str = "http://schemas.microsoft.com/win/2004/08/events/event";
const PROVIDER_GUID: &str = "{E23B33B0-C8C9-472C-A5F9-F2BDFEA0F156}";
/// A real event has about 40 nodes; this only bounds what a hostile one costs.
const MAX_NODES: u32 = 2048;
/// A client time is a short date and time in the station's locale.
const MAX_CLIENT_TIME_CHARS: usize = 64;
/// "host:port", a DNS name of at most 253 characters and a port.
const MAX_HOST_CHARS: usize = 260;
/// Values quoted in errors are cut to this many characters.
const MAX_QUOTED_CHARS: usize = 60;

/// One `SoftwareLicensingProduct` row with a partial product key, as the agent
/// reports it in `licenses`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct License {
    /// `ID`: the SKU's activation id, the one a 12288 names.
    pub id: String,
    /// `ApplicationID`: which family the product belongs to (see [`family_of`]).
    pub application_id: String,
    /// `Name`, e.g. "Windows(R), Education edition".
    pub name: String,
    /// `Description`, e.g. "Windows(R) Operating System, VOLUME_KMSCLIENT channel".
    pub description: String,
    /// `ProductKeyChannel`, e.g. "Volume:GVLK"; "" where Windows has none.
    pub channel: String,
    /// `LicenseStatus` 0..6 (0 unlicensed, 1 licensed, 2..4 and 6 grace, 5 notification).
    pub license_status: u32,
}

/// One parsed SPP event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Record {
    Request(Request),
    Reply(Reply),
}

impl Record {
    /// The event's `EventRecordID`.
    pub fn record_id(&self) -> u64 {
        match self {
            Record::Request(r) => r.record_id,
            Record::Reply(r) => r.record_id,
        }
    }

    /// The event's `TimeCreated`, unix milliseconds.
    pub fn time_ms(&self) -> u64 {
        match self {
            Record::Request(r) => r.time_ms,
            Record::Reply(r) => r.time_ms,
        }
    }
}

/// Event 12288: an activation request sent to a KMS host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `EventRecordID`: the Application log's own order.
    pub record_id: u64,
    /// `TimeCreated`, unix milliseconds.
    pub time_ms: u64,
    /// Field 0: the result of sending, e.g. 0xC004F074 (no KMS host reachable).
    pub hresult: u32,
    /// Field 2: the KMS host as "host:port" ("" where discovery found none).
    pub host: String,
    /// Field 3: the client machine id, a lowercase GUID.
    pub cmid: String,
    /// Field 4: the request timestamp as the station formats it (locale dependent);
    /// the 12289 that answers echoes it.
    pub client_time: String,
    /// Field 8: the SKU's activation id (`SoftwareLicensingProduct.ID`), lowercase.
    pub activation_id: String,
    /// Field 9: the N-policy, the count this client needs (25 Windows client, 5
    /// Windows Server and Office).
    pub needed: u32,
}

/// Event 12289: a KMS host's reply, processed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// `EventRecordID`.
    pub record_id: u64,
    /// `TimeCreated`, unix milliseconds.
    pub time_ms: u64,
    /// Field 0: the result. 0x0 does not mean activated: read `activated`.
    pub hresult: u32,
    /// Field 1: status flags ([`STATUS_COUNT_INSUFFICIENT`]).
    pub status: u32,
    /// Field 2: the activated flag (fBound).
    pub activated: bool,
    /// Field 4: the KMS host's current count, the asking client included.
    pub count: u32,
    /// Field 7: the timestamp of the request this reply answers.
    pub client_time: String,
}

impl Reply {
    /// The host said its count is below the client's N-policy.
    pub fn count_insufficient(&self) -> bool {
        self.status & STATUS_COUNT_INSUFFICIENT != 0
    }
}

/// Why an event was refused. Each message names what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SppError {
    #[error("event XML is {0} bytes, over the limit of {MAX_EVENT_BYTES}")]
    TooLong(usize),
    #[error("event XML has a DOCTYPE; DTDs and entity declarations are refused")]
    Dtd,
    #[error("event XML is malformed: {0}")]
    Malformed(String),
    #[error("not a Windows event: the root element is <{0}>")]
    NotAnEvent(String),
    #[error("event has no {0}")]
    MissingElement(&'static str),
    #[error("event is from provider {0:?}, not {PROVIDER}")]
    WrongProvider(String),
    #[error("event id {0} is neither {EVENT_REQUEST} (activation request) nor {EVENT_REPLY} (activation reply)")]
    WrongEvent(u32),
    #[error("event {element} {value:?} is not a number")]
    BadElement {
        element: &'static str,
        value: String,
    },
    #[error("event TimeCreated {0:?} is not a UTC time of the form 2026-11-30T22:10:04.1234567Z")]
    BadTime(String),
    #[error("event {event} has {found} fields; field {index} ({name}) is missing")]
    MissingField {
        event: u32,
        index: usize,
        name: &'static str,
        found: usize,
    },
    #[error(
        "event {event} field {index} ({name}) {value:?} is not a GUID of 8-4-4-4-12 hex digits"
    )]
    BadGuid {
        event: u32,
        index: usize,
        name: &'static str,
        value: String,
    },
    #[error("event {event} field {index} ({name}) {value:?} is not {expected}")]
    BadNumber {
        event: u32,
        index: usize,
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("event {event} field {index} ({name}) {value} is over the limit of {MAX_COUNT}")]
    TooLarge {
        event: u32,
        index: usize,
        name: &'static str,
        value: u64,
    },
    #[error("event {event} field {index} ({name}) {value:?} is empty, too long or has control characters")]
    BadText {
        event: u32,
        index: usize,
        name: &'static str,
        value: String,
    },
}

/// Reads one event as `EventRecord.ToXml()` gives it.
pub fn parse(xml: &str) -> Result<Record, SppError> {
    if xml.len() > MAX_EVENT_BYTES {
        return Err(SppError::TooLong(xml.len()));
    }
    // roxmltree refuses a DTD unless allowed, so no entity is ever declared or
    // expanded; an undeclared reference is an error of its own.
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, options).map_err(|e| match e {
        roxmltree::Error::DtdDetected => SppError::Dtd,
        other => SppError::Malformed(other.to_string()),
    })?;
    let event = doc.root_element();
    if !event.has_tag_name((EVENT_NS, "Event")) {
        let name = event.tag_name().name();
        return Err(SppError::NotAnEvent(match event.tag_name().namespace() {
            Some(ns) if ns != EVENT_NS => format!("{name} xmlns='{}'", quoted(ns)),
            _ => name.to_string(),
        }));
    }
    let system = child(event, "System", "System element")?;
    let provider = child(system, "Provider", "Provider element")?;
    let provider_name = provider.attribute("Name").unwrap_or("");
    // Windows treats provider names case-insensitively.
    if !provider_name.eq_ignore_ascii_case(PROVIDER) {
        return Err(SppError::WrongProvider(quoted(provider_name)));
    }
    let id = element_number(system, "EventID")?;
    let id = u32::try_from(id).map_err(|_| SppError::BadElement {
        element: "EventID",
        value: id.to_string(),
    })?;
    if id != EVENT_REQUEST && id != EVENT_REPLY {
        return Err(SppError::WrongEvent(id));
    }
    let record_id = element_number(system, "EventRecordID")?;
    let time = child(system, "TimeCreated", "TimeCreated element")?
        .attribute("SystemTime")
        .ok_or(SppError::MissingElement("TimeCreated SystemTime"))?;
    let time_ms = system_time_ms(time).ok_or_else(|| SppError::BadTime(quoted(time)))?;
    let data = child(event, "EventData", "EventData element")?;
    // %1 is one comma-delimited insertion string; some builds split it over several
    // <Data> elements, and the spacing after the commas differs between builds.
    let joined = data
        .children()
        .filter(|n| n.has_tag_name((EVENT_NS, "Data")))
        .map(text_of)
        .collect::<Vec<_>>()
        .join(",");
    let fields = Fields {
        event: id,
        items: joined.split(',').map(str::trim).collect(),
    };
    if id == EVENT_REQUEST {
        fields.require(&RQ_N_POLICY)?;
        Ok(Record::Request(Request {
            record_id,
            time_ms,
            hresult: fields.hex(&RQ_HRESULT)?,
            host: fields.text(&RQ_HOST, MAX_HOST_CHARS, true)?,
            cmid: fields.guid(&RQ_CMID)?,
            client_time: fields.text(&RQ_CLIENT_TIME, MAX_CLIENT_TIME_CHARS, false)?,
            activation_id: fields.guid(&RQ_ACTIVATION_ID)?,
            needed: fields.count(&RQ_N_POLICY)?,
        }))
    } else {
        fields.require(&RP_CLIENT_TIME)?;
        Ok(Record::Reply(Reply {
            record_id,
            time_ms,
            hresult: fields.hex(&RP_HRESULT)?,
            status: fields.hex(&RP_STATUS)?,
            activated: fields.flag(&RP_ACTIVATED)?,
            count: fields.count(&RP_COUNT)?,
            client_time: fields.text(&RP_CLIENT_TIME, MAX_CLIENT_TIME_CHARS, false)?,
        }))
    }
}

/// A field of %1: its position (Volume Activation Technical Reference, "Windows
/// Event Log", table 11) and the name errors give it.
struct Field {
    index: usize,
    name: &'static str,
}

const RQ_HRESULT: Field = Field {
    index: 0,
    name: "result",
};
const RQ_HOST: Field = Field {
    index: 2,
    name: "KMS host",
};
const RQ_CMID: Field = Field {
    index: 3,
    name: "CMID",
};
const RQ_CLIENT_TIME: Field = Field {
    index: 4,
    name: "client time",
};
const RQ_ACTIVATION_ID: Field = Field {
    index: 8,
    name: "activation id",
};
const RQ_N_POLICY: Field = Field {
    index: 9,
    name: "N-policy",
};
const RP_HRESULT: Field = Field {
    index: 0,
    name: "result",
};
const RP_STATUS: Field = Field {
    index: 1,
    name: "status flags",
};
const RP_ACTIVATED: Field = Field {
    index: 2,
    name: "activated flag",
};
const RP_COUNT: Field = Field {
    index: 4,
    name: "current count",
};
const RP_CLIENT_TIME: Field = Field {
    index: 7,
    name: "client time",
};

struct Fields<'a> {
    event: u32,
    items: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    /// Every field up to `last` is there (fields past it are ignored: later builds
    /// may append some).
    fn require(&self, last: &Field) -> Result<(), SppError> {
        if self.items.len() > last.index {
            return Ok(());
        }
        let index = self.items.len();
        let name = match (self.event, index) {
            (EVENT_REQUEST, 1) => "status flags",
            (EVENT_REQUEST, 2) => RQ_HOST.name,
            (EVENT_REQUEST, 3) => RQ_CMID.name,
            (EVENT_REQUEST, 4) => RQ_CLIENT_TIME.name,
            (EVENT_REQUEST, 5) => "VM info",
            (EVENT_REQUEST, 6) => "licensing status",
            (EVENT_REQUEST, 7) => "minutes to expiration",
            (EVENT_REQUEST, 8) => RQ_ACTIVATION_ID.name,
            (EVENT_REQUEST, _) => RQ_N_POLICY.name,
            (_, 1) => RP_STATUS.name,
            (_, 2) => RP_ACTIVATED.name,
            (_, 3) => "unused",
            (_, 4) => RP_COUNT.name,
            (_, 5) => "activation interval",
            (_, 6) => "renewal interval",
            _ => RP_CLIENT_TIME.name,
        };
        Err(SppError::MissingField {
            event: self.event,
            index,
            name,
            found: self.items.len(),
        })
    }

    fn get(&self, field: &Field) -> Result<&'a str, SppError> {
        self.items
            .get(field.index)
            .copied()
            .ok_or(SppError::MissingField {
                event: self.event,
                index: field.index,
                name: field.name,
                found: self.items.len(),
            })
    }

    fn bad_number(&self, field: &Field, value: &str, expected: &'static str) -> SppError {
        SppError::BadNumber {
            event: self.event,
            index: field.index,
            name: field.name,
            value: quoted(value),
            expected,
        }
    }

    /// An HRESULT or flag word: SPP writes them as 0x-prefixed hex.
    fn hex(&self, field: &Field) -> Result<u32, SppError> {
        let value = self.get(field)?;
        let digits = value
            .strip_prefix("0x")
            .or_else(|| value.strip_prefix("0X"));
        match digits {
            Some(d)
                if !d.is_empty() && d.len() <= 8 && d.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                u32::from_str_radix(d, 16)
                    .map_err(|_| self.bad_number(field, value, "a 0x hex number"))
            }
            _ => Err(self.bad_number(field, value, "a 0x hex number")),
        }
    }

    fn count(&self, field: &Field) -> Result<u32, SppError> {
        let value = self.get(field)?;
        if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.bad_number(field, value, "a decimal number"));
        }
        let n: u64 = value
            .parse()
            .map_err(|_| self.bad_number(field, value, "a decimal number"))?;
        match u32::try_from(n) {
            Ok(n) if n <= MAX_COUNT => Ok(n),
            _ => Err(SppError::TooLarge {
                event: self.event,
                index: field.index,
                name: field.name,
                value: n,
            }),
        }
    }

    fn flag(&self, field: &Field) -> Result<bool, SppError> {
        match self.get(field)? {
            "1" => Ok(true),
            "0" => Ok(false),
            other => Err(self.bad_number(field, other, "1 or 0")),
        }
    }

    fn guid(&self, field: &Field) -> Result<String, SppError> {
        let value = self.get(field)?;
        let bare = value
            .strip_prefix('{')
            .and_then(|v| v.strip_suffix('}'))
            .unwrap_or(value);
        if is_guid(bare) {
            Ok(bare.to_ascii_lowercase())
        } else {
            Err(SppError::BadGuid {
                event: self.event,
                index: field.index,
                name: field.name,
                value: quoted(value),
            })
        }
    }

    fn text(
        &self,
        field: &Field,
        max_chars: usize,
        may_be_empty: bool,
    ) -> Result<String, SppError> {
        let value = self.get(field)?;
        if (value.is_empty() && !may_be_empty)
            || value.chars().count() > max_chars
            || value.chars().any(char::is_control)
        {
            return Err(SppError::BadText {
                event: self.event,
                index: field.index,
                name: field.name,
                value: quoted(value),
            });
        }
        Ok(value.to_string())
    }
}

fn child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &str,
    what: &'static str,
) -> Result<roxmltree::Node<'a, 'i>, SppError> {
    node.children()
        .find(|n| n.has_tag_name((EVENT_NS, name)))
        .ok_or(SppError::MissingElement(what))
}

/// All text inside an element (text split by a comment or CDATA section included).
fn text_of(node: roxmltree::Node<'_, '_>) -> String {
    node.descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect()
}

fn element_number(system: roxmltree::Node<'_, '_>, element: &'static str) -> Result<u64, SppError> {
    let node = system
        .children()
        .find(|n| n.has_tag_name((EVENT_NS, element)))
        .ok_or(SppError::MissingElement(element))?;
    let text = text_of(node);
    let value = text.trim();
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SppError::BadElement {
            element,
            value: quoted(value),
        });
    }
    value.parse().map_err(|_| SppError::BadElement {
        element,
        value: quoted(value),
    })
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A value as an error quotes it: cut short, so a hostile event cannot fill a log.
fn quoted(value: &str) -> String {
    if value.chars().count() <= MAX_QUOTED_CHARS {
        value.to_string()
    } else {
        let mut cut: String = value.chars().take(MAX_QUOTED_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// `TimeCreated SystemTime` ("2026-11-30T22:10:04.1234567Z", always UTC in
/// `ToXml()`; .NET writes 7 fraction digits, newer runtimes up to 9) as unix ms.
fn system_time_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        let part = s.get(from..to)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let rest = s.get(19..)?.strip_suffix('Z')?;
    let millis = match rest.strip_prefix('.') {
        None if rest.is_empty() => 0,
        Some(frac)
            if !frac.is_empty() && frac.len() <= 9 && frac.bytes().all(|c| c.is_ascii_digit()) =>
        {
            let mut ms = 0u64;
            for (i, c) in frac
                .bytes()
                .chain(std::iter::repeat(b'0'))
                .take(3)
                .enumerate()
            {
                ms += u64::from(c - b'0') * 10u64.pow(2 - i as u32);
            }
            ms
        }
        _ => return None,
    };
    if year < 1970 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::from(year), month, day)).ok()?;
    let seconds =
        days * 86_400 + u64::from(hour) * 3600 + u64::from(minute) * 60 + u64::from(second);
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01: the inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A request's attempt at activation, with the reply credited to it if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub family: Family,
    pub cmid: String,
    /// The request's `TimeCreated`, unix ms.
    pub requested_ms: u64,
    /// The request's own result (0xC004F074: no host reachable).
    pub request_hresult: u32,
    /// None: the host did not answer, or the request was superseded first.
    pub reply: Option<Reply>,
}

/// What [`pair`] made of a station's events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairing {
    /// One per request of a known SKU, in record order.
    pub attempts: Vec<Attempt>,
    /// Record ids of replies credited to nobody.
    pub ambiguous: Vec<u64>,
    /// Activation ids of requests with no licence row of a known family, each once.
    pub unknown_sku: Vec<String>,
}

/// A request waiting for its reply. `attempt` is None for a request of an unknown
/// SKU: it opens no attempt, but a reply that answers it must not go to another.
struct Open {
    family: Option<Family>,
    attempt: Option<usize>,
    client_time: String,
}

/// Credits each 12289 to the 12288 it answers. Records are taken in
/// `EventRecordID` order, a record id seen twice counts once.
///
/// A 12289 names neither CMID nor activation id; it echoes the request's client
/// time. So a reply goes to the one open request with that client time; failing
/// that, to the only open request; failing that, to nobody (`ambiguous`). Order
/// alone never decides between two open families.
pub fn pair(records: &[Record], licenses: &[License]) -> Pairing {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.record_id());
    sorted.dedup_by_key(|r| r.record_id());

    let mut pairing = Pairing::default();
    let mut open: Vec<Open> = Vec::new();
    for record in sorted {
        match record {
            Record::Request(request) => {
                let family = licenses
                    .iter()
                    .find(|l| same_guid(&l.id, &request.activation_id))
                    .and_then(|l| family_of(&l.application_id));
                let attempt = family.map(|family| {
                    pairing.attempts.push(Attempt {
                        family,
                        cmid: request.cmid.clone(),
                        requested_ms: request.time_ms,
                        request_hresult: request.hresult,
                        reply: None,
                    });
                    pairing.attempts.len() - 1
                });
                if family.is_none() && !pairing.unknown_sku.contains(&request.activation_id) {
                    pairing.unknown_sku.push(request.activation_id.clone());
                }
                // A newer request of the same family supersedes the open one: SPP
                // retries, and the older request's reply, if it ever comes, echoes
                // the older client time and then matches nothing open.
                open.retain(|o| o.family != family);
                open.push(Open {
                    family,
                    attempt,
                    client_time: normalize_space(&request.client_time),
                });
            }
            Record::Reply(reply) => {
                let client_time = normalize_space(&reply.client_time);
                let mut matching = open
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.client_time == client_time);
                let chosen = match (matching.next(), matching.next()) {
                    (Some((i, _)), None) => Some(i),
                    _ if open.len() == 1 => Some(0),
                    _ => None,
                };
                match chosen.map(|i| open.remove(i)).and_then(|o| o.attempt) {
                    Some(a) => pairing.attempts[a].reply = Some(reply.clone()),
                    None => pairing.ambiguous.push(reply.record_id),
                }
            }
        }
    }
    pairing
}

/// Locales differ in the padding of the client time ("2026/12/1  8:15"); runs of
/// whitespace compare equal.
fn normalize_space(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn same_guid(a: &str, b: &str) -> bool {
    let bare = |s: &str| {
        let s = s.trim();
        s.strip_prefix('{')
            .and_then(|v| v.strip_suffix('}'))
            .unwrap_or(s)
            .to_string()
    };
    bare(a).eq_ignore_ascii_case(&bare(b))
}

/// The family of a `SoftwareLicensingProduct.ApplicationID` (any case, braces
/// optional); None for any other application.
pub fn family_of(application_id: &str) -> Option<Family> {
    if same_guid(application_id, WINDOWS_APP_ID) {
        Some(Family::Windows)
    } else if same_guid(application_id, OFFICE_APP_ID) {
        Some(Family::Office)
    } else {
        None
    }
}

/// How a family's product is licensed, as far as KMS is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "channel", rename_all = "kebab-case")]
pub enum Channel {
    /// A volume KMS client (GVLK): the agent activates it.
    KmsClient,
    /// Licensed some other way; the agent never activates it (a MAK would be
    /// spent). The channel as Windows names it ("Volume:MAK", "Retail", "OEM:DM"),
    /// "VOLUME_MAK" from the description where Windows names none, or
    /// "subscription" for a Microsoft 365 subscription.
    NotKmsClient(String),
    /// No licensed product of the family (no row with a partial product key).
    Missing,
}

/// Judges a family's licence rows. Any volume KMS client row makes the family a KMS
/// client (Office can hold several products, e.g. ProPlus KMS and a retail Visio).
/// Otherwise the channel named is that of the row whose licence matters most:
/// licensed, then grace, then notification, then unlicensed; the first such row.
pub fn channel(licenses: &[License], family: Family) -> Channel {
    let rows: Vec<&License> = licenses
        .iter()
        .filter(|l| family_of(&l.application_id) == Some(family))
        .collect();
    if rows.iter().any(|l| {
        l.description
            .to_ascii_uppercase()
            .contains("VOLUME_KMSCLIENT")
    }) {
        return Channel::KmsClient;
    }
    let best = rows
        .iter()
        .enumerate()
        .max_by_key(|(i, l)| (status_rank(l.license_status), std::cmp::Reverse(*i)))
        .map(|(_, l)| *l);
    match best {
        Some(license) => Channel::NotKmsClient(channel_name(license)),
        None => Channel::Missing,
    }
}

fn status_rank(license_status: u32) -> u8 {
    match license_status {
        1 => 4,
        2 | 3 | 4 | 6 => 3,
        5 => 2,
        0 => 1,
        _ => 0,
    }
}

fn channel_name(license: &License) -> String {
    let name = license.name.to_ascii_lowercase();
    let description = license.description.to_ascii_lowercase();
    // Microsoft 365 Apps report a retail-like key; its name ("..._Subscription1
    // edition") and description ("TIMEBASED_SUB channel") say what it is.
    if name.contains("subscription")
        || description.contains("subscription")
        || description.contains("timebased_sub")
    {
        return "subscription".to_string();
    }
    if !license.channel.trim().is_empty() {
        return license.channel.trim().to_string();
    }
    // "Windows(R) Operating System, VOLUME_MAK channel" -> "VOLUME_MAK".
    let tail = license
        .description
        .rsplit_once(", ")
        .map_or(license.description.as_str(), |(_, t)| t)
        .trim();
    let tail = match tail.len().checked_sub(" channel".len()) {
        Some(cut) if tail.is_char_boundary(cut) && tail[cut..].eq_ignore_ascii_case(" channel") => {
            &tail[..cut]
        }
        _ => tail,
    };
    if tail.is_empty() {
        "unknown".to_string()
    } else {
        tail.to_string()
    }
}

/// A 12288 as `ToXml()` writes it, from `computer` (its `<Computer>`). The fields a
/// [`Request`] does not hold are those of a fresh image: status flags 0x0, VM info
/// 0, licensing status 2 (out-of-box grace), 43200 minutes to expiration. No field
/// may hold a comma (a comma separates the fields).
pub fn render_request(request: &Request, computer: &str) -> String {
    let data = format!(
        "{:#X}, 0x0, {}, {}, {}, 0, 2, 43200, {}, {}",
        request.hresult,
        request.host,
        request.cmid,
        request.client_time,
        request.activation_id,
        request.needed
    );
    render(
        EVENT_REQUEST,
        request.record_id,
        request.time_ms,
        computer,
        &data,
    )
}

/// A 12289 as `ToXml()` writes it, from `computer`. The intervals a [`Reply`] does
/// not hold are the KMS defaults: activation 120 minutes, renewal 10080.
pub fn render_reply(reply: &Reply, computer: &str) -> String {
    let data = format!(
        "{:#X}, {:#X}, {}, 0, {}, 120, 10080, {}",
        reply.hresult,
        reply.status,
        u8::from(reply.activated),
        reply.count,
        reply.client_time
    );
    render(EVENT_REPLY, reply.record_id, reply.time_ms, computer, &data)
}

fn render(id: u32, record_id: u64, time_ms: u64, computer: &str, data: &str) -> String {
    format!(
        "<Event xmlns='{EVENT_NS}'><System><Provider Name='{PROVIDER}' Guid='{PROVIDER_GUID}' \
         EventSourceName='Software Protection Platform Service'/><EventID Qualifiers='16384'>{id}</EventID>\
         <Version>0</Version><Level>4</Level><Task>0</Task><Opcode>0</Opcode><Keywords>0x80000000000000</Keywords>\
         <TimeCreated SystemTime='{time}'/><EventRecordID>{record_id}</EventRecordID><Correlation/>\
         <Execution ProcessID='0' ThreadID='0'/><Channel>Application</Channel><Computer>{computer}</Computer>\
         <Security/></System><EventData><Data>{data}</Data></EventData></Event>",
        time = system_time(time_ms),
        computer = escape(computer),
        data = escape(data),
    )
}

/// Unix ms as `TimeCreated SystemTime` with .NET's 7 fraction digits.
fn system_time(time_ms: u64) -> String {
    let seconds = time_ms / 1000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, day) = civil_from_days(days);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}0000Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        time_ms % 1000
    )
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! Fixtures are recorded-style events built from the documented field layout.
    //! Activation ids of the KMS clients are real (Windows 10/11 Education
    //! e0c42288-…; Office 2016/2019/2021/2024 ProPlus KMS SKU IDs as `ospp.vbs /act`
    //! prints them), and so is the Microsoft 365 Subscription1 SKU id in
    //! licenses.json. The MAK, retail, OEM and Office MAK rows' ids are invented;
    //! CMIDs are random.

    use super::*;

    const WINDOWS10_ACTIVATED: &str = include_str!("spp_fixtures/windows10_activated.xml");
    const WINDOWS11_COUNT_INSUFFICIENT: &str =
        include_str!("spp_fixtures/windows11_count_insufficient.xml");
    const WINDOWS11_NO_REPLY: &str = include_str!("spp_fixtures/windows11_no_reply.xml");
    const OFFICE2016: &str = include_str!("spp_fixtures/office2016.xml");
    const OFFICE2019: &str = include_str!("spp_fixtures/office2019.xml");
    const OFFICE2021: &str = include_str!("spp_fixtures/office2021.xml");
    const OFFICE2024: &str = include_str!("spp_fixtures/office2024.xml");
    const INTERLEAVED: &str = include_str!("spp_fixtures/interleaved_windows_office.xml");
    const LICENSES: &str = include_str!("spp_fixtures/licenses.json");

    const WIN_EDU: &str = "e0c42288-980c-4788-a014-c080d2e1926e";
    const OFFICE_2021: &str = "fbdb3e18-a8ef-4fb3-9183-dffd60bd0984";

    /// The events of a fixture file: one `<Event>` a line; comment lines skipped.
    fn events(file: &str) -> Vec<&str> {
        file.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("<Event"))
            .collect()
    }

    fn records(file: &str) -> Vec<Record> {
        events(file)
            .into_iter()
            .map(|e| parse(e).unwrap())
            .collect()
    }

    fn licenses() -> Vec<License> {
        serde_json::from_str(LICENSES).unwrap()
    }

    /// The licence rows with these ids, as one station would report them.
    fn rows(ids: &[&str]) -> Vec<License> {
        let rows: Vec<License> = licenses()
            .into_iter()
            .filter(|l| ids.contains(&l.id.as_str()))
            .collect();
        assert_eq!(rows.len(), ids.len(), "licenses.json lacks one of {ids:?}");
        rows
    }

    fn request(record: &Record) -> &Request {
        match record {
            Record::Request(r) => r,
            Record::Reply(r) => panic!("expected a 12288, got {r:?}"),
        }
    }

    fn reply(record: &Record) -> &Reply {
        match record {
            Record::Reply(r) => r,
            Record::Request(r) => panic!("expected a 12289, got {r:?}"),
        }
    }

    fn req(record_id: u64, activation_id: &str, client_time: &str) -> Record {
        Record::Request(Request {
            record_id,
            time_ms: 1_796_076_604_000 + record_id * 1000,
            hresult: 0,
            host: "kms.school.example:1688".to_string(),
            cmid: format!("00000000-0000-4000-8000-{record_id:012}"),
            client_time: client_time.to_string(),
            activation_id: activation_id.to_string(),
            needed: 25,
        })
    }

    fn rep(record_id: u64, count: u32, client_time: &str) -> Record {
        Record::Reply(Reply {
            record_id,
            time_ms: 1_796_076_604_000 + record_id * 1000,
            hresult: 0,
            status: 0,
            activated: true,
            count,
            client_time: client_time.to_string(),
        })
    }

    /// The first event of the Windows 10 fixture with its %1 replaced.
    fn with_data(data: &str) -> String {
        let event = events(WINDOWS10_ACTIVATED)[0];
        let start = event.find("<Data>").unwrap() + "<Data>".len();
        let end = event.find("</Data>").unwrap();
        format!("{}{}{}", &event[..start], data, &event[end..])
    }

    const GOOD_REQUEST_DATA: &str = "0x0, 0x0, kms.school.example:1688, 066c2c24-fe5e-483a-944f-d545cfa695cf, \
                                     2026/11/30 22:10, 0, 2, 43200, e0c42288-980c-4788-a014-c080d2e1926e, 25";

    #[test]
    fn windows10_activated_fixture_parses_to_its_request_and_reply_fields() {
        let recs = records(WINDOWS10_ACTIVATED);
        assert_eq!(recs.len(), 2);
        assert_eq!(
            request(&recs[0]),
            &Request {
                record_id: 1585,
                time_ms: 1_796_076_604_123,
                hresult: 0,
                host: "kms.school.example:1688".to_string(),
                cmid: "066c2c24-fe5e-483a-944f-d545cfa695cf".to_string(),
                client_time: "2026/11/30 22:10".to_string(),
                activation_id: WIN_EDU.to_string(),
                needed: 25,
            }
        );
        assert_eq!(
            reply(&recs[1]),
            &Reply {
                record_id: 1586,
                time_ms: 1_796_076_604_641,
                hresult: 0,
                status: 0,
                activated: true,
                count: 27,
                client_time: "2026/11/30 22:10".to_string(),
            }
        );
    }

    #[test]
    fn count_insufficient_reply_has_result_0x0_but_activated_flag_0() {
        let recs = records(WINDOWS11_COUNT_INSUFFICIENT);
        let r = reply(&recs[1]);
        assert_eq!(
            (r.hresult, r.status, r.activated, r.count),
            (0, 0x0400_0000, false, 4)
        );
        assert!(r.count_insufficient());
        assert_eq!(request(&recs[0]).needed, 25);
        let pairing = pair(&recs, &licenses());
        assert_eq!(pairing.attempts.len(), 1);
        assert_eq!(
            pairing.attempts[0].reply.as_ref().map(|r| r.activated),
            Some(false)
        );
    }

    #[test]
    fn unanswered_request_is_an_attempt_with_its_hresult_and_no_reply() {
        let recs = records(WINDOWS11_NO_REPLY);
        assert_eq!(recs.len(), 1);
        assert_eq!(request(&recs[0]).hresult, 0xC004_F074);
        let pairing = pair(&recs, &licenses());
        assert_eq!(
            pairing.attempts,
            vec![Attempt {
                family: Family::Windows,
                cmid: "d1ec46e1-0753-4440-aca3-479e9c590416".to_string(),
                requested_ms: request(&recs[0]).time_ms,
                request_hresult: 0xC004_F074,
                reply: None,
            }]
        );
        assert!(pairing.ambiguous.is_empty());
    }

    #[test]
    fn office_fixtures_parse_with_their_sku_n_policy_5_and_pair_as_office() {
        let cases = [
            (
                OFFICE2016,
                "d450596f-894d-49e0-966a-fd39ed4c4c64",
                0x0,
                true,
                7,
            ),
            (
                OFFICE2019,
                "85dd8b5f-eaa4-4af3-a628-cce9e77c9a03",
                0xC004_F038,
                false,
                3,
            ),
            (OFFICE2021, OFFICE_2021, 0x0, true, 5),
            (
                OFFICE2024,
                "8d368fc1-9470-4be2-8d66-90e836cbb051",
                0x0,
                true,
                9,
            ),
        ];
        for (file, sku, hresult, activated, count) in cases {
            let recs = records(file);
            assert_eq!(recs.len(), 2, "{sku}");
            let rq = request(&recs[0]);
            assert_eq!((rq.activation_id.as_str(), rq.needed), (sku, 5));
            let rp = reply(&recs[1]);
            assert_eq!(
                (rp.hresult, rp.activated, rp.count),
                (hresult, activated, count),
                "{sku}"
            );
            assert_eq!(rp.client_time, rq.client_time);
            let pairing = pair(&recs, &licenses());
            assert_eq!(pairing.attempts.len(), 1, "{sku}");
            assert_eq!(pairing.attempts[0].family, Family::Office, "{sku}");
            assert_eq!(pairing.attempts[0].reply.as_ref(), Some(rp), "{sku}");
        }
    }

    #[test]
    fn interleaved_requests_are_credited_to_their_own_families() {
        let recs = records(INTERLEAVED);
        let pairing = pair(&recs, &rows(&[WIN_EDU, OFFICE_2021]));
        assert!(pairing.ambiguous.is_empty());
        assert!(pairing.unknown_sku.is_empty());
        let by_family: Vec<(Family, Option<u32>)> = pairing
            .attempts
            .iter()
            .map(|a| (a.family, a.reply.as_ref().map(|r| r.count)))
            .collect();
        assert_eq!(
            by_family,
            vec![(Family::Windows, Some(26)), (Family::Office, Some(6))]
        );
        assert_eq!(
            pairing.attempts[0].cmid,
            "c9493d0a-2971-4fe2-868f-e7786bd83436"
        );
        assert_eq!(
            pairing.attempts[1].cmid,
            "a6dd16fd-419f-4d30-957b-0bfc9f2bf856"
        );
    }

    #[test]
    fn two_open_families_and_no_matching_client_time_leave_the_reply_to_nobody() {
        let recs = [
            req(10, WIN_EDU, "2026/12/4 8:15"),
            req(11, OFFICE_2021, "2026/12/4 8:16"),
            rep(12, 26, "2026/12/4 9:00"),
        ];
        let pairing = pair(&recs, &licenses());
        assert_eq!(pairing.ambiguous, vec![12]);
        assert_eq!(pairing.attempts.len(), 2);
        assert!(pairing.attempts.iter().all(|a| a.reply.is_none()));
    }

    #[test]
    fn two_open_families_with_the_same_client_time_leave_the_reply_to_nobody() {
        let recs = [
            req(10, WIN_EDU, "2026/12/4 8:15"),
            req(11, OFFICE_2021, "2026/12/4 8:15"),
            rep(12, 26, "2026/12/4 8:15"),
        ];
        let pairing = pair(&recs, &licenses());
        assert_eq!(pairing.ambiguous, vec![12]);
        assert!(pairing.attempts.iter().all(|a| a.reply.is_none()));
    }

    #[test]
    fn the_only_open_request_takes_a_reply_whose_client_time_differs() {
        let recs = [
            req(10, WIN_EDU, "2026/12/4 8:15"),
            rep(11, 26, "04.12.2026 08:15"),
        ];
        let pairing = pair(&recs, &licenses());
        assert!(pairing.ambiguous.is_empty());
        assert_eq!(
            pairing.attempts[0].reply.as_ref().map(|r| r.count),
            Some(26)
        );
    }

    #[test]
    fn client_times_differing_only_in_whitespace_match() {
        let recs = [
            req(10, WIN_EDU, "2026/12/4  8:15"),
            req(11, OFFICE_2021, "2026/12/4 8:16"),
            rep(12, 26, "2026/12/4 8:15"),
        ];
        let pairing = pair(&recs, &licenses());
        assert!(pairing.ambiguous.is_empty());
        assert_eq!(
            pairing.attempts[0].reply.as_ref().map(|r| r.record_id),
            Some(12)
        );
        assert!(pairing.attempts[1].reply.is_none());
    }

    #[test]
    fn superseded_request_stays_an_attempt_with_no_reply() {
        let recs = [
            req(10, WIN_EDU, "2026/12/4 8:15"),
            req(14, WIN_EDU, "2026/12/4 10:15"),
            rep(15, 27, "2026/12/4 10:15"),
        ];
        let pairing = pair(&recs, &licenses());
        assert_eq!(pairing.attempts.len(), 2);
        assert_eq!(pairing.attempts[0].reply, None);
        assert_eq!(
            pairing.attempts[1].reply.as_ref().map(|r| r.record_id),
            Some(15)
        );
    }

    #[test]
    fn late_reply_to_a_superseded_request_is_credited_to_nobody() {
        // The newer Windows request is the only one open, but an Office request
        // is open too, so the stale client time decides nothing.
        let recs = [
            req(10, WIN_EDU, "2026/12/4 8:15"),
            req(11, WIN_EDU, "2026/12/4 8:17"),
            req(12, OFFICE_2021, "2026/12/4 8:18"),
            rep(13, 26, "2026/12/4 8:15"),
        ];
        let pairing = pair(&recs, &licenses());
        assert_eq!(pairing.ambiguous, vec![13]);
        assert!(pairing.attempts.iter().all(|a| a.reply.is_none()));
    }

    #[test]
    fn a_credited_request_is_closed_so_a_second_reply_goes_to_nobody() {
        let recs = [
            req(10, WIN_EDU, "2026/12/4 8:15"),
            rep(11, 26, "2026/12/4 8:15"),
            rep(12, 27, "2026/12/4 8:15"),
        ];
        let pairing = pair(&recs, &licenses());
        assert_eq!(
            pairing.attempts[0].reply.as_ref().map(|r| r.record_id),
            Some(11)
        );
        assert_eq!(pairing.ambiguous, vec![12]);
    }

    #[test]
    fn request_of_an_unknown_sku_is_listed_once_and_opens_no_attempt() {
        let visio = "b234abe3-0857-4f9c-b05a-4dc314f85557";
        let recs = [
            req(10, visio, "2026/12/4 8:15"),
            req(11, visio, "2026/12/4 8:20"),
        ];
        let pairing = pair(&recs, &licenses());
        assert!(pairing.attempts.is_empty());
        assert_eq!(pairing.unknown_sku, vec![visio.to_string()]);
    }

    #[test]
    fn reply_to_an_unknown_sku_request_is_not_credited_to_the_open_family() {
        let visio = "b234abe3-0857-4f9c-b05a-4dc314f85557";
        let recs = [
            req(10, WIN_EDU, "2026/12/4 8:15"),
            req(11, visio, "2026/12/4 8:16"),
            rep(12, 3, "2026/12/4 8:16"),
        ];
        let pairing = pair(&recs, &licenses());
        assert_eq!(pairing.ambiguous, vec![12]);
        assert_eq!(pairing.attempts.len(), 1);
        assert_eq!(pairing.attempts[0].reply, None);
    }

    #[test]
    fn reply_with_no_open_request_is_credited_to_nobody() {
        let pairing = pair(&[rep(7, 26, "2026/12/4 8:15")], &licenses());
        assert!(pairing.attempts.is_empty());
        assert_eq!(pairing.ambiguous, vec![7]);
    }

    #[test]
    fn records_are_paired_in_record_id_order_and_duplicates_count_once() {
        let mut recs = records(INTERLEAVED);
        recs.reverse();
        recs.extend(records(INTERLEAVED));
        let pairing = pair(&recs, &licenses());
        assert_eq!(pairing.attempts.len(), 2);
        assert!(pairing.ambiguous.is_empty());
        assert_eq!(
            pairing.attempts[0].reply.as_ref().map(|r| r.record_id),
            Some(4006)
        );
        assert_eq!(
            pairing.attempts[1].reply.as_ref().map(|r| r.record_id),
            Some(4004)
        );
    }

    #[test]
    fn parse_accepts_double_quotes_whitespace_a_declaration_and_split_data() {
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n\
            <Event xmlns=\"http://schemas.microsoft.com/win/2004/08/events/event\">\n  <System>\n    \
            <Provider Name=\"Microsoft-Windows-Security-SPP\" Guid=\"{E23B33B0-C8C9-472C-A5F9-F2BDFEA0F156}\"/>\n    \
            <EventID Qualifiers=\"16384\"> 12289 </EventID>\n    \
            <TimeCreated SystemTime=\"2026-11-30T22:10:04.641Z\"/>\n    <EventRecordID>\n1586\n</EventRecordID>\n  \
            </System>\n  <EventData>\n    <Data>0x0,0x4000000,0,0</Data>\n    <Data> 4 ,120,10080,  2026/11/30 22:10 </Data>\n  \
            </EventData>\n</Event>\n";
        let r = parse(xml).unwrap();
        assert_eq!(
            r,
            Record::Reply(Reply {
                record_id: 1586,
                time_ms: 1_796_076_604_641,
                hresult: 0,
                status: 0x0400_0000,
                activated: false,
                count: 4,
                client_time: "2026/11/30 22:10".to_string(),
            })
        );
    }

    #[test]
    fn guids_are_lowercased_and_braces_dropped() {
        let xml = with_data(
            "0x0, 0x0, kms:1688, {066C2C24-FE5E-483A-944F-D545CFA695CF}, 2026/11/30 22:10, 0, 2, 43200, \
             E0C42288-980C-4788-A014-C080D2E1926E, 25",
        );
        let r = parse(&xml).unwrap();
        assert_eq!(request(&r).cmid, "066c2c24-fe5e-483a-944f-d545cfa695cf");
        assert_eq!(request(&r).activation_id, WIN_EDU);
    }

    #[test]
    fn time_created_is_read_as_utc_unix_milliseconds() {
        assert_eq!(system_time_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            system_time_ms("2026-11-30T22:10:04.1234567Z"),
            Some(1_796_076_604_123)
        );
        assert_eq!(
            system_time_ms("2028-02-29T00:00:00.999999999Z"),
            Some(1_835_395_200_999)
        );
        assert_eq!(system_time_ms("2026-02-29T00:00:00Z"), None);
        assert_eq!(system_time_ms("2026-11-30T22:10:04+01:00"), None);
        assert_eq!(system_time_ms("2026-11-30 22:10:04Z"), None);
        assert_eq!(system_time_ms("2026-11-30T24:00:00Z"), None);
    }

    #[test]
    fn malformed_xml_is_refused_as_malformed() {
        let event = events(WINDOWS10_ACTIVATED)[0];
        let cut = &event[..event.len() - "</Event>".len()];
        assert!(
            matches!(parse(cut), Err(SppError::Malformed(_))),
            "{:?}",
            parse(cut)
        );
        assert!(matches!(parse(""), Err(SppError::Malformed(_))));
    }

    #[test]
    fn root_other_than_an_event_is_refused() {
        let err = parse("<Events xmlns='http://schemas.microsoft.com/win/2004/08/events/event'/>")
            .unwrap_err();
        assert_eq!(err, SppError::NotAnEvent("Events".to_string()));
        let event = events(WINDOWS10_ACTIVATED)[0].replace(
            "xmlns='http://schemas.microsoft.com/win/2004/08/events/event'",
            "",
        );
        assert_eq!(
            parse(&event).unwrap_err(),
            SppError::NotAnEvent("Event".to_string())
        );
    }

    #[test]
    fn event_of_another_provider_is_refused_naming_the_provider() {
        let event = events(WINDOWS10_ACTIVATED)[0].replace(
            "Name='Microsoft-Windows-Security-SPP'",
            "Name='Microsoft-Windows-Winlogon'",
        );
        let err = parse(&event).unwrap_err();
        assert_eq!(
            err,
            SppError::WrongProvider("Microsoft-Windows-Winlogon".to_string())
        );
        assert!(err.to_string().contains("Microsoft-Windows-Winlogon"));
    }

    #[test]
    fn event_id_other_than_12288_or_12289_is_refused() {
        let event = events(WINDOWS10_ACTIVATED)[0].replace(">12288</EventID>", ">8198</EventID>");
        assert_eq!(parse(&event).unwrap_err(), SppError::WrongEvent(8198));
        let event = events(WINDOWS10_ACTIVATED)[0].replace(">12288</EventID>", ">x</EventID>");
        assert!(matches!(
            parse(&event),
            Err(SppError::BadElement {
                element: "EventID",
                ..
            })
        ));
    }

    #[test]
    fn missing_field_is_refused_naming_its_position() {
        let data = GOOD_REQUEST_DATA.rsplit_once(',').unwrap().0;
        let err = parse(&with_data(data)).unwrap_err();
        assert_eq!(
            err,
            SppError::MissingField {
                event: 12288,
                index: 9,
                name: "N-policy",
                found: 9
            }
        );
        let reply = events(WINDOWS10_ACTIVATED)[1].replace(", 2026/11/30 22:10</Data>", "</Data>");
        let err = parse(&reply).unwrap_err();
        assert_eq!(
            err,
            SppError::MissingField {
                event: 12289,
                index: 7,
                name: "client time",
                found: 7
            }
        );
        let empty = events(WINDOWS10_ACTIVATED)[1]
            .replace("<EventData>", "<Nothing>")
            .replace("</EventData>", "</Nothing>");
        assert_eq!(
            parse(&empty).unwrap_err(),
            SppError::MissingElement("EventData element")
        );
    }

    #[test]
    fn missing_time_created_is_refused() {
        let event = events(WINDOWS10_ACTIVATED)[0].replace(
            "<TimeCreated SystemTime='2026-11-30T22:10:04.1230000Z'/>",
            "",
        );
        assert_eq!(
            parse(&event).unwrap_err(),
            SppError::MissingElement("TimeCreated element")
        );
    }

    #[test]
    fn guid_not_8_4_4_4_12_hex_is_refused() {
        for bad in [
            "066c2c24-fe5e-483a-944f-d545cfa695c",
            "066c2c24fe5e483a944fd545cfa695cf",
            "066c2c24-fe5e-483a-944f-d545cfa695cg",
        ] {
            let data = GOOD_REQUEST_DATA.replace("066c2c24-fe5e-483a-944f-d545cfa695cf", bad);
            let err = parse(&with_data(&data)).unwrap_err();
            assert!(
                matches!(
                    err,
                    SppError::BadGuid {
                        index: 3,
                        name: "CMID",
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
        }
        let data = GOOD_REQUEST_DATA.replace(WIN_EDU, "Windows 11 Education");
        assert!(matches!(
            parse(&with_data(&data)),
            Err(SppError::BadGuid { index: 8, .. })
        ));
    }

    #[test]
    fn bad_numbers_are_refused() {
        let data = GOOD_REQUEST_DATA.replacen("0x0", "success", 1);
        assert!(matches!(
            parse(&with_data(&data)),
            Err(SppError::BadNumber { index: 0, .. })
        ));
        let data = GOOD_REQUEST_DATA.replace(", 25", ", -25");
        assert!(matches!(
            parse(&with_data(&data)),
            Err(SppError::BadNumber { index: 9, .. })
        ));
        let reply = events(WINDOWS10_ACTIVATED)[1].replace("0x0, 0x0, 1,", "0x0, 0x0, yes,");
        assert!(matches!(
            parse(&reply),
            Err(SppError::BadNumber {
                index: 2,
                expected: "1 or 0",
                ..
            })
        ));
        let reply = events(WINDOWS10_ACTIVATED)[1].replace("0x0, 0x0, 1,", "0x0, 0x100000000, 1,");
        assert!(matches!(
            parse(&reply),
            Err(SppError::BadNumber { index: 1, .. })
        ));
    }

    #[test]
    fn counts_over_1000_are_refused() {
        let reply = events(WINDOWS10_ACTIVATED)[1].replace(", 27,", ", 1001,");
        assert_eq!(
            parse(&reply).unwrap_err(),
            SppError::TooLarge {
                event: 12289,
                index: 4,
                name: "current count",
                value: 1001
            }
        );
        let reply = events(WINDOWS10_ACTIVATED)[1].replace(", 27,", ", 1000,");
        assert_eq!(reply_count(&reply), 1000);
        let data = GOOD_REQUEST_DATA.replace(", 25", ", 99999999999");
        assert!(matches!(
            parse(&with_data(&data)),
            Err(SppError::TooLarge { index: 9, .. })
        ));
    }

    fn reply_count(xml: &str) -> u32 {
        reply(&parse(xml).unwrap()).count
    }

    #[test]
    fn input_over_16_kib_is_refused_before_parsing() {
        let event = events(WINDOWS10_ACTIVATED)[0];
        let padded = event.replace(
            "<Security/>",
            &format!("<Security/>{}", " ".repeat(MAX_EVENT_BYTES)),
        );
        assert_eq!(parse(&padded).unwrap_err(), SppError::TooLong(padded.len()));
        let just_fits = event.replace(
            "<Security/>",
            &format!("<Security/>{}", " ".repeat(MAX_EVENT_BYTES - event.len())),
        );
        assert_eq!(just_fits.len(), MAX_EVENT_BYTES);
        assert!(parse(&just_fits).is_ok());
    }

    #[test]
    fn doctype_and_entities_are_refused_and_never_expanded() {
        let event = events(WINDOWS10_ACTIVATED)[0];
        let with_dtd = format!(
            "<!DOCTYPE Event [<!ENTITY e \"0x0\">]>{}",
            event.replacen("<Data>0x0", "<Data>&e;", 1)
        );
        assert_eq!(parse(&with_dtd).unwrap_err(), SppError::Dtd);
        let external = format!("<!DOCTYPE Event SYSTEM \"file:///etc/passwd\">{event}");
        assert_eq!(parse(&external).unwrap_err(), SppError::Dtd);
        let undeclared = event.replacen("<Data>0x0", "<Data>&e;", 1);
        assert!(matches!(parse(&undeclared), Err(SppError::Malformed(_))));
    }

    #[test]
    fn errors_quote_at_most_a_short_excerpt_of_hostile_values() {
        let long = "x".repeat(5000);
        let event = events(WINDOWS10_ACTIVATED)[0].replace(
            "Name='Microsoft-Windows-Security-SPP'",
            &format!("Name='{long}'"),
        );
        let message = parse(&event).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn client_time_must_be_present_and_short() {
        let data = GOOD_REQUEST_DATA.replace("2026/11/30 22:10", "");
        assert!(matches!(
            parse(&with_data(&data)),
            Err(SppError::BadText { index: 4, .. })
        ));
        let data = GOOD_REQUEST_DATA.replace("2026/11/30 22:10", &"9".repeat(65));
        assert!(matches!(
            parse(&with_data(&data)),
            Err(SppError::BadText { index: 4, .. })
        ));
    }

    #[test]
    fn render_writes_the_recorded_shape_exactly() {
        let lines = events(WINDOWS10_ACTIVATED);
        let recs = records(WINDOWS10_ACTIVATED);
        assert_eq!(render_request(request(&recs[0]), "LAB1-PC07"), lines[0]);
        assert_eq!(render_reply(reply(&recs[1]), "LAB1-PC07"), lines[1]);
    }

    #[test]
    fn parse_of_render_gives_back_the_record() {
        let rq = Request {
            record_id: u64::from(u32::MAX) + 7,
            time_ms: 1_835_395_200_999,
            hresult: 0xC004_F074,
            host: "kms&co.school.example:1688".to_string(),
            cmid: "a6dd16fd-419f-4d30-957b-0bfc9f2bf856".to_string(),
            client_time: "29.02.2028 00:00".to_string(),
            activation_id: OFFICE_2021.to_string(),
            needed: 5,
        };
        let xml = render_request(&rq, "<LAB'1>");
        assert_eq!(parse(&xml).unwrap(), Record::Request(rq));
        let rp = Reply {
            record_id: 0,
            time_ms: 0,
            hresult: 0xC004_F038,
            status: 0x0400_0000,
            activated: false,
            count: 1000,
            client_time: "1970/1/1 0:00".to_string(),
        };
        let xml = render_reply(&rp, "LAB1-PC07");
        assert_eq!(parse(&xml).unwrap(), Record::Reply(rp));
    }

    #[test]
    fn licenses_json_reads_as_agent_rows_and_unknown_fields_are_refused() {
        let all = licenses();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].name, "Windows(R), Education edition");
        let extra = r#"[{"id":"x","application_id":"y","name":"","description":"","channel":"","license_status":1,"grace":3}]"#;
        assert!(serde_json::from_str::<Vec<License>>(extra).is_err());
    }

    #[test]
    fn channel_of_kms_client_rows_is_kms_client() {
        let rows = rows(&[WIN_EDU, OFFICE_2021]);
        assert_eq!(channel(&rows, Family::Windows), Channel::KmsClient);
        assert_eq!(channel(&rows, Family::Office), Channel::KmsClient);
        // Any KMS-client row of the family counts, beside a retail one.
        assert_eq!(channel(&licenses(), Family::Windows), Channel::KmsClient);
    }

    #[test]
    fn channel_of_mak_retail_and_oem_rows_names_the_windows_channel() {
        let mak = "4b7e1f6a-3c2d-4e58-9a0b-6d1f2c3e4a5b";
        let retail = "9c2a4d7e-1b3f-4a6c-8e5d-0f7a9b1c2d3e";
        let oem = "5e8d2c1b-7a4f-4c3e-b6a9-2d1e0f9c8b7a";
        assert_eq!(
            channel(&rows(&[mak]), Family::Windows),
            Channel::NotKmsClient("Volume:MAK".to_string())
        );
        assert_eq!(
            channel(&rows(&[retail]), Family::Windows),
            Channel::NotKmsClient("Retail".to_string())
        );
        assert_eq!(
            channel(&rows(&[oem]), Family::Windows),
            Channel::NotKmsClient("OEM:DM".to_string())
        );
        // The unlicensed OEM row comes first, the licensed retail one wins.
        let mut two = rows(&[oem, retail]);
        two.sort_by_key(|l| l.license_status);
        assert_eq!(
            channel(&two, Family::Windows),
            Channel::NotKmsClient("Retail".to_string())
        );
    }

    #[test]
    fn channel_without_product_key_channel_comes_from_the_description() {
        let office_mak = "2c5f8e1d-6b4a-4d9c-a3e7-8f0b1d2c4e6a";
        assert_eq!(
            channel(&rows(&[office_mak]), Family::Office),
            Channel::NotKmsClient("VOLUME_MAK".to_string())
        );
    }

    #[test]
    fn channel_of_a_microsoft_365_subscription_is_subscription() {
        let m365 = "149dbce7-a48e-44db-8364-a53386cd4580";
        assert_eq!(
            channel(&rows(&[m365]), Family::Office),
            Channel::NotKmsClient("subscription".to_string())
        );
    }

    #[test]
    fn channel_of_a_family_without_rows_is_missing() {
        assert_eq!(channel(&rows(&[WIN_EDU]), Family::Office), Channel::Missing);
        assert_eq!(channel(&[], Family::Windows), Channel::Missing);
    }

    #[test]
    fn channel_serializes_for_the_api() {
        assert_eq!(
            serde_json::to_string(&Channel::KmsClient).unwrap(),
            r#"{"kind":"kms-client"}"#
        );
        assert_eq!(
            serde_json::to_string(&Channel::NotKmsClient("Retail".to_string())).unwrap(),
            r#"{"kind":"not-kms-client","channel":"Retail"}"#
        );
    }

    #[test]
    fn family_of_knows_windows_and_office_in_any_case() {
        assert_eq!(family_of(WINDOWS_APP_ID), Some(Family::Windows));
        assert_eq!(
            family_of("{0FF1CE15-A989-479D-AF46-F275C6370663}"),
            Some(Family::Office)
        );
        // Office 2010's application id: no KMS family of netreset.
        assert_eq!(family_of("59a52881-a989-479d-af46-f275c6370663"), None);
        assert_eq!(family_of(""), None);
    }
}
