//! The one digest type: a BLAKE3 hash, never passed around as a hex string.
//!
//! Text form is `blake3:<64 lowercase hex digits>`; inside store paths only the hex part
//! appears. Parsing accepts both forms so users can paste either.

use std::fmt;
use std::str::FromStr;

/// A 32-byte BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

/// The prefix of a digest's text form.
pub const PREFIX: &str = "blake3:";

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseDigestError {
    #[error("digest `{0}` is not 64 hex digits (optionally prefixed with `blake3:`)")]
    Malformed(String),
}

impl Digest {
    /// Hashes a byte slice in one call.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// The 64-digit lowercase hex form used in store paths.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses hex with or without the `blake3:` prefix.
    pub fn parse(s: &str) -> Result<Self, ParseDigestError> {
        let hex_part = s.strip_prefix(PREFIX).unwrap_or(s);
        if hex_part.len() != 64 {
            return Err(ParseDigestError::Malformed(s.to_owned()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| ParseDigestError::Malformed(s.to_owned()))?;
        Ok(Digest(out))
    }

    /// Whether `s` looks like a digest or an unambiguous hex prefix of one
    /// (at least 8 hex digits), as users type them.
    pub fn is_hex_prefix(s: &str) -> bool {
        let s = s.strip_prefix(PREFIX).unwrap_or(s);
        (8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.to_string(),
            format!("blake3:{}", blake3::hash(b"hello").to_hex())
        );
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert_eq!(Digest::parse(&d.to_hex()).unwrap(), d);
    }

    #[test]
    fn rejects_bad_text() {
        assert!(Digest::parse("blake3:abc").is_err());
        assert!(Digest::parse(&"g".repeat(64)).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "0".repeat(64))).is_err());
    }

    #[test]
    fn prefixes() {
        assert!(Digest::is_hex_prefix("deadbeef"));
        assert!(!Digest::is_hex_prefix("deadbee"));
        assert!(!Digest::is_hex_prefix("python-3.11"));
    }
}
