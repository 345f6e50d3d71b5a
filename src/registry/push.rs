//! `push`: upload an image's blobs as the store keeps them (so the manifest digest stays
//! the same), skipping blobs the registry has (`HEAD`), mounting blobs from another
//! repository of the same registry where a local tag says they live, uploading the rest
//! monolithically or in chunks, and finally putting the manifest.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::image::ImageManifest;
use ureq::http::Method;

use crate::error::{Error, Result};
use crate::registry::client::{self, Body, Client, Options};
use crate::registry::reference::ImageRef;
use crate::store::archive::OCI_MANIFEST;
use crate::store::parallel::run_bounded;
use crate::store::recompress::LayerForm;
use crate::store::{Digest, Store};

/// Progress of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PushEvent {
    /// The registry has it: nothing sent.
    Exists,
    /// Mounted from another repository of the registry: nothing sent.
    Mounted { from: String },
    /// Upload starts.
    Start { size: u64 },
    /// Bytes sent so far.
    Progress { done: u64 },
    /// Uploaded and accepted.
    Pushed,
}

/// Receives push progress; called from the upload threads.
pub(crate) trait PushObserver: Sync {
    fn blob(&self, digest: &Digest, event: PushEvent);
}

/// Shows nothing (for the config blob).
struct Unseen;
impl PushObserver for Unseen {
    fn blob(&self, _: &Digest, _: PushEvent) {}
}

/// How to push.
#[derive(Debug, Clone)]
pub(crate) struct PushOptions {
    /// Blobs uploaded at once.
    pub parallel: usize,
    /// Blobs larger than this go up in chunks of this size; smaller ones in one request.
    pub chunk_size: u64,
    /// Write every layer again in this form (a new manifest).
    pub rewrite: Option<LayerForm>,
    pub client: Options,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            parallel: 3,
            chunk_size: 64 << 20,
            rewrite: None,
            client: Options::default(),
        }
    }
}

/// What a push did.
#[derive(Debug, Clone)]
pub(crate) struct Pushed {
    pub digest: Digest,
    /// Manifest size in bytes.
    pub size: usize,
    pub uploaded: usize,
    pub existing: usize,
    pub mounted: usize,
    /// Blob bytes sent.
    pub bytes: u64,
}

/// One blob to send.
struct Blob {
    digest: Digest,
    /// The config: pushed like a layer, but not shown.
    config: bool,
    size: u64,
    path: PathBuf,
    /// A blob the store keeps as a record, rebuilt into a temp file for the upload.
    _rebuilt: Option<crate::store::TempBlob>,
    mount_from: Option<String>,
}

enum Outcome {
    Exists,
    Mounted,
    Uploaded(u64),
}

/// A failure of one upload attempt: worth another try or not.
enum Fail {
    Transient(String),
    Fatal(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Fatal(e)
    }
}

/// Push the store's image `image` to `r`.
pub(crate) fn push(
    store: &Store,
    image: &str,
    r: &ImageRef,
    opts: &PushOptions,
    obs: &dyn PushObserver,
) -> Result<Pushed> {
    let rec = store.image(image)?;
    let what = r.to_string();
    let stored = store.read_blob(&rec.manifest_digest)?;
    let m = ImageManifest::from_reader(&stored[..]).map_err(|e| {
        Error::corrupt(format!(
            "image {}: stored manifest {} is not a valid image manifest: {e}",
            rec.id.short(),
            rec.manifest_digest
        ))
    })?;
    let mut media_type = if rec.manifest_media_type.is_empty() {
        m.media_type()
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| OCI_MANIFEST.to_string())
    } else {
        rec.manifest_media_type.clone()
    };
    if m.layers().len() != rec.layers.len() {
        return Err(Error::corrupt(format!(
            "image {}: the manifest lists {} layers, the store's record {}",
            rec.id.short(),
            m.layers().len(),
            rec.layers.len()
        )));
    }

    // The blobs to send: as stored, or every layer written again as zstd:chunked.
    let mut blobs: Vec<Blob> = Vec::new();
    let mut manifest = stored.clone();
    let mut config_blob = None;
    if let Some(form) = opts.rewrite {
        let new = store
            .rewrite(&rec, &stored, form)
            .map_err(|e| e.context(&what))?;
        config_blob = new.config;
        manifest = new.manifest;
        media_type = OCI_MANIFEST.to_string();
        for b in new.blobs {
            blobs.push(Blob {
                digest: b.digest,
                config: false,
                size: b.size,
                path: b.path,
                _rebuilt: Some(b.file),
                mount_from: None,
            });
        }
    } else {
        for (d, l) in m.layers().iter().zip(&rec.layers) {
            let digest: Digest = d.digest().to_string().parse()?;
            if blobs.iter().any(|b| b.digest == digest) {
                continue;
            }
            let (path, rebuilt) = if store.has_blob(&digest) {
                store.blob_file(&digest).map_err(|e| {
                    e.context(format!("image {}: layer {}", rec.id.short(), l.diff_id))
                })?
            } else {
                (store.blob_path(&digest), None)
            };
            blobs.push(Blob {
                digest,
                config: false,
                size: d.size(),
                path,
                _rebuilt: rebuilt,
                mount_from: None,
            });
        }
    }
    let digest = Digest::of(&manifest);
    if let Some(d) = r.digest
        && d != digest
    {
        return Err(Error::invalid_input(format!(
            "{what}: the manifest to push is {digest}, not the digest named"
        )));
    }
    blobs.push(match config_blob {
        Some(c) => Blob {
            digest: c.digest,
            config: true,
            size: c.size,
            path: c.path,
            _rebuilt: Some(c.file),
            mount_from: None,
        },
        None => {
            let config: Digest = m.config().digest().to_string().parse()?;
            Blob {
                digest: config,
                config: true,
                size: m.config().size(),
                path: store.blob_path(&config),
                _rebuilt: None,
                mount_from: None,
            }
        }
    });
    for b in &blobs {
        let md = std::fs::metadata(&b.path).map_err(|_| {
            Error::not_found(format!(
                "image {}: blob {} is not in the store, so the image cannot be pushed; pull or import it again",
                rec.id.short(),
                b.digest
            ))
        })?;
        if md.len() != b.size {
            return Err(Error::corrupt(format!(
                "image {}: blob {} has {} bytes, the manifest says {}; run `layerfs system check`",
                rec.id.short(),
                b.digest,
                md.len(),
                b.size
            )));
        }
    }

    // Where each blob may be mounted from: another repository of this registry that a
    // local tag names for an image holding the blob.
    let mut sources: HashMap<Digest, String> = HashMap::new();
    for img in store.images()?.images.values() {
        for t in &img.tags {
            let Ok(tr) = ImageRef::parse(t) else { continue };
            if tr.registry != r.registry || tr.repository == r.repository {
                continue;
            }
            for b in img.layers.iter().map(|l| l.blob).chain([img.config_digest]) {
                sources.entry(b).or_insert_with(|| tr.repository.clone());
            }
        }
    }
    for b in &mut blobs {
        b.mount_from = sources.get(&b.digest).cloned();
    }

    let mut scopes = vec![format!("repository:{}:pull,push", r.repository)];
    let mut froms: Vec<&String> = blobs.iter().filter_map(|b| b.mount_from.as_ref()).collect();
    froms.sort();
    froms.dedup();
    scopes.extend(froms.iter().map(|f| format!("repository:{f}:pull")));
    let client = Client::new(
        &r.registry,
        r.api_host(),
        &r.repository,
        scopes,
        opts.client.clone(),
        None,
    )?;

    // Blobs first, several at once; the manifest only when all are there.
    let outcomes = run_bounded(blobs.len(), opts.parallel, |i, _| {
        let b = &blobs[i];
        let shown: &dyn PushObserver = if b.config { &Unseen } else { obs };
        push_blob(&client, &r.repository, b, opts.chunk_size, shown)
            .map_err(|e| e.context(format!("{what}: blob {}", b.digest)))
    })?;
    let mut out = Pushed {
        digest,
        size: manifest.len(),
        uploaded: 0,
        existing: 0,
        mounted: 0,
        bytes: 0,
    };
    for o in outcomes {
        match o {
            Outcome::Exists => out.existing += 1,
            Outcome::Mounted => out.mounted += 1,
            Outcome::Uploaded(n) => {
                out.uploaded += 1;
                out.bytes += n;
            }
        }
    }

    let path = format!("/v2/{}/manifests/{}", r.repository, r.manifest_ref());
    let mut resp = client.send(
        Method::PUT,
        &path,
        &[("Content-Type", media_type.as_str())],
        &Body::Bytes(&manifest),
        true,
    )?;
    if !resp.status().is_success() {
        return Err(client.status_error(&format!("{what}: manifest"), &mut resp));
    }
    if let Some(d) = client::header(&resp, "docker-content-digest")
        && let Ok(d) = d.parse::<Digest>()
        && d != digest
    {
        return Err(Error::corrupt(format!(
            "{what}: the registry stored the manifest as {d}, not {digest}"
        )));
    }
    Ok(out)
}

/// Send one blob unless the registry has it; a failed upload starts again from the
/// beginning, a bounded number of times.
fn push_blob(
    client: &Client,
    repo: &str,
    b: &Blob,
    chunk: u64,
    obs: &dyn PushObserver,
) -> Result<Outcome> {
    let mut resp = client.send(
        Method::HEAD,
        &format!("/v2/{repo}/blobs/{}", b.digest),
        &[],
        &Body::Empty,
        true,
    )?;
    match resp.status().as_u16() {
        200 => {
            obs.blob(&b.digest, PushEvent::Exists);
            return Ok(Outcome::Exists);
        }
        404 => {}
        _ => return Err(client.status_error("checking", &mut resp)),
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_upload(client, repo, b, chunk, obs) {
            Ok(o) => return Ok(o),
            Err(Fail::Fatal(e)) => return Err(e),
            Err(Fail::Transient(why)) if attempt <= client.opts.retries => {
                log::info!(
                    "registry {}: uploading {}: {why} (attempt {attempt}); starting it again",
                    client.registry,
                    b.digest
                );
                std::thread::sleep(client::backoff(attempt));
            }
            Err(Fail::Transient(why)) => {
                return Err(Error::network(format!(
                    "registry {}: {why} ({attempt} attempts)",
                    client.registry
                )));
            }
        }
    }
}

/// Send a request, sorting failures into transient and fatal.
fn call(
    client: &Client,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: &Body<'_>,
    ok: &[u16],
    what: &str,
) -> std::result::Result<ureq::http::Response<ureq::Body>, Fail> {
    let url = client.url(target)?;
    match client.attempt(&method, &url, headers, body)? {
        Ok(r) if ok.contains(&r.status().as_u16()) => Ok(r),
        Ok(r) if client::retryable_status(r.status().as_u16()) => {
            Err(Fail::Transient(format!("{what}: HTTP {}", r.status())))
        }
        Ok(mut r) => Err(Fail::Fatal(client.status_error(what, &mut r))),
        Err(e) if client::transient(&e) => Err(Fail::Transient(format!(
            "{what}: {}",
            client::describe_ureq(&e)
        ))),
        Err(e) => Err(Fail::Fatal(Error::network(format!(
            "{what}: registry {}: {}",
            client.registry,
            client::describe_ureq(&e)
        )))),
    }
}

fn location(r: &ureq::http::Response<ureq::Body>, what: &str) -> std::result::Result<String, Fail> {
    client::header(r, "location").ok_or_else(|| {
        Fail::Fatal(Error::network(format!(
            "{what}: the registry gave no upload location"
        )))
    })
}

fn try_upload(
    client: &Client,
    repo: &str,
    b: &Blob,
    chunk: u64,
    obs: &dyn PushObserver,
) -> std::result::Result<Outcome, Fail> {
    let digest = b.digest.to_string();
    let start = format!("/v2/{repo}/blobs/uploads/");
    let target = match &b.mount_from {
        Some(from) => client::with_query(&start, &[("mount", &digest), ("from", from)]),
        None => start,
    };
    let resp = call(
        client,
        Method::POST,
        &target,
        &[("Content-Length", "0")],
        &Body::Empty,
        &[201, 202],
        "starting an upload",
    )?;
    if resp.status() == 201 {
        let from = b.mount_from.clone().unwrap_or_default();
        obs.blob(&b.digest, PushEvent::Mounted { from });
        return Ok(Outcome::Mounted);
    }
    let mut loc = location(&resp, "starting an upload")?;
    drop(resp);
    obs.blob(&b.digest, PushEvent::Start { size: b.size });
    let octets = ("Content-Type", "application/octet-stream");
    if b.size <= chunk {
        let progress = |n: u64| obs.blob(&b.digest, PushEvent::Progress { done: n });
        call(
            client,
            Method::PUT,
            &client::with_query(&loc, &[("digest", &digest)]),
            &[octets],
            &Body::File {
                path: &b.path,
                offset: 0,
                len: b.size,
                progress: Some(&progress),
            },
            &[201],
            "uploading",
        )?;
    } else {
        let mut offset = 0;
        while offset < b.size {
            let len = chunk.min(b.size - offset);
            let range = format!("{offset}-{}", offset + len - 1);
            let progress = |n: u64| obs.blob(&b.digest, PushEvent::Progress { done: offset + n });
            let resp = call(
                client,
                Method::PATCH,
                &loc,
                &[octets, ("Content-Range", &range)],
                &Body::File {
                    path: &b.path,
                    offset,
                    len,
                    progress: Some(&progress),
                },
                &[202],
                "uploading a chunk",
            )?;
            loc = location(&resp, "uploading a chunk")?;
            offset += len;
        }
        call(
            client,
            Method::PUT,
            &client::with_query(&loc, &[("digest", &digest)]),
            &[("Content-Length", "0")],
            &Body::Empty,
            &[201],
            "finishing an upload",
        )?;
    }
    obs.blob(&b.digest, PushEvent::Pushed);
    Ok(Outcome::Uploaded(b.size))
}
