//! pRPC framing and the few protobuf messages the CIPD backend uses, encoded by hand
//! (varints and length-delimited fields; field numbers from the protocol notes, section
//! 3.2).
//!
//! A call is `POST <service>/prpc/<service name>/<method>` with a binary protobuf body
//! (`application/prpc; encoding=binary`). `X-Prpc-Grpc-Code` is authoritative: 0 is
//! success, anything else an error whose body is plain text; an answer without it came
//! from something in between (a proxy, a load balancer) and counts as transient when it
//! is 5xx or 429. Transient failures are retried with exponential backoff.

use std::time::Duration;

use tracing::{debug, warn};

// ---------------------------------------------------------------------------------------
// Wire format.

/// Builds one message.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn key(&mut self, field: u32, wire: u8) {
        put_varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }
    /// A varint field; zero (the default) is omitted.
    pub fn varint(&mut self, field: u32, v: u64) -> &mut Self {
        if v != 0 {
            self.key(field, 0);
            put_varint(&mut self.0, v);
        }
        self
    }
    /// A string field; empty (the default) is omitted.
    pub fn string(&mut self, field: u32, s: &str) -> &mut Self {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
        self
    }
    /// A length-delimited field (an embedded message or bytes), always written.
    pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, 2);
        put_varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One field of a message being read.
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed-width fields, skipped.
    Fixed,
}

/// A malformed message.
#[derive(Debug, thiserror::Error)]
#[error("malformed protobuf message")]
pub struct DecodeError;

/// The fields of a message, in order (unknown ones included; callers ignore them).
pub fn fields(mut buf: &[u8]) -> Result<Vec<(u32, Value<'_>)>, DecodeError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = u32::try_from(key >> 3).map_err(|_| DecodeError)?;
        let v = match key & 7 {
            0 => Value::Varint(varint(&mut buf)?),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| DecodeError)?;
                if len > buf.len() {
                    return Err(DecodeError);
                }
                let (b, rest) = buf.split_at(len);
                buf = rest;
                Value::Bytes(b)
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                buf = buf.get(n..).ok_or(DecodeError)?;
                Value::Fixed
            }
            _ => return Err(DecodeError),
        };
        out.push((field, v));
    }
    Ok(out)
}

fn varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or(DecodeError)?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError)
}

fn text(b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError)
}

// ---------------------------------------------------------------------------------------
// Messages.

/// `ObjectRef`: 1 hash_algo, 2 hex_digest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectRef {
    pub hash_algo: u64,
    pub hex_digest: String,
}

impl ObjectRef {
    pub fn sha256(hex_digest: String) -> ObjectRef {
        ObjectRef {
            hash_algo: 2,
            hex_digest,
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.varint(1, self.hash_algo).string(2, &self.hex_digest);
        w.0
    }
    pub fn decode(b: &[u8]) -> Result<ObjectRef, DecodeError> {
        let mut r = ObjectRef::default();
        for (n, v) in fields(b)? {
            match (n, v) {
                (1, Value::Varint(x)) => r.hash_algo = x,
                (2, Value::Bytes(x)) => r.hex_digest = text(x)?,
                _ => {}
            }
        }
        Ok(r)
    }
}

/// `Instance`: 1 package, 2 instance (ObjectRef), 3 registered_by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    pub package: String,
    pub instance: ObjectRef,
    pub registered_by: String,
}

impl Instance {
    /// Also the `RegisterInstance` request.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.string(1, &self.package)
            .bytes(2, &self.instance.encode())
            .string(3, &self.registered_by);
        w.0
    }
    pub fn decode(b: &[u8]) -> Result<Instance, DecodeError> {
        let mut r = Instance::default();
        for (n, v) in fields(b)? {
            match (n, v) {
                (1, Value::Bytes(x)) => r.package = text(x)?,
                (2, Value::Bytes(x)) => r.instance = ObjectRef::decode(x)?,
                (3, Value::Bytes(x)) => r.registered_by = text(x)?,
                _ => {}
            }
        }
        Ok(r)
    }
}

/// `UploadStatus` values.
pub mod upload_status {
    pub const UPLOADING: u64 = 1;
    pub const VERIFYING: u64 = 2;
    pub const PUBLISHED: u64 = 3;
    pub const ERRORED: u64 = 4;
    pub const CANCELED: u64 = 5;
}

/// `RegistrationStatus` values.
pub mod registration_status {
    pub const REGISTERED: u64 = 1;
    pub const ALREADY_REGISTERED: u64 = 2;
    pub const NOT_UPLOADED: u64 = 3;
}

/// `UploadOperation`: 1 operation_id, 2 upload_url, 3 status, 4 object, 5 error_message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UploadOperation {
    pub operation_id: String,
    pub upload_url: String,
    pub status: u64,
    pub object: Option<ObjectRef>,
    pub error_message: String,
}

impl UploadOperation {
    pub fn decode(b: &[u8]) -> Result<UploadOperation, DecodeError> {
        let mut r = UploadOperation::default();
        for (n, v) in fields(b)? {
            match (n, v) {
                (1, Value::Bytes(x)) => r.operation_id = text(x)?,
                (2, Value::Bytes(x)) => r.upload_url = text(x)?,
                (3, Value::Varint(x)) => r.status = x,
                (4, Value::Bytes(x)) => r.object = Some(ObjectRef::decode(x)?),
                (5, Value::Bytes(x)) => r.error_message = text(x)?,
                _ => {}
            }
        }
        Ok(r)
    }
}

/// `RegisterInstanceResponse`: 1 status, 2 instance, 3 upload_op.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterInstanceResponse {
    pub status: u64,
    pub instance: Option<Instance>,
    pub upload_op: Option<UploadOperation>,
}

impl RegisterInstanceResponse {
    pub fn decode(b: &[u8]) -> Result<RegisterInstanceResponse, DecodeError> {
        let mut r = RegisterInstanceResponse::default();
        for (n, v) in fields(b)? {
            match (n, v) {
                (1, Value::Varint(x)) => r.status = x,
                (2, Value::Bytes(x)) => r.instance = Some(Instance::decode(x)?),
                (3, Value::Bytes(x)) => r.upload_op = Some(UploadOperation::decode(x)?),
                _ => {}
            }
        }
        Ok(r)
    }
}

/// `ResolveVersionRequest`: 1 package, 2 version.
pub fn resolve_version_request(package: &str, version: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, package).string(2, version);
    w.0
}

/// `GetInstanceURLRequest`: 1 package, 2 instance.
pub fn get_instance_url_request(package: &str, instance: &ObjectRef) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, package).bytes(2, &instance.encode());
    w.0
}

/// `ObjectURL`: 1 signed_url.
pub fn decode_object_url(b: &[u8]) -> Result<String, DecodeError> {
    let mut url = String::new();
    for (n, v) in fields(b)? {
        if let (1, Value::Bytes(x)) = (n, v) {
            url = text(x)?;
        }
    }
    Ok(url)
}

/// `FinishUploadRequest`: 1 upload_operation_id.
pub fn finish_upload_request(operation_id: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, operation_id);
    w.0
}

/// `AttachTagsRequest`: 1 package, 2 instance, 3 tags (`Tag`: 1 key, 2 value).
pub fn attach_tags_request(package: &str, instance: &ObjectRef, tags: &[(&str, &str)]) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, package).bytes(2, &instance.encode());
    for (k, v) in tags {
        let mut t = Writer::default();
        t.string(1, k).string(2, v);
        w.bytes(3, &t.0);
    }
    w.0
}

/// `Ref` (the `CreateRef` request): 1 name, 2 package, 3 instance.
pub fn create_ref_request(name: &str, package: &str, instance: &ObjectRef) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, name)
        .string(2, package)
        .bytes(3, &instance.encode());
    w.0
}

/// `ListInstancesRequest`: 1 package, 20 page_size, 21 page_token.
pub fn list_instances_request(package: &str, page_size: u32, page_token: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, package)
        .varint(20, u64::from(page_size))
        .string(21, page_token);
    w.0
}

/// `ListInstancesResponse`: 1 instances, 20 next_page_token.
pub fn decode_list_instances(b: &[u8]) -> Result<(Vec<Instance>, String), DecodeError> {
    let (mut list, mut next) = (Vec::new(), String::new());
    for (n, v) in fields(b)? {
        match (n, v) {
            (1, Value::Bytes(x)) => list.push(Instance::decode(x)?),
            (20, Value::Bytes(x)) => next = text(x)?,
            _ => {}
        }
    }
    Ok((list, next))
}

// ---------------------------------------------------------------------------------------
// Calls.

/// gRPC codes this client tells apart.
pub mod code {
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const ABORTED: u32 = 10;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// The name of a gRPC code.
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{} ({code}): {message}", code_name(*code))]
    Grpc { code: u32, message: String },
    #[error("HTTP {status} without a gRPC code: {body}")]
    Http { status: u16, body: String },
    #[error("{0}")]
    Transport(String),
    #[error("the answer is not a valid message")]
    Decode,
}

impl RpcError {
    /// Worth another attempt: UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL,
    /// UNAVAILABLE; non-pRPC 5xx, 408 and 429; network errors.
    pub fn transient(&self) -> bool {
        match self {
            RpcError::Grpc { code, .. } => matches!(code, 2 | 4 | 8 | 13 | 14),
            RpcError::Http { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            RpcError::Transport(_) => true,
            RpcError::Decode => false,
        }
    }

    pub fn code(&self) -> Option<u32> {
        match self {
            RpcError::Grpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Retry policy: `retries` attempts after the first, sleeping `backoff`, doubling up to
/// `max_backoff`.
#[derive(Debug, Clone)]
pub struct Retry {
    pub retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Retry {
    /// Runs `f` until it succeeds, fails permanently or runs out of attempts.
    pub fn run<T>(
        &self,
        what: &str,
        mut f: impl FnMut() -> Result<T, RpcError>,
    ) -> Result<T, RpcError> {
        let mut sleep = self.backoff;
        let mut attempt = 0;
        loop {
            match f() {
                Err(e) if e.transient() && attempt < self.retries => {
                    attempt += 1;
                    warn!(what, attempt, error = %e, "transient failure; retrying");
                    std::thread::sleep(sleep);
                    sleep = (sleep * 2).min(self.max_backoff);
                }
                r => return r,
            }
        }
    }
}

/// A pRPC client for one service.
pub struct Client {
    pub agent: ureq::Agent,
    /// `https://host[:port]` (or `http://` for loopback).
    pub service: String,
    pub token: Option<String>,
    pub retry: Retry,
}

impl Client {
    /// Calls `service/method` (e.g. `cipd.Repository/ResolveVersion`) with a binary
    /// request, retrying transient failures; returns the binary answer.
    pub fn call(&self, method: &str, request: &[u8]) -> Result<Vec<u8>, RpcError> {
        let url = format!("{}/prpc/{method}", self.service);
        self.retry.run(method, || self.once(&url, request))
    }

    fn once(&self, url: &str, request: &[u8]) -> Result<Vec<u8>, RpcError> {
        debug!(url, "pRPC call");
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/prpc; encoding=binary")
            .header("Accept", "application/prpc; encoding=binary");
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req
            .send(request)
            .map_err(|e| RpcError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let code = resp
            .headers()
            .get("X-Prpc-Grpc-Code")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().parse::<u32>());
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| RpcError::Transport(e.to_string()))?;
        match code {
            Some(Ok(0)) => Ok(body),
            Some(Ok(code)) => Err(RpcError::Grpc {
                code,
                message: String::from_utf8_lossy(&body).trim().to_owned(),
            }),
            Some(Err(_)) => Err(RpcError::Decode),
            None => Err(RpcError::Http {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(200)])
                    .trim()
                    .to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RegisterInstance request (an `Instance`) assembled by hand, byte by byte.
    #[test]
    fn register_instance_request_matches_hand_assembled_bytes() {
        let hex = "07bafbe63a0e7c57c572aedf1c228022b537e28785013d7be017fc78731a8cc5";
        let req = Instance {
            package: "a/b".into(),
            instance: ObjectRef::sha256(hex.into()),
            registered_by: String::new(),
        }
        .encode();
        let mut want = vec![0x0a, 0x03, b'a', b'/', b'b']; // 1: "a/b"
        want.extend([0x12, 68]); // 2: ObjectRef, 68 bytes
        want.extend([0x08, 0x02]); //   1: SHA256
        want.extend([0x12, 64]); //   2: 64 hex digits
        want.extend(hex.as_bytes());
        assert_eq!(req, want);
        assert_eq!(Instance::decode(&want).unwrap().instance.hex_digest, hex);
    }

    /// A RegisterInstanceResponse with an upload operation, as a server would send it,
    /// with an unknown field and a field number past 15 thrown in.
    #[test]
    fn register_instance_response_decodes_from_hand_assembled_bytes() {
        let mut op = vec![0x0a, 4];
        op.extend(b"op-1"); // 1: operation_id
        op.extend([0x12, 10]);
        op.extend(b"http://u/1"); // 2: upload_url
        op.extend([0x18, 1]); // 3: UPLOADING
        op.extend([0xa0, 0x06, 0x07]); // 100: an unknown varint
        let mut b = vec![0x08, 3]; // 1: NOT_UPLOADED
        b.push(0x1a); // 3: upload_op
        b.push(op.len() as u8);
        b.extend(&op);
        let r = RegisterInstanceResponse::decode(&b).unwrap();
        assert_eq!(r.status, registration_status::NOT_UPLOADED);
        let op = r.upload_op.unwrap();
        assert_eq!(op.operation_id, "op-1");
        assert_eq!(op.upload_url, "http://u/1");
        assert_eq!(op.status, upload_status::UPLOADING);
        assert!(RegisterInstanceResponse::decode(&[0x1a, 5, 1]).is_err());
    }

    #[test]
    fn list_requests_use_high_field_numbers() {
        // 20 << 3 | 0 = 160 = varint a0 01; 21 << 3 | 2 = 170 = aa 01.
        let b = list_instances_request("p", 100, "t");
        assert_eq!(b, [0x0a, 1, b'p', 0xa0, 0x01, 100, 0xaa, 0x01, 1, b't']);
        let r = create_ref_request("latest", "p", &ObjectRef::sha256("ab".into()));
        assert_eq!(
            r,
            [
                0x0a, 6, b'l', b'a', b't', b'e', b's', b't', 0x12, 1, b'p', 0x1a, 6, 0x08, 2, 0x12,
                2, b'a', b'b'
            ]
        );
        let tags = attach_tags_request("p", &ObjectRef::sha256("ab".into()), &[("k", "v")]);
        assert_eq!(
            tags,
            [
                0x0a, 1, b'p', 0x12, 6, 0x08, 2, 0x12, 2, b'a', b'b', 0x1a, 6, 0x0a, 1, b'k', 0x12,
                1, b'v'
            ]
        );
    }
}
