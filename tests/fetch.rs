//! Downloads against a real HTTP server on 127.0.0.1: success, 404, truncation, resume,
//! servers that ignore Range, and timeouts. Nothing is added to the store on failure.

mod common;
#[path = "support/http_server.rs"]
mod http_server;

use std::time::{Duration, Instant};

use dockerbuild::fetch::{FetchError, Http, HttpOptions};
use dockerbuild::progress::Silent;
use dockerbuild::store::{Kind, LocalStore, NewEntry, Store};
use http_server::{Behaviour, Server};
use sha2::Digest as _;

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn http(timeout_ms: u64, retries: u32) -> Http {
    Http::new(HttpOptions {
        timeout: Duration::from_millis(timeout_ms),
        retries,
        backoff: Duration::from_millis(10),
    })
}

#[test]
fn downloads_hash_while_streaming() {
    let env = common::TestEnv::new();
    let store = LocalStore::open(&env.store()).unwrap();
    let srv = Server::start();
    let data = body(3 << 20);
    let url = srv.route("/a.tar.gz", Behaviour::Serve(data.clone()));
    let mut staged = store.stage_file().unwrap();
    let got = http(5000, 0)
        .download(&url, Some(data.len() as u64), &mut staged, &Silent)
        .unwrap();
    assert_eq!(got.sha256, sha(&data));
    assert_eq!(got.size, data.len() as u64);
    let e = store
        .commit_file(
            staged,
            &NewEntry::new("a.tar.gz", Kind::Source),
            false,
            None,
        )
        .unwrap();
    assert_eq!(std::fs::read(&e.path).unwrap(), data);
    assert_eq!(
        store.verify(&e.meta.digest, &Silent).unwrap(),
        dockerbuild::store::Verification::Ok
    );
}

#[test]
fn a_404_is_final_and_names_the_url() {
    let env = common::TestEnv::new();
    let store = LocalStore::open(&env.store()).unwrap();
    let srv = Server::start();
    let url = format!("{}/missing.tar.gz", srv.base);
    let mut staged = store.stage_file().unwrap();
    let err = http(5000, 3)
        .download(&url, None, &mut staged, &Silent)
        .unwrap_err();
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&url));
    assert_eq!(srv.log().len(), 1, "a 404 is not retried");
    drop(staged);
    assert!(env.staging_debris().is_empty());
}

#[test]
fn server_errors_are_retried_then_reported() {
    let env = common::TestEnv::new();
    let store = LocalStore::open(&env.store()).unwrap();
    let srv = Server::start();
    let url = srv.route("/flaky", Behaviour::Status(503));
    let mut staged = store.stage_file().unwrap();
    let err = http(5000, 2)
        .download(&url, None, &mut staged, &Silent)
        .unwrap_err();
    assert!(
        err.to_string().contains("HTTP 503") && err.to_string().contains(&url),
        "{err}"
    );
    assert_eq!(srv.log().len(), 3, "one attempt and two retries");
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let env = common::TestEnv::new();
    let store = LocalStore::open(&env.store()).unwrap();
    let srv = Server::start();
    let data = body(1 << 20);
    let url = srv.route(
        "/big.tar.xz",
        Behaviour::CutOff {
            body: data.clone(),
            cut: 300_000,
            times: 1,
            ignore_range: false,
        },
    );
    let mut staged = store.stage_file().unwrap();
    let got = http(5000, 3)
        .download(&url, Some(data.len() as u64), &mut staged, &Silent)
        .unwrap();
    assert_eq!(
        got.sha256,
        sha(&data),
        "the resumed bytes hash like the whole file"
    );
    let log = srv.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].1, None);
    assert_eq!(
        log[1].1.as_deref(),
        Some("bytes=300000-"),
        "resumed where it stopped"
    );
    let e = store
        .commit_file(
            staged,
            &NewEntry::new("big.tar.xz", Kind::Source),
            false,
            None,
        )
        .unwrap();
    assert_eq!(std::fs::read(e.path).unwrap(), data);
}

#[test]
fn a_server_ignoring_range_restarts_from_zero() {
    let env = common::TestEnv::new();
    let store = LocalStore::open(&env.store()).unwrap();
    let srv = Server::start();
    let data = body(500_000);
    let url = srv.route(
        "/norange",
        Behaviour::CutOff {
            body: data.clone(),
            cut: 100_000,
            times: 1,
            ignore_range: true,
        },
    );
    let mut staged = store.stage_file().unwrap();
    let got = http(5000, 3)
        .download(&url, Some(data.len() as u64), &mut staged, &Silent)
        .unwrap();
    assert_eq!(got.sha256, sha(&data));
    assert_eq!(staged.written(), data.len() as u64, "no duplicated prefix");
}

#[test]
fn truncation_that_persists_fails_with_the_counts() {
    let env = common::TestEnv::new();
    let store = LocalStore::open(&env.store()).unwrap();
    let srv = Server::start();
    let data = body(200_000);
    let url = srv.route(
        "/cut",
        Behaviour::CutOff {
            body: data.clone(),
            cut: 1000,
            times: usize::MAX,
            ignore_range: true,
        },
    );
    let mut staged = store.stage_file().unwrap();
    let err = http(5000, 2)
        .download(&url, Some(data.len() as u64), &mut staged, &Silent)
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Truncated {
                expected: 200_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&url));
}

#[test]
fn a_stalled_server_times_out_naming_the_url() {
    let env = common::TestEnv::new();
    let store = LocalStore::open(&env.store()).unwrap();
    let srv = Server::start();
    let url = srv.route("/stall", Behaviour::Stall);
    let mut staged = store.stage_file().unwrap();
    let t0 = Instant::now();
    let err = http(300, 1)
        .download(&url, None, &mut staged, &Silent)
        .unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "gave up in {:?}",
        t0.elapsed()
    );
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    assert_eq!(srv.log().len(), 2, "timeouts are retried");
}
