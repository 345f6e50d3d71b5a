//! Image references as docker reads them: `[REGISTRY/]REPOSITORY[:TAG][@sha256:HEX]`.
//!
//! The first component is a registry when it has a `.` or a `:`, or is `localhost`;
//! otherwise the registry is Docker Hub (`docker.io`), where one-component names live
//! under `library/`. No tag and no digest means `:latest`.

use std::fmt;

use crate::error::{Error, Result};
use crate::store::Digest;

/// The registry a reference without one names.
pub(crate) const DEFAULT_REGISTRY: &str = "docker.io";
/// Where Docker Hub's distribution API is served.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRef {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub registry: String,
    /// `library/alpine`, `demo/one`.
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ separated by `.`, `_`, `__` or `-`s.
    !c.is_empty()
        && c.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        })
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

fn valid_host(h: &str) -> bool {
    let port_ok = |p: Option<&str>| p.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if let Some(rest) = h.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            a => match a.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        return inner.parse::<std::net::Ipv6Addr>().is_ok() && port_ok(port);
    }
    let (host, port) = match h.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    port_ok(port)
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

impl ImageRef {
    pub(crate) fn parse(s: &str) -> Result<ImageRef> {
        let bad = |why: &str| Error::invalid_input(format!("invalid reference \"{s}\": {why}"));
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|e| bad(e.message()))?)),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad("invalid tag (letters, digits, _ . -; at most 128)"));
        }
        if name.is_empty() {
            return Err(bad("no repository"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_host(first) {
                    return Err(bad("invalid registry host"));
                }
                let host = if first == "index.docker.io" {
                    DEFAULT_REGISTRY
                } else {
                    first
                };
                (host.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if !path.split('/').all(valid_component) {
            return Err(bad(
                "invalid repository name (lowercase letters, digits, . _ - and /)",
            ));
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.len() > 255 {
            return Err(bad("repository name too long"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The `host[:port]` that serves the distribution API.
    pub(crate) fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What the manifest URL names: the digest when there is one, else the tag.
    pub(crate) fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The repository as users write it: `alpine` for `docker.io/library/alpine`,
    /// `user/x` for Docker Hub, `host/path` otherwise.
    pub(crate) fn familiar_name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// The local tag a pull gives the image (`name:tag`), when the reference has a tag.
    pub(crate) fn local_tag(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{t}", self.familiar_name()))
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified form: `docker.io/library/alpine:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/alpine");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r.local_tag().unwrap(), "alpine:latest");

        let r = ImageRef::parse("user/app:1.0").unwrap();
        assert_eq!(r.repository, "user/app");
        assert_eq!(r.local_tag().unwrap(), "user/app:1.0");

        let r = ImageRef::parse("localhost:5000/demo/one:2").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "demo/one");
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(r.local_tag().unwrap(), "localhost:5000/demo/one:2");

        let r = ImageRef::parse("127.0.0.1:5000/x").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.manifest_ref(), "latest");

        let r = ImageRef::parse("localhost/x").unwrap();
        assert_eq!(r.registry, "localhost");

        let r = ImageRef::parse("index.docker.io/library/busybox").unwrap();
        assert_eq!(r.registry, "docker.io");

        let d = Digest::of(b"m");
        let r = ImageRef::parse(&format!("example.com/a/b@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(d));
        assert_eq!(r.manifest_ref(), d.to_string());
        assert_eq!(r.local_tag(), None);
        assert_eq!(r.to_string(), format!("example.com/a/b@{d}"));
    }

    #[test]
    fn refuses_invalid() {
        for bad in [
            "",
            "UPPER",
            "a:",
            "a/:b",
            "-a",
            "a b",
            "x@sha256:12",
            "host:99999/x",
            "a//b",
            "localhost:5000/",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
