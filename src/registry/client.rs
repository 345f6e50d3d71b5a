//! One registry as the distribution API sees it: the scheme (HTTPS, or plain HTTP where
//! allowed), authentication (basic, or bearer tokens from the realm a `401` names),
//! bounded retries with backoff for transient failures, and the API's error bodies
//! turned into one-line messages.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use ureq::Agent;
use ureq::http::{Method, Request, Response};

use crate::error::{Error, Result};
use crate::registry::auth::{self, Challenge, Credentials};

/// Largest JSON answer read whole (manifests, tokens, error bodies).
pub(crate) const MAX_JSON: u64 = 16 << 20;

/// How a client behaves.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Allow plain HTTP and unverified TLS for this registry (as for localhost).
    pub insecure: bool,
    /// Connecting, and each wait for data, may take this long.
    pub timeout: Duration,
    /// Further attempts after a transient failure (connection lost, 5xx, 429).
    pub retries: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure: false,
            timeout: Duration::from_secs(30),
            retries: 4,
        }
    }
}

/// A request body that can be sent again (after a `401`, or a retry).
pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`, with progress (bytes sent so far).
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
        progress: Option<&'a (dyn Fn(u64) + Sync)>,
    },
}

struct State {
    /// `https://host` or `http://host`, once known.
    base: Option<String>,
    /// The `Authorization` header value in use.
    authorization: Option<String>,
    /// Scopes asked for when a token is fetched.
    scopes: Vec<String>,
}

/// A client for one registry host, for a set of scopes (`repository:NAME:pull`).
pub(crate) struct Client {
    agent: Agent,
    /// The registry as references name it (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Where the API is (`registry-1.docker.io`, `localhost:5000`).
    host: String,
    plain_http_ok: bool,
    pub opts: Options,
    creds: Option<(Credentials, Option<PathBuf>)>,
    state: Mutex<State>,
}

/// Whether `host[:port]` is this machine (`localhost`, 127.0.0.0/8, ::1).
pub(crate) fn is_local(host: &str) -> bool {
    let h = host_part(host);
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_part(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.split(':').next().unwrap_or(host)
}

/// Registries marked insecure: `$LAYERFS_INSECURE_REGISTRIES` (comma-separated) and
/// docker's `/etc/docker/daemon.json` `insecure-registries`. Entries are `host`,
/// `host:port` or an IP range (`10.0.0.0/8`).
pub(crate) fn configured_insecure() -> Vec<String> {
    let mut out: Vec<String> = std::env::var("LAYERFS_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Ok(data) = std::fs::read("/etc/docker/daemon.json")
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data)
        && let Some(list) = v.get("insecure-registries").and_then(|l| l.as_array())
    {
        out.extend(list.iter().filter_map(|e| e.as_str()).map(String::from));
    }
    out
}

/// Whether `host[:port]` matches one of `entries`.
pub(crate) fn listed_insecure(host: &str, entries: &[String]) -> bool {
    let h = host_part(host);
    entries.iter().any(|e| {
        let e = e
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        if e == host || e == h {
            return true;
        }
        let Some((net, bits)) = e.split_once('/') else {
            return false;
        };
        let (Ok(net), Ok(bits), Ok(ip)) = (
            net.parse::<IpAddr>(),
            bits.parse::<u32>(),
            h.parse::<IpAddr>(),
        ) else {
            return false;
        };
        match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) if bits <= 32 => {
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) if bits <= 128 => {
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    })
}

/// An error body of the distribution API.
#[derive(Debug, Deserialize)]
struct ApiErrors {
    #[serde(default)]
    errors: Vec<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// What went wrong with a response, for a message: `MANIFEST_UNKNOWN: manifest unknown`
/// from an error body, else the status.
pub(crate) fn describe_status(resp: &mut Response<ureq::Body>) -> (u16, Option<String>, String) {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_vec()
        .unwrap_or_default();
    if let Ok(e) = serde_json::from_slice::<ApiErrors>(&body)
        && let Some(first) = e.errors.first()
    {
        let msg = if first.message.is_empty() {
            first.code.to_lowercase().replace('_', " ")
        } else {
            first.message.clone()
        };
        return (status, Some(first.code.clone()), msg);
    }
    let reason = resp
        .status()
        .canonical_reason()
        .unwrap_or("unexpected status")
        .to_string();
    (status, None, format!("HTTP {status} {reason}"))
}

/// What a registry said, as the source of an error that quotes it.
#[derive(Debug)]
pub(crate) struct RegistrySaid(pub String);

impl std::fmt::Display for RegistrySaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RegistrySaid {}

/// One phrase for a transport failure.
pub(crate) fn describe_ureq(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => describe_io(io),
        ureq::Error::Timeout(_) => "timed out waiting for the registry".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Rustls(t) => format!("TLS: {t}"),
        ureq::Error::Tls(t) => format!("TLS: {t}"),
        ureq::Error::Protocol(p) => format!("bad HTTP from the registry: {p}"),
        ureq::Error::TooManyRedirects => "too many redirects".into(),
        other => other.to_string(),
    }
}

/// One phrase for an I/O failure while talking to a registry.
pub(crate) fn describe_io(e: &io::Error) -> String {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
        return describe_ureq(inner);
    }
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            "timed out waiting for the registry".into()
        }
        io::ErrorKind::UnexpectedEof => "connection closed early".into(),
        _ => crate::error::describe(e),
    }
}

/// Statuses worth another try.
pub(crate) fn retryable_status(s: u16) -> bool {
    matches!(s, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Whether trying again may help.
pub(crate) fn transient(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => !matches!(
            io.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
        ),
        ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed | ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

fn cert_error(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Rustls(
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
        )
    )
}

/// A JSON answer whole, at most `MAX_JSON` bytes.
fn read_small_body(resp: &mut Response<ureq::Body>) -> std::result::Result<Vec<u8>, ureq::Error> {
    resp.body_mut().with_config().limit(MAX_JSON).read_to_vec()
}

/// " (N attempts)" after a failure that was tried more than once, for its message.
fn attempts_note(attempt: u32) -> String {
    if attempt > 1 {
        format!(" ({attempt} attempts)")
    } else {
        String::new()
    }
}

/// Wait before attempt `n` (1-based): 0.5 s, 1 s, 2 s, … at most 8 s.
pub(crate) fn backoff(n: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << n.saturating_sub(1).min(4)))
}

/// Percent-encode a query value.
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A URL with query parameters appended.
pub(crate) fn with_query(url: &str, query: &[(&str, &str)]) -> String {
    let mut u = url.to_string();
    for (k, v) in query {
        u.push(if u.contains('?') { '&' } else { '?' });
        u.push_str(&pct(k));
        u.push('=');
        u.push_str(&pct(v));
    }
    u
}

/// A reader over part of a file that reports how much was read.
struct FilePart<'a> {
    f: io::Take<File>,
    done: u64,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl Read for FilePart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read(buf)?;
        self.done += n as u64;
        if let Some(p) = self.progress {
            p(self.done);
        }
        Ok(n)
    }
}

/// A small document as fetched.
pub(crate) struct Small {
    pub data: Vec<u8>,
    pub content_type: Option<String>,
    /// The `Docker-Content-Digest` header.
    pub digest: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

impl Client {
    /// A client for `registry` (as references name it), whose API is at `host`, for
    /// `scopes`. Credentials are looked up in the usual files unless given.
    pub(crate) fn new(
        registry: &str,
        host: &str,
        repository_for_creds: &str,
        scopes: Vec<String>,
        opts: Options,
        creds: Option<Credentials>,
    ) -> Result<Client> {
        let marked = opts.insecure || listed_insecure(host, &configured_insecure());
        let plain_http_ok = marked || is_local(host);
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(marked)
            .build();
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.timeout))
            .timeout_per_read(Some(opts.timeout))
            .timeout_per_write(Some(opts.timeout))
            .max_idle_connections_per_host(16)
            .user_agent(format!("layerfs/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        let creds = match creds {
            Some(c) => Some((c, None)),
            None => auth::lookup(registry, repository_for_creds)?.map(|(c, p)| (c, Some(p))),
        };
        Ok(Client {
            agent,
            registry: registry.to_string(),
            host: host.to_string(),
            plain_http_ok,
            opts,
            creds,
            state: Mutex::new(State {
                base: None,
                authorization: None,
                scopes,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user whose credentials are in use, if any.
    pub(crate) fn username(&self) -> Option<&str> {
        self.creds.as_ref().map(|(c, _)| c.username.as_str())
    }

    /// The base URL (`https://host`), finding the scheme on first use: HTTPS, then plain
    /// HTTP where allowed, and the first answer's challenge.
    pub(crate) fn base(&self) -> Result<String> {
        if let Some(b) = &self.state().base {
            return Ok(b.clone());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let https = format!("https://{}", self.host);
            let res = self.agent.get(format!("{https}/v2/")).call();
            let err = match res {
                Ok(resp) => return Ok(self.found_base(https, resp)),
                Err(e) if cert_error(&e) => {
                    return Err(Error::network(format!(
                        "registry {}: {}; mark it insecure (--insecure) if you trust it",
                        self.registry,
                        describe_ureq(&e)
                    )));
                }
                Err(e) => e,
            };
            let err = if self.plain_http_ok {
                let http = format!("http://{}", self.host);
                match self.agent.get(format!("{http}/v2/")).call() {
                    Ok(resp) => return Ok(self.found_base(http, resp)),
                    Err(e) => e,
                }
            } else {
                err
            };
            if transient(&err) && attempt <= self.opts.retries {
                log::info!(
                    "registry {}: {} (attempt {attempt})",
                    self.registry,
                    describe_ureq(&err)
                );
                std::thread::sleep(backoff(attempt));
                continue;
            }
            return Err(Error::network(format!(
                "cannot reach registry {}: {}{}",
                self.registry,
                describe_ureq(&err),
                attempts_note(attempt)
            )));
        }
    }

    fn found_base(&self, base: String, resp: Response<ureq::Body>) -> String {
        log::debug!("registry {}: {base}", self.registry);
        self.state().base = Some(base.clone());
        if resp.status() == 401 {
            // Authenticate now: every later request carries the answer.
            if let Some(ch) = www_authenticate(&resp) {
                let _ = self.authenticate(&ch);
            }
        }
        base
    }

    /// Answer a challenge: basic credentials, or a token from the realm.
    fn authenticate(&self, ch: &Challenge) -> Result<()> {
        match ch {
            Challenge::Basic => {
                let Some((c, _)) = &self.creds else {
                    return Err(self.login_needed());
                };
                self.state().authorization = Some(c.basic_header());
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let mut scopes = self.state().scopes.clone();
                if let Some(s) = scope {
                    for s in s.split(' ') {
                        if !s.is_empty() && !scopes.iter().any(|x| x == s) {
                            scopes.push(s.to_string());
                        }
                    }
                }
                let mut query: Vec<(&str, &str)> = Vec::new();
                if let Some(s) = service {
                    query.push(("service", s));
                }
                for s in &scopes {
                    query.push(("scope", s));
                }
                let url = with_query(realm, &query);
                let mut req = self.agent.get(&url);
                if let Some((c, _)) = &self.creds {
                    req = req.header("Authorization", c.basic_header());
                }
                let mut resp = req.call().map_err(|e| {
                    Error::network(format!(
                        "registry {}: token service {realm}: {}",
                        self.registry,
                        describe_ureq(&e)
                    ))
                })?;
                if resp.status() == 401 || resp.status() == 403 {
                    return Err(match &self.creds {
                        Some(_) => self.creds_refused(),
                        None => self.login_needed(),
                    });
                }
                if !resp.status().is_success() {
                    let (_, _, msg) = describe_status(&mut resp);
                    return Err(Error::network(format!(
                        "registry {}: token service {realm}: {msg}",
                        self.registry
                    )));
                }
                let body = read_small_body(&mut resp).map_err(|e| {
                    Error::network(format!(
                        "registry {}: token service {realm}: {}",
                        self.registry,
                        describe_ureq(&e)
                    ))
                })?;
                let t: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
                    Error::network(format!(
                        "registry {}: token service {realm}: not a token answer: {e}",
                        self.registry
                    ))
                })?;
                let token = t.token.or(t.access_token).filter(|t| !t.is_empty());
                let Some(token) = token else {
                    return Err(Error::network(format!(
                        "registry {}: token service {realm} gave no token",
                        self.registry
                    )));
                };
                let mut st = self.state();
                st.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
        }
    }

    pub(crate) fn login_needed(&self) -> Error {
        Error::unauthorized(format!(
            "registry {}: authentication required; log in with `layerfs login {}`",
            self.registry, self.registry
        ))
    }

    fn creds_refused(&self) -> Error {
        let (user, from) = match &self.creds {
            Some((c, Some(p))) => (c.username.as_str(), format!(" (from {})", p.display())),
            Some((c, None)) => (c.username.as_str(), String::new()),
            None => ("", String::new()),
        };
        Error::unauthorized(format!(
            "registry {}: the credentials of user \"{user}\"{from} were refused; log in again with `layerfs login {}`",
            self.registry, self.registry
        ))
    }

    fn same_host(&self, url: &str) -> bool {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .unwrap_or(url);
        rest.split('/').next() == Some(self.host.as_str())
    }

    /// The URL for `target`: a path under the base, or an absolute URL the registry gave
    /// (a relative `Location` is taken as a path).
    pub(crate) fn url(&self, target: &str) -> Result<String> {
        if target.starts_with("http://") || target.starts_with("https://") {
            Ok(target.to_string())
        } else {
            Ok(format!("{}{target}", self.base()?))
        }
    }

    /// One request, answering a `401` once: `Err` for what retrying cannot fix,
    /// `Ok(Err)` for a transport failure (which may be transient).
    pub(crate) fn attempt(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &Body<'_>,
    ) -> Result<std::result::Result<Response<ureq::Body>, ureq::Error>> {
        let mut authenticated = false;
        loop {
            let mut rb = Request::builder().method(method.clone()).uri(url);
            for (k, v) in headers {
                rb = rb.header(*k, *v);
            }
            if self.same_host(url)
                && let Some(a) = &self.state().authorization
            {
                rb = rb.header("Authorization", a.as_str());
            }
            let building = |e: ureq::http::Error| Error::new(format!("building a request: {e}"));
            let sent = match body {
                Body::Empty => self.agent.run(rb.body(()).map_err(building)?),
                Body::Bytes(b) => self.agent.run(
                    rb.header("Content-Length", b.len().to_string())
                        .body(*b)
                        .map_err(building)?,
                ),
                Body::File {
                    path,
                    offset,
                    len,
                    progress,
                } => {
                    let mut f = File::open(path)
                        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                    f.seek(SeekFrom::Start(*offset))
                        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                    let mut part = FilePart {
                        f: f.take(*len),
                        done: 0,
                        progress: *progress,
                    };
                    self.agent.run(
                        rb.header("Content-Length", len.to_string())
                            .body(ureq::SendBody::from_reader(&mut part))
                            .map_err(building)?,
                    )
                }
            };
            match sent {
                Ok(resp) if resp.status() == 401 && !authenticated => {
                    authenticated = true;
                    let Some(ch) = www_authenticate(&resp) else {
                        return Err(self.login_needed());
                    };
                    self.authenticate(&ch)?;
                }
                Ok(resp) if resp.status() == 401 => {
                    return Err(match &self.creds {
                        Some(_) => self.creds_refused(),
                        None => self.login_needed(),
                    });
                }
                other => return Ok(other),
            }
        }
    }

    /// Send a request to `target` (see `url`), authenticating on a `401` and, when
    /// `retry`, trying again after transient failures (connection lost, 429, 5xx) with
    /// backoff. Returns any response that is not a `401`; the caller judges the status.
    pub(crate) fn send(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: &Body<'_>,
        retry: bool,
    ) -> Result<Response<ureq::Body>> {
        let url = self.url(target)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(&method, &url, headers, body)? {
                Ok(resp)
                    if retry
                        && attempt <= self.opts.retries
                        && retryable_status(resp.status().as_u16()) =>
                {
                    log::info!(
                        "registry {}: {method} {url}: HTTP {} (attempt {attempt})",
                        self.registry,
                        resp.status()
                    );
                    std::thread::sleep(backoff(attempt));
                }
                Ok(resp) => return Ok(resp),
                Err(e) if retry && transient(&e) && attempt <= self.opts.retries => {
                    log::info!(
                        "registry {}: {method} {url}: {} (attempt {attempt})",
                        self.registry,
                        describe_ureq(&e)
                    );
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => {
                    return Err(Error::network(format!(
                        "registry {}: {}{}",
                        self.registry,
                        describe_ureq(&e),
                        attempts_note(attempt)
                    )));
                }
            }
        }
    }

    /// GET a small document whole; a 404 is a `NotFound` error naming `what`, with what
    /// the registry said as its source.
    pub(crate) fn get_small(
        &self,
        target: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Small> {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let mut resp = self.send(Method::GET, target, &headers, &Body::Empty, true)?;
        if resp.status() == 404 {
            let (_, _, msg) = describe_status(&mut resp);
            return Err(Error::not_found(format!("{what}: not found: {msg}"))
                .with_source(RegistrySaid(msg)));
        }
        if !resp.status().is_success() {
            return Err(self.status_error(what, &mut resp));
        }
        let ct = header(&resp, "content-type");
        let dcd = header(&resp, "docker-content-digest");
        let data = read_small_body(&mut resp).map_err(|e| {
            Error::network(format!(
                "{what}: registry {}: {}",
                self.registry,
                describe_ureq(&e)
            ))
        })?;
        Ok(Small {
            data,
            content_type: ct,
            digest: dcd,
        })
    }

    /// The one-line error for an unexpected status.
    pub(crate) fn status_error(&self, what: &str, resp: &mut Response<ureq::Body>) -> Error {
        let (status, code, msg) = describe_status(resp);
        match status {
            403 => Error::unauthorized(format!(
                "{what}: registry {} denied access{}: {msg}",
                self.registry,
                self.username()
                    .map(|u| format!(" to user \"{u}\""))
                    .unwrap_or_default()
            )),
            404 => Error::not_found(format!("{what}: {}", not_found(code.as_deref(), &msg))),
            _ => Error::network(format!("{what}: registry {}: {msg}", self.registry)),
        }
    }
}

fn not_found(code: Option<&str>, msg: &str) -> String {
    match code {
        Some("NAME_UNKNOWN") => format!("repository not found ({msg})"),
        Some("MANIFEST_UNKNOWN") => format!("not found ({msg})"),
        Some("BLOB_UNKNOWN") => format!("blob not found ({msg})"),
        _ => format!("not found ({msg})"),
    }
}

pub(crate) fn header(resp: &Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

fn www_authenticate(resp: &Response<ureq::Body>) -> Option<Challenge> {
    resp.headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(auth::parse_challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_insecure_hosts() {
        assert!(is_local("localhost:5000"));
        assert!(is_local("127.0.0.1:5000"));
        assert!(is_local("127.1.2.3"));
        assert!(is_local("[::1]:5000"));
        assert!(!is_local("example.com:5000"));
        assert!(!is_local("10.0.0.1"));
        let list = vec![
            "reg.lan:5000".to_string(),
            "10.0.0.0/8".into(),
            "plain.example".into(),
        ];
        assert!(listed_insecure("reg.lan:5000", &list));
        assert!(!listed_insecure("reg.lan:5001", &list));
        assert!(listed_insecure("10.2.3.4:443", &list));
        assert!(!listed_insecure("11.2.3.4", &list));
        assert!(listed_insecure("plain.example:8080", &list));
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            with_query(
                "https://auth.example/token?x=1",
                &[("scope", "repository:a/b:pull,push")]
            ),
            "https://auth.example/token?x=1&scope=repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }

    #[test]
    fn backoff_grows_and_stops() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(9), Duration::from_secs(8));
    }
}
