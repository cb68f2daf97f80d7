//! A blocking client for one repository of an OCI (Docker) registry: the distribution
//! API's blobs (resumable chunked uploads, resumable ranged downloads), manifests (checked
//! against their digests) and tags. Used by the `oci://` binary cache and `docker-mirror`.
//!
//! It speaks the API over `ureq` (blocking, already used by `fetch`) rather than through
//! an OCI client crate: those are async and bring in a second HTTP stack, for the dozen
//! requests needed here.
//!
//! Plain `http` is used for loopback hosts and those listed in
//! `$DOCKERBUILD_INSECURE_REGISTRIES`; `https` otherwise. Credentials come from
//! `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`, `auths.<host>.auth`),
//! sent as Basic auth or exchanged for a bearer token, as the registry asks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tracing::{debug, instrument, warn};
use ureq::http::{self, Method, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "`{reference}` is not a registry reference\nhint: use HOST[:PORT]/REPO[:TAG] or HOST[:PORT]/REPO@sha256:HEX"
    )]
    BadReference { reference: String },
    #[error(
        "{registry}: {what}: cannot reach the registry\nhint: is it running at that address? Plain http is used only for loopback hosts and those in $DOCKERBUILD_INSECURE_REGISTRIES"
    )]
    Unreachable {
        registry: String,
        what: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{registry}: {what}: the registry answered {status}: {body}")]
    Status {
        registry: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error(
        "{registry}: {what}: the registry refused access ({status})\nhint: log in with `docker login {host}`; credentials are read from $DOCKER_CONFIG/config.json (default ~/.docker/config.json)"
    )]
    Denied {
        registry: String,
        what: String,
        status: u16,
        host: String,
    },
    #[error("{registry}: {what} is malformed: {reason}")]
    Malformed {
        registry: String,
        what: String,
        reason: String,
    },
    #[error("{registry}: {what}: {reason}")]
    Remote {
        registry: String,
        what: String,
        reason: String,
    },
    #[error("{registry}: cannot {action}")]
    Io {
        registry: String,
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    /// Whether trying again may succeed (the registry was unreachable or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { source, .. } => matches!(
                **source,
                ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed
            ),
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Manifest media types a copy accepts.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A manifest's bytes as served, its media type and its (verified) digest.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

/// How transfers behave; the defaults suit a registry across a network.
#[derive(Debug, Clone)]
pub struct OciOptions {
    /// Bytes per upload request (the unit a resumed push can keep).
    pub chunk_size: u64,
    /// Attempts after the first for a failed request or an interrupted transfer.
    pub retries: u32,
    /// Wait before the first retry; doubled each time.
    pub backoff: Duration,
    /// Connect and response timeout.
    pub timeout: Duration,
}

impl Default for OciOptions {
    fn default() -> Self {
        OciOptions {
            chunk_size: 64 << 20,
            retries: 6,
            backoff: Duration::from_millis(250),
            timeout: Duration::from_secs(30),
        }
    }
}

/// One repository of a registry.
pub struct Repository {
    /// How it is named in messages (e.g. the cache URL).
    pub name: String,
    /// `http[s]://HOST[:PORT]/v2/REPO`
    base: String,
    host: String,
    repo: String,
    agent: ureq::Agent,
    /// `user:pass`, base64, from the Docker config.
    basic: Option<String>,
    /// The Authorization header that last worked (Basic or Bearer).
    auth: Mutex<Option<String>>,
    opts: OciOptions,
}

enum Body<'a> {
    Empty,
    Bytes(&'a [u8], &'a str),
    /// `len` bytes of `path` from `offset`.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
    },
}

type Response = http::Response<ureq::Body>;

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn insecure_allowed(host: &str) -> bool {
    is_loopback(host)
        || std::env::var("DOCKERBUILD_INSECURE_REGISTRIES").is_ok_and(|v| {
            v.split([' ', ','])
                .any(|h| !h.is_empty() && h.eq_ignore_ascii_case(host))
        })
}

fn valid_repo(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && part.as_bytes()[0].is_ascii_alphanumeric()
                && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
        })
}

/// Credentials for `host` from the Docker client's config, as base64 `user:pass`.
fn docker_credentials(host: &str) -> Option<String> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    credentials_in(&dir.join("config.json"), host)
}

/// `auths.<host>` of a Docker config file (keys may carry a scheme and a path).
fn credentials_in(path: &Path, host: &str) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let v: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            warn!(path = %path.display(), "ignoring an unreadable Docker config: {e}");
            return None;
        }
    };
    let auths = v.get("auths")?.as_object()?;
    for (name, entry) in auths {
        let bare = name
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        if !bare.eq_ignore_ascii_case(host) {
            continue;
        }
        if let Some(a) = entry.get("auth").and_then(|a| a.as_str()) {
            return Some(a.to_owned());
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(|u| u.as_str()),
            entry.get("password").and_then(|p| p.as_str()),
        ) {
            return Some(base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
        }
    }
    None
}

/// `Bearer realm="...",service="...",scope="..."` -> its parameters.
fn challenge_params(header: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = header.split_once(' ').map_or("", |(_, r)| r).trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.push((k.trim().to_ascii_lowercase(), v.to_owned()));
        rest = tail.trim_start_matches([',', ' ']);
    }
    out
}

fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The end of a `Range: 0-<end>` upload-status header, as the next offset.
fn upload_offset(resp: &Response) -> Option<u64> {
    let range = header(resp, "range")?;
    let (_, end) = range.trim_start_matches("bytes=").split_once('-')?;
    let end: i64 = end.parse().ok()?;
    Some((end + 1).max(0) as u64)
}

/// A small JSON document from a response body.
fn read_json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, String> {
    let bytes = resp
        .into_body()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Splits `HOST[:PORT]/REPO[:TAG|@DIGEST]` into host, repository and reference.
pub fn parse_reference(reference: &str) -> Result<(String, String, Option<String>)> {
    let bad = || RegistryError::BadReference {
        reference: reference.to_owned(),
    };
    let (host, rest) = reference.split_once('/').ok_or_else(bad)?;
    let (repo, tag) = if let Some((repo, digest)) = rest.split_once('@') {
        (repo, Some(digest.to_owned()))
    } else {
        match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_owned())),
            _ => (rest, None),
        }
    };
    if host.is_empty() || !valid_repo(repo) || tag.as_deref() == Some("") {
        return Err(bad());
    }
    Ok((host.to_owned(), repo.to_owned(), tag))
}

impl Repository {
    /// Repository `repo` on `host` (`HOST[:PORT]`); no request is made until it is used.
    pub fn open(name: &str, host: &str, repo: &str, opts: OciOptions) -> Result<Repository> {
        if host.is_empty() || !valid_repo(repo) {
            return Err(RegistryError::BadReference {
                reference: name.to_owned(),
            });
        }
        let scheme = if insecure_allowed(host) {
            "http"
        } else {
            "https"
        };
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(opts.timeout))
            .timeout_recv_response(Some(opts.timeout))
            .http_status_as_error(false)
            .accept_encoding("identity")
            .user_agent(concat!("dockerbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Repository {
            name: name.to_owned(),
            base: format!("{scheme}://{host}/v2/{repo}"),
            host: host.to_owned(),
            repo: repo.to_owned(),
            agent,
            basic: docker_credentials(host),
            auth: Mutex::new(None),
            opts,
        })
    }

    /// A reader of blob `digest` (`size` bytes) that resumes after interruptions and
    /// fails at the end if the bytes do not hash to `digest`.
    pub fn blob_reader(
        self: &Arc<Self>,
        digest: &str,
        size: u64,
        what: &str,
    ) -> Result<BlobReader> {
        let mut r = BlobReader {
            inner: self.clone(),
            url: self.blob_url(digest),
            what: what.to_owned(),
            expected: digest.to_owned(),
            size,
            offset: 0,
            sha: Sha256::new(),
            body: None,
            failures: 0,
            checked: false,
        };
        r.connect()
            .map_err(|e| match e.downcast::<RegistryError>() {
                Ok(e) => e,
                Err(e) => RegistryError::Io {
                    registry: self.name.clone(),
                    action: format!("fetch {what}"),
                    source: e,
                },
            })?;
        Ok(r)
    }

    fn remote(&self, what: &str, reason: impl Into<String>) -> RegistryError {
        RegistryError::Remote {
            registry: self.name.clone(),
            what: what.to_owned(),
            reason: reason.into(),
        }
    }

    fn unreachable(&self, what: &str, source: ureq::Error) -> RegistryError {
        RegistryError::Unreachable {
            registry: self.name.clone(),
            what: what.to_owned(),
            source: Box::new(source),
        }
    }

    /// An unexpected answer: the status and the start of the registry's error body.
    fn status_error(&self, what: &str, resp: Response) -> RegistryError {
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return RegistryError::Denied {
                registry: self.name.clone(),
                what: what.to_owned(),
                status: status.as_u16(),
                host: self.host.clone(),
            };
        }
        let mut text = Vec::new();
        let _ = resp
            .into_body()
            .into_reader()
            .take(400)
            .read_to_end(&mut text);
        RegistryError::Status {
            registry: self.name.clone(),
            what: what.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&text).trim().to_owned(),
        }
    }

    fn with_body(
        &self,
        mut b: http::request::Builder,
        body: &Body,
    ) -> Result<Response, ureq::Error> {
        if let Some(a) = self.auth.lock().expect("not poisoned").clone() {
            b = b.header("authorization", a);
        }
        match body {
            Body::Empty => {
                let req = b.header("content-length", "0").body(())?;
                self.agent.run(req)
            }
            Body::Bytes(bytes, ctype) => {
                let req = b
                    .header("content-type", *ctype)
                    .header("content-length", bytes.len())
                    .body(*bytes)?;
                self.agent.run(req)
            }
            Body::File { path, offset, len } => {
                let mut f = File::open(path)?;
                f.seek(SeekFrom::Start(*offset))?;
                let req = b
                    .header("content-type", "application/octet-stream")
                    .header("content-length", *len)
                    .body(ureq::SendBody::from_owned_reader(f.take(*len)))?;
                self.agent.run(req)
            }
        }
    }

    /// One request, authenticating once if the registry asks (Basic or a bearer token).
    fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &Body,
        what: &str,
    ) -> Result<Response> {
        let build = || {
            let mut b = http::Request::builder().method(method.clone()).uri(url);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b
        };
        let resp = self
            .with_body(build(), body)
            .map_err(|e| self.unreachable(what, e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(challenge) = header(&resp, "www-authenticate").map(str::to_owned) else {
            return Ok(resp);
        };
        self.authenticate(&challenge, what)?;
        self.with_body(build(), body)
            .map_err(|e| self.unreachable(what, e))
    }

    fn authenticate(&self, challenge: &str, what: &str) -> Result<()> {
        let denied = || RegistryError::Denied {
            registry: self.name.clone(),
            what: what.to_owned(),
            status: 401,
            host: self.host.clone(),
        };
        let scheme = challenge.split(' ').next().unwrap_or("");
        if scheme.eq_ignore_ascii_case("basic") {
            let basic = self.basic.as_ref().ok_or_else(denied)?;
            *self.auth.lock().expect("not poisoned") = Some(format!("Basic {basic}"));
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(self.remote(what, format!("unsupported authentication `{scheme}`")));
        }
        let params = challenge_params(challenge);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let realm =
            get("realm").ok_or_else(|| self.remote(what, "a bearer challenge without a realm"))?;
        let default_scope = format!("repository:{}:pull,push", self.repo);
        let mut req = self
            .agent
            .get(realm)
            .query("scope", get("scope").unwrap_or(&default_scope));
        if let Some(s) = get("service") {
            req = req.query("service", s);
        }
        if let Some(b) = &self.basic {
            req = req.header("authorization", &format!("Basic {b}"));
        }
        debug!(realm, "fetching a registry token");
        let resp = req.call().map_err(|e| self.unreachable(what, e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(&format!("{what}: token from {realm}"), resp));
        }
        let v: serde_json::Value = read_json(resp)
            .map_err(|e| self.remote(what, format!("the token server's answer: {e}")))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| self.remote(what, "the token server gave no token"))?;
        *self.auth.lock().expect("not poisoned") = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// Runs `attempt` again on transient failures (unreachable, 5xx, 429), with backoff.
    fn retrying<T>(&self, what: &str, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
        let mut delay = self.opts.backoff;
        let mut n = 0;
        loop {
            match attempt() {
                Err(e) if n < self.opts.retries && e.is_transient() => {
                    n += 1;
                    warn!(registry = %self.name, what, attempt = n, "{e}; retrying in {delay:?}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                r => return r,
            }
        }
    }

    /// A request whose transient failures are retried; non-success statuses other than
    /// those in `ok` are errors.
    fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &Body,
        ok: &[StatusCode],
        what: &str,
    ) -> Result<Response> {
        self.retrying(what, || {
            let resp = self.send(method.clone(), url, headers, body, what)?;
            if ok.contains(&resp.status()) {
                Ok(resp)
            } else {
                Err(self.status_error(what, resp))
            }
        })
    }

    fn blob_url(&self, digest: &str) -> String {
        format!("{}/blobs/{digest}", self.base)
    }

    fn manifest_url(&self, reference: &str) -> String {
        format!("{}/manifests/{reference}", self.base)
    }

    pub fn has_blob(&self, digest: &str, what: &str) -> Result<bool> {
        let resp = self.call(
            Method::HEAD,
            &self.blob_url(digest),
            &[],
            &Body::Empty,
            &[StatusCode::OK, StatusCode::NOT_FOUND],
            what,
        )?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Absolute form of a `Location` header.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            let origin = self.base.split("/v2/").next().unwrap_or(&self.base);
            format!("{origin}{location}")
        }
    }

    fn location(&self, resp: &Response, what: &str) -> Result<String> {
        header(resp, "location")
            .map(|l| self.absolute(l))
            .ok_or_else(|| self.remote(what, "the registry gave no upload location"))
    }

    /// Uploads `path` (`size` bytes, sha256 `digest`) unless the registry has it:
    /// in chunks; an interrupted upload goes on where the registry says it stopped, or
    /// starts over when the registry lost it. Completed only by a PUT carrying the digest,
    /// which the registry verifies.
    #[instrument(skip(self, path), fields(registry = %self.name))]
    pub fn upload_blob(&self, path: &Path, digest: &str, size: u64, what: &str) -> Result<()> {
        let mut session: Option<String> = None;
        let mut delay = self.opts.backoff;
        let mut failures = 0;
        loop {
            let mut lost = false;
            match self.try_upload(path, digest, size, &mut session, &mut lost, what) {
                Ok(()) => return Ok(()),
                Err(e) if failures < self.opts.retries && (lost || e.is_transient()) => {
                    failures += 1;
                    warn!(what, attempt = failures, "{e}; resuming in {delay:?}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_upload(
        &self,
        path: &Path,
        digest: &str,
        size: u64,
        session: &mut Option<String>,
        lost: &mut bool,
        what: &str,
    ) -> Result<()> {
        if self.has_blob(digest, what)? {
            debug!(digest, "the registry has the blob");
            return Ok(());
        }
        // Where to go on from: the registry's word on the session, or a new one.
        let mut resumed = None;
        if let Some(loc) = session.take() {
            let resp = self.send(Method::GET, &loc, &[], &Body::Empty, what)?;
            if resp.status() == StatusCode::NO_CONTENT
                && let Some(offset) = upload_offset(&resp)
                && offset <= size
            {
                debug!(offset, "resuming the upload");
                resumed = Some((self.location(&resp, what).unwrap_or(loc), offset));
            } else {
                debug!(status = %resp.status(), "the upload was lost; starting over");
            }
        }
        let (mut loc, mut offset) = match resumed {
            Some(r) => r,
            None => (self.start_upload(what)?, 0),
        };
        *session = Some(loc.clone());
        while offset < size {
            let len = self.opts.chunk_size.min(size - offset);
            let range = format!("{offset}-{}", offset + len - 1);
            let resp = self.send(
                Method::PATCH,
                &loc,
                &[("content-range", &range)],
                &Body::File { path, offset, len },
                what,
            )?;
            if resp.status() != StatusCode::ACCEPTED {
                // The session is of no further use (a range mismatch, a lost upload):
                // the next attempt starts over.
                *session = None;
                *lost = true;
                return Err(self.status_error(what, resp));
            }
            loc = self.location(&resp, what)?;
            *session = Some(loc.clone());
            offset = upload_offset(&resp).unwrap_or(offset + len);
        }
        let sep = if loc.contains('?') { '&' } else { '?' };
        let resp = self.send(
            Method::PUT,
            &format!("{loc}{sep}digest={digest}"),
            &[],
            &Body::Empty,
            what,
        )?;
        if resp.status() != StatusCode::CREATED {
            *session = None;
            return Err(self.status_error(&format!("{what}: completing the upload"), resp));
        }
        Ok(())
    }

    /// A manifest by tag or digest, checked against its digest: the reference itself when
    /// it is one, else the digest the registry names it by (`Docker-Content-Digest`).
    /// None if the registry has no such manifest.
    pub fn get_manifest(
        &self,
        reference: &str,
        accept: &[&str],
        what: &str,
    ) -> Result<Option<RawManifest>> {
        let accept = accept.join(", ");
        let resp = self.call(
            Method::GET,
            &self.manifest_url(reference),
            &[("accept", &accept)],
            &Body::Empty,
            &[StatusCode::OK, StatusCode::NOT_FOUND],
            what,
        )?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let named = if reference.starts_with("sha256:") {
            Some(reference.to_owned())
        } else {
            header(&resp, "docker-content-digest").map(str::to_owned)
        };
        let media_type = header(&resp, "content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        let bytes = resp
            .into_body()
            .with_config()
            .limit(4 << 20)
            .read_to_vec()
            .map_err(|e| self.unreachable(what, e))?;
        let digest = sha256_hex(&bytes);
        if let Some(named) = named
            && named != digest
        {
            return Err(RegistryError::Malformed {
                registry: self.name.clone(),
                what: format!("{what}: manifest `{reference}`"),
                reason: format!(
                    "its bytes hash to {digest}, the registry names it {named}\nhint: it was changed on the registry's storage; push it again"
                ),
            });
        }
        Ok(Some(RawManifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// Puts manifest bytes, unchanged, under a tag or their digest.
    pub fn put_manifest(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
        what: &str,
    ) -> Result<()> {
        // A registry may briefly not see a blob another writer of the same blob is linking
        // into the repository (registry 2.8 rewrites the link in place): `BLOB_UNKNOWN`
        // right after our upload completed is worth a few more tries.
        let mut delay = self.opts.backoff;
        let mut n = 0;
        loop {
            match self.call(
                Method::PUT,
                &self.manifest_url(reference),
                &[],
                &Body::Bytes(bytes, media_type),
                &[StatusCode::CREATED, StatusCode::OK],
                what,
            ) {
                Ok(_) => return Ok(()),
                Err(RegistryError::Status {
                    status: 400, body, ..
                }) if n < self.opts.retries && body.contains("BLOB_UNKNOWN") => {
                    n += 1;
                    debug!(reference, "the registry does not see a blob yet: {body}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every tag of the repository, following `Link` pagination.
    pub fn tags(&self) -> Result<Vec<String>> {
        let what = "listing tags";
        let mut out = Vec::new();
        let mut next = Some(format!("{}/tags/list?n=1000", self.base));
        while let Some(url) = next.take() {
            let resp = self.call(
                Method::GET,
                &url,
                &[],
                &Body::Empty,
                &[StatusCode::OK, StatusCode::NOT_FOUND],
                what,
            )?;
            if resp.status() == StatusCode::NOT_FOUND {
                break; // no repository yet: nothing pushed
            }
            next = header(&resp, "link").and_then(|l| {
                let (target, rel) = l.split_once(';')?;
                rel.contains("next").then(|| {
                    self.absolute(target.trim().trim_start_matches('<').trim_end_matches('>'))
                })
            });
            #[derive(Deserialize)]
            struct Tags {
                tags: Option<Vec<String>>,
            }
            let t: Tags =
                read_json(resp).map_err(|e| self.remote(what, format!("the tag list: {e}")))?;
            out.extend(t.tags.unwrap_or_default());
        }
        Ok(out)
    }
}

impl Repository {
    /// Opens an upload session; returns its location.
    fn start_upload(&self, what: &str) -> Result<String> {
        let resp = self.call(
            Method::POST,
            &format!("{}/blobs/uploads/", self.base),
            &[],
            &Body::Empty,
            &[StatusCode::ACCEPTED],
            what,
        )?;
        self.location(&resp, what)
    }

    /// A small blob in one request (POST, then PUT with the bytes and the digest).
    pub fn upload_blob_bytes(&self, bytes: &[u8], digest: &str, what: &str) -> Result<()> {
        let loc = self.start_upload(what)?;
        let sep = if loc.contains('?') { '&' } else { '?' };
        self.call(
            Method::PUT,
            &format!("{loc}{sep}digest={digest}"),
            &[],
            &Body::Bytes(bytes, "application/octet-stream"),
            &[StatusCode::CREATED],
            what,
        )?;
        Ok(())
    }
}

/// A blob download that resumes with `Range` after an interruption and checks the
/// blob's sha256 once it has all of it.
pub struct BlobReader {
    inner: Arc<Repository>,
    url: String,
    what: String,
    expected: String,
    size: u64,
    offset: u64,
    sha: Sha256,
    body: Option<ureq::BodyReader<'static>>,
    /// Interruptions in a row without progress.
    failures: u32,
    checked: bool,
}

impl BlobReader {
    fn connect(&mut self) -> std::io::Result<()> {
        let range = format!("bytes={}-", self.offset);
        let headers: &[(&str, &str)] = if self.offset > 0 {
            &[("range", &range)]
        } else {
            &[]
        };
        let resp = self
            .inner
            .call(
                Method::GET,
                &self.url,
                headers,
                &Body::Empty,
                &[StatusCode::OK, StatusCode::PARTIAL_CONTENT],
                &self.what,
            )
            .map_err(std::io::Error::other)?;
        let whole = resp.status() == StatusCode::OK;
        let mut reader = resp.into_body().into_reader();
        if self.offset > 0 {
            debug!(offset = self.offset, whole, "resuming the download");
        }
        if self.offset > 0 && whole {
            // The registry ignored the range: skip what was already read.
            let skipped =
                std::io::copy(&mut (&mut reader).take(self.offset), &mut std::io::sink())?;
            if skipped != self.offset {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob ended early",
                ));
            }
        }
        self.body = Some(reader);
        Ok(())
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.offset >= self.size {
                self.body = None;
                if !self.checked {
                    self.checked = true;
                    let actual = format!("sha256:{}", hex::encode(self.sha.clone().finalize()));
                    if actual != self.expected {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "{}: its bytes hash to {actual}, not {}",
                                self.what, self.expected
                            ),
                        ));
                    }
                }
                return Ok(0);
            }
            if self.body.is_none() {
                self.connect()?;
            }
            let want = buf
                .len()
                .min(usize::try_from(self.size - self.offset).unwrap_or(usize::MAX));
            let body = self.body.as_mut().expect("connected");
            let why = match body.read(&mut buf[..want]) {
                Ok(0) => "the connection ended early".to_owned(),
                Ok(n) => {
                    self.sha.update(&buf[..n]);
                    self.offset += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => e.to_string(),
            };
            self.body = None;
            self.failures += 1;
            if self.failures > self.inner.opts.retries {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} stopped at byte {} of {}: {why}",
                        self.what, self.offset, self.size
                    ),
                ));
            }
            let delay = self.inner.opts.backoff * 2u32.pow(self.failures.min(6) - 1);
            warn!(registry = %self.inner.name, what = %self.what, offset = self.offset, "{why}; resuming in {delay:?}");
            std::thread::sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_split() {
        let p = |s: &str| parse_reference(s).unwrap();
        assert_eq!(
            p("127.0.0.1:5000/a/b:v1"),
            ("127.0.0.1:5000".into(), "a/b".into(), Some("v1".into()))
        );
        assert_eq!(p("host/a"), ("host".into(), "a".into(), None));
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(p(&format!("host:1/a@{d}")).2, Some(d));
        for bad in ["host", "host/A", "/a", "host/a:"] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_challenges_are_parsed() {
        let p = challenge_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
    }

    #[test]
    fn docker_config_credentials_are_found_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {
                "https://registry.example/v1/": {"auth": "dTpw"},
                "127.0.0.1:5000": {"username": "u", "password": "p"}
            }}"#,
        )
        .unwrap();
        assert_eq!(
            credentials_in(&path, "registry.example").as_deref(),
            Some("dTpw")
        );
        assert_eq!(
            credentials_in(&path, "127.0.0.1:5000").as_deref(),
            Some("dTpw")
        );
        assert_eq!(credentials_in(&path, "127.0.0.1:5001"), None);
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(credentials_in(&path, "registry.example"), None);
    }

    #[test]
    fn loopback_hosts_use_http() {
        for (host, http) in [
            ("127.0.0.1:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("registry.example:5000", false),
        ] {
            assert_eq!(is_loopback(host), http, "{host}");
        }
    }
}
