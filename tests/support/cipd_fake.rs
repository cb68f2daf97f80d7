//! A fake CIPD server written from the protocol notes (the team's CIPD spec), **not the
//! real service**. Passing against it shows the client matches our reading of the
//! protocol; it does not show interoperability with the real service.
//!
//! What it implements, on 127.0.0.1 with std::net (one thread per connection):
//! - pRPC framing: `POST /prpc/<service>/<method>`, binary protobuf (the default, also when
//!   Content-Type is missing) and JSON (`application/json`, answered with the `)]}'` XSSI
//!   prefix, lowerCamelCase keys, enum names, int64 as strings, zero fields omitted;
//!   snake_case accepted on input); `X-Prpc-Grpc-Code` on every pRPC answer, a plain-text
//!   body on errors, the HTTP status the notes give for each code.
//! - `cipd.Repository`: RegisterInstance, ResolveVersion, GetInstanceURL, AttachTags,
//!   ListInstances, SearchInstances, DescribeInstance; `cipd.Storage`: FinishUpload,
//!   CancelUpload. Anything else is UNIMPLEMENTED (HTTP 501).
//! - A "GCS" with resumable uploads (`PUT` with `Content-Range: bytes a-b/total`, 308 with
//!   `Range: bytes=0-N` while incomplete, 200 when complete, `bytes */total` status
//!   queries) and opaque signed download URLs.
//! - Upload verification: the first FinishUpload moves UPLOADING to VERIFYING; later polls
//!   re-hash the uploaded bytes and move to PUBLISHED (or ERRORED on a mismatch).
//! - ACLs: anonymous reads (switchable), writes only with the writer's bearer token
//!   (PERMISSION_DENIED otherwise), upload operations bound to the caller's identity.
//! - Post-registration processing: AttachTags answers FAILED_PRECONDITION for a set number
//!   of rounds after an instance is registered.
//! - Fault injection ([`Fault`]): HTTP statuses without the gRPC header, gRPC codes,
//!   truncated or altered downloads, per target, a number of times.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

/// The token the fake accepts for writes.
pub const WRITER_TOKEN: &str = "fake-writer-token";
/// A token the fake accepts for reads only.
pub const READER_TOKEN: &str = "fake-reader-token";

/// What a fault does to a request it matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this HTTP status without `X-Prpc-Grpc-Code` (a proxy or load balancer).
    Http(u16),
    /// Answer this gRPC code (with the header) and message.
    Grpc(u32, &'static str),
    /// (download) Announce the full length, send half, close.
    Truncate,
    /// (download) Serve the body with one byte changed; (upload) store the chunk with one
    /// byte changed.
    WrongBytes,
}

// gRPC codes used here.
pub const OK: u32 = 0;
pub const INVALID_ARGUMENT: u32 = 3;
pub const NOT_FOUND: u32 = 5;
pub const PERMISSION_DENIED: u32 = 7;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const FAILED_PRECONDITION: u32 = 9;
pub const INTERNAL: u32 = 13;
pub const UNIMPLEMENTED: u32 = 12;
pub const UNAVAILABLE: u32 = 14;
pub const UNAUTHENTICATED: u32 = 16;

fn http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        12 => 501,
        14 => 503,
        4 => 504,
        _ => 500,
    }
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub package: String,
    pub hex: String,
    pub tags: Vec<String>,
    pub registered_by: String,
    /// AttachTags rounds still answered FAILED_PRECONDITION.
    pending: u32,
}

struct Upload {
    hex: String,
    data: Vec<u8>,
    total: Option<usize>,
    status: &'static str,
    identity: String,
    polls: u32,
    error: String,
}

struct State {
    base: String,
    anonymous_read: bool,
    verify_polls: u32,
    processing_rounds: u32,
    instances: Vec<Instance>,
    cas: HashMap<String, Vec<u8>>,
    refs: HashMap<(String, String), String>,
    uploads: HashMap<String, Upload>,
    sessions: HashMap<String, String>,
    urls: HashMap<String, String>,
    faults: Vec<(String, Fault, usize)>,
    log: Vec<String>,
    counter: u64,
}

/// The fake server; it lives as long as the test process.
pub struct FakeCipd {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl FakeCipd {
    pub fn start() -> FakeCipd {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let state = Arc::new(Mutex::new(State {
            base: base.clone(),
            anonymous_read: true,
            verify_polls: 1,
            processing_rounds: 0,
            instances: Vec::new(),
            cas: HashMap::new(),
            refs: HashMap::new(),
            uploads: HashMap::new(),
            sessions: HashMap::new(),
            urls: HashMap::new(),
            faults: Vec::new(),
            log: Vec::new(),
            counter: 0,
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, st);
                });
            }
        });
        FakeCipd { base, state }
    }

    /// `cipd://127.0.0.1:PORT/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "cipd://{}/{prefix}",
            self.base.trim_start_matches("http://")
        )
    }

    /// The next `times` requests to `target` (a method name such as `ResolveVersion`, or
    /// `upload` or `download`) get `fault`.
    pub fn fault(&self, target: &str, fault: Fault, times: usize) {
        self.lock().faults.push((target.to_owned(), fault, times));
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn set_anonymous_read(&self, on: bool) {
        self.lock().anonymous_read = on;
    }

    /// VERIFYING polls of FinishUpload before the verdict.
    pub fn set_verify_polls(&self, n: u32) {
        self.lock().verify_polls = n;
    }

    /// FAILED_PRECONDITION rounds of AttachTags for each newly registered instance.
    pub fn set_processing_rounds(&self, n: u32) {
        self.lock().processing_rounds = n;
    }

    /// Every instance of `package`, newest first.
    pub fn instances(&self, package: &str) -> Vec<Instance> {
        let s = self.lock();
        let mut v: Vec<Instance> = s
            .instances
            .iter()
            .filter(|i| i.package == package)
            .cloned()
            .collect();
        v.reverse();
        v
    }

    /// Registers a second instance (arbitrary bytes) in `package` carrying `tag`, so
    /// resolving the tag becomes ambiguous.
    pub fn add_instance(&self, package: &str, bytes: &[u8], tags: &[&str]) -> String {
        let hex = hex::encode(Sha256::digest(bytes));
        let mut s = self.lock();
        s.cas.insert(hex.clone(), bytes.to_vec());
        s.instances.push(Instance {
            package: package.to_owned(),
            hex: hex.clone(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            registered_by: "user:test".into(),
            pending: 0,
        });
        hex
    }

    pub fn set_ref(&self, package: &str, r: &str, hex: &str) {
        self.lock()
            .refs
            .insert((package.to_owned(), r.to_owned()), hex.to_owned());
    }

    /// The hex digest ref `r` of `package` points at.
    pub fn ref_hex(&self, package: &str, r: &str) -> Option<String> {
        self.lock()
            .refs
            .get(&(package.to_owned(), r.to_owned()))
            .cloned()
    }

    /// Replaces the stored bytes of an object (storage rot or tampering).
    pub fn replace_blob(&self, hex: &str, bytes: Vec<u8>) {
        self.lock().cas.insert(hex.to_owned(), bytes);
    }

    pub fn blob(&self, hex: &str) -> Option<Vec<u8>> {
        self.lock().cas.get(hex).cloned()
    }

    /// One line per request: `<target> <detail>`.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// A minimal protobuf <-> protojson codec, driven by field tables taken from the notes.

#[derive(Clone, Copy)]
enum K {
    Str,
    Bool,
    I32,
    I64,
    Enum(&'static [&'static str]),
    Msg(&'static [F]),
}

#[derive(Clone, Copy)]
struct F(u32, &'static str, K, bool);

const HASH_ALGO: &[&str] = &["HASH_ALGO_UNSPECIFIED", "SHA1", "SHA256"];
const UPLOAD_STATUS: &[&str] = &[
    "UPLOAD_STATUS_UNSPECIFIED",
    "UPLOADING",
    "VERIFYING",
    "PUBLISHED",
    "ERRORED",
    "CANCELED",
];
const REG_STATUS: &[&str] = &[
    "REGISTRATION_STATUS_UNSPECIFIED",
    "REGISTERED",
    "ALREADY_REGISTERED",
    "NOT_UPLOADED",
];
const OBJECT_REF: &[F] = &[
    F(1, "hashAlgo", K::Enum(HASH_ALGO), false),
    F(2, "hexDigest", K::Str, false),
];
const INSTANCE: &[F] = &[
    F(1, "package", K::Str, false),
    F(2, "instance", K::Msg(OBJECT_REF), false),
    F(3, "registeredBy", K::Str, false),
    F(5, "attestations", K::Str, true),
];
const UPLOAD_OP: &[F] = &[
    F(1, "operationId", K::Str, false),
    F(2, "uploadUrl", K::Str, false),
    F(3, "status", K::Enum(UPLOAD_STATUS), false),
    F(4, "object", K::Msg(OBJECT_REF), false),
    F(5, "errorMessage", K::Str, false),
];
const REGISTER_RESPONSE: &[F] = &[
    F(1, "status", K::Enum(REG_STATUS), false),
    F(2, "instance", K::Msg(INSTANCE), false),
    F(3, "uploadOp", K::Msg(UPLOAD_OP), false),
];
const RESOLVE_REQUEST: &[F] = &[
    F(1, "package", K::Str, false),
    F(2, "version", K::Str, false),
];
const GET_URL_REQUEST: &[F] = &[
    F(1, "package", K::Str, false),
    F(2, "instance", K::Msg(OBJECT_REF), false),
];
const OBJECT_URL: &[F] = &[F(1, "signedUrl", K::Str, false)];
const FINISH_REQUEST: &[F] = &[
    F(1, "uploadOperationId", K::Str, false),
    F(2, "forceHash", K::Msg(OBJECT_REF), false),
];
const TAG: &[F] = &[
    F(1, "key", K::Str, false),
    F(2, "value", K::Str, false),
    F(3, "attachedBy", K::Str, false),
];
const ATTACH_TAGS_REQUEST: &[F] = &[
    F(1, "package", K::Str, false),
    F(2, "instance", K::Msg(OBJECT_REF), false),
    F(3, "tags", K::Msg(TAG), true),
];
const LIST_REQUEST: &[F] = &[
    F(1, "package", K::Str, false),
    F(20, "pageSize", K::I32, false),
    F(21, "pageToken", K::Str, false),
];
const SEARCH_REQUEST: &[F] = &[
    F(1, "package", K::Str, false),
    F(2, "tags", K::Msg(TAG), true),
    F(20, "pageSize", K::I32, false),
    F(21, "pageToken", K::Str, false),
];
const LIST_RESPONSE: &[F] = &[
    F(1, "instances", K::Msg(INSTANCE), true),
    F(20, "nextPageToken", K::Str, false),
];
const DESCRIBE_REQUEST: &[F] = &[
    F(1, "package", K::Str, false),
    F(2, "instance", K::Msg(OBJECT_REF), false),
    F(3, "describeRefs", K::Bool, false),
    F(4, "describeTags", K::Bool, false),
    F(5, "describeProcessors", K::Bool, false),
];
const DESCRIBE_RESPONSE: &[F] = &[
    F(1, "instance", K::Msg(INSTANCE), false),
    F(3, "tags", K::Msg(TAG), true),
];
const REF: &[F] = &[
    F(1, "name", K::Str, false),
    F(2, "package", K::Str, false),
    F(3, "instance", K::Msg(OBJECT_REF), false),
    F(4, "modifiedBy", K::Str, false),
];
const EMPTY: &[F] = &[];
// Only the I64 kind is unused by the messages above; keep the codec complete anyway.
const _CLIENT_SIZE: F = F(4, "clientSize", K::I64, false);

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn decode(buf: &[u8], schema: &[F]) -> Option<Value> {
    let mut obj = Map::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let (num, wire) = ((tag >> 3) as u32, tag & 7);
        let field = schema.iter().find(|f| f.0 == num);
        let v = match wire {
            0 => {
                let n = varint(buf, &mut pos)?;
                match field.map(|f| f.2) {
                    Some(K::Bool) => json!(n != 0),
                    Some(K::I32) => json!(n as i32),
                    Some(K::I64) => json!((n as i64).to_string()),
                    Some(K::Enum(names)) => {
                        names.get(n as usize).map(|s| json!(s)).unwrap_or(json!(n))
                    }
                    _ => Value::Null,
                }
            }
            2 => {
                let len = varint(buf, &mut pos)? as usize;
                let bytes = buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                match field.map(|f| f.2) {
                    Some(K::Str) => json!(String::from_utf8(bytes.to_vec()).ok()?),
                    Some(K::Msg(s)) => decode(bytes, s)?,
                    _ => Value::Null,
                }
            }
            1 => {
                pos += 8;
                Value::Null
            }
            5 => {
                pos += 4;
                Value::Null
            }
            _ => return None,
        };
        let Some(f) = field else { continue };
        if v.is_null() {
            continue;
        }
        if f.3 {
            obj.entry(f.1)
                .or_insert_with(|| json!([]))
                .as_array_mut()?
                .push(v);
        } else {
            obj.insert(f.1.to_owned(), v);
        }
    }
    (pos == buf.len()).then_some(Value::Object(obj))
}

fn encode(v: &Value, schema: &[F]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in schema {
        let Some(x) = v.get(f.1) else { continue };
        let items: Vec<&Value> = if f.3 {
            x.as_array().map(|a| a.iter().collect()).unwrap_or_default()
        } else {
            vec![x]
        };
        for x in items {
            match f.2 {
                K::Str => {
                    let s = x.as_str().unwrap_or("");
                    if s.is_empty() && !f.3 {
                        continue;
                    }
                    put_varint(&mut out, u64::from(f.0) << 3 | 2);
                    put_varint(&mut out, s.len() as u64);
                    out.extend_from_slice(s.as_bytes());
                }
                K::Msg(s) => {
                    let b = encode(x, s);
                    put_varint(&mut out, u64::from(f.0) << 3 | 2);
                    put_varint(&mut out, b.len() as u64);
                    out.extend(b);
                }
                K::Bool | K::I32 | K::I64 | K::Enum(_) => {
                    let n = match (f.2, x) {
                        (K::Enum(names), Value::String(s)) => {
                            names.iter().position(|n| n == s).unwrap_or(0) as u64
                        }
                        (_, Value::Bool(b)) => u64::from(*b),
                        (_, Value::String(s)) => s.parse::<i64>().unwrap_or(0) as u64,
                        (_, x) => x.as_i64().unwrap_or(0) as u64,
                    };
                    if n == 0 {
                        continue;
                    }
                    put_varint(&mut out, u64::from(f.0) << 3);
                    put_varint(&mut out, n);
                }
            }
        }
    }
    out
}

fn snake(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            s.push('_');
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

/// JSON input: camelCase or snake_case keys, enums as names or numbers, unknown fields
/// dropped; normalized to the form `decode` produces.
fn normalize(v: &Value, schema: &[F]) -> Value {
    let mut obj = Map::new();
    for f in schema {
        let Some(x) = v.get(f.1).or_else(|| v.get(snake(f.1))) else {
            continue;
        };
        let one = |x: &Value| match (f.2, x) {
            (K::Msg(s), x) => normalize(x, s),
            (K::Enum(names), Value::Number(n)) => names
                .get(n.as_u64().unwrap_or(0) as usize)
                .map(|s| json!(s))
                .unwrap_or(x.clone()),
            _ => x.clone(),
        };
        let nv = if f.3 {
            Value::Array(x.as_array().into_iter().flatten().map(one).collect())
        } else {
            one(x)
        };
        obj.insert(f.1.to_owned(), nv);
    }
    Value::Object(obj)
}

/// Protojson output: zero or default fields omitted.
fn prune(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, prune(v)))
                .filter(|(_, v)| match v {
                    Value::String(s) => !s.is_empty() && !s.ends_with("_UNSPECIFIED"),
                    Value::Bool(b) => *b,
                    Value::Null => false,
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    _ => true,
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(prune).collect()),
        v => v,
    }
}

// ---------------------------------------------------------------------------------------
// HTTP.

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many bytes of the body, then close.
    cut: Option<usize>,
}

impl Response {
    fn new(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body,
            cut: None,
        }
    }
    fn header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn handle(mut conn: TcpStream, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let Some(req) = read_request(&conn) else {
        return Ok(());
    };
    let resp = route(&req, &st);
    let reason = match resp.status {
        200 => "OK",
        308 => "Resume Incomplete",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    let n = resp.cut.unwrap_or(resp.body.len()).min(resp.body.len());
    conn.write_all(&resp.body[..n])?;
    conn.flush()?;
    conn.shutdown(std::net::Shutdown::Both)
}

fn take_fault(s: &mut State, target: &str) -> Option<Fault> {
    let i = s
        .faults
        .iter()
        .position(|(t, _, n)| t == target && *n > 0)?;
    s.faults[i].2 -= 1;
    let f = s.faults[i].1.clone();
    if s.faults[i].2 == 0 {
        s.faults.remove(i);
    }
    Some(f)
}

fn route(req: &Request, st: &Mutex<State>) -> Response {
    let path = req.path.split('?').next().unwrap_or("").to_owned();
    let mut s = st.lock().unwrap();
    if let Some(rpc) = path.strip_prefix("/prpc/") {
        let method = rpc.rsplit('/').next().unwrap_or("").to_owned();
        let json = req
            .headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("application/json") || c.contains("encoding=json"));
        s.log
            .push(format!("{method} {}", if json { "json" } else { "binary" }));
        if let Some(f) = take_fault(&mut s, &method) {
            return fault_response(f);
        }
        return prpc(&mut s, req, rpc, json);
    }
    if let Some(token) = path.strip_prefix("/upload/") {
        s.log.push(format!(
            "upload {}",
            req.headers
                .get("content-range")
                .cloned()
                .unwrap_or_default()
        ));
        return match take_fault(&mut s, "upload") {
            Some(Fault::WrongBytes) => {
                let mut altered = Request {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    headers: req.headers.clone(),
                    body: req.body.clone(),
                };
                if let Some(x) = altered.body.get_mut(0) {
                    *x ^= 0xff;
                }
                upload(&mut s, &altered, token)
            }
            Some(f) => fault_response(f),
            None => upload(&mut s, req, token),
        };
    }
    if let Some(token) = path.strip_prefix("/gcs/") {
        s.log.push(format!(
            "download auth={}",
            req.headers.contains_key("authorization")
        ));
        let Some(bytes) = s.urls.get(token).and_then(|h| s.cas.get(h)).cloned() else {
            return Response::new(404, b"no such object".to_vec());
        };
        return match take_fault(&mut s, "download") {
            Some(Fault::Truncate) => {
                let mut r = Response::new(200, bytes);
                r.cut = Some(r.body.len() / 2);
                r
            }
            Some(Fault::WrongBytes) => {
                let mut b = bytes;
                if let Some(x) = b.get_mut(0) {
                    *x ^= 0xff;
                }
                Response::new(200, b)
            }
            Some(f) => fault_response(f),
            None => Response::new(200, bytes),
        };
    }
    Response::new(404, b"not found".to_vec())
}

fn fault_response(f: Fault) -> Response {
    match f {
        Fault::Http(status) => Response::new(status, b"injected fault".to_vec()),
        Fault::Grpc(code, msg) => grpc_error(code, msg),
        _ => Response::new(500, b"fault does not apply here".to_vec()),
    }
}

fn grpc_error(code: u32, msg: &str) -> Response {
    Response::new(http_status(code), msg.as_bytes().to_vec())
        .header("X-Prpc-Grpc-Code", &code.to_string())
        .header("Content-Type", "text/plain; charset=utf-8")
}

type RpcResult = Result<Value, (u32, String)>;

fn err<T>(code: u32, msg: impl Into<String>) -> Result<T, (u32, String)> {
    Err((code, msg.into()))
}

fn prpc(s: &mut State, req: &Request, rpc: &str, json_in: bool) -> Response {
    let (req_schema, resp_schema): (&[F], &[F]) = match rpc {
        "cipd.Repository/RegisterInstance" => (INSTANCE, REGISTER_RESPONSE),
        "cipd.Repository/ResolveVersion" => (RESOLVE_REQUEST, INSTANCE),
        "cipd.Repository/GetInstanceURL" => (GET_URL_REQUEST, OBJECT_URL),
        "cipd.Repository/AttachTags" => (ATTACH_TAGS_REQUEST, EMPTY),
        "cipd.Repository/CreateRef" => (REF, EMPTY),
        "cipd.Repository/ListInstances" => (LIST_REQUEST, LIST_RESPONSE),
        "cipd.Repository/SearchInstances" => (SEARCH_REQUEST, LIST_RESPONSE),
        "cipd.Repository/DescribeInstance" => (DESCRIBE_REQUEST, DESCRIBE_RESPONSE),
        "cipd.Storage/FinishUpload" | "cipd.Storage/CancelUpload" => (FINISH_REQUEST, UPLOAD_OP),
        _ => return grpc_error(UNIMPLEMENTED, &format!("unknown method {rpc}")),
    };
    if req.method != "POST" {
        return Response::new(405, b"pRPC needs POST".to_vec());
    }
    let body = if json_in {
        serde_json::from_slice::<Value>(&req.body)
            .ok()
            .map(|v| normalize(&v, req_schema))
    } else {
        decode(&req.body, req_schema)
    };
    let Some(body) = body else {
        return grpc_error(INVALID_ARGUMENT, "could not decode the request body");
    };
    // Identity from the bearer token.
    let identity = match req.headers.get("authorization") {
        None => "anonymous:anonymous".to_owned(),
        Some(h) => match h.strip_prefix("Bearer ") {
            Some(WRITER_TOKEN) => "user:writer@example.com".to_owned(),
            Some(READER_TOKEN) => "user:reader@example.com".to_owned(),
            _ => return grpc_error(UNAUTHENTICATED, "bad OAuth token"),
        },
    };
    let result = call(s, rpc, &body, &identity);
    let accept_json = match req.headers.get("accept") {
        Some(a) if a.contains("json") => true,
        Some(a) if a.contains("binary") => false,
        _ => json_in,
    };
    match result {
        Ok(v) => {
            let (ct, out) = if accept_json {
                let mut b = b")]}'\n".to_vec();
                b.extend(serde_json::to_vec(&prune(v)).unwrap());
                ("application/json", b)
            } else {
                ("application/prpc; encoding=binary", encode(&v, resp_schema))
            };
            Response::new(200, out)
                .header("X-Prpc-Grpc-Code", "0")
                .header("Content-Type", ct)
        }
        Err((code, msg)) => grpc_error(code, &msg),
    }
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn valid_package(p: &str) -> bool {
    !p.is_empty()
        && p.split('/').all(|c| {
            !c.is_empty()
                && !c.chars().all(|x| x == '.')
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
        })
}

fn valid_tag(t: &str) -> bool {
    let Some((k, v)) = t.split_once(':') else {
        return false;
    };
    t.len() <= 400
        && !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
        && !v.is_empty()
        && !v.starts_with(' ')
        && !v.ends_with(' ')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"$()*+,-./:;<=>@\\_{}~ ".contains(&b))
}

/// A ref: `^[a-z0-9_./\-]{1,256}$`, and not an instance ID.
fn valid_ref(r: &str) -> bool {
    (1..=256).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_./-".contains(&b))
        && iid_hex(r).is_none()
}

/// A SHA256 instance ID's hex digest, if `v` is one.
fn iid_hex(v: &str) -> Option<String> {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v)
        .ok()?;
    (b.len() == 33 && b[32] == 2).then(|| hex::encode(&b[..32]))
}

fn object_ref(v: &Value) -> Result<String, (u32, String)> {
    let r = v.get("instance").cloned().unwrap_or(json!({}));
    if str_of(&r, "hashAlgo") != "SHA256" {
        return err(INVALID_ARGUMENT, "bad instance: unsupported hash algo");
    }
    let hex = str_of(&r, "hexDigest");
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return err(INVALID_ARGUMENT, "bad instance: invalid hex digest");
    }
    Ok(hex.to_owned())
}

fn instance_json(i: &Instance) -> Value {
    json!({
        "package": i.package,
        "instance": {"hashAlgo": "SHA256", "hexDigest": i.hex},
        "registeredBy": i.registered_by,
    })
}

fn call(s: &mut State, rpc: &str, body: &Value, identity: &str) -> RpcResult {
    let writer = identity == "user:writer@example.com";
    let anonymous = identity == "anonymous:anonymous";
    let method = rpc.rsplit('/').next().unwrap_or("");
    let package = str_of(body, "package").to_owned();
    let read_denied = |p: &str| -> RpcResult {
        if anonymous {
            err(
                PERMISSION_DENIED,
                format!(
                    "prefix \"{p}\" doesn't exist or is not visible to unauthenticated callers"
                ),
            )
        } else {
            err(
                PERMISSION_DENIED,
                format!("prefix \"{p}\" doesn't exist or {identity} is not allowed to see it"),
            )
        }
    };
    match method {
        "ResolveVersion" | "GetInstanceURL" | "ListInstances" | "SearchInstances"
        | "DescribeInstance"
            if anonymous && !s.anonymous_read =>
        {
            return read_denied(&package);
        }
        "RegisterInstance" | "AttachTags" | "CreateRef" if !writer => {
            return err(
                PERMISSION_DENIED,
                format!("{identity} is not allowed to write to \"{package}\""),
            );
        }
        _ => {}
    }
    if !matches!(method, "FinishUpload" | "CancelUpload") && !valid_package(&package) {
        return err(INVALID_ARGUMENT, format!("bad package name \"{package}\""));
    }
    let find = |s: &State, hex: &str| {
        s.instances
            .iter()
            .position(|i| i.package == package && i.hex == hex)
    };
    let package_exists = |s: &State| s.instances.iter().any(|i| i.package == package);
    match method {
        "RegisterInstance" => {
            let hex = object_ref(body)?;
            if let Some(i) = find(s, &hex) {
                return Ok(
                    json!({"status": "ALREADY_REGISTERED", "instance": instance_json(&s.instances[i])}),
                );
            }
            if s.cas.contains_key(&hex) {
                let inst = Instance {
                    package: package.clone(),
                    hex,
                    tags: Vec::new(),
                    registered_by: identity.to_owned(),
                    pending: s.processing_rounds,
                };
                let out = json!({"status": "REGISTERED", "instance": instance_json(&inst)});
                s.instances.push(inst);
                return Ok(out);
            }
            s.counter += 1;
            let op = format!("op-{}", s.counter);
            let token = format!("session-{}", s.counter);
            s.sessions.insert(token.clone(), op.clone());
            s.uploads.insert(
                op.clone(),
                Upload {
                    hex: hex.clone(),
                    data: Vec::new(),
                    total: None,
                    status: "UPLOADING",
                    identity: identity.to_owned(),
                    polls: 0,
                    error: String::new(),
                },
            );
            Ok(json!({
                "status": "NOT_UPLOADED",
                "uploadOp": {
                    "operationId": op,
                    "uploadUrl": format!("{}/upload/{token}", s.base),
                    "status": "UPLOADING",
                    "object": {"hashAlgo": "SHA256", "hexDigest": hex},
                },
            }))
        }
        "FinishUpload" | "CancelUpload" => {
            if body.get("forceHash").is_some() {
                return err(PERMISSION_DENIED, "force_hash is forbidden");
            }
            let op = str_of(body, "uploadOperationId").to_owned();
            let verify_polls = s.verify_polls;
            let Some(u) = s.uploads.get_mut(&op).filter(|u| u.identity == identity) else {
                return err(NOT_FOUND, "no such upload operation");
            };
            if method == "CancelUpload" {
                if u.status != "UPLOADING" {
                    return err(FAILED_PRECONDITION, "the upload is not in progress");
                }
                u.status = "CANCELED";
            } else {
                match u.status {
                    "UPLOADING" => {
                        if u.total == Some(u.data.len()) {
                            u.status = "VERIFYING";
                        } else {
                            u.status = "ERRORED";
                            u.error = "upload not finished".into();
                        }
                    }
                    "VERIFYING" => {
                        u.polls += 1;
                        if u.polls >= verify_polls {
                            let got = hex::encode(Sha256::digest(&u.data));
                            if got == u.hex {
                                u.status = "PUBLISHED";
                            } else {
                                u.status = "ERRORED";
                                u.error = format!(
                                    "hash mismatch: expected SHA256:{}, got SHA256:{got}",
                                    u.hex
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
            let (status, hex, error) = (u.status, u.hex.clone(), u.error.clone());
            if status == "PUBLISHED" {
                let data = s
                    .uploads
                    .get(&op)
                    .map(|u| u.data.clone())
                    .unwrap_or_default();
                s.cas.entry(hex.clone()).or_insert(data);
            }
            let mut out = json!({"operationId": op, "status": status, "errorMessage": error});
            if status == "PUBLISHED" {
                out["object"] = json!({"hashAlgo": "SHA256", "hexDigest": hex});
            }
            Ok(out)
        }
        "ResolveVersion" => {
            let version = str_of(body, "version");
            let hex = if let Some(h) = iid_hex(version) {
                h
            } else if let Some(h) = s.refs.get(&(package.clone(), version.to_owned())) {
                h.clone()
            } else if version.contains(':') {
                if !valid_tag(version) {
                    return err(INVALID_ARGUMENT, format!("bad version \"{version}\""));
                }
                let hits: Vec<&Instance> = s
                    .instances
                    .iter()
                    .filter(|i| i.package == package && i.tags.iter().any(|t| t == version))
                    .take(2)
                    .collect();
                match hits.len() {
                    0 if !package_exists(s) => return err(NOT_FOUND, "no such package"),
                    0 => return err(NOT_FOUND, "no such tag"),
                    1 => hits[0].hex.clone(),
                    _ => {
                        return err(
                            FAILED_PRECONDITION,
                            format!(
                                "ambiguity when resolving the tag \"{version}\": more than one instance has it"
                            ),
                        );
                    }
                }
            } else if !package_exists(s) {
                return err(NOT_FOUND, "no such package");
            } else {
                return err(NOT_FOUND, "no such ref");
            };
            match find(s, &hex) {
                Some(i) => Ok(instance_json(&s.instances[i])),
                None => err(NOT_FOUND, "no such instance"),
            }
        }
        "GetInstanceURL" => {
            let hex = object_ref(body)?;
            if find(s, &hex).is_none() {
                return err(NOT_FOUND, "no such instance");
            }
            s.counter += 1;
            let token = format!("obj-{}-{}", s.counter, &hex[..8]);
            s.urls.insert(token.clone(), hex);
            Ok(json!({"signedUrl": format!("{}/gcs/{token}?X-Goog-Signature=fake", s.base)}))
        }
        "AttachTags" => {
            let hex = object_ref(body)?;
            let Some(i) = find(s, &hex) else {
                return err(NOT_FOUND, "no such instance");
            };
            let tags: Vec<String> = body
                .get("tags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|t| format!("{}:{}", str_of(t, "key"), str_of(t, "value")))
                .collect();
            if tags.is_empty() || !tags.iter().all(|t| valid_tag(t)) {
                return err(INVALID_ARGUMENT, format!("bad tags {tags:?}"));
            }
            let inst = &mut s.instances[i];
            if inst.pending > 0 {
                inst.pending -= 1;
                return err(
                    FAILED_PRECONDITION,
                    "the instance is not ready yet: pending processors",
                );
            }
            for t in tags {
                if !inst.tags.contains(&t) {
                    inst.tags.push(t);
                }
            }
            Ok(json!({}))
        }
        "CreateRef" => {
            let hex = object_ref(body)?;
            let name = str_of(body, "name").to_owned();
            if !valid_ref(&name) {
                return err(INVALID_ARGUMENT, format!("bad ref name \"{name}\""));
            }
            let Some(i) = find(s, &hex) else {
                return err(NOT_FOUND, "no such instance");
            };
            let inst = &mut s.instances[i];
            if inst.pending > 0 {
                inst.pending -= 1;
                return err(
                    FAILED_PRECONDITION,
                    "the instance is not ready yet: pending processors",
                );
            }
            s.refs.insert((package.clone(), name), hex);
            Ok(json!({}))
        }
        "ListInstances" | "SearchInstances" => {
            if !package_exists(s) {
                return err(NOT_FOUND, "no such package");
            }
            let want: Vec<String> = body
                .get("tags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|t| format!("{}:{}", str_of(t, "key"), str_of(t, "value")))
                .collect();
            let all: Vec<&Instance> = s
                .instances
                .iter()
                .rev()
                .filter(|i| i.package == package && want.iter().all(|t| i.tags.contains(t)))
                .collect();
            let size = body
                .get("pageSize")
                .and_then(Value::as_i64)
                .filter(|n| *n > 0)
                .unwrap_or(100) as usize;
            let start: usize = str_of(body, "pageToken").parse().unwrap_or(0);
            let page: Vec<Value> = all
                .iter()
                .skip(start)
                .take(size)
                .map(|i| instance_json(i))
                .collect();
            let next = if start + size < all.len() {
                (start + size).to_string()
            } else {
                String::new()
            };
            Ok(json!({"instances": page, "nextPageToken": next}))
        }
        "DescribeInstance" => {
            let hex = object_ref(body)?;
            let Some(i) = find(s, &hex) else {
                return err(NOT_FOUND, "no such instance");
            };
            let inst = &s.instances[i];
            let mut out = json!({"instance": instance_json(inst)});
            if body.get("describeTags").and_then(Value::as_bool) == Some(true) {
                out["tags"] = inst
                    .tags
                    .iter()
                    .map(|t| {
                        let (k, v) = t.split_once(':').unwrap_or((t, ""));
                        json!({"key": k, "value": v})
                    })
                    .collect();
            }
            Ok(out)
        }
        _ => err(UNIMPLEMENTED, format!("unknown method {rpc}")),
    }
}

/// The GCS resumable-upload endpoint.
fn upload(s: &mut State, req: &Request, token: &str) -> Response {
    if req.method != "PUT" {
        return Response::new(405, Vec::new());
    }
    if req.headers.contains_key("authorization") {
        return Response::new(400, b"signed upload URLs take no Authorization".to_vec());
    }
    let Some(u) = s
        .sessions
        .get(token)
        .cloned()
        .and_then(|op| s.uploads.get_mut(&op))
    else {
        return Response::new(404, b"no such upload session".to_vec());
    };
    if u.status != "UPLOADING" {
        return Response::new(410, b"the upload session is over".to_vec());
    }
    let range = req
        .headers
        .get("content-range")
        .cloned()
        .unwrap_or_default();
    let Some(spec) = range.strip_prefix("bytes ") else {
        return Response::new(400, b"missing Content-Range".to_vec());
    };
    let Some((span, total)) = spec.split_once('/') else {
        return Response::new(400, b"bad Content-Range".to_vec());
    };
    let Ok(total) = total.parse::<usize>() else {
        return Response::new(400, b"bad Content-Range total".to_vec());
    };
    u.total = Some(total);
    if span != "*" {
        let Some((a, b)) = span
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        else {
            return Response::new(400, b"bad Content-Range span".to_vec());
        };
        if b + 1 - a != req.body.len() || b >= total {
            return Response::new(400, b"Content-Range does not match the body".to_vec());
        }
        if a == u.data.len() {
            u.data.extend_from_slice(&req.body);
        }
    }
    if u.data.len() == total {
        return Response::new(200, Vec::new());
    }
    let r = Response::new(308, Vec::new());
    if u.data.is_empty() {
        r
    } else {
        r.header("Range", &format!("bytes=0-{}", u.data.len() - 1))
    }
}
