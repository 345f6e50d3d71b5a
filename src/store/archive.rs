//! Image sources as they come in files: format detection, access to their members, and
//! the verified manifests and configs that say what to import.
//!
//! Detected automatically:
//! - OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`);
//! - oci-archive: a tar of such a layout;
//! - docker-archive: `docker save`/`podman save` output (`manifest.json`), as a tar or
//!   unpacked into a directory;
//! - a single layer tar, uncompressed, gzip or zstd.
//!
//! Manifests, indexes and configs are checked against their digests before anything is
//! parsed from them; layer blobs are checked while they stream (see `import`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex as OciIndex};
use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::store::digest::Digest;
use crate::store::extract::safe_components;
use crate::store::plan::{ConfigFacts, ImagePlan, LayerPlan, ManifestBlob, PlanSource, Platform};

/// Largest JSON document (index, manifest, config) read from a source.
const MAX_JSON: u64 = 16 << 20;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From the first bytes of a blob.
    pub(crate) fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// From a layer media type; `None` for a type we do not know.
    pub(crate) fn from_media_type(mt: &str) -> Option<Compression> {
        match mt {
            OCI_LAYER
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            OCI_LAYER_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            OCI_LAYER_ZSTD
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The OCI media type for a layer blob of this compression.
    pub(crate) fn media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// One member of a tar archive.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    offset: u64,
    size: u64,
    /// For a symlink member: the member it points to (resolved within the archive).
    link: Option<String>,
}

/// Where the files of a source are: a directory, or members of an uncompressed tar.
#[derive(Debug)]
pub(crate) enum SourceFiles {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        members: HashMap<String, Member>,
    },
}

/// A member name made canonical (`./a//b` → `a/b`); `None` if it leaves the archive.
fn canonical(name: &str) -> Option<String> {
    let comps = safe_components(name.as_bytes()).ok()?;
    if comps.is_empty() {
        return None;
    }
    let joined = comps.join(&b'/');
    String::from_utf8(joined).ok()
}

/// A relative symlink target seen from the member's directory, as a member name; `None`
/// if it leaves the archive.
fn resolve_link(dir: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = dir
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl SourceFiles {
    fn index_tar(path: &Path) -> Result<SourceFiles> {
        let f = File::open(path).ctx(format!("opening {}", path.display()))?;
        let mut ar = tar::Archive::new(BufReader::with_capacity(1 << 16, f));
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let bad = |e: std::io::Error| {
            Error::io(format!("{}: not a readable tar archive", path.display()), e)
        };
        for entry in ar.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = canonical(&name) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                members.insert(
                    name,
                    Member {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                        link: None,
                    },
                );
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let resolved = if kind.is_symlink() {
                    let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    resolve_link(dir, &target)
                } else {
                    canonical(&target)
                };
                if let Some(t) = resolved {
                    links.push((name, t));
                }
            }
        }
        for (name, target) in links {
            members.insert(
                name,
                Member {
                    offset: 0,
                    size: 0,
                    link: Some(target),
                },
            );
        }
        Ok(SourceFiles::Tar {
            path: path.to_path_buf(),
            members,
        })
    }

    fn member(&self, name: &str) -> Option<(u64, u64)> {
        let SourceFiles::Tar { members, .. } = self else {
            return None;
        };
        let mut name = canonical(name)?;
        for _ in 0..8 {
            let m = members.get(&name)?;
            match &m.link {
                Some(t) => name = t.clone(),
                None => return Some((m.offset, m.size)),
            }
        }
        None
    }

    fn describe(&self) -> &Path {
        match self {
            SourceFiles::Dir(p) => p,
            SourceFiles::Tar { path, .. } => path,
        }
    }

    /// Whether the source has a file of this name.
    pub(crate) fn exists(&self, name: &str) -> bool {
        match self {
            SourceFiles::Dir(d) => canonical(name).is_some_and(|n| d.join(n).is_file()),
            SourceFiles::Tar { .. } => self.member(name).is_some(),
        }
    }

    /// Open a file of the source for streaming; returns the reader and its size.
    pub(crate) fn open(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let missing = || {
            Error::corrupt(format!(
                "{}: {name} is missing from the archive",
                self.describe().display()
            ))
        };
        match self {
            SourceFiles::Dir(d) => {
                let n = canonical(name).ok_or_else(missing)?;
                let p = d.join(n);
                let f = match File::open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(Error::io(format!("opening {}", p.display()), e)),
                };
                let size = f.metadata().ctx(format!("stat {}", p.display()))?.len();
                Ok((Box::new(f), size))
            }
            SourceFiles::Tar { path, .. } => {
                let (off, size) = self.member(name).ok_or_else(missing)?;
                let mut f = File::open(path).ctx(format!("opening {}", path.display()))?;
                f.seek(SeekFrom::Start(off))
                    .ctx(format!("reading {}", path.display()))?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    /// Read a small file (JSON) whole.
    pub(crate) fn read(&self, name: &str) -> Result<Vec<u8>> {
        let (r, size) = self.open(name)?;
        if size > MAX_JSON {
            return Err(Error::corrupt(format!(
                "{}: {name} is too large for a JSON document ({size} bytes)",
                self.describe().display()
            )));
        }
        let mut v = Vec::with_capacity(size as usize);
        r.take(MAX_JSON)
            .read_to_end(&mut v)
            .ctx(format!("reading {name} in {}", self.describe().display()))?;
        Ok(v)
    }

    /// The first bytes of a file, to sniff its compression.
    pub(crate) fn head(&self, name: &str) -> Result<Vec<u8>> {
        let (r, _) = self.open(name)?;
        let mut v = Vec::new();
        r.take(8)
            .read_to_end(&mut v)
            .ctx(format!("reading {name} in {}", self.describe().display()))?;
        Ok(v)
    }

    /// A blob of an OCI layout by digest.
    pub(crate) fn blob_name(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }
}

/// What kind of source a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OciLayout,
    OciArchive,
    DockerArchive,
    DockerDir,
    LayerTar(Compression),
}

impl Format {
    pub(crate) fn describe(self) -> String {
        match self {
            Format::OciLayout => "OCI image layout".into(),
            Format::OciArchive => "oci-archive".into(),
            Format::DockerArchive => "docker-archive".into(),
            Format::DockerDir => "docker-archive (unpacked)".into(),
            Format::LayerTar(c) => format!("layer tar ({})", c.name()),
        }
    }
}

/// An opened source.
#[derive(Debug)]
pub(crate) struct Source {
    pub path: PathBuf,
    pub format: Format,
    pub files: SourceFiles,
}

/// Look at a path and decide what it is.
pub(crate) fn detect(path: &Path) -> Result<Source> {
    let md = std::fs::metadata(path).ctx(format!("{}", path.display()))?;
    if md.is_dir() {
        let files = SourceFiles::Dir(path.to_path_buf());
        let format = if files.exists("oci-layout") && files.exists("index.json") {
            Format::OciLayout
        } else if files.exists("manifest.json") {
            Format::DockerDir
        } else {
            return Err(Error::invalid_input(format!(
                "{}: not an image: a directory needs oci-layout and index.json (OCI layout) or manifest.json (docker-archive)",
                path.display()
            )));
        };
        return Ok(Source {
            path: path.to_path_buf(),
            format,
            files,
        });
    }
    if !md.is_file() {
        return Err(Error::invalid_input(format!(
            "{}: not a file or directory",
            path.display()
        )));
    }
    let mut head = [0u8; 512];
    let n = {
        let mut f = File::open(path).ctx(format!("opening {}", path.display()))?;
        read_up_to(&mut f, &mut head).ctx(format!("reading {}", path.display()))?
    };
    let comp = Compression::sniff(&head[..n]);
    if comp != Compression::None {
        return Ok(Source {
            path: path.to_path_buf(),
            format: Format::LayerTar(comp),
            files: SourceFiles::Dir(path.parent().unwrap_or(Path::new(".")).to_path_buf()),
        });
    }
    if n < 512 || !looks_like_tar(&head) {
        return Err(Error::invalid_input(format!(
            "{}: not an image: neither an OCI layout, an image archive nor a layer tar (.tar, .tar.gz, .tar.zst)",
            path.display()
        )));
    }
    let files = SourceFiles::index_tar(path)?;
    let format = if files.exists("oci-layout") && files.exists("index.json") {
        Format::OciArchive
    } else if files.exists("manifest.json") {
        Format::DockerArchive
    } else {
        Format::LayerTar(Compression::None)
    };
    Ok(Source {
        path: path.to_path_buf(),
        format,
        files,
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A tar header block: the checksum field matches the header's bytes.
fn looks_like_tar(h: &[u8]) -> bool {
    if h.len() < 512 || h.iter().all(|b| *b == 0) {
        return false;
    }
    let field = &h[148..156];
    let digits: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let Ok(want) = u32::from_str_radix(digits.trim(), 8) else {
        return false;
    };
    let sum: u32 = h[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == want
}

// ---------------------------------------------------------------------------------------
// What to import: the plans of the images a source holds.

fn oci_digest(src: &Source, what: &str, d: &oci_spec::image::Digest) -> Result<Digest> {
    d.to_string()
        .parse::<Digest>()
        .map_err(|e| Error::corrupt(format!("{}: {what}: {}", src.path.display(), e.message())))
}

/// Read a blob by descriptor and check its digest and size.
fn read_verified(src: &Source, what: &str, digest: &Digest, size: Option<u64>) -> Result<Vec<u8>> {
    let name = SourceFiles::blob_name(digest);
    if !src.files.exists(&name) {
        return Err(Error::corrupt(format!(
            "{}: {what} {digest}: blob missing from the archive",
            src.path.display()
        )));
    }
    let data = src.files.read(&name)?;
    let actual = Digest::of(&data);
    if actual != *digest {
        return Err(Error::corrupt(format!(
            "{}: {what} {digest}: digest mismatch (the blob hashes to {actual})",
            src.path.display()
        )));
    }
    if let Some(s) = size
        && s != data.len() as u64
    {
        return Err(Error::corrupt(format!(
            "{}: {what} {digest}: size mismatch (descriptor says {s}, blob has {})",
            src.path.display(),
            data.len()
        )));
    }
    Ok(data)
}

/// Turn a name from an archive into a tag, when it is a full reference.
pub(crate) fn normalize_tag(name: &str) -> Option<String> {
    // A bare tag ("latest", "1.0") names no repository.
    if !name.contains(':') && !name.contains('/') {
        return None;
    }
    let n = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    crate::store::images::Reference::parse_tag(n).ok()
}

/// Whether a bare ref name (no `:`, no `/`) reads as a version tag: `latest`, or it
/// starts with a digit (`1.0`, `20240101`) or with `v` and a digit (`v1`, `v2.3`).
fn looks_like_version(name: &str) -> bool {
    let b = name.as_bytes();
    name == "latest"
        || b.first().is_some_and(u8::is_ascii_digit)
        || (matches!(b.first(), Some(b'v' | b'V')) && b.get(1).is_some_and(u8::is_ascii_digit))
}

/// The tag an OCI layout's `org.opencontainers.image.ref.name` (or containerd's image
/// name) gives an image.
///
/// A full reference (`app2:1.0`, `library/app2`, `localhost/app2`) is taken as
/// `normalize_tag` takes one. A bare ref name is ambiguous: the OCI spec's usual form is
/// a tag of whatever repository the reader chooses (`v1.0`, `stable-release`), but skopeo
/// and umoci write `oci:dir:app2` as `app2`, and `podman load` names such an image
/// `localhost/app2:latest`, taking every bare ref name as a repository (also `v1` and
/// `latest`). Here a bare ref name that reads as a version (`looks_like_version`) stays a
/// tag of no repository, as before: the image gets no name from it. Any other bare ref
/// name that is a valid repository name names the image `NAME:latest`, the name podman
/// gives it without its `localhost/`.
fn ref_name_tag(name: &str) -> Option<String> {
    if name.contains(':') || name.contains('/') {
        return normalize_tag(name);
    }
    if looks_like_version(name) {
        return None;
    }
    crate::store::images::Reference::parse_tag(name).ok()
}

/// The images an OCI layout (dir or archive) holds for `platform`.
pub(crate) fn oci_plans(
    src: &Source,
    platform: &Platform,
    explicit_platform: bool,
) -> Result<Vec<ImagePlan>> {
    let index_bytes = src.files.read("index.json")?;
    let index = OciIndex::from_reader(&index_bytes[..]).map_err(|e| {
        Error::corrupt(format!(
            "{}: index.json: not a valid image index: {e}",
            src.path.display()
        ))
    })?;
    let mut found: Vec<(ManifestBlob, Vec<String>)> = Vec::new();
    let mut other_platforms = Vec::new();
    walk_index(
        src,
        index.manifests(),
        platform,
        0,
        &mut found,
        &mut other_platforms,
        &[],
    )?;
    if found.is_empty() {
        let avail = if other_platforms.is_empty() {
            String::from("it lists no image manifest")
        } else {
            other_platforms.sort();
            other_platforms.dedup();
            format!("available: {}", other_platforms.join(", "))
        };
        return Err(Error::not_found(format!(
            "{}: no image for platform {platform} ({avail}); choose one with --platform",
            src.path.display()
        )));
    }
    // One plan per manifest, tags merged.
    let mut plans: Vec<ImagePlan> = Vec::new();
    let mut seen: HashMap<Digest, usize> = HashMap::new();
    for (m, tags) in found {
        if let Some(&i) = seen.get(&m.digest) {
            plans[i].tags.extend(tags);
            continue;
        }
        let plan = ImagePlan::from_manifest(&src.path.display().to_string(), src, m, tags)?;
        if explicit_platform {
            let want = platform.to_string();
            let got = &plan.platform;
            if !Platform::parse(got).is_ok_and(|p| platform.matches(&p)) {
                return Err(Error::not_found(format!(
                    "{}: the image is for {got}, not {want}",
                    src.path.display()
                )));
            }
        }
        seen.insert(plan.manifest.as_ref().expect("oci").digest, plans.len());
        plans.push(plan);
    }
    for p in &mut plans {
        p.tags.sort();
        p.tags.dedup();
    }
    Ok(plans)
}

fn ref_names(d: &Descriptor) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(a) = d.annotations() {
        for key in [
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
        ] {
            if let Some(t) = a.get(key).and_then(|v| ref_name_tag(v)) {
                out.push(t);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[allow(clippy::too_many_arguments)]
fn walk_index(
    src: &Source,
    descs: &[Descriptor],
    platform: &Platform,
    depth: usize,
    found: &mut Vec<(ManifestBlob, Vec<String>)>,
    other: &mut Vec<String>,
    inherited_tags: &[String],
) -> Result<()> {
    if depth > 4 {
        return Err(Error::corrupt(format!(
            "{}: image indexes nested too deeply",
            src.path.display()
        )));
    }
    for d in descs {
        let mt = d.media_type().to_string();
        let digest = oci_digest(src, "index entry", d.digest())?;
        let mut tags = ref_names(d);
        tags.extend(inherited_tags.iter().cloned());
        if let Some(p) = d.platform().as_ref().map(Platform::of_descriptor)
            && !platform.matches(&p)
        {
            if p.os != "unknown" {
                other.push(p.to_string());
            }
            continue;
        }
        match mt.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                let bytes = read_verified(src, "index", &digest, Some(d.size()))?;
                let sub = OciIndex::from_reader(&bytes[..]).map_err(|e| {
                    Error::corrupt(format!(
                        "{}: index {digest}: not a valid image index: {e}",
                        src.path.display()
                    ))
                })?;
                walk_index(
                    src,
                    sub.manifests(),
                    platform,
                    depth + 1,
                    found,
                    other,
                    &tags,
                )?;
            }
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let bytes = read_verified(src, "manifest", &digest, Some(d.size()))?;
                found.push((
                    ManifestBlob {
                        bytes,
                        digest,
                        media_type: mt,
                    },
                    tags,
                ));
            }
            _ => {
                log::debug!(
                    "{}: index entry {digest} of type {mt} skipped",
                    src.path.display()
                );
            }
        }
    }
    Ok(())
}

/// An archive as the source of a plan: blobs by digest under `blobs/sha256/`.
impl PlanSource for Source {
    fn config(&self, digest: &Digest, size: u64) -> Result<Vec<u8>> {
        read_verified(self, "config", digest, Some(size))
    }

    fn layer_member(&self, digest: &Digest) -> Result<String> {
        let member = SourceFiles::blob_name(digest);
        if !self.files.exists(&member) {
            return Err(Error::corrupt(format!(
                "{}: layer {digest}: blob missing from the archive",
                self.path.display()
            )));
        }
        Ok(member)
    }

    fn unreadable_media_type(&self) -> &'static str {
        "unknown"
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A digest named by an archive path: `blobs/sha256/<hex>`, `<hex>.json`, `<hex>/layer.tar`.
fn digest_in_name(name: &str) -> Option<Digest> {
    let n = canonical(name)?;
    if let Some(h) = n.strip_prefix("blobs/sha256/") {
        return Digest::from_hex(h);
    }
    if let Some(h) = n.strip_suffix(".json") {
        return Digest::from_hex(h);
    }
    None
}

/// The images of a docker archive (`manifest.json`).
pub(crate) fn docker_plans(src: &Source) -> Result<Vec<ImagePlan>> {
    let bytes = src.files.read("manifest.json")?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&bytes).map_err(|e| {
        Error::corrupt(format!(
            "{}: manifest.json: not a docker-archive manifest: {e}",
            src.path.display()
        ))
    })?;
    if entries.is_empty() {
        return Err(Error::corrupt(format!(
            "{}: manifest.json lists no image",
            src.path.display()
        )));
    }
    let mut plans = Vec::new();
    for e in entries {
        if !src.files.exists(&e.config) {
            return Err(Error::corrupt(format!(
                "{}: config {}: missing from the archive",
                src.path.display(),
                e.config
            )));
        }
        let config = src.files.read(&e.config)?;
        let config_digest = Digest::of(&config);
        if let Some(named) = digest_in_name(&e.config)
            && named != config_digest
        {
            return Err(Error::corrupt(format!(
                "{}: config {}: digest mismatch (the file hashes to {config_digest})",
                src.path.display(),
                e.config
            )));
        }
        let facts = ConfigFacts::parse(
            &src.path.display().to_string(),
            &config_digest,
            &config,
            e.layers.len(),
        )?;
        let mut layers = Vec::new();
        for (name, diff_id) in e.layers.iter().zip(facts.diff_ids) {
            if !src.files.exists(name) {
                return Err(Error::corrupt(format!(
                    "{}: layer {name}: missing from the archive",
                    src.path.display()
                )));
            }
            let compression = Compression::sniff(&src.files.head(name)?);
            // An uncompressed layer tar is its own diff-id: known without reading it.
            let blob =
                digest_in_name(name).or((compression == Compression::None).then_some(diff_id));
            layers.push(LayerPlan {
                member: name.clone(),
                blob,
                blob_size: None,
                compression,
                media_type: compression.media_type().to_string(),
                diff_id,
                chunked: None,
                estargz: None,
            });
        }
        let tags = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter_map(|t| normalize_tag(t))
            .collect();
        plans.push(ImagePlan {
            manifest: None,
            created: facts.created,
            platform: facts.platform,
            config,
            config_digest,
            layers,
            tags,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"ustar"), Compression::None);
        assert_eq!(Compression::from_media_type("application/x-foo"), None);
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
    }

    #[test]
    fn names() {
        assert_eq!(canonical("./a//b"), Some("a/b".into()));
        assert_eq!(canonical("../a"), None);
        assert_eq!(
            resolve_link("shared", "../base/layer.tar"),
            Some("base/layer.tar".into())
        );
        assert_eq!(resolve_link("a/b", "./c"), Some("a/b/c".into()));
        assert_eq!(resolve_link("a", "../../x"), None);
        assert_eq!(resolve_link("a", "/etc/passwd"), None);
        assert_eq!(
            normalize_tag("docker.io/library/alpine:3"),
            Some("alpine:3".into())
        );
        assert_eq!(normalize_tag("latest"), None);
        assert_eq!(normalize_tag("x/y"), Some("x/y:latest".into()));
        assert_eq!(normalize_tag("docker.io/app2"), Some("app2:latest".into()));
        assert_eq!(normalize_tag("app2"), None);
        let d = Digest::of(b"x");
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{}", d.hex())),
            Some(d)
        );
        assert_eq!(digest_in_name(&format!("{}.json", d.hex())), Some(d));
        assert_eq!(digest_in_name("abc/layer.tar"), None);
    }

    #[test]
    fn bare_ref_names() {
        // A bare name names the image NAME:latest (podman: localhost/NAME:latest).
        for (n, want) in [
            ("app2", "app2:latest"),
            ("stable-release", "stable-release:latest"),
            ("my.app_1", "my.app_1:latest"),
            ("version", "version:latest"),
        ] {
            assert_eq!(ref_name_tag(n).as_deref(), Some(want), "{n}");
        }
        // A version-like bare ref name is a tag of no repository: no name, as before.
        for n in [
            "latest", "v1", "v2.3.4", "V1", "1.0", "20240101", "3-alpine",
        ] {
            assert_eq!(ref_name_tag(n), None, "{n}");
        }
        // Neither a tag nor a valid repository name: no name.
        for n in ["App2", "_x", "a-", ""] {
            assert_eq!(ref_name_tag(n), None, "{n}");
        }
        // Full references as before.
        assert_eq!(ref_name_tag("app2:1.0").as_deref(), Some("app2:1.0"));
        assert_eq!(
            ref_name_tag("localhost/app2").as_deref(),
            Some("localhost/app2:latest")
        );
        assert_eq!(
            ref_name_tag("docker.io/library/alpine:3").as_deref(),
            Some("alpine:3")
        );
    }

    #[test]
    fn tar_header_check() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        b.append_data(&mut h, "x", &b""[..]).unwrap();
        let data = b.into_inner().unwrap();
        assert!(looks_like_tar(&data[..512]));
        assert!(!looks_like_tar(&[b'x'; 512]));
    }
}
