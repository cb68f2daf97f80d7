//! A small HTTP/1.1 server on 127.0.0.1 for fetch tests, with scripted misbehaviour.
//! Every request is recorded (path and Range header) so tests can prove resumption.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a path answers.
#[derive(Clone)]
pub enum Behaviour {
    /// 200 with the body (206 for a Range request).
    Serve(Vec<u8>),
    /// Announces the full length, sends `cut` bytes and closes, the first `times`
    /// requests; afterwards serves normally (honouring Range unless `ignore_range`).
    CutOff {
        body: Vec<u8>,
        cut: usize,
        times: usize,
        ignore_range: bool,
    },
    /// Reads the request and never answers.
    Stall,
    /// Answers this status with an empty body.
    Status(u16),
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Behaviour>,
    log: Vec<(String, Option<String>)>,
    served: HashMap<String, usize>,
}

pub struct Server {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || handle(conn, st));
            }
        });
        Server { base, state }
    }

    pub fn route(&self, path: &str, b: Behaviour) -> String {
        self.state.lock().unwrap().routes.insert(path.to_owned(), b);
        format!("{}{path}", self.base)
    }

    /// (path, Range header) of every request so far.
    pub fn log(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().log.clone()
    }
}

fn handle(mut conn: TcpStream, st: Arc<Mutex<State>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_owned());
        }
    }
    let (behaviour, nth) = {
        let mut s = st.lock().unwrap();
        s.log.push((path.clone(), range.clone()));
        let n = s.served.entry(path.clone()).or_default();
        *n += 1;
        let nth = *n;
        (s.routes.get(&path).cloned(), nth)
    };
    match behaviour {
        None => respond(&mut conn, 404, &[], None, None),
        Some(Behaviour::Status(code)) => respond(&mut conn, code, &[], None, None),
        Some(Behaviour::Stall) => std::thread::sleep(Duration::from_secs(20)),
        Some(Behaviour::Serve(body)) => serve(&mut conn, &body, range.as_deref(), None),
        Some(Behaviour::CutOff {
            body,
            cut,
            times,
            ignore_range,
        }) => {
            let r = if ignore_range { None } else { range.as_deref() };
            if nth <= times {
                serve(&mut conn, &body, r, Some(cut));
            } else {
                serve(&mut conn, &body, r, None);
            }
        }
    }
}

fn serve(conn: &mut TcpStream, body: &[u8], range: Option<&str>, cut: Option<usize>) {
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    match start {
        Some(s) if s <= body.len() => {
            let cr = format!("bytes {s}-{}/{}", body.len().saturating_sub(1), body.len());
            respond(conn, 206, &body[s..], Some(&cr), cut);
        }
        _ => respond(conn, 200, body, None, cut),
    }
}

fn respond(
    conn: &mut TcpStream,
    code: u16,
    body: &[u8],
    content_range: Option<&str>,
    cut: Option<usize>,
) {
    let reason = match code {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(cr) = content_range {
        head.push_str(&format!("Content-Range: {cr}\r\nAccept-Ranges: bytes\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let n = cut.unwrap_or(body.len()).min(body.len());
    let _ = conn.write_all(&body[..n]);
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Both);
}
