//! The `cipd://` binary cache backend against a fake CIPD server written from the protocol
//! notes (`support/cipd_fake.rs`), not the real service; and an opt-in live smoke test.

#[path = "support/cipd_fake.rs"]
mod cipd_fake;

use cipd_fake::{FakeCipd, Fault};

fn post(fake: &FakeCipd, method: &str, ct: &str, body: &[u8]) -> (u16, Option<String>, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(format!("{}/prpc/{method}", fake.base))
        .header("Content-Type", ct)
        .send(body)
        .unwrap();
    let code = resp
        .headers()
        .get("X-Prpc-Grpc-Code")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status().as_u16();
    (status, code, resp.body_mut().read_to_vec().unwrap())
}

/// The fake's own framing, driven by hand-written requests: JSON with the XSSI prefix,
/// snake_case input, errors as plain text with the gRPC code header, binary bodies
/// assembled byte by byte, injected proxy errors without the header.
#[test]
fn the_fake_speaks_prpc_as_the_notes_describe() {
    let fake = FakeCipd::start();
    fake.add_instance("a/pkg", b"zip bytes", &["version:1"]);
    let (status, code, body) = post(
        &fake,
        "cipd.Repository/ResolveVersion",
        "application/json",
        br#"{"package":"a/pkg","version":"version:1"}"#,
    );
    assert_eq!((status, code.as_deref()), (200, Some("0")));
    let text = String::from_utf8(body).unwrap();
    let json = text.strip_prefix(")]}'\n").expect("XSSI prefix");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["instance"]["hashAlgo"], "SHA256");
    assert_eq!(v["package"], "a/pkg");

    // snake_case on input; a missing tag is NOT_FOUND as text.
    let (status, code, body) = post(
        &fake,
        "cipd.Repository/ResolveVersion",
        "application/json",
        br#"{"package":"a/pkg","version":"version:2","unknown_field":1}"#,
    );
    assert_eq!((status, code.as_deref()), (404, Some("5")));
    assert_eq!(body, b"no such tag");

    // Binary: ResolveVersionRequest{1: "a/pkg", 2: "version:1"} by hand.
    let mut req = vec![0x0a, 5];
    req.extend(b"a/pkg");
    req.extend([0x12, 9]);
    req.extend(b"version:1");
    let (status, code, body) = post(
        &fake,
        "cipd.Repository/ResolveVersion",
        "application/prpc; encoding=binary",
        &req,
    );
    assert_eq!((status, code.as_deref()), (200, Some("0")));
    // Instance{1: package, 2: ObjectRef{1: 2 (SHA256), 2: hex}, 3: registered_by}
    assert_eq!(&body[..7], &[0x0a, 5, b'a', b'/', b'p', b'k', b'g']);
    assert_eq!(&body[7..11], &[0x12, 68, 0x08, 2]);

    let (status, code, _) = post(&fake, "cipd.Repository/Nope", "application/json", b"{}");
    assert_eq!((status, code.as_deref()), (501, Some("12")));

    fake.fault("ResolveVersion", Fault::Http(502), 1);
    let (status, code, _) = post(
        &fake,
        "cipd.Repository/ResolveVersion",
        "application/json",
        br#"{"package":"a/pkg","version":"version:1"}"#,
    );
    assert_eq!((status, code), (502, None));
}
