//! Image records and references.
//!
//! All records live in one file, `images/index.json`, replaced atomically: a tag moving
//! from one image to another is one write, so no crash can leave a tag on two images.
//!
//! References follow docker: `NAME` means `NAME:latest`, `NAME@sha256:<hex>` selects by
//! manifest digest, and an image id (the config digest, with or without `sha256:`) or a
//! unique prefix of its hex works wherever an image is named. A name without a registry
//! is found in podman's spelling too (`localhost/app2` for `app2:latest`, and back).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::digest::Digest;

/// One layer of an image, base first in `ImageRecord::layers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// sha256 of the uncompressed tar: names the layer dir.
    pub diff_id: Digest,
    /// The blob as the manifest lists it (compressed or not).
    pub blob: Digest,
    pub media_type: String,
    pub blob_size: u64,
    /// Bytes of file data in the extracted layer.
    pub size: u64,
}

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest: the image id.
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub layers: Vec<LayerRef>,
    /// `name:tag` references, sorted.
    pub tags: Vec<String>,
    /// From the config (RFC 3339), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// When it was imported (seconds since the epoch).
    pub imported: u64,
    /// Sum of the layer sizes.
    pub size: u64,
    /// `os/arch[/variant]`.
    pub platform: String,
}

impl ImageRecord {
    /// Repository names of the tags (`a` for `a:1`).
    pub(crate) fn repositories(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|t| split_tag(t).0)
    }
}

/// The image catalog: every image record with its tags, kept whole in `images/index.json`
/// (not to be confused with an OCI image index, which lists the manifests of one image).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageCatalog {
    pub version: u32,
    /// Keyed by the id's hex.
    pub images: BTreeMap<String, ImageRecord>,
}

/// A parsed image name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reference {
    /// `name:tag` (normalized, `:latest` added).
    Tag(String),
    /// `name@sha256:…`.
    Digest { name: String, digest: Digest },
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest { name, digest } => write!(f, "{name}@{digest}"),
        }
    }
}

/// Split `name:tag` at the tag's colon (a registry port is not a tag).
pub(crate) fn split_tag(s: &str) -> (&str, &str) {
    let last_slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
    match s[last_slash..].rfind(':') {
        Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
        None => (s, ""),
    }
}

/// The registry podman writes before a name that has none (`podman load` names an
/// image `localhost/app2:latest` where layerfs and docker say `app2:latest`).
const PODMAN_LOCAL: &str = "localhost/";

/// A name (or `name:tag`) in podman's other spelling: `app2:latest` ↔
/// `localhost/app2:latest`, `a/b` ↔ `localhost/a/b`. `None` for a name under another
/// registry (`example.com/x`, `localhost:5000/x`), which has one spelling only.
pub(crate) fn local_spelling(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix(PODMAN_LOCAL) {
        return (!rest.is_empty()).then(|| rest.to_string());
    }
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            None
        }
        _ => Some(format!("{PODMAN_LOCAL}{name}")),
    }
}

fn valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    let comps: Vec<&str> = name.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        if c.is_empty() {
            return false;
        }
        // The first component may be a registry host: `localhost:5000`, `Example.com`.
        let host =
            i == 0 && comps.len() > 1 && (c.contains('.') || c.contains(':') || *c == "localhost");
        let ok = if host {
            c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
        } else {
            c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
            }) && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

impl Reference {
    /// Parse `NAME[:TAG]` or `NAME@sha256:HEX`.
    pub(crate) fn parse(s: &str) -> Result<Reference> {
        let bad =
            |why: &str| Error::invalid_input(format!("invalid image reference \"{s}\": {why}"));
        if let Some((name, digest)) = s.split_once('@') {
            if !valid_name(name) {
                return Err(bad(
                    "invalid repository name (lowercase letters, digits, . _ - and /)",
                ));
            }
            let digest: Digest = digest.parse().map_err(|e: Error| bad(e.message()))?;
            return Ok(Reference::Digest {
                name: name.to_string(),
                digest,
            });
        }
        let (name, tag) = split_tag(s);
        let tag = if s.ends_with(':') {
            return Err(bad("empty tag"));
        } else if tag.is_empty() {
            "latest"
        } else {
            tag
        };
        if !valid_name(name) {
            return Err(bad(
                "invalid repository name (lowercase letters, digits, . _ - and /)",
            ));
        }
        if !valid_tag(tag) {
            return Err(bad("invalid tag (letters, digits, _ . -; at most 128)"));
        }
        Ok(Reference::Tag(format!("{name}:{tag}")))
    }

    /// A name for tagging: `NAME[:TAG]` only.
    pub(crate) fn parse_tag(s: &str) -> Result<String> {
        match Reference::parse(s)? {
            Reference::Tag(t) => Ok(t),
            Reference::Digest { .. } => Err(Error::invalid_input(format!(
                "invalid tag \"{s}\": a tag cannot contain a digest"
            ))),
        }
    }
}

/// The one item whose id starts with `prefix` (docker's id-prefix rule): `None` when
/// none does, an `Ambiguous` error when several do. `shown` is the name as the user gave
/// it, `noun` what the items are ("image").
pub(crate) fn by_id_prefix<'a, T>(
    items: impl IntoIterator<Item = &'a T>,
    id: impl Fn(&T) -> String,
    prefix: &str,
    shown: &str,
    noun: &str,
) -> Result<Option<&'a T>> {
    let hits: Vec<&T> = items
        .into_iter()
        .filter(|item| id(item).starts_with(prefix))
        .collect();
    match hits.len() {
        0 => Ok(None),
        1 => Ok(Some(hits[0])),
        n => Err(Error::ambiguous(format!(
            "{noun} id prefix \"{shown}\" is ambiguous: it matches {n} {noun}s"
        ))),
    }
}

impl ImageCatalog {
    pub(crate) fn get(&self, id: &Digest) -> Option<&ImageRecord> {
        self.images.get(&id.hex())
    }

    pub(crate) fn by_tag(&self, tag: &str) -> Option<&ImageRecord> {
        self.images
            .values()
            .find(|r| r.tags.iter().any(|t| t == tag))
    }

    /// The image a `name:tag` names and the tag as stored: the tag itself, else its other
    /// spelling with or without podman's `localhost/` (see `local_spelling`).
    pub(crate) fn find_tag(&self, tag: &str) -> Option<(&ImageRecord, String)> {
        if let Some(r) = self.by_tag(tag) {
            return Some((r, tag.to_string()));
        }
        let other = local_spelling(tag)?;
        self.by_tag(&other).map(|r| (r, other))
    }

    /// The stored tag a user's `NAME[:TAG]` names, if it names one (`None` for an id, a
    /// digest reference or an unknown name).
    pub(crate) fn tag_named(&self, s: &str) -> Option<String> {
        match Reference::parse(s.trim()) {
            Ok(Reference::Tag(t)) => self.find_tag(&t).map(|(_, t)| t),
            _ => None,
        }
    }

    /// Find the image a user named. Errors say what was looked for.
    pub(crate) fn resolve(&self, s: &str) -> Result<&ImageRecord> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::invalid_input("empty image name"));
        }
        // A full id, with or without the algorithm.
        let full = s.strip_prefix("sha256:").unwrap_or(s);
        if let Some(d) = Digest::from_hex(full) {
            if let Some(r) = self.get(&d) {
                return Ok(r);
            }
            if let Some(r) = self.images.values().find(|r| r.manifest_digest == d) {
                return Ok(r);
            }
            return Err(Error::not_found(format!("no such image: {s}")));
        }
        if let Ok(reference) = Reference::parse(s) {
            let hit = match &reference {
                Reference::Tag(t) => self.find_tag(t).map(|(r, _)| r),
                Reference::Digest { name, digest } => {
                    let other = local_spelling(name);
                    self.images.values().find(|r| {
                        r.manifest_digest == *digest
                            && (r.tags.is_empty()
                                || r.repositories()
                                    .any(|n| n == name || Some(n) == other.as_deref()))
                    })
                }
            };
            if let Some(r) = hit {
                return Ok(r);
            }
        }
        // A prefix of an id.
        if full.len() <= 64
            && full
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && let Some(r) = by_id_prefix(self.images.values(), |r| r.id.hex(), full, s, "image")?
        {
            return Ok(r);
        }
        Err(Error::not_found(format!("no such image: {s}")))
    }

    /// Give `tag` to the image `id`, taking it from whichever image had it.
    pub(crate) fn set_tag(&mut self, id: &Digest, tag: &str) {
        for r in self.images.values_mut() {
            r.tags.retain(|t| t != tag);
        }
        if let Some(r) = self.images.get_mut(&id.hex()) {
            r.tags.push(tag.to_string());
            r.tags.sort();
        }
    }

    /// Records sorted newest import first, as `images` lists them.
    pub(crate) fn sorted(&self) -> Vec<&ImageRecord> {
        let mut v: Vec<&ImageRecord> = self.images.values().collect();
        v.sort_by(|a, b| b.imported.cmp(&a.imported).then(a.id.cmp(&b.id)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn rec(first: u8, tags: &[&str]) -> ImageRecord {
        let mut b = [0u8; 32];
        b[0] = 0xab;
        b[1] = first;
        let id = Digest::from_bytes(b);
        ImageRecord {
            id,
            manifest_digest: Digest::of(&b),
            manifest_media_type: String::new(),
            config_digest: id,
            layers: vec![],
            tags: tags.iter().map(|s| s.to_string()).collect(),
            created: None,
            imported: 0,
            size: 0,
            platform: "linux/amd64".into(),
        }
    }

    #[test]
    fn parse_references() {
        assert_eq!(
            Reference::parse("alpine").unwrap(),
            Reference::Tag("alpine:latest".into())
        );
        assert_eq!(
            Reference::parse("a/b:1.0").unwrap(),
            Reference::Tag("a/b:1.0".into())
        );
        assert_eq!(
            Reference::parse("localhost:5000/x").unwrap(),
            Reference::Tag("localhost:5000/x:latest".into())
        );
        let d = Digest::of(b"m");
        assert_eq!(
            Reference::parse(&format!("x@{d}")).unwrap(),
            Reference::Digest {
                name: "x".into(),
                digest: d
            }
        );
        for bad in [
            "UPPER",
            "a:",
            "a::b",
            "a/:b",
            "-a",
            "a:b@c",
            "a b",
            "x@sha256:12",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} parsed");
        }
        assert!(Reference::parse_tag(&format!("x@{d}")).is_err());
    }

    #[test]
    fn podman_local_spelling() {
        assert_eq!(
            local_spelling("app2:latest").as_deref(),
            Some("localhost/app2:latest")
        );
        assert_eq!(
            local_spelling("localhost/app2:latest").as_deref(),
            Some("app2:latest")
        );
        assert_eq!(local_spelling("a/b").as_deref(), Some("localhost/a/b"));
        assert_eq!(local_spelling("localhost/a/b").as_deref(), Some("a/b"));
        assert_eq!(local_spelling("example.com/a:1"), None);
        assert_eq!(local_spelling("localhost:5000/a:1"), None);
        assert_eq!(local_spelling("localhost/"), None);
    }

    #[test]
    fn resolve_podman_spellings() {
        let mut catalog = ImageCatalog::default();
        let a = rec(1, &["one:latest"]);
        let b = rec(2, &["two:latest"]);
        catalog.images.insert(a.id.hex(), a.clone());
        catalog.images.insert(b.id.hex(), b.clone());
        // podman's spelling of a name without a registry finds the image too, and back.
        for n in ["localhost/two", "localhost/two:latest", "two", "two:latest"] {
            assert_eq!(catalog.resolve(n).unwrap().id, b.id, "{n}");
        }
        assert_eq!(
            catalog.tag_named("localhost/two").as_deref(),
            Some("two:latest")
        );
        assert_eq!(
            catalog
                .resolve(&format!("localhost/one@{}", a.manifest_digest))
                .unwrap()
                .id,
            a.id
        );
        catalog.set_tag(&b.id, "localhost/three:1");
        assert_eq!(catalog.resolve("three:1").unwrap().id, b.id);
        assert_eq!(
            catalog.tag_named("three:1").as_deref(),
            Some("localhost/three:1")
        );
        assert!(catalog.tag_named("localhost/three").is_none());
        assert!(catalog.resolve("example.com/two").is_err());
        // An exact name wins over the other spelling.
        catalog.set_tag(&a.id, "localhost/two:latest");
        assert_eq!(catalog.resolve("localhost/two").unwrap().id, a.id);
        assert_eq!(catalog.resolve("two").unwrap().id, b.id);
    }

    #[test]
    fn resolve_names_ids_prefixes() {
        let mut catalog = ImageCatalog::default();
        let a = rec(1, &["one:latest", "one:2"]);
        let b = rec(2, &["two:latest"]);
        catalog.images.insert(a.id.hex(), a.clone());
        catalog.images.insert(b.id.hex(), b.clone());
        assert_eq!(catalog.resolve("one").unwrap().id, a.id);
        assert_eq!(catalog.resolve("one:2").unwrap().id, a.id);
        assert_eq!(catalog.resolve(&a.id.to_string()).unwrap().id, a.id);
        assert_eq!(catalog.resolve("ab01").unwrap().id, a.id);
        assert_eq!(
            catalog.resolve("ab0").unwrap_err().kind(),
            ErrorKind::Ambiguous
        );
        assert_eq!(
            catalog
                .resolve(&format!("one@{}", a.manifest_digest))
                .unwrap()
                .id,
            a.id
        );
        assert!(
            catalog
                .resolve(&format!("two@{}", a.manifest_digest))
                .is_err()
        );
        let missing = catalog.resolve("three").unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(missing.to_string(), "no such image: three");
        catalog.set_tag(&b.id, "one:2");
        assert_eq!(catalog.resolve("one:2").unwrap().id, b.id);
        assert_eq!(
            catalog.get(&a.id).unwrap().tags,
            vec!["one:latest".to_string()]
        );
    }
}
