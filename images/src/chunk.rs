//! `ChunkId`: the BLAKE3 hash of a chunk's uncompressed bytes, and its only name.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A chunk's id. Its text form is 64 lowercase hex digits, which is also its file
/// name in the store: no other text ever becomes a path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ChunkId {
    type Err = Error;

    fn from_str(s: &str) -> Result<ChunkId, Error> {
        let bad = || Error::BadChunkId(s.chars().take(80).collect());
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut id = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            id[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(ChunkId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_through_text() {
        let id = ChunkId::of(b"netreset");
        assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
        assert_eq!(id.to_string().len(), 64);
    }

    #[test]
    fn text_that_is_not_an_id_is_refused() {
        let good = ChunkId::of(b"x").to_string();
        for bad in [
            String::new(),
            "../x".into(),
            format!("../{}", &good[3..]),
            good.to_uppercase(),
            format!("{good}0"),
            good[..63].to_owned(),
            format!("{}/", &good[..63]),
            "+".repeat(64),
        ] {
            assert!(bad.parse::<ChunkId>().is_err(), "{bad:?}");
        }
    }
}
