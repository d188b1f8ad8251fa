//! `MacAddr`: the one way netreset names a station's network card.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// An Ethernet MAC address. Displayed as lowercase `aa:bb:cc:dd:ee:ff`; parsed from
/// that form, from `aa-bb-cc-dd-ee-ff` and from twelve bare hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Mac(s.to_owned());
        let hex: Vec<u8> = match s.len() {
            12 => s.as_bytes().to_vec(),
            17 => {
                let sep = s.as_bytes()[2];
                if sep != b':' && sep != b'-' {
                    return Err(bad());
                }
                let mut out = Vec::with_capacity(12);
                for (i, &c) in s.as_bytes().iter().enumerate() {
                    if i % 3 == 2 {
                        if c != sep {
                            return Err(bad());
                        }
                    } else {
                        out.push(c);
                    }
                }
                out
            }
            _ => return Err(bad()),
        };
        // from_str_radix alone would accept a leading '+'.
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        let mut octets = [0u8; 6];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            octets[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(octets))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_colon_hyphen_and_bare_forms_to_the_same_address() {
        let want = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        for text in ["52:54:00:ab:cd:ef", "52-54-00-AB-CD-EF", "525400abcdef"] {
            assert_eq!(text.parse::<MacAddr>().unwrap(), want, "{text}");
        }
        assert_eq!(want.to_string(), "52:54:00:ab:cd:ef");
    }

    #[test]
    fn rejects_malformed_addresses() {
        for text in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:eg",
            "52:54-00:ab:cd:ef",
            "52.54.00.ab.cd.ef",
            "+2:54:00:ab:cd:ef",
            "../../etc/passwd",
            "525400abcdef0",
        ] {
            assert!(text.parse::<MacAddr>().is_err(), "{text:?} parsed");
        }
    }
}
