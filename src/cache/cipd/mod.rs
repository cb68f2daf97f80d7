//! `cipd://SERVICE[/PREFIX]`: a binary cache kept as CIPD package instances.
//!
//! Implements the CIPD protocol as the team's notes specify it (luci-go at 22eba00) and is
//! verified against a fake written from those notes (`tests/support/cipd_fake.rs`), not
//! against the live service.
//!
//! ```text
//! PREFIX/v1/entries   one instance per entry: `entry.tar.zst` (its export stream),
//!                     tagged dockerbuild_digest:<entry digest hex>
//! PREFIX/v1/claims    one instance per key: `claim.json`,
//!                     tagged dockerbuild_key:<key hex> and dockerbuild_digest:<hex>
//! ```
//! An entry's instance is registered (and its tag attached) before any claim naming it, so
//! a reader never finds a claim it cannot fetch. Tags are immutable in CIPD: a key keeps
//! its first claim, and pushing a different one for it is refused.
//!
//! Reads are anonymous unless a token is given (`DOCKERBUILD_CIPD_TOKEN`, an OAuth access
//! token sent as `Authorization: Bearer`); writes need one with WRITER on the prefix.
//! Downloads go through the signed URL the service hands out (no token), into an
//! anonymous temporary file, hashed as they arrive and checked against the instance ID
//! before a byte is returned; the store then re-hashes the stream itself.
//! The service is plain `http` only on loopback hosts (tests, local proxies).
//!
//! [`wheels`] publishes wheels outside the prefix, under the names vpython expects.

pub mod names;
pub mod package;
pub mod prpc;
pub mod wheels;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{debug, info, instrument, warn};

use self::package::{InstanceId, Source};
use self::prpc::{ObjectRef, RpcError, code, registration_status, upload_status};
use super::{Cache, CacheError, Claim, Result};
use crate::digest::Digest;

const ENTRY_FILE: &str = "entry.tar.zst";
const CLAIM_FILE: &str = "claim.json";
const DIGEST_TAG: &str = "dockerbuild_digest";
const KEY_TAG: &str = "dockerbuild_key";

/// The environment variable holding an OAuth access token for the service.
pub const TOKEN_ENV: &str = "DOCKERBUILD_CIPD_TOKEN";

/// Timeouts, retries and sizes; [`CipdOptions::from_env`] for real use, shorter ones in
/// tests.
#[derive(Debug, Clone)]
pub struct CipdOptions {
    /// Sent as `Authorization: Bearer` on pRPC calls (never to signed URLs).
    pub token: Option<String>,
    pub retry: prpc::Retry,
    /// Resumable-upload chunk size (a multiple of 256 KiB for GCS, except in tests).
    pub chunk: usize,
    /// FinishUpload polling: first interval, step added each round, cap, give up after.
    pub poll: Duration,
    pub poll_step: Duration,
    pub poll_max: Duration,
    pub poll_timeout: Duration,
    /// How long to retry AttachTags while the instance is still being processed.
    pub processing_timeout: Duration,
    pub processing_interval: Duration,
    pub timeout: Duration,
}

impl Default for CipdOptions {
    fn default() -> Self {
        CipdOptions {
            token: None,
            retry: prpc::Retry {
                retries: 5,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(10),
            },
            chunk: 4 << 20,
            poll: Duration::from_secs(1),
            poll_step: Duration::from_millis(500),
            poll_max: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(300),
            processing_timeout: Duration::from_secs(180),
            processing_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
        }
    }
}

impl CipdOptions {
    /// Defaults, with the token from `DOCKERBUILD_CIPD_TOKEN` (anonymous without it).
    pub fn from_env() -> CipdOptions {
        CipdOptions {
            token: std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty()),
            ..CipdOptions::default()
        }
    }
}

/// A CIPD-backed cache.
pub struct CipdCache {
    url: String,
    prefix: String,
    rpc: prpc::Client,
    /// For upload URLs: no token, no redirects followed (308 is resumable-upload talk).
    raw: ureq::Agent,
    /// For signed download URLs: no token; redirects followed.
    dl: ureq::Agent,
    opts: CipdOptions,
}

/// `localhost`, 127.0.0.0/8 or `[::1]`, with or without a port.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `cipd://HOST[:PORT][/PREFIX]` → (service base URL, prefix).
pub fn parse_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("cipd://")?;
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || host.contains(['@', '?', '#']) {
        return None;
    }
    let prefix = prefix.trim_end_matches('/');
    let prefix = if prefix.is_empty() {
        "dockerbuild/cache"
    } else {
        prefix
    };
    if !names::valid_package_name(prefix) {
        return None;
    }
    let scheme = if is_loopback(host) { "http" } else { "https" };
    Some((format!("{scheme}://{host}"), prefix.to_owned()))
}

impl CipdCache {
    /// Opens `cipd://...` with options from the environment.
    pub fn open(url: &str) -> Result<CipdCache> {
        CipdCache::open_with(url, CipdOptions::from_env())
    }

    pub fn open_with(url: &str, opts: CipdOptions) -> Result<CipdCache> {
        let (service, prefix) = parse_url(url).ok_or_else(|| CacheError::BadUrl {
            url: url.to_owned(),
        })?;
        let agent = |redirects: u32| -> ureq::Agent {
            let tls = ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build();
            ureq::Agent::config_builder()
                .tls_config(tls)
                .timeout_connect(Some(opts.timeout))
                .timeout_recv_response(Some(opts.timeout))
                .http_status_as_error(false)
                .max_redirects(redirects)
                .user_agent(concat!(
                    "dockerbuild/",
                    env!("CARGO_PKG_VERSION"),
                    " (cipd)"
                ))
                .build()
                .into()
        };
        Ok(CipdCache {
            url: url.to_owned(),
            prefix,
            rpc: prpc::Client {
                agent: agent(0),
                service,
                token: opts.token.clone(),
                retry: opts.retry.clone(),
            },
            raw: agent(0),
            dl: agent(5),
            opts,
        })
    }

    fn entries(&self) -> String {
        format!("{}/v1/entries", self.prefix)
    }

    fn claims(&self) -> String {
        format!("{}/v1/claims", self.prefix)
    }

    fn rpc_err(&self, action: String, e: RpcError) -> CacheError {
        let hint = match e.code() {
            Some(code::PERMISSION_DENIED) if self.opts.token.is_none() => format!(
                "\nhint: anonymous callers may not see or write this prefix; put an OAuth access token in {TOKEN_ENV} (or in the file config.toml's `cipd-token-file` names)"
            ),
            Some(code::PERMISSION_DENIED) => {
                "\nhint: the token's identity needs READER (to fetch) or WRITER (to push) on the prefix".to_owned()
            }
            Some(code::UNAUTHENTICATED) => format!("\nhint: the token ({TOKEN_ENV} or `cipd-token-file`) is invalid or expired"),
            Some(code::FAILED_PRECONDITION) => {
                "\nhint: a tag on two instances cannot be resolved; detach it from one".to_owned()
            }
            _ if e.transient() => "\nhint: the service kept failing; try again later".to_owned(),
            _ => String::new(),
        };
        CacheError::Rpc {
            cache: self.url.clone(),
            action,
            reason: e.to_string(),
            hint,
        }
    }

    fn io(&self, action: String) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
        move |source| CacheError::Io {
            cache: self.url.clone(),
            action,
            source,
        }
    }

    fn malformed(&self, what: String, reason: impl ToString) -> CacheError {
        CacheError::Malformed {
            cache: self.url.clone(),
            what,
            reason: reason.to_string(),
        }
    }

    /// The instance of `package` tagged `tag`, or `None` when nothing has it.
    #[instrument(skip(self), fields(cache = %self.url))]
    fn resolve(&self, package: &str, tag: &str) -> Result<Option<ObjectRef>> {
        let req = prpc::resolve_version_request(package, tag);
        match self.rpc.call("cipd.Repository/ResolveVersion", &req) {
            Ok(b) => {
                let inst = prpc::Instance::decode(&b)
                    .map_err(|e| self.malformed(format!("the answer resolving `{tag}`"), e))?;
                let r = inst.instance;
                if r.hash_algo != u64::from(package::SHA256) || r.hex_digest.len() != 64 {
                    return Err(self.malformed(
                        format!("the instance `{tag}` resolves to in `{package}`"),
                        format!("not a SHA-256 object ({r:?})"),
                    ));
                }
                Ok(Some(r))
            }
            Err(e) if e.code() == Some(code::NOT_FOUND) => Ok(None),
            Err(e) => Err(self.rpc_err(format!("resolve `{tag}` in package `{package}`"), e)),
        }
    }

    /// Downloads instance `r` of `package` into an anonymous temporary file, checking its
    /// SHA-256 against the instance ID. Each attempt starts over.
    #[instrument(skip(self, subject), fields(cache = %self.url))]
    fn download(&self, package: &str, r: &ObjectRef, subject: &str) -> Result<File> {
        let iid = instance_id(r);
        let what = format!("{subject} (instance {iid} of `{package}`)");
        let req = prpc::get_instance_url_request(package, r);
        let answer = self
            .rpc
            .call("cipd.Repository/GetInstanceURL", &req)
            .map_err(|e| self.rpc_err(format!("get a download URL for {what}"), e))?;
        let signed = prpc::decode_object_url(&answer)
            .ok()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or_else(|| self.malformed(format!("the download URL of {what}"), "no URL"))?;
        let got = self.opts.retry.run("download", || {
            let mut file = tempfile::tempfile().map_err(|e| RpcError::Transport(e.to_string()))?;
            let mut resp = self
                .dl
                .get(&signed)
                .call()
                .map_err(|e| RpcError::Transport(e.to_string()))?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(RpcError::Http {
                    status,
                    body: String::new(),
                });
            }
            let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            let mut buf = vec![0; 1 << 16];
            loop {
                let n = body
                    .read(&mut buf)
                    .map_err(|e| RpcError::Transport(format!("reading the body: {e}")))?;
                if n == 0 {
                    break;
                }
                sha2::Digest::update(&mut hasher, &buf[..n]);
                file.write_all(&buf[..n])
                    .map_err(|e| RpcError::Transport(format!("writing a temporary file: {e}")))?;
            }
            let digest: [u8; 32] = sha2::Digest::finalize(hasher).into();
            Ok((file, digest))
        });
        let (mut file, digest) = got.map_err(|e| self.rpc_err(format!("download {what}"), e))?;
        if hex::encode(digest) != r.hex_digest {
            return Err(CacheError::Rpc {
                cache: self.url.clone(),
                action: format!("download {what}"),
                reason: format!(
                    "the bytes served hash to {} (SHA-256 {}), not to the instance ID",
                    InstanceId::sha256(digest),
                    hex::encode(digest)
                ),
                hint: "\nhint: the object in the service's storage is damaged, or something in between altered it".into(),
            });
        }
        file.seek(SeekFrom::Start(0))
            .map_err(self.io(format!("rewind the download of {what}")))?;
        Ok(file)
    }

    /// Reads file `name` of a verified instance.
    fn read_instance(
        &self,
        package: &str,
        r: &ObjectRef,
        name: &str,
        subject: &str,
    ) -> Result<std::io::Take<File>> {
        let file = self.download(package, r, subject)?;
        package::open_file(file, package, name).map_err(|e| {
            self.malformed(
                format!("{subject} (instance {} of `{package}`)", instance_id(r)),
                e,
            )
        })
    }

    fn read_claim(&self, r: &ObjectRef, subject: &str) -> Result<Claim> {
        let package = self.claims();
        let mut f = self.read_instance(&package, r, CLAIM_FILE, subject)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(self.io(format!("read the claim in instance {}", instance_id(r))))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.malformed(format!("the claim in instance {}", instance_id(r)), e))
    }

    /// Registers an instance (the zip `zip`, SHA-256 `sha`) of `package`, uploading it
    /// if the service lacks its bytes, then attaches `tags`; says whether it uploaded.
    #[instrument(skip(self, zip), fields(cache = %self.url))]
    fn publish(
        &self,
        package: &str,
        zip: &mut File,
        sha: [u8; 32],
        tags: &[(&str, &str)],
    ) -> Result<bool> {
        let object = ObjectRef::sha256(hex::encode(sha));
        let iid = InstanceId::sha256(sha);
        let what = format!("instance {iid} of `{package}`");
        let req = prpc::Instance {
            package: package.to_owned(),
            instance: object.clone(),
            registered_by: String::new(),
        }
        .encode();
        let register = || -> Result<prpc::RegisterInstanceResponse> {
            let b = self
                .rpc
                .call("cipd.Repository/RegisterInstance", &req)
                .map_err(|e| self.rpc_err(format!("register {what}"), e))?;
            prpc::RegisterInstanceResponse::decode(&b)
                .map_err(|e| self.malformed(format!("the answer registering {what}"), e))
        };
        let first = register()?;
        let mut uploaded = false;
        match first.status {
            registration_status::REGISTERED | registration_status::ALREADY_REGISTERED => {
                debug!(%iid, status = first.status, "registered without upload");
            }
            registration_status::NOT_UPLOADED => {
                let op = first.upload_op.ok_or_else(|| {
                    self.malformed(
                        format!("the answer registering {what}"),
                        "NOT_UPLOADED without an upload operation",
                    )
                })?;
                self.upload(&what, zip, &op.upload_url)?;
                self.finish_upload(&what, &op.operation_id)?;
                let again = register()?;
                if !matches!(
                    again.status,
                    registration_status::REGISTERED | registration_status::ALREADY_REGISTERED
                ) {
                    return Err(self.malformed(
                        format!("the answer registering {what} after its upload"),
                        format!("registration status {} (expected REGISTERED)", again.status),
                    ));
                }
                info!(%iid, package, "uploaded");
                uploaded = true;
            }
            s => {
                return Err(self.malformed(
                    format!("the answer registering {what}"),
                    format!("unknown registration status {s}"),
                ));
            }
        }
        self.attach_tags(&what, package, &object, tags)?;
        Ok(uploaded)
    }

    /// AttachTags, retried while the instance is still being processed.
    fn attach_tags(
        &self,
        what: &str,
        package: &str,
        object: &ObjectRef,
        tags: &[(&str, &str)],
    ) -> Result<()> {
        let req = prpc::attach_tags_request(package, object, tags);
        self.when_ready(&format!("tag {what}"), "cipd.Repository/AttachTags", &req)
    }

    /// CreateRef: points ref `name` of `package` at `object` (creating or moving it),
    /// retried while the instance is still being processed.
    fn create_ref(&self, what: &str, package: &str, object: &ObjectRef, name: &str) -> Result<()> {
        let req = prpc::create_ref_request(name, package, object);
        self.when_ready(
            &format!("set ref `{name}` on {what}"),
            "cipd.Repository/CreateRef",
            &req,
        )
    }

    /// Calls `method`, retrying while the instance is still being processed
    /// (FAILED_PRECONDITION), as AttachTags and CreateRef need.
    fn when_ready(&self, action: &str, method: &str, req: &[u8]) -> Result<()> {
        let deadline = Instant::now() + self.opts.processing_timeout;
        loop {
            match self.rpc.call(method, req) {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.code() == Some(code::FAILED_PRECONDITION) && Instant::now() < deadline =>
                {
                    debug!(action, error = %e, "instance still being processed");
                    std::thread::sleep(self.opts.processing_interval);
                }
                Err(e) if e.code() == Some(code::FAILED_PRECONDITION) => {
                    return Err(CacheError::Rpc {
                        cache: self.url.clone(),
                        action: action.to_owned(),
                        reason: format!(
                            "still being processed after {:?}: {e}",
                            self.opts.processing_timeout
                        ),
                        hint: "\nhint: push again later; the upload itself is done".into(),
                    });
                }
                Err(e) => return Err(self.rpc_err(action.to_owned(), e)),
            }
        }
    }

    /// The resumable upload: chunks with `Content-Range`, 308 to continue (its `Range`
    /// says how much arrived), 200 or 201 when complete; after a transient failure, a
    /// status query (`bytes */TOTAL`) says where to resume.
    fn upload(&self, what: &str, zip: &mut File, url: &str) -> Result<()> {
        let total = zip
            .metadata()
            .map_err(self.io(format!("read the size of {what}")))?
            .len();
        let action = format!("upload {what}");
        let fail = |reason: String| CacheError::Rpc {
            cache: self.url.clone(),
            action: action.clone(),
            reason,
            hint: String::new(),
        };
        let mut offset = 0u64;
        let mut failures = 0u32;
        let mut sleep = self.opts.retry.backoff;
        let mut buf = vec![0; self.opts.chunk];
        let mut query = false;
        loop {
            let result = if query {
                self.raw
                    .put(url)
                    .header("Content-Range", &format!("bytes */{total}"))
                    .send(&[][..])
            } else {
                let n = (total - offset).min(self.opts.chunk as u64) as usize;
                zip.seek(SeekFrom::Start(offset))
                    .and_then(|_| zip.read_exact(&mut buf[..n]))
                    .map_err(self.io(format!("read {what}")))?;
                debug!(offset, n, total, "upload chunk");
                self.raw
                    .put(url)
                    .header(
                        "Content-Range",
                        &format!("bytes {offset}-{}/{total}", offset + n as u64 - 1),
                    )
                    .send(&buf[..n])
            };
            let transient = match result {
                Ok(resp) => match resp.status().as_u16() {
                    200 | 201 => return Ok(()),
                    308 => {
                        let before = offset;
                        offset = resp
                            .headers()
                            .get("Range")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|r| r.strip_prefix("bytes=0-"))
                            .and_then(|n| n.trim().parse::<u64>().ok())
                            .map_or(0, |last| last + 1);
                        if offset >= total {
                            return Ok(());
                        }
                        if query || offset > before {
                            query = false;
                            continue;
                        }
                        // A chunk was sent and nothing more arrived.
                        format!("the upload stalled at byte {offset}")
                    }
                    s if s >= 500 || s == 408 || s == 429 => format!("HTTP {s}"),
                    s => return Err(fail(format!("the upload URL answered HTTP {s}"))),
                },
                Err(e) => e.to_string(),
            };
            failures += 1;
            if failures > self.opts.retry.retries {
                return Err(CacheError::Rpc {
                    cache: self.url.clone(),
                    action: action.clone(),
                    reason: format!("{failures} transient failures, the last: {transient}"),
                    hint: "\nhint: the service kept failing; try again later".into(),
                });
            }
            warn!(what, failures, error = %transient, "upload failed; asking where to resume");
            std::thread::sleep(sleep);
            sleep = (sleep * 2).min(self.opts.retry.max_backoff);
            query = true;
        }
    }

    /// Polls FinishUpload until the service has verified the bytes (PUBLISHED).
    fn finish_upload(&self, what: &str, op: &str) -> Result<()> {
        let req = prpc::finish_upload_request(op);
        let start = Instant::now();
        let mut interval = self.opts.poll;
        loop {
            let b = self
                .rpc
                .call("cipd.Storage/FinishUpload", &req)
                .map_err(|e| self.rpc_err(format!("finish the upload of {what}"), e))?;
            let op = prpc::UploadOperation::decode(&b)
                .map_err(|e| self.malformed(format!("the upload operation of {what}"), e))?;
            match op.status {
                upload_status::PUBLISHED => return Ok(()),
                upload_status::UPLOADING | upload_status::VERIFYING => {}
                upload_status::ERRORED | upload_status::CANCELED => {
                    return Err(CacheError::Rpc {
                        cache: self.url.clone(),
                        action: format!("upload {what}"),
                        reason: format!(
                            "the service refused the upload ({}): {}",
                            if op.status == upload_status::ERRORED {
                                "ERRORED"
                            } else {
                                "CANCELED"
                            },
                            op.error_message
                        ),
                        hint: String::new(),
                    });
                }
                s => {
                    return Err(self.malformed(
                        format!("the upload operation of {what}"),
                        format!("unknown status {s}"),
                    ));
                }
            }
            if start.elapsed() > self.opts.poll_timeout {
                return Err(CacheError::Rpc {
                    cache: self.url.clone(),
                    action: format!("upload {what}"),
                    reason: format!("still not verified after {:?}", self.opts.poll_timeout),
                    hint: "\nhint: push again later".into(),
                });
            }
            std::thread::sleep(interval);
            interval = (interval + self.opts.poll_step).min(self.opts.poll_max);
        }
    }

    /// Resolves `version` (a ref, tag or instance ID) of any `package` and downloads it,
    /// checked against its instance ID; returns the ID and the size. (The live smoke test
    /// uses it on a public package.)
    pub fn fetch_instance(&self, package: &str, version: &str) -> Result<(String, u64)> {
        let r = self
            .resolve(package, version)?
            .ok_or_else(|| CacheError::Rpc {
                cache: self.url.clone(),
                action: format!("resolve `{version}` in package `{package}`"),
                reason: "not found".into(),
                hint: String::new(),
            })?;
        let f = self.download(package, &r, "the package")?;
        let size = f
            .metadata()
            .map_err(self.io(format!("read the size of the download of `{package}`")))?
            .len();
        Ok((instance_id(&r), size))
    }

    fn new_temp(&self) -> Result<File> {
        tempfile::tempfile().map_err(self.io("create a temporary file".into()))
    }
}

fn instance_id(r: &ObjectRef) -> String {
    match <[u8; 32]>::try_from(hex::decode(&r.hex_digest).unwrap_or_default()) {
        Ok(d) => InstanceId::sha256(d).to_text(),
        Err(_) => r.hex_digest.clone(),
    }
}

impl Cache for CipdCache {
    fn url(&self) -> &str {
        &self.url
    }

    fn lookup(&self, key: &Digest) -> Result<Option<Claim>> {
        let tag = format!("{KEY_TAG}:{}", key.to_hex());
        let Some(r) = self.resolve(&self.claims(), &tag)? else {
            return Ok(None);
        };
        self.read_claim(&r, &format!("the claim for key {key}"))
            .map(Some)
    }

    fn has_entry(&self, digest: &Digest) -> Result<bool> {
        let tag = format!("{DIGEST_TAG}:{}", digest.to_hex());
        Ok(self.resolve(&self.entries(), &tag)?.is_some())
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let package = self.entries();
        let tag = format!("{DIGEST_TAG}:{}", digest.to_hex());
        let r = self
            .resolve(&package, &tag)?
            .ok_or_else(|| CacheError::Rpc {
                cache: self.url.clone(),
                action: format!("open entry {digest}"),
                reason: format!("no instance of `{package}` is tagged `{tag}`"),
                hint: String::new(),
            })?;
        Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            self.read_instance(&package, &r, ENTRY_FILE, &format!("entry {digest}"))?,
        )))
    }

    fn push(&self, claim: &Claim, stream: &Path) -> Result<()> {
        let digest_hex = claim.digest.to_hex();
        if !self.has_entry(&claim.digest)? {
            let package = self.entries();
            let mut zip = self.new_temp()?;
            let sha = package::build(&mut zip, &package, &[(ENTRY_FILE, Source::File(stream))])
                .map_err(self.io(format!("pack entry {} as a CIPD instance", claim.digest)))?;
            self.publish(&package, &mut zip, sha, &[(DIGEST_TAG, &digest_hex)])?;
        }
        if let Some(existing) = self.lookup(&claim.key)? {
            if existing == *claim {
                return Ok(());
            }
            return Err(CacheError::Rpc {
                cache: self.url.clone(),
                action: format!("push the claim for key {}", claim.key),
                reason: "the cache already holds a different claim for this key, and CIPD tags are immutable".into(),
                hint: "\nhint: use another prefix, or detach the old tag with the cipd tool".into(),
            });
        }
        let package = self.claims();
        let json = serde_json::to_vec_pretty(claim).expect("claim serializes");
        let mut zip = self.new_temp()?;
        let sha = package::build(&mut zip, &package, &[(CLAIM_FILE, Source::Bytes(&json))])
            .map_err(self.io(format!("pack the claim for key {}", claim.key)))?;
        let key_hex = claim.key.to_hex();
        self.publish(
            &package,
            &mut zip,
            sha,
            &[(KEY_TAG, &key_hex), (DIGEST_TAG, &digest_hex)],
        )
        .map(|_| ())
    }

    fn list(&self) -> Result<Vec<Claim>> {
        let package = self.claims();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let req = prpc::list_instances_request(&package, 100, &token);
            let b = match self.rpc.call("cipd.Repository/ListInstances", &req) {
                Ok(b) => b,
                Err(e) if e.code() == Some(code::NOT_FOUND) => break,
                Err(e) => return Err(self.rpc_err(format!("list the instances of `{package}`"), e)),
            };
            let (instances, next) = prpc::decode_list_instances(&b)
                .map_err(|e| self.malformed(format!("the instance list of `{package}`"), e))?;
            for i in instances {
                out.push(self.read_claim(&i.instance, "a claim")?);
            }
            if next.is_empty() {
                break;
            }
            token = next;
        }
        out.sort_by_key(|c| (c.name.clone(), c.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_the_scheme_by_host() {
        let p = |u| parse_url(u);
        assert_eq!(
            p("cipd://127.0.0.1:8080/dockerbuild/cache"),
            Some(("http://127.0.0.1:8080".into(), "dockerbuild/cache".into()))
        );
        assert_eq!(p("cipd://localhost/x").unwrap().0, "http://localhost");
        assert_eq!(p("cipd://[::1]:9/x").unwrap().0, "http://[::1]:9");
        assert_eq!(p("cipd://127.1.2.3/x").unwrap().0, "http://127.1.2.3");
        assert_eq!(p("cipd://10.0.0.1:80/x").unwrap().0, "https://10.0.0.1:80");
        assert_eq!(
            p("cipd://localhost.example.com/x").unwrap().0,
            "https://localhost.example.com"
        );
        assert_eq!(p("cipd://user@host/x"), None);
        assert_eq!(
            p("cipd://packages.example.com/team/cache/"),
            Some(("https://packages.example.com".into(), "team/cache".into()))
        );
        assert_eq!(
            p("cipd://packages.example.com").unwrap().1,
            "dockerbuild/cache"
        );
        assert_eq!(p("cipd://h/Upper/Case"), None);
        assert_eq!(p("cipd://h/a/../b"), None);
        assert_eq!(p("cipd:///x"), None);
        assert_eq!(p("https://h/x"), None);
    }
}
