//! A real registry for cache tests: Debian's `docker-registry` on 127.0.0.1 with a temp
//! storage directory, killed on drop and restartable on the same port and storage; and a
//! TCP proxy in front of it that counts requests and injects faults at exact byte counts
//! (kill the registry mid-transfer, cut a connection).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|f| f.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Registry {
    pub port: u16,
    dir: tempfile::TempDir,
    program: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Registry {
    /// A fresh registry, or None (after saying why) when `docker-registry` is missing;
    /// under `CI=true` a missing registry fails the test.
    pub fn start() -> Option<Arc<Registry>> {
        Registry::start_with(None)
    }

    /// A registry that asks for Basic auth: `htpasswd` is a `user:bcrypt-hash` line.
    pub fn start_with_htpasswd(htpasswd: &str) -> Option<Arc<Registry>> {
        Registry::start_with(Some(htpasswd))
    }

    fn start_with(htpasswd: Option<&str>) -> Option<Arc<Registry>> {
        let program = on_path("docker-registry");
        if !super::available(
            "docker-registry (apt-get install docker-registry)",
            program.is_some(),
        ) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // A free port may be taken by another test's registry before ours binds it: the
        // registry answers with a header naming its directory, so a probe answered by
        // another one is told apart, and a registry that could not bind is retried.
        let mut r = Registry {
            port: 0,
            dir,
            program: program.unwrap(),
            child: Mutex::new(None),
        };
        for _ in 0..5 {
            r.port = free_port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{}\n  secret: dockerbuild-tests\n  headers:\n    \
                 X-Test-Registry: [\"{}\"]\n",
                r.dir.path().join("storage").display(),
                r.port,
                r.id()
            );
            if let Some(line) = htpasswd {
                let file = r.dir.path().join("htpasswd");
                std::fs::write(&file, format!("{line}\n")).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: dockerbuild-tests\n    path: {}\n",
                    file.display()
                ));
            }
            std::fs::write(r.dir.path().join("config.yml"), config).unwrap();
            if r.spawn() {
                return Some(Arc::new(r));
            }
        }
        panic!("docker-registry did not start:\n{}", r.log());
    }

    /// What the registry's `X-Test-Registry` header says: its directory's name.
    fn id(&self) -> String {
        self.dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// `oci://127.0.0.1:PORT/REPO`
    pub fn url(&self, repo: &str) -> String {
        format!("oci://127.0.0.1:{}/{repo}", self.port)
    }

    /// The storage root (`docker/registry/v2/...` under it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage/docker/registry/v2")
    }

    /// The data file of blob `sha256:<hex>`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The manifest digest a tag points to.
    pub fn tag_target(&self, repo: &str, tag: &str) -> String {
        std::fs::read_to_string(self.tag_dir(repo, tag).join("current/link")).unwrap()
    }

    pub fn tag_dir(&self, repo: &str, tag: &str) -> PathBuf {
        self.storage()
            .join("repositories")
            .join(repo)
            .join("_manifests/tags")
            .join(tag)
    }

    /// Starts the registry and waits until it serves; false if it exited first (its port
    /// was taken).
    fn spawn(&self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let child = Command::new(&self.program)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        *self.child.lock().unwrap() = Some(child);
        let mine = format!("x-test-registry: {}", self.id()).to_ascii_lowercase();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
                // Any answer carrying our header (200, or 401 when it asks for credentials).
                if answer.contains(&mine) {
                    return true;
                }
            }
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .is_none_or(|c| c.try_wait().unwrap().is_some());
            if exited {
                self.kill();
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it and starts it again on the same port and storage.
    pub fn restart(&self) {
        self.kill();
        assert!(
            self.spawn(),
            "docker-registry did not restart:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fault the proxy injects once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// Kill and restart the registry as the `nth` request containing `pattern` (e.g.
    /// "PATCH /v2/") arrives, before forwarding it; cut that connection.
    KillAtRequest(&'static str, usize),
    /// Kill and restart the registry after forwarding `n` more bytes to it; cut.
    KillAfterUpBytes(u64),
    /// Kill the registry (for good) after forwarding `n` more bytes to it; cut.
    StopAfterUpBytes(u64),
    /// Kill and restart the registry after forwarding `n` more bytes from it; cut.
    KillAfterDownBytes(u64),
    /// Cut the connection after forwarding `n` more bytes from the registry.
    CutAfterDownBytes(u64),
}

pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    registry: Arc<Registry>,
    fault: Mutex<Fault>,
    /// Bytes since the fault was armed, each way.
    up: AtomicU64,
    down: AtomicU64,
    /// Occurrences of each counted pattern in requests (case-insensitive).
    counts: Mutex<Vec<(&'static str, usize)>>,
    fired: AtomicUsize,
}

const COUNTED: [&str; 4] = ["post /v2/", "patch /v2/", "range: bytes=", "put /v2/"];

impl Proxy {
    pub fn start(registry: Arc<Registry>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            registry,
            fault: Mutex::new(Fault::None),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            counts: Mutex::new(COUNTED.iter().map(|p| (*p, 0)).collect()),
            fired: AtomicUsize::new(0),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || s.serve(client));
            }
        });
        Proxy { port, state }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("oci://127.0.0.1:{}/{repo}", self.port)
    }

    /// Arms a fault (counting bytes from now) and resets the request counts.
    pub fn arm(&self, fault: Fault) {
        let mut f = self.state.fault.lock().unwrap();
        self.state.up.store(0, Ordering::SeqCst);
        self.state.down.store(0, Ordering::SeqCst);
        for c in self.state.counts.lock().unwrap().iter_mut() {
            c.1 = 0;
        }
        *f = fault;
    }

    /// How often `pattern` (one of "post /v2/", "patch /v2/", "range: bytes=", "put /v2/")
    /// appeared in requests since the last `arm`.
    pub fn count(&self, pattern: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.0 == pattern)
            .unwrap()
            .1
    }

    /// How many faults fired.
    pub fn fired(&self) -> usize {
        self.state.fired.load(Ordering::SeqCst)
    }
}

fn count_in(hay: &[u8], needle: &str) -> usize {
    let n = needle.as_bytes();
    hay.windows(n.len())
        .filter(|w| w.eq_ignore_ascii_case(n))
        .count()
}

impl ProxyState {
    fn serve(self: Arc<Self>, client: TcpStream) {
        let Ok(upstream) = TcpStream::connect(("127.0.0.1", self.registry.port)) else {
            return; // the registry is down: the client sees its connection close
        };
        let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let me = self.clone();
        let cut = move |a: &TcpStream, b: &TcpStream| {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        };
        let up = std::thread::spawn(move || me.pump_up(c2, u2, cut));
        self.pump_down(upstream, client, cut);
        let _ = up.join();
    }

    /// Records a fired fault; kills and restarts the registry if asked.
    fn fire(&self, kill: bool) {
        self.fired.fetch_add(1, Ordering::SeqCst);
        if kill {
            self.registry.restart();
        }
    }

    fn pump_up(
        &self,
        mut from: TcpStream,
        mut to: TcpStream,
        cut: impl Fn(&TcpStream, &TcpStream),
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => n,
            };
            // Count patterns in this read (with the end of the last one, for patterns
            // split across reads).
            let mut hay = std::mem::take(&mut tail);
            let carried = hay.len();
            hay.extend_from_slice(&buf[..n]);
            let mut fire_at_request = false;
            {
                let mut counts = self.counts.lock().unwrap();
                let mut fault = self.fault.lock().unwrap();
                for (p, c) in counts.iter_mut() {
                    let found = count_in(&hay, p) - count_in(&hay[..carried], p);
                    *c += found;
                    if let Fault::KillAtRequest(pat, nth) = *fault
                        && pat.eq_ignore_ascii_case(p)
                        && found > 0
                        && *c >= nth
                    {
                        *fault = Fault::None;
                        fire_at_request = true;
                    }
                }
            }
            tail = hay[hay.len().saturating_sub(16)..].to_vec();
            if fire_at_request {
                self.fire(true);
                cut(&from, &to);
                return;
            }
            let mut forward = n;
            let mut fire = None;
            {
                let mut fault = self.fault.lock().unwrap();
                let before = self.up.fetch_add(n as u64, Ordering::SeqCst);
                if let Fault::KillAfterUpBytes(limit) | Fault::StopAfterUpBytes(limit) = *fault
                    && before + n as u64 >= limit
                {
                    forward = (limit - before.min(limit)) as usize;
                    fire = Some(matches!(*fault, Fault::KillAfterUpBytes(_)));
                    *fault = Fault::None;
                }
            }
            if to.write_all(&buf[..forward]).is_err() {
                return;
            }
            match fire {
                Some(true) => self.fire(true),
                Some(false) => {
                    self.fired.fetch_add(1, Ordering::SeqCst);
                    self.registry.kill();
                }
                None => continue,
            }
            cut(&from, &to);
            return;
        }
    }

    fn pump_down(
        &self,
        mut from: TcpStream,
        mut to: TcpStream,
        cut: impl Fn(&TcpStream, &TcpStream),
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => n,
            };
            let mut forward = n;
            let mut fire = None;
            {
                let mut fault = self.fault.lock().unwrap();
                let before = self.down.fetch_add(n as u64, Ordering::SeqCst);
                if let Fault::KillAfterDownBytes(limit) | Fault::CutAfterDownBytes(limit) = *fault
                    && before + n as u64 >= limit
                {
                    forward = (limit - before.min(limit)) as usize;
                    fire = Some(matches!(*fault, Fault::KillAfterDownBytes(_)));
                    *fault = Fault::None;
                }
            }
            if to.write_all(&buf[..forward]).is_err() {
                return;
            }
            if let Some(kill) = fire {
                let _ = to.flush();
                cut(&from, &to);
                self.fire(kill);
                return;
            }
        }
    }
}

/// Flips one byte in the middle of `path`.
pub fn flip_middle_byte(path: &Path) -> Vec<u8> {
    let good = std::fs::read(path).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(path, &bad).unwrap();
    good
}
