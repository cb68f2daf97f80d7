//! Downloading: one HTTP client with timeouts that name the URL, retries with backoff,
//! resumption where the server allows it, and hashing while streaming.
//!
//! TLS trusts the system's root certificates (the platform verifier), so machines behind
//! an intercepting CA installed in the system store work.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use crate::progress::Progress;
use crate::store::StagedFile;

/// How the client behaves; [`HttpOptions::from_env`] reads overrides.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Connecting, and waiting for response headers.
    pub timeout: Duration,
    /// Attempts after the first one, for transient failures.
    pub retries: u32,
    /// The first backoff; it doubles on every retry.
    pub backoff: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(30),
            retries: 4,
            backoff: Duration::from_millis(500),
        }
    }
}

impl HttpOptions {
    /// Defaults, overridden by `DOCKERBUILD_HTTP_TIMEOUT` (seconds, may be fractional)
    /// and `DOCKERBUILD_HTTP_RETRIES`.
    pub fn from_env() -> Self {
        let mut o = HttpOptions::default();
        if let Some(t) = std::env::var("DOCKERBUILD_HTTP_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            o.timeout = Duration::from_secs_f64(t);
        }
        if let Some(r) = std::env::var("DOCKERBUILD_HTTP_RETRIES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            o.retries = r;
        }
        o
    }
}

/// Why a download failed. Every variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{url}` was not found (HTTP 404)")]
    NotFound { url: String },
    #[error("`{url}` answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error(
        "timed out fetching `{url}` after {secs:.0}s\nhint: DOCKERBUILD_HTTP_TIMEOUT raises the limit"
    )]
    Timeout { url: String, secs: f64 },
    #[error("cannot fetch `{url}`")]
    Transport {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("cannot {action} while fetching `{url}`")]
    Io {
        action: &'static str,
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{url}` ended after {got} bytes, {expected} were expected")]
    Truncated {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("`{url}` is {got} bytes, more than the {expected} expected")]
    TooLong {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("unsupported URL `{url}` (expected https://, http:// or file://)")]
    UnsupportedUrl { url: String },
}

impl FetchError {
    /// Whether another attempt might succeed.
    fn transient(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status == 429 || *status >= 500,
            FetchError::Timeout { .. } | FetchError::Truncated { .. } => true,
            FetchError::Transport { .. } | FetchError::Io { .. } => true,
            _ => false,
        }
    }
}

/// What a download produced: its length and SHA-256 (its BLAKE3 is in the staged file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub size: u64,
    pub sha256: String,
}

/// The HTTP client.
pub struct Http {
    agent: ureq::Agent,
    opts: HttpOptions,
}

impl Http {
    pub fn new(opts: HttpOptions) -> Self {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(opts.timeout))
            .timeout_recv_response(Some(opts.timeout))
            .timeout_recv_body(Some(opts.timeout.max(Duration::from_secs(1)) * 40))
            .http_status_as_error(false)
            .user_agent(concat!("dockerbuild/", env!("CARGO_PKG_VERSION")))
            .build();
        Http {
            agent: config.into(),
            opts,
        }
    }

    fn map_err(&self, url: &str, e: ureq::Error) -> FetchError {
        match e {
            ureq::Error::Timeout(_) => FetchError::Timeout {
                url: url.to_owned(),
                secs: self.opts.timeout.as_secs_f64(),
            },
            ureq::Error::Io(source) if source.kind() == std::io::ErrorKind::TimedOut => {
                FetchError::Timeout {
                    url: url.to_owned(),
                    secs: self.opts.timeout.as_secs_f64(),
                }
            }
            e => FetchError::Transport {
                url: url.to_owned(),
                source: Box::new(e),
            },
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or retries run out.
    fn with_retries<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let mut delay = self.opts.backoff;
        let mut n = 0;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) if e.transient() && n < self.opts.retries => {
                    n += 1;
                    warn!(url, attempt = n, "{e}; retrying in {delay:?}");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetches a small document (an index) into memory.
    pub fn get_bytes(&self, url: &str, accept: Option<&str>) -> Result<Vec<u8>, FetchError> {
        if let Some(path) = url.strip_prefix("file://") {
            return std::fs::read(path).map_err(|source| FetchError::Io {
                action: "read",
                url: url.to_owned(),
                source,
            });
        }
        check_scheme(url)?;
        self.with_retries(url, || {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let resp = req.call().map_err(|e| self.map_err(url, e))?;
            check_status(url, resp.status().as_u16())?;
            let mut body = Vec::new();
            resp.into_body()
                .into_reader()
                .read_to_end(&mut body)
                .map_err(|source| io_or_timeout(self, url, source))?;
            Ok(body)
        })
    }

    /// Streams `url` into `out`, computing SHA-256 alongside the store's BLAKE3.
    /// Interrupted transfers resume with a Range request when the server honours it, and
    /// start over when it does not.
    pub fn download(
        &self,
        url: &str,
        expected_size: Option<u64>,
        out: &mut StagedFile,
        progress: &dyn Progress,
    ) -> Result<Fetched, FetchError> {
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        progress.start(url, expected_size);
        if let Some(path) = url.strip_prefix("file://") {
            let mut f = std::fs::File::open(path).map_err(|source| FetchError::Io {
                action: "open",
                url: url.to_owned(),
                source,
            })?;
            copy(&mut f, out, &mut sha, &mut buf, url, progress, self)?;
        } else {
            check_scheme(url)?;
            self.with_retries(url, || {
                let offset = out.written();
                let mut req = self.agent.get(url);
                if offset > 0 {
                    req = req.header("Range", &format!("bytes={offset}-"));
                }
                let resp = req.call().map_err(|e| self.map_err(url, e))?;
                let status = resp.status().as_u16();
                if offset > 0 && status == 200 {
                    debug!(url, "server ignored the range request; starting over");
                    out.reset().map_err(|source| FetchError::Io {
                        action: "restart",
                        url: url.to_owned(),
                        source,
                    })?;
                    sha = Sha256::new();
                    progress.start(url, expected_size);
                } else if offset > 0 && status == 206 {
                    debug!(url, offset, "resuming");
                } else {
                    check_status(url, status)?;
                }
                let announced = resp
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|n| out.written() + n);
                let mut body = resp.into_body();
                let mut reader = body.as_reader();
                match copy(&mut reader, out, &mut sha, &mut buf, url, progress, self) {
                    Err(FetchError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::UnexpectedEof =>
                    {
                        return Err(FetchError::Truncated {
                            url: url.to_owned(),
                            expected: expected_size.or(announced).unwrap_or(0),
                            got: out.written(),
                        });
                    }
                    r => r?,
                }
                if let Some(size) = expected_size
                    && out.written() < size
                {
                    return Err(FetchError::Truncated {
                        url: url.to_owned(),
                        expected: size,
                        got: out.written(),
                    });
                }
                Ok(())
            })?;
        }
        progress.finish();
        if let Some(size) = expected_size {
            if out.written() > size {
                return Err(FetchError::TooLong {
                    url: url.to_owned(),
                    expected: size,
                    got: out.written(),
                });
            }
            if out.written() < size {
                return Err(FetchError::Truncated {
                    url: url.to_owned(),
                    expected: size,
                    got: out.written(),
                });
            }
        }
        Ok(Fetched {
            size: out.written(),
            sha256: hex::encode(sha.finalize()),
        })
    }
}

fn check_scheme(url: &str) -> Result<(), FetchError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(FetchError::UnsupportedUrl {
            url: url.to_owned(),
        })
    }
}

fn check_status(url: &str, status: u16) -> Result<(), FetchError> {
    match status {
        200..=299 => Ok(()),
        404 | 410 => Err(FetchError::NotFound {
            url: url.to_owned(),
        }),
        s => Err(FetchError::Status {
            url: url.to_owned(),
            status: s,
        }),
    }
}

fn io_or_timeout(http: &Http, url: &str, e: std::io::Error) -> FetchError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        FetchError::Timeout {
            url: url.to_owned(),
            secs: http.opts.timeout.as_secs_f64(),
        }
    } else {
        FetchError::Io {
            action: "read the response",
            url: url.to_owned(),
            source: e,
        }
    }
}

fn copy(
    input: &mut dyn Read,
    out: &mut StagedFile,
    sha: &mut Sha256,
    buf: &mut [u8],
    url: &str,
    progress: &dyn Progress,
    http: &Http,
) -> Result<(), FetchError> {
    loop {
        let n = match input.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_or_timeout(http, url, e)),
        };
        sha.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|source| FetchError::Io {
            action: "write the download into the store",
            url: url.to_owned(),
            source,
        })?;
        progress.advance(n as u64);
    }
}

/// The path of a `file://` URL.
pub fn file_url_path(url: &str) -> Option<PathBuf> {
    url.strip_prefix("file://").map(PathBuf::from)
}
