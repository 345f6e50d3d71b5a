//! A small HTTP proxy on 127.0.0.1 in front of a registry that counts what passes and
//! misbehaves on request: throttle, cut a download, corrupt a byte, stall, refuse
//! everything, or demand bearer tokens from its own token endpoint. It only ever talks
//! to 127.0.0.1, and stops on drop.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::registry::header;

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Response bytes after the head.
    pub body_bytes: u64,
    pub range: Option<String>,
}

/// How the proxy misbehaves (for requests whose path contains `path_has`).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Only for requests whose path contains this (e.g. "/blobs/").
    pub path_has: String,
    /// Send response bodies at this many bytes per second.
    pub throttle: Option<u64>,
    /// Close the connection after this many body bytes, for this many responses.
    pub cut_after: Option<(u64, u32)>,
    /// Flip the byte at this body offset.
    pub corrupt_at: Option<u64>,
    /// Stop sending (keeping the connection open) after this many body bytes.
    pub stall_after: Option<u64>,
}

struct Shared {
    upstream: u16,
    port: u16,
    seen: Mutex<Vec<Seen>>,
    faults: Mutex<Faults>,
    cuts_done: Mutex<u32>,
    outage: AtomicBool,
    stop: AtomicBool,
    /// Bearer mode: tokens issued, with their scopes; the credentials the token
    /// endpoint wants (none: anonymous tokens).
    bearer: Option<Mutex<Bearer>>,
    body_total: AtomicU64,
    /// Requests being relayed: a request is recorded only once its response has been
    /// relayed, which can be a moment after the client has read it all.
    in_flight: AtomicU64,
    /// The most requests relayed at once since the last `clear`.
    max_in_flight: AtomicU64,
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Bearer {
    creds: Option<(String, String)>,
    tokens: HashMap<String, HashSet<String>>,
    issued: u64,
}

/// A counting, fault-injecting HTTP proxy on 127.0.0.1 in front of a registry.
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        Self::start_with(upstream, None)
    }

    /// A proxy that demands bearer tokens from `http://127.0.0.1:PORT/token` (which
    /// wants `creds` as basic auth when given) and strips them before the registry.
    pub fn start_bearer(upstream: u16, creds: Option<(&str, &str)>) -> Proxy {
        Self::start_with(
            upstream,
            Some(Bearer {
                creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
                tokens: HashMap::new(),
                issued: 0,
            }),
        )
    }

    fn start_with(upstream: u16, bearer: Option<Bearer>) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            port,
            seen: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            cuts_done: Mutex::new(0),
            outage: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            bearer: bearer.map(Mutex::new),
            body_total: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            for conn in l.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                if sh.outage.load(Ordering::SeqCst) {
                    drop(conn);
                    continue;
                }
                let sh = sh.clone();
                thread::spawn(move || handle(&sh, conn));
            }
        });
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set_faults(&self, f: Faults) {
        *self.shared.faults.lock().unwrap() = f;
        *self.shared.cuts_done.lock().unwrap() = 0;
    }

    /// Refuse every connection (and end those running) until turned off.
    pub fn set_outage(&self, on: bool) {
        self.shared.outage.store(on, Ordering::SeqCst);
    }

    /// Recorded requests, once those being relayed have finished (bounded wait: a test
    /// may look while a request is deliberately stalled).
    pub fn seen(&self) -> Vec<Seen> {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while self.shared.in_flight.load(Ordering::SeqCst) > 0
            && std::time::Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(5));
        }
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.shared.seen.lock().unwrap().clear();
        self.shared.body_total.store(0, Ordering::SeqCst);
        self.shared.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// The most requests relayed at once since the last `clear`.
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Response body bytes relayed so far (also while requests are in flight).
    pub fn body_bytes_so_far(&self) -> u64 {
        self.shared.body_total.load(Ordering::SeqCst)
    }

    /// Requests whose path contains `s`, by method.
    pub fn count(&self, method: &str, s: &str) -> usize {
        self.seen()
            .iter()
            .filter(|r| r.method == method && r.path.contains(s))
            .count()
    }

    /// Tokens the token endpoint handed out.
    pub fn tokens_issued(&self) -> u64 {
        self.shared
            .bearer
            .as_ref()
            .map(|b| b.lock().unwrap().issued)
            .unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.outage.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Read an HTTP head (through the blank line); the bytes after it are returned too.
fn read_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..i + 4].to_vec()).ok()?;
            return Some((head, buf[i + 4..].to_vec()));
        }
        if buf.len() > 65536 {
            return None;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Not HTTP (a TLS hello, say): answer as plain HTTP servers do.
        if !buf[0].is_ascii_uppercase() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
            return None;
        }
    }
}

fn respond(s: &mut TcpStream, status: &str, extra: &[String], body: &str) {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n",
        body.len()
    );
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.push_str(body);
    let _ = s.write_all(r.as_bytes());
}

/// The repository a `/v2/NAME/{manifests,blobs,tags}/…` path names.
fn repo_of(path: &str) -> Option<String> {
    let p = path.split('?').next()?.strip_prefix("/v2/")?;
    for kind in ["/manifests/", "/blobs/", "/tags/"] {
        if let Some(i) = p.find(kind) {
            return Some(p[..i].to_string());
        }
    }
    None
}

/// Bearer mode: answer `/token` and check tokens. `true` when the request may go on.
fn bearer_gate(sh: &Shared, s: &mut TcpStream, method: &str, path: &str, head: &str) -> bool {
    let Some(b) = &sh.bearer else { return true };
    let realm = format!("http://127.0.0.1:{}/token", sh.port);
    if path.starts_with("/token") {
        let mut b = b.lock().unwrap();
        if let Some((u, p)) = &b.creds {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            );
            if header(head, "authorization") != Some(want.as_str()) {
                respond(
                    s,
                    "401 Unauthorized",
                    &[],
                    r#"{"details":"bad credentials"}"#,
                );
                return false;
            }
        }
        let query = path.split_once('?').map(|x| x.1).unwrap_or("");
        let scopes: HashSet<String> = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .map(|v| {
                v.replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",")
            })
            .collect();
        b.issued += 1;
        let tok = format!("tok{}", b.issued);
        b.tokens.insert(tok.clone(), scopes);
        respond(
            s,
            "200 OK",
            &[],
            &format!(r#"{{"token":"{tok}","expires_in":300}}"#),
        );
        return false;
    }
    let action = if method == "GET" || method == "HEAD" {
        "pull"
    } else {
        "push"
    };
    let repo = repo_of(path);
    let ok = header(head, "authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .and_then(|t| b.lock().unwrap().tokens.get(t).cloned())
        .is_some_and(|scopes| match &repo {
            None => true,
            Some(r) => scopes.iter().any(|sc| {
                let mut parts = sc.rsplitn(2, ':');
                let actions = parts.next().unwrap_or("");
                let name = parts.next().unwrap_or("");
                name == format!("repository:{r}") && actions.split(',').any(|a| a == action)
            }),
        });
    if ok {
        return true;
    }
    let mut ch = format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"layerfs-test\"");
    if let Some(r) = repo {
        ch.push_str(&format!(",scope=\"repository:{r}:{action}\""));
    }
    respond(
        s,
        "401 Unauthorized",
        &[ch],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
    );
    false
}

fn handle(sh: &Shared, mut client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let Some((head, rest)) = read_head(&mut client) else {
        return;
    };
    let _in_flight = InFlight::new(&sh.in_flight);
    sh.max_in_flight
        .fetch_max(sh.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    if !bearer_gate(sh, &mut client, &method, &path, &head) {
        return;
    }
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", sh.upstream)) else {
        return; // the registry is down: the client sees the connection end
    };
    // One request per connection; the registry needs no token.
    let mut out = String::new();
    for (i, l) in head.lines().enumerate() {
        if l.is_empty() {
            continue;
        }
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if i > 0 && (name == "connection" || (sh.bearer.is_some() && name == "authorization")) {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    if up.write_all(out.as_bytes()).is_err() || up.write_all(&rest).is_err() {
        return;
    }
    // The rest of the request body, as it comes.
    let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let Some((rhead, rrest)) = read_head(&mut up) else {
        return;
    };
    let status: u16 = rhead
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let faults = sh.faults.lock().unwrap().clone();
    let applies = !faults.path_has.is_empty() && path.contains(&faults.path_has);
    let mut sent: u64 = 0;
    let record = |sent: u64| {
        sh.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            status,
            body_bytes: sent,
            range: header(&head, "range").map(String::from),
        });
    };
    if client.write_all(rhead.as_bytes()).is_err() {
        record(0);
        return;
    }
    let cut = if applies {
        faults.cut_after.and_then(|(n, times)| {
            let mut done = sh.cuts_done.lock().unwrap();
            (*done < times).then(|| {
                *done += 1;
                n
            })
        })
    } else {
        None
    };
    // Offsets in the faults count from the blob's start, also for a resumed download.
    let base: u64 = header(&head, "range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let corrupt_at = faults.corrupt_at.and_then(|c| c.checked_sub(base));
    let stall_after = faults.stall_after.map(|n| n.saturating_sub(base));
    let mut pending = rrest;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if sh.outage.load(Ordering::SeqCst) {
            break;
        }
        let mut data = if pending.is_empty() {
            match up.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf[..n].to_vec(),
            }
        } else {
            std::mem::take(&mut pending)
        };
        if applies && let Some(rate) = faults.throttle {
            let step = (rate / 20).max(1) as usize;
            if data.len() > step {
                pending = data.split_off(step);
            }
            thread::sleep(Duration::from_millis(50));
        }
        if applies
            && let Some(at) = corrupt_at
            && at >= sent
            && at < sent + data.len() as u64
        {
            data[(at - sent) as usize] ^= 0xff;
        }
        let mut limit = None;
        if let Some(n) = cut {
            limit = Some(n);
        }
        if applies && let Some(n) = stall_after {
            limit = Some(limit.map_or(n, |l: u64| l.min(n)));
        }
        if let Some(n) = limit
            && sent + data.len() as u64 >= n
        {
            data.truncate((n - sent) as usize);
            let _ = client.write_all(&data);
            sent += data.len() as u64;
            sh.body_total.fetch_add(data.len() as u64, Ordering::SeqCst);
            if applies && stall_after == Some(n) && cut.is_none_or(|c| c > n) {
                // Hang with the connection open, until the client gives up.
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline && !sh.outage.load(Ordering::SeqCst) {
                    let mut b = [0u8; 1];
                    let _ = client.set_read_timeout(Some(Duration::from_millis(100)));
                    match client.read(&mut b) {
                        Ok(0) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        _ => break,
                    }
                }
            }
            break;
        }
        if client.write_all(&data).is_err() {
            break;
        }
        sent += data.len() as u64;
        sh.body_total.fetch_add(data.len() as u64, Ordering::SeqCst);
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    record(sent);
}
