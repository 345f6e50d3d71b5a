//! Credentials and authentication challenges.
//!
//! Credentials are read from the files docker, podman and skopeo use, first match wins:
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$HOME/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` (else
//! `$HOME/.docker/config.json`). All have the form
//! `{"auths": {"host[:port]": {"auth": base64("user:password")}}}`; a key may also name a
//! repository (`host/namespace`, the longest match wins) or be a URL (`https://host/v1/`).
//! `layerfs login` writes `$REGISTRY_AUTH_FILE` when set, else the docker config file,
//! which every one of those tools reads.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::registry::reference::DEFAULT_REGISTRY;

/// A user name and password (or a token used as one).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl Credentials {
    /// The `Authorization` value for basic auth.
    pub(crate) fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn docker_config() -> Option<PathBuf> {
    env_path("DOCKER_CONFIG")
        .map(|d| d.join("config.json"))
        .or_else(|| env_path("HOME").map(|h| h.join(".docker/config.json")))
}

/// The files credentials are read from, in order.
pub(crate) fn auth_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    out.extend(env_path("REGISTRY_AUTH_FILE"));
    out.extend(env_path("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    out.extend(env_path("HOME").map(|h| h.join(".config/containers/auth.json")));
    out.extend(docker_config());
    out
}

/// The file `login` writes.
pub(crate) fn login_file() -> Result<PathBuf> {
    env_path("REGISTRY_AUTH_FILE")
        .or_else(docker_config)
        .ok_or_else(|| Error::new("no place for credentials: set HOME or REGISTRY_AUTH_FILE"))
}

/// `docker.io` and its aliases are one registry.
fn canonical_host(h: &str) -> &str {
    match h {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DEFAULT_REGISTRY,
        h => h,
    }
}

/// A key of `auths` as `host[/path]`: URLs lose their scheme and path.
fn normalize_key(k: &str) -> String {
    let (was_url, rest) = match k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
    {
        Some(r) => (true, r),
        None => (false, k),
    };
    let rest = rest.trim_end_matches('/');
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host = canonical_host(host);
    match path {
        Some(p) if !was_url => format!("{host}/{p}"),
        _ => host.to_string(),
    }
}

/// The key `login` writes for a registry (docker's own for Docker Hub).
fn login_key(registry: &str) -> String {
    if registry == DEFAULT_REGISTRY {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

fn read_file(p: &Path) -> Result<Option<Value>> {
    let data = match fs::read(p) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
    };
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Some(Value::Object(Map::new())));
    }
    serde_json::from_slice(&data).map(Some).map_err(|e| {
        Error::corrupt(format!(
            "{}: not a valid credentials file: {e}",
            p.display()
        ))
    })
}

fn decode_entry(p: &Path, key: &str, v: &Value) -> Result<Option<Credentials>> {
    if let Some(a) = v
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let raw = B64
            .decode(a.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "{}: the \"auth\" of {key} is not base64 of user:password",
                    p.display()
                ))
            })?;
        let (u, pw) = raw.split_once(':').ok_or_else(|| {
            Error::corrupt(format!(
                "{}: the \"auth\" of {key} is not base64 of user:password",
                p.display()
            ))
        })?;
        return Ok(Some(Credentials {
            username: u.to_string(),
            password: pw.to_string(),
        }));
    }
    if let (Some(u), Some(pw)) = (
        v.get("username").and_then(Value::as_str),
        v.get("password").and_then(Value::as_str),
    ) {
        return Ok(Some(Credentials {
            username: u.to_string(),
            password: pw.to_string(),
        }));
    }
    Ok(None)
}

/// Credentials for `registry` (and `repository` on it), with the file they came from.
pub(crate) fn lookup(registry: &str, repository: &str) -> Result<Option<(Credentials, PathBuf)>> {
    lookup_in(&auth_files(), registry, repository)
}

pub(crate) fn lookup_in(
    files: &[PathBuf],
    registry: &str,
    repository: &str,
) -> Result<Option<(Credentials, PathBuf)>> {
    let registry = canonical_host(registry);
    let full = format!("{registry}/{repository}");
    for p in files {
        let Some(v) = read_file(p)? else { continue };
        let Some(auths) = v.get("auths").and_then(Value::as_object) else {
            continue;
        };
        let mut best: Option<(usize, Credentials)> = None;
        for (k, entry) in auths {
            let nk = normalize_key(k);
            let hit = nk == registry
                || (full.starts_with(&nk) && full.as_bytes().get(nk.len()) == Some(&b'/'))
                || nk == full;
            if !hit || best.as_ref().is_some_and(|(len, _)| *len >= nk.len()) {
                continue;
            }
            if let Some(c) = decode_entry(p, k, entry)? {
                best = Some((nk.len(), c));
            }
        }
        if let Some((_, c)) = best {
            return Ok(Some((c, p.clone())));
        }
    }
    Ok(None)
}

/// Write a JSON file readable only by its owner, atomically.
fn write_private(p: &Path, v: &Value) -> Result<()> {
    let dir = p.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        p.file_name().and_then(|n| n.to_str()).unwrap_or("auth"),
        std::process::id()
    ));
    let mut data = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::new(format!("encoding {}: {e}", p.display())))?;
    data.push(b'\n');
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(format!("creating {}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .ctx(format!("chmod {}", tmp.display()))?;
        f.write_all(&data)
            .and_then(|_| f.sync_all())
            .ctx(format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, p).ctx(format!("replacing {}", p.display()))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Save credentials for `registry` in the login file; other entries and keys are kept.
pub(crate) fn save(registry: &str, c: &Credentials) -> Result<PathBuf> {
    let p = login_file()?;
    let mut v = read_file(&p)?.unwrap_or_else(|| Value::Object(Map::new()));
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Error::corrupt(format!("{}: not a JSON object", p.display())))?;
    let auths = obj
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let auths = auths
        .as_object_mut()
        .ok_or_else(|| Error::corrupt(format!("{}: \"auths\" is not an object", p.display())))?;
    // One entry per registry: drop other spellings of the same key.
    let reg = canonical_host(registry).to_string();
    auths.retain(|k, _| normalize_key(k) != reg);
    let entry = serde_json::json!({
        "auth": B64.encode(format!("{}:{}", c.username, c.password))
    });
    auths.insert(login_key(registry), entry);
    write_private(&p, &v)?;
    Ok(p)
}

/// Remove the credentials for `registry` from every file they are read from; returns the
/// files changed.
pub(crate) fn remove(registry: &str) -> Result<Vec<PathBuf>> {
    let reg = canonical_host(registry).to_string();
    let mut changed = Vec::new();
    for p in auth_files() {
        let Some(mut v) = read_file(&p)? else {
            continue;
        };
        let Some(auths) = v.get_mut("auths").and_then(Value::as_object_mut) else {
            continue;
        };
        let before = auths.len();
        auths.retain(|k, _| normalize_key(k) != reg);
        if auths.len() != before {
            write_private(&p, &v)?;
            changed.push(p);
        }
    }
    changed.dedup();
    Ok(changed)
}

// ---------------------------------------------------------------------------------------
// Challenges.

/// What a `401`'s `WWW-Authenticate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        /// Scopes the server named (`repository:NAME:pull`), if any.
        scope: Option<String>,
    },
}

/// Pick the challenge we can answer from a `WWW-Authenticate` value: Bearer before Basic.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let list = http_auth::parse_challenges(header).ok()?;
    let mut basic = false;
    for c in &list {
        if c.scheme.eq_ignore_ascii_case("bearer") {
            let get = |name: &str| {
                c.params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
            };
            let realm = get("realm")?;
            return Some(Challenge::Bearer {
                realm,
                service: get("service"),
                scope: get("scope"),
            });
        }
        if c.scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        }
    }
    basic.then_some(Challenge::Basic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, v: Value) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        p
    }

    #[test]
    fn finds_entries_in_order_and_by_repository() {
        let t = tempfile::tempdir().unwrap();
        let a = file(
            t.path(),
            "a.json",
            serde_json::json!({"auths": {
                "reg.example:5000/team": {"auth": B64.encode("team:pw1")},
                "reg.example:5000": {"auth": B64.encode("all:pw2")},
            }}),
        );
        let b = file(
            t.path(),
            "b.json",
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": B64.encode("hub:pw3")},
                "other.example": {"username": "u", "password": "p:w"},
            }}),
        );
        let files = vec![a.clone(), t.path().join("missing.json"), b.clone()];
        let (c, from) = lookup_in(&files, "reg.example:5000", "team/app")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), from), ("team", a.clone()));
        let (c, _) = lookup_in(&files, "reg.example:5000", "teamx/app")
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "all");
        let (c, from) = lookup_in(&files, "docker.io", "library/alpine")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("hub", "pw3"));
        assert_eq!(from, b);
        let (c, _) = lookup_in(&files, "other.example", "x").unwrap().unwrap();
        assert_eq!(c.password, "p:w");
        assert!(lookup_in(&files, "nowhere", "x").unwrap().is_none());
    }

    #[test]
    fn bad_files_are_named() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("bad.json");
        fs::write(&p, "{nope").unwrap();
        let e = lookup_in(std::slice::from_ref(&p), "x", "y").unwrap_err();
        assert!(e.to_string().contains("bad.json"), "{e}");
        let p = file(
            t.path(),
            "b64.json",
            serde_json::json!({"auths": {"x": {"auth": "!!!"}}}),
        );
        let e = lookup_in(&[p], "x", "y").unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x", Bearer realm="https://t/""#),
            Some(Challenge::Bearer {
                realm: "https://t/".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("garbage \""), None);
    }
}
