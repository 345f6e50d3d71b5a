//! Fetching the files of a lazily pulled image on first open: the mount daemon of a
//! stack with lazy layers gets a [`LazyFetcher`], which fetches an object's frames by
//! range from the registry the layer's record names, checks the content against its
//! digest and size before anything is placed, and places it in the store's objects dir.
//! A failure is that file's `EIO` (logged with its cause); the next open tries again.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::overlay::layers::FetchData;
use crate::registry::client::{Client, Options};
use crate::registry::pull::BlobReader;
use crate::registry::reference::ImageRef;
use crate::store::Digest;
use crate::store::lazy::{self, BlobForm, LazyObject, LazyRecord};
use crate::store::objects;

/// Where one lazy layer's blob is.
struct Source {
    client: Arc<Client>,
    repository: String,
    blob: Digest,
    form: BlobForm,
}

pub(crate) struct LazyFetcher {
    objects_dir: PathBuf,
    sources: Vec<Source>,
    /// Each missing object: its source and frames.
    objects: HashMap<Digest, (usize, LazyObject)>,
    /// Objects being fetched: a second open of the same file waits for the first; opens
    /// of different files fetch at once.
    fetching: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
}

/// A client for the registry a lazy record names, with its pull's network options.
pub(crate) fn client_for(rec: &LazyRecord) -> Result<(Arc<Client>, String)> {
    let r = ImageRef::parse(&rec.reference)?;
    let dflt = Options::default();
    let opts = Options {
        insecure: rec.insecure,
        timeout: rec
            .timeout_ms
            .map_or(dflt.timeout, std::time::Duration::from_millis),
        retries: rec.retries.unwrap_or(dflt.retries),
    };
    let client = Client::new(
        &r.registry,
        r.api_host(),
        &r.repository,
        vec![format!("repository:{}:pull", r.repository)],
        opts,
        None,
    )?;
    Ok((Arc::new(client), r.repository.clone()))
}

/// The fetcher for a stack whose lower dirs include lazy layers (`None` otherwise).
pub fn fetcher_for(lowers: &[PathBuf], data: &[PathBuf]) -> Result<Option<Arc<dyn FetchData>>> {
    let mut records: Vec<LazyRecord> = Vec::new();
    for l in lowers {
        if let Some(r) = lazy::record_of_lower(l)? {
            records.push(r);
        }
    }
    let Some(objects_dir) = data.first() else {
        return Ok(None);
    };
    if records.is_empty() {
        return Ok(None);
    }
    let mut f = LazyFetcher {
        objects_dir: objects_dir.clone(),
        sources: Vec::new(),
        objects: HashMap::new(),
        fetching: Mutex::new(HashMap::new()),
    };
    for r in records {
        let (client, repository) = client_for(&r)?;
        f.sources.push(Source {
            client,
            repository,
            blob: r.blob,
            form: r.form,
        });
        let i = f.sources.len() - 1;
        for o in r.objects {
            f.objects.entry(o.digest).or_insert((i, o));
        }
    }
    Ok(Some(Arc::new(f)))
}

/// Ranges closer than this are fetched in one request.
const MERGE_GAP: u64 = 64 << 10;
/// No request reads more than this (each range is held in memory).
const MAX_REQUEST: u64 = 32 << 20;

/// Fetch objects' frames or members from `client` (neighbours in one request), check
/// each against its digest and size, and place it.
pub(crate) fn fetch_objects(
    client: &Arc<Client>,
    repository: &str,
    (blob, form): (&Digest, BlobForm),
    objects: &[&LazyObject],
    objects_dir: &Path,
) -> Result<()> {
    let mut sorted = objects.to_vec();
    sorted.sort_by_key(|o| o.offset);
    let mut groups: Vec<Vec<&LazyObject>> = Vec::new();
    for o in sorted {
        match groups.last_mut() {
            Some(g)
                if o.offset <= g[g.len() - 1].end + MERGE_GAP
                    && o.end - g[0].offset <= MAX_REQUEST =>
            {
                g.push(o)
            }
            _ => groups.push(vec![o]),
        }
    }
    for g in groups {
        let (a, b) = (g[0].offset, g.iter().map(|o| o.end).max().unwrap_or(0));
        let mut bytes = Vec::with_capacity((b - a) as usize);
        BlobReader::range(client.clone(), repository, blob, a, b)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("fetching bytes {a}..{b} of {blob}"), e))?;
        if bytes.len() as u64 != b - a {
            return Err(Error::network(format!(
                "bytes {a}..{b} of {blob}: the registry sent {}",
                bytes.len()
            )));
        }
        for o in g {
            let frames = &bytes[(o.offset - a) as usize..(o.end - a) as usize];
            let mut data = Vec::with_capacity(o.size as usize);
            match form {
                // Nothing but the content in its frames: a byte more is a lie.
                BlobForm::ZstdChunked => zstd::stream::read::Decoder::new(frames)
                    .and_then(|d| d.take(o.size + 1).read_to_end(&mut data)),
                // The last member may go on with the next entries' headers.
                BlobForm::Estargz => flate2::read::MultiGzDecoder::new(frames)
                    .take(o.size)
                    .read_to_end(&mut data),
                BlobForm::StargzZstd => zstd::stream::read::Decoder::new(frames)
                    .and_then(|d| d.take(o.size).read_to_end(&mut data)),
            }
            .map_err(|e| Error::corrupt(format!("object {}: invalid frame: {e}", o.digest)))?;
            lazy::place_fetched(objects_dir, o, &data)?;
        }
    }
    Ok(())
}

impl FetchData for LazyFetcher {
    fn fetch(&self, redirect: &[u8]) -> std::result::Result<(), String> {
        let d = objects::digest_of_redirect(redirect)
            .ok_or_else(|| "not an object of the store".to_string())?;
        let (i, o) = self
            .objects
            .get(&d)
            .ok_or_else(|| format!("object {d}: no lazy layer names it"))?;
        let lock = self.fetching.lock().entry(d).or_default().clone();
        let result = {
            let _one = lock.lock();
            if self.objects_dir.join(objects::rel_path(&d)).is_file() {
                Ok(())
            } else {
                let s = &self.sources[*i];
                fetch_objects(
                    &s.client,
                    &s.repository,
                    (&s.blob, s.form),
                    &[o],
                    &self.objects_dir,
                )
                .map(|()| log::info!("fetched object {d} ({} bytes)", o.size))
                .map_err(|e| e.to_string())
            }
        };
        // The last one out drops the entry (a later open finds the object placed).
        let mut map = self.fetching.lock();
        if Arc::strong_count(&lock) == 2 {
            map.remove(&d);
        }
        result
    }
}
