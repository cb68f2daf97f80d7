//! How long-running library work reports progress without printing.
//!
//! The library calls these hooks; the binary draws them with indicatif, tests pass
//! [`Silent`]. Implementations must be cheap: `advance` is called per file.

/// Receives progress from long operations (adding, verifying, importing entries).
pub trait Progress: Sync {
    /// A phase starts; `total_bytes` is known for copies and hashes.
    fn start(&self, _what: &str, _total_bytes: Option<u64>) {}
    /// `bytes` more were processed.
    fn advance(&self, _bytes: u64) {}
    /// The current phase ended.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
