//! Client options for tests against the fake CIPD server.
#![allow(dead_code)]

/// Options that keep the CIPD tests fast: millisecond backoffs and polls, small chunks
/// (so uploads take several), the fake's writer token.
pub fn fast() -> dockerbuild::cache::cipd::CipdOptions {
    use std::time::Duration;
    let ms = Duration::from_millis;
    dockerbuild::cache::cipd::CipdOptions {
        token: Some(super::cipd_fake::WRITER_TOKEN.to_owned()),
        retry: dockerbuild::cache::cipd::prpc::Retry {
            retries: 4,
            backoff: ms(5),
            max_backoff: ms(20),
        },
        chunk: 256,
        poll: ms(2),
        poll_step: ms(1),
        poll_max: ms(10),
        poll_timeout: Duration::from_secs(5),
        processing_timeout: Duration::from_secs(5),
        processing_interval: ms(5),
        timeout: Duration::from_secs(10),
    }
}
