//! Helpers for unit tests.

/// The first ```` ```toml ```` block of a module's `//!` docs, so documented examples are
/// parsed by the real types and cannot drift from them.
pub fn doc_toml_example(source: &str) -> String {
    source
        .lines()
        .skip_while(|l| !l.starts_with("//! ```toml"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
        .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
        .collect::<Vec<_>>()
        .join("\n")
}
