//! `pull`: resolve a reference to one image manifest (choosing the platform from an
//! index), fetch and verify the manifest and config, then hand the layers to the store's
//! `ingest`, which fetches only the blobs it lacks, several at once, each streamed
//! straight into verification and extraction.
//!
//! A blob download that breaks off resumes where it stopped (HTTP `Range`), a bounded
//! number of times with backoff; the bytes keep flowing into the same hashing, so the
//! full digest is still checked at the end.

use std::io::{self, Read};
use std::sync::Arc;

use oci_spec::image::ImageIndex;
use ureq::http::Method;

use crate::error::{Error, ErrorKind, Result};
use crate::registry::client::{self, Body, Client, Options};
use crate::registry::lazy;
use crate::registry::reference::ImageRef;
use crate::store::archive::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::store::ingest::{BlobFetcher, Ingested};
use crate::store::lazy::{LazyRecord, LazySource};
use crate::store::plan::{ImagePlan, LayerPlan, ManifestBlob, PlanSource, Platform};
use crate::store::{Digest, ImportObserver, Store};

/// What `Accept` lists for manifests.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// How to pull.
#[derive(Debug, Clone)]
pub(crate) struct PullOptions {
    /// `os/arch[/variant]` to take from a multi-platform image (default: the host's).
    pub platform: Option<String>,
    /// Layers downloaded at once.
    pub parallel: usize,
    /// zstd:chunked layers: fetch only the tree and small files now; larger files are
    /// fetched when first opened, or by a later pull.
    pub lazy: bool,
    pub client: Options,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            parallel: 3,
            lazy: false,
            client: Options::default(),
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub(crate) struct Pulled {
    /// The digest the reference resolved to (the index's, for a multi-platform image).
    pub resolved_digest: Digest,
    pub ingested: Ingested,
}

/// The media type of a manifest: its `mediaType` field, else the `Content-Type`.
fn media_type_of(bytes: &[u8], content_type: Option<&str>) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Option<Probe> = serde_json::from_slice(bytes).ok();
    if let Some(p) = &probe {
        if let Some(mt) = p.media_type.as_deref().filter(|m| !m.is_empty()) {
            return mt.to_string();
        }
        if p.schema_version == Some(1) {
            return "application/vnd.docker.distribution.manifest.v1+json".into();
        }
    }
    if let Some(ct) = content_type {
        let ct = ct.split(';').next().unwrap_or(ct).trim();
        if !ct.is_empty() && ct != "application/json" && ct != "text/plain" {
            return ct.to_string();
        }
    }
    // An OCI document without mediaType: tell index from manifest by its shape.
    if probe.is_some_and(|p| p.manifests.is_some()) {
        OCI_INDEX.into()
    } else {
        OCI_MANIFEST.into()
    }
}

/// GET a manifest (by tag or digest) and check its digest: against the digest asked for,
/// or the registry's `Docker-Content-Digest`.
pub(crate) fn fetch_manifest(
    client: &Client,
    repository: &str,
    reference: &str,
    expected: Option<(Digest, Option<u64>)>,
    what: &str,
) -> Result<ManifestBlob> {
    let path = format!("/v2/{repository}/manifests/{reference}");
    let got = client
        .get_small(&path, Some(MANIFEST_ACCEPT), what)
        .map_err(|e| {
            if e.kind() != ErrorKind::NotFound {
                return e;
            }
            let thing = if reference.starts_with("sha256:") {
                format!("manifest {reference}")
            } else {
                format!("tag {reference}")
            };
            // The registry's own words are the source of its "not found".
            let said = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            Error::not_found(format!(
                "{what}: {thing} not found in repository {repository} on {} (registry: {said})",
                client.registry,
            ))
            .with_source(e)
        })?;
    let (bytes, ct, dcd) = (got.data, got.content_type, got.digest);
    let digest = Digest::of(&bytes);
    if let Some((want, size)) = expected {
        if want != digest {
            return Err(Error::corrupt(format!(
                "{what}: manifest digest mismatch: asked for {want}, the registry sent one that hashes to {digest}"
            )));
        }
        if let Some(s) = size
            && s != bytes.len() as u64
        {
            return Err(Error::corrupt(format!(
                "{what}: manifest size mismatch: the index says {s} bytes, the registry sent {}",
                bytes.len()
            )));
        }
    } else if let Some(d) = dcd.as_deref().filter(|d| d.starts_with("sha256:"))
        && let Ok(d) = d.parse::<Digest>()
        && d != digest
    {
        return Err(Error::corrupt(format!(
            "{what}: manifest digest mismatch: the registry says {d}, the manifest hashes to {digest}"
        )));
    }
    let media_type = media_type_of(&bytes, ct.as_deref());
    Ok(ManifestBlob {
        bytes,
        digest,
        media_type,
    })
}

/// The manifest for `platform` in an index: its digest, size and media type, and
/// whether its entry named a platform (one that did not is checked against its config).
fn choose_platform(
    what: &str,
    index_bytes: &[u8],
    platform: &Platform,
) -> Result<(Digest, u64, String, bool)> {
    let index = ImageIndex::from_reader(index_bytes)
        .map_err(|e| Error::corrupt(format!("{what}: not a valid image index: {e}")))?;
    let mut seen = Vec::new();
    // An entry that names no platform (as `ctr-remote images convert` writes them) is
    // taken when none names this one, as containerd does.
    let mut unnamed = None;
    for d in index.manifests() {
        let mt = d.media_type().to_string();
        if mt != OCI_MANIFEST && mt != DOCKER_MANIFEST {
            continue;
        }
        let entry = |named: bool| -> Result<(Digest, u64, String, bool)> {
            let digest: Digest = d.digest().to_string().parse().map_err(|e: Error| {
                Error::corrupt(format!("{what}: index entry: {}", e.message()))
            })?;
            Ok((digest, d.size(), mt.clone(), named))
        };
        let Some(p) = d.platform().as_ref().map(Platform::of_descriptor) else {
            if unnamed.is_none() {
                unnamed = Some(entry(false)?);
            }
            continue;
        };
        if platform.matches(&p) {
            return entry(true);
        }
        if p.os != "unknown" {
            seen.push(p.to_string());
        }
    }
    if let Some(e) = unnamed {
        return Ok(e);
    }
    seen.sort();
    seen.dedup();
    let avail = if seen.is_empty() {
        "it lists none".to_string()
    } else {
        format!("available: {}", seen.join(", "))
    };
    Err(Error::not_found(format!(
        "{what}: no image for platform {platform} ({avail}); choose one with --platform"
    )))
}

/// Resolve `r` to one image manifest, verified; also the digest `r` resolved to (the
/// index's, for a multi-platform image), and whether the image's platform is still to
/// be checked (an index entry that named none).
pub(crate) fn resolve(
    client: &Client,
    r: &ImageRef,
    platform: &Platform,
) -> Result<(ManifestBlob, Digest, bool)> {
    let what = r.to_string();
    let top = fetch_manifest(
        client,
        &r.repository,
        &r.manifest_ref(),
        r.digest.map(|d| (d, None)),
        &what,
    )?;
    let resolved = top.digest;
    let mut unchecked = false;
    let manifest = match top.media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let (d, size, _, named) = choose_platform(&what, &top.bytes, platform)?;
            unchecked = !named;
            let m = fetch_manifest(
                client,
                &r.repository,
                &d.to_string(),
                Some((d, Some(size))),
                &format!("{what} ({platform})"),
            )?;
            if m.media_type != OCI_MANIFEST && m.media_type != DOCKER_MANIFEST {
                return Err(unsupported(&what, &m.media_type));
            }
            m
        }
        OCI_MANIFEST | DOCKER_MANIFEST => top,
        other => return Err(unsupported(&what, other)),
    };
    Ok((manifest, resolved, unchecked))
}

/// A repository as the source of a plan: the config fetched and checked here, layer
/// blobs named by digest (`Fetcher` streams them).
struct Repository<'a> {
    client: &'a Client,
    name: &'a str,
    what: &'a str,
}

impl PlanSource for Repository<'_> {
    fn config(&self, digest: &Digest, size: u64) -> Result<Vec<u8>> {
        let cwhat = format!("{}: config {digest}", self.what);
        let path = format!("/v2/{}/blobs/{digest}", self.name);
        let config = self.client.get_small(&path, None, &cwhat)?.data;
        let got = Digest::of(&config);
        if got != *digest {
            return Err(Error::corrupt(format!(
                "{cwhat}: digest mismatch: the registry sent a config that hashes to {got}"
            )));
        }
        if size != config.len() as u64 {
            return Err(Error::corrupt(format!(
                "{cwhat}: size mismatch: the manifest says {size} bytes, the registry sent {}",
                config.len()
            )));
        }
        Ok(config)
    }

    fn layer_member(&self, digest: &Digest) -> Result<String> {
        Ok(digest.to_string())
    }

    fn unreadable_media_type(&self) -> &'static str {
        "unsupported"
    }
}

fn unsupported(what: &str, mt: &str) -> Error {
    let hint = if mt.contains("manifest.v1") {
        " (docker schema 1 images are not supported; push the image again with a current tool)"
    } else {
        ""
    };
    Error::unsupported(format!("{what}: unsupported manifest type {mt}{hint}"))
}

/// Pull `r` into the store.
pub(crate) fn pull(
    store: &Store,
    r: &ImageRef,
    opts: &PullOptions,
    obs: &dyn ImportObserver,
) -> Result<Pulled> {
    let platform = match &opts.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let client = Arc::new(Client::new(
        &r.registry,
        r.api_host(),
        &r.repository,
        vec![format!("repository:{}:pull", r.repository)],
        opts.client.clone(),
        None,
    )?);
    let what = r.to_string();
    let (manifest, resolved, unchecked) = resolve(&client, r, &platform)?;
    obs.note(&format!("{what}: manifest {}", manifest.digest));
    let tags: Vec<String> = r.local_tag().into_iter().collect();
    let repository = Repository {
        client: &client,
        name: &r.repository,
        what: &what,
    };
    let plan = ImagePlan::from_manifest(&what, &repository, manifest, tags)?;
    if unchecked
        && let Ok(p) = Platform::parse(&plan.platform)
        && !platform.matches(&p)
    {
        return Err(Error::not_found(format!(
            "{what}: no image for platform {platform} (its index names none; the image's \
             config says {p}); choose one with --platform"
        )));
    }
    let fetcher = Fetcher {
        client: client.clone(),
        repository: r.repository.clone(),
    };
    // Layers an earlier lazy pull left incomplete get their missing files first (no
    // store lock needed: objects are placed whole); `ingest` then checks them.
    if !opts.lazy {
        for l in &plan.layers {
            if let Some(rec) = store.lazy_record(&l.diff_id)? {
                complete_objects(store, &rec, obs)?;
            }
        }
    }
    let source = LazySource {
        reference: r.to_string(),
        insecure: opts.client.insecure,
        timeout_ms: opts.client.timeout.as_millis() as u64,
        retries: opts.client.retries,
    };
    let lazy = opts.lazy.then_some(&source);
    let ingested = store.ingest(&what, &plan, &fetcher, opts.parallel, lazy, obs)?;
    Ok(Pulled {
        resolved_digest: resolved,
        ingested,
    })
}

/// Fetch every object a lazy layer's record names that the store lacks.
fn complete_objects(store: &Store, rec: &LazyRecord, obs: &dyn ImportObserver) -> Result<()> {
    let objects_dir = store.objects_dir();
    let missing = rec.missing(&objects_dir);
    if missing.is_empty() {
        return Ok(());
    }
    obs.note(&format!(
        "{}: fetching {} files a lazy pull left",
        rec.reference,
        missing.len()
    ));
    let (client, repository) = lazy::client_for(rec)?;
    lazy::fetch_objects(
        &client,
        &repository,
        (&rec.blob, rec.form),
        &missing,
        &objects_dir,
    )
    .map_err(|e| e.context(&rec.reference))
}

/// Layer blobs from one repository.
struct Fetcher {
    client: Arc<Client>,
    repository: String,
}

impl BlobFetcher for Fetcher {
    fn open(&self, layer: &LayerPlan) -> Result<Box<dyn Read + Send>> {
        let (digest, size) = layer
            .blob
            .zip(layer.blob_size)
            .ok_or_else(|| Error::new("a layer without a digest"))?;
        Ok(Box::new(BlobReader {
            client: self.client.clone(),
            path: format!("/v2/{}/blobs/{digest}", self.repository),
            size,
            pos: 0,
            ranged: false,
            body: None,
            failures: 0,
            resumes: 0,
        }))
    }

    fn range(
        &self,
        layer: &LayerPlan,
        start: u64,
        end: u64,
    ) -> Result<Option<Box<dyn Read + Send>>> {
        let digest = layer
            .blob
            .ok_or_else(|| Error::new("a layer without a digest"))?;
        Ok(Some(Box::new(BlobReader::range(
            self.client.clone(),
            &self.repository,
            &digest,
            start,
            end,
        ))))
    }
}

/// A blob download that resumes where it broke off.
pub(crate) struct BlobReader {
    client: Arc<Client>,
    path: String,
    /// Where to stop (the blob's size, or the end of a range).
    size: u64,
    pos: u64,
    /// Part of a blob: every request names its range.
    ranged: bool,
    body: Option<ureq::BodyReader<'static>>,
    /// Failures since the last byte arrived.
    failures: u32,
    /// Every time the download had to be started again.
    resumes: u32,
}

impl BlobReader {
    /// Bytes `start..end` of a blob (resumed and retried as a whole blob is).
    pub(crate) fn range(
        client: Arc<Client>,
        repository: &str,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> BlobReader {
        BlobReader {
            client,
            path: format!("/v2/{repository}/blobs/{digest}"),
            size: end,
            pos: start,
            ranged: true,
            body: None,
            failures: 0,
            resumes: 0,
        }
    }

    /// Note a failure; `Err` when no attempts are left, else wait before the next one.
    fn failed(&mut self, why: String) -> io::Result<()> {
        self.body = None;
        self.failures += 1;
        self.resumes += 1;
        let max = self.client.opts.retries;
        if self.failures > max || self.resumes > 10 * (max + 1) {
            return Err(io::Error::other(Error::network(format!(
                "registry {}: {why} ({} attempts)",
                self.client.registry, self.failures
            ))));
        }
        log::info!(
            "registry {}: {}: {why} at byte {}; trying again",
            self.client.registry,
            self.path,
            self.pos
        );
        std::thread::sleep(client::backoff(self.failures));
        Ok(())
    }

    /// Start (or resume) the download at `pos`. `Ok(false)` after a transient failure.
    fn open(&mut self) -> io::Result<bool> {
        let range = if self.ranged {
            format!("bytes={}-{}", self.pos, self.size - 1)
        } else {
            format!("bytes={}-", self.pos)
        };
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if self.pos > 0 || self.ranged {
            headers.push(("Range", &range));
        }
        let fatal = io::Error::other;
        let url = self.client.url(&self.path).map_err(fatal)?;
        let mut resp = match self
            .client
            .attempt(&Method::GET, &url, &headers, &Body::Empty)
            .map_err(fatal)?
        {
            Ok(r) => r,
            Err(e) if client::transient(&e) => {
                self.failed(client::describe_ureq(&e))?;
                return Ok(false);
            }
            Err(e) => {
                return Err(io::Error::other(Error::network(format!(
                    "registry {}: {}",
                    self.client.registry,
                    client::describe_ureq(&e)
                ))));
            }
        };
        let status = resp.status().as_u16();
        if client::retryable_status(status) {
            self.failed(format!("HTTP {status}"))?;
            return Ok(false);
        }
        let mut skip = 0;
        match status {
            200 => skip = self.pos,
            206 if self.pos > 0 || self.ranged => {
                let cr = client::header(&resp, "content-range").unwrap_or_default();
                if !cr.starts_with(&format!("bytes {}-", self.pos)) {
                    return Err(io::Error::other(Error::network(format!(
                        "registry {}: resumed download answered with range \"{cr}\", not from byte {}",
                        self.client.registry, self.pos
                    ))));
                }
            }
            416 => {
                return Err(io::Error::other(Error::corrupt(format!(
                    "size mismatch: the registry's blob ends at byte {}, the manifest says {}",
                    self.pos, self.size
                ))));
            }
            _ => {
                let e = self.client.status_error("downloading", &mut resp);
                return Err(io::Error::other(e));
            }
        }
        let mut body = resp.into_body().into_reader();
        if skip > 0 {
            // The registry ignored the range: read past what we have.
            let n = io::copy(&mut (&mut body).take(skip), &mut io::sink());
            match n {
                Ok(n) if n == skip => {}
                Ok(_) => {
                    self.failed("connection closed early".into())?;
                    return Ok(false);
                }
                Err(e) => {
                    self.failed(client::describe_io(&e))?;
                    return Ok(false);
                }
            }
        }
        self.body = Some(body);
        Ok(true)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos >= self.size {
                return Ok(0);
            }
            if self.body.is_none() && !self.open()? {
                continue;
            }
            let want = buf.len().min((self.size - self.pos) as usize);
            let body = self.body.as_mut().expect("opened");
            match body.read(&mut buf[..want]) {
                Ok(0) => self.failed("connection closed early".into())?,
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.failed(client::describe_io(&e))?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }))
        .unwrap()
    }

    fn entry(d: &Digest, platform: Option<(&str, &str)>) -> serde_json::Value {
        let mut e = serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": d.to_string(),
            "size": 100,
        });
        if let Some((os, arch)) = platform {
            e["platform"] = serde_json::json!({ "os": os, "architecture": arch });
        }
        e
    }

    #[test]
    fn an_entry_without_a_platform_is_taken_when_none_names_the_host() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let linux = Platform::parse("linux/amd64").unwrap();
        // Named platforms win over an unnamed entry.
        let i = index(&[entry(&a, None), entry(&b, Some(("linux", "amd64")))]);
        assert_eq!(choose_platform("t", &i, &linux).unwrap().0, b);
        assert!(choose_platform("t", &i, &linux).unwrap().3, "named");
        // Only an unnamed one (as ctr-remote's converted images have): taken, its
        // platform left for the config to say.
        let i = index(&[entry(&a, None)]);
        let c = choose_platform("t", &i, &linux).unwrap();
        assert_eq!((c.0, c.3), (a, false));
        // Others named, none for this platform: refused, naming them.
        let i = index(&[entry(&b, Some(("linux", "arm64")))]);
        let e = choose_platform("t", &i, &linux).unwrap_err().to_string();
        assert!(e.contains("available: linux/arm64"), "{e}");
    }
}
