//! Writing images out again: an OCI image layout (a directory, or a tar of one: an
//! oci-archive) or a docker-archive, readable by skopeo, podman and `layerfs import`.
//!
//! OCI forms hold the stored manifest, config and layer blobs byte for byte, so the
//! manifest digest is the one the image was imported (or committed) with. A
//! docker-archive holds the config as stored (same image id) and every layer as an
//! uncompressed tar, checked against its diff-id while it is written; readers make up
//! their own manifest for it. Output appears only when complete: it is written next to
//! its final name and renamed into place.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, IoContext, Result};
use crate::store::archive::{Compression, OCI_INDEX, OCI_MANIFEST};
use crate::store::digest::{Digest, Hasher};
use crate::store::images::ImageRecord;
use crate::store::layout::unique_name;
use crate::store::recompress::LayerForm;
use crate::store::{Store, TempBlob};

/// The form to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaveFormat {
    /// A tar of an OCI image layout.
    OciArchive,
    /// `docker save` form: `manifest.json`, `<config>.json`, `<diff-id>/layer.tar`.
    DockerArchive,
    /// An OCI image layout directory.
    OciDir,
}

/// One image written, with the names it was written under.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    pub image: ImageRecord,
    pub tags: Vec<String>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Store {
    /// The images to save and their names: a name given as `NAME[:TAG]` is written under
    /// that tag; an id or digest under every tag the image has.
    fn save_plan(&self, names: &[String]) -> Result<Vec<Saved>> {
        let catalog = self.images()?;
        let mut out: Vec<Saved> = Vec::new();
        for n in names {
            let rec = catalog.resolve(n)?.clone();
            let tags = match catalog.tag_named(n) {
                Some(t) if rec.tags.contains(&t) => vec![t],
                _ => rec.tags.clone(),
            };
            match out.iter_mut().find(|s| s.image.id == rec.id) {
                Some(s) => {
                    s.tags.extend(tags);
                    s.tags.sort();
                    s.tags.dedup();
                }
                None => out.push(Saved { image: rec, tags }),
            }
        }
        Ok(out)
    }

    /// Write images to `out` in `format`.
    pub(crate) fn save(
        &self,
        names: &[String],
        format: SaveFormat,
        rewrite: Option<LayerForm>,
        out: &Path,
    ) -> Result<Vec<Saved>> {
        if names.is_empty() {
            return Err(Error::invalid_input("no image to save"));
        }
        if rewrite.is_some() && format == SaveFormat::DockerArchive {
            return Err(Error::invalid_input(
                "--compression applies to oci-archive and oci-dir (a docker-archive holds uncompressed layers)",
            ));
        }
        let plan = self.save_plan(names)?;
        for s in &plan {
            for b in blobs_of(&s.image) {
                if !self.has_blob(&b) {
                    return Err(Error::not_found(format!(
                        "blob {b} of image {} is missing from the store",
                        s.image.id.short()
                    )));
                }
            }
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = out.file_name().ok_or_else(|| {
            Error::invalid_input(format!("invalid output path {}", out.display()))
        })?;
        let tmp = parent.join(format!(
            ".{}.{}",
            base.to_string_lossy(),
            unique_name("tmp")
        ));
        let contents = if format == SaveFormat::DockerArchive {
            Contents::default()
        } else {
            self.contents(&plan, rewrite)?
        };
        let res = match format {
            SaveFormat::OciDir => {
                if out.exists() {
                    return Err(Error::already_exists(format!(
                        "{} exists already",
                        out.display()
                    )));
                }
                self.write_oci_dir(&contents, &tmp)
            }
            SaveFormat::OciArchive => {
                self.write_archive(&tmp, |s, t| s.write_oci_tar(&contents, t))
            }
            SaveFormat::DockerArchive => {
                self.write_archive(&tmp, |s, t| s.write_docker_tar(&plan, t, &tmp))
            }
        };
        let res = res
            .and_then(|()| fs::rename(&tmp, out).ctx(format!("renaming into {}", out.display())));
        if res.is_err() {
            let _ = fs::remove_dir_all(&tmp);
            let _ = fs::remove_file(&tmp);
        }
        res.map(|()| plan)
    }

    fn write_archive(
        &self,
        tmp: &Path,
        body: impl FnOnce(&Store, &mut tar::Builder<BufWriter<File>>) -> Result<()>,
    ) -> Result<()> {
        let f = File::create(tmp).ctx(format!("creating {}", tmp.display()))?;
        let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
        body(self, &mut b)?;
        let w = b.into_inner().ctx(format!("writing {}", tmp.display()))?;
        let f = w
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e.into_error()))?;
        f.sync_all().ctx(format!("syncing {}", tmp.display()))
    }

    /// What the OCI forms write: each image's manifest and blobs, as stored or with
    /// every layer rewritten in another form.
    fn contents(&self, plan: &[Saved], rewrite: Option<LayerForm>) -> Result<Contents> {
        let mut c = Contents::default();
        for s in plan {
            let r = &s.image;
            let mut form = Form {
                tags: s.tags.clone(),
                manifest: r.manifest_digest,
                media_type: r.manifest_media_type.clone(),
                size: 0,
                blobs: blobs_of(r),
            };
            if let Some(layer_form) = rewrite {
                let stored = self.read_blob(&r.manifest_digest)?;
                let new = self.rewrite(r, &stored, layer_form)?;
                form.manifest = new.digest;
                form.media_type = OCI_MANIFEST.to_string();
                form.size = new.manifest.len() as u64;
                form.blobs = vec![new.digest, r.config_digest];
                if let Some(cfg) = new.config {
                    form.blobs[1] = cfg.digest;
                    c.files.insert(cfg.digest, (cfg.path, cfg.size, cfg.file));
                }
                for b in new.blobs {
                    form.blobs.push(b.digest);
                    c.files.insert(b.digest, (b.path, b.size, b.file));
                }
                c.bytes.insert(new.digest, new.manifest);
            } else {
                form.size = fs::metadata(self.blob_path(&r.manifest_digest))
                    .ctx(format!("blob {}", r.manifest_digest))?
                    .len();
            }
            c.forms.push(form);
        }
        Ok(c)
    }

    /// A blob to write: one the save made, else the store's.
    fn open_for_save(&self, c: &Contents, d: &Digest) -> Result<(Box<dyn Read + Send>, u64)> {
        if let Some(b) = c.bytes.get(d) {
            return Ok((Box::new(io::Cursor::new(b.clone())), b.len() as u64));
        }
        if let Some((p, len, _)) = c.files.get(d) {
            let f = File::open(p).ctx(format!("reading {}", p.display()))?;
            return Ok((Box::new(f), *len));
        }
        self.open_blob(d)
    }

    fn oci_index(&self, c: &Contents) -> Result<Vec<u8>> {
        let mut manifests = Vec::new();
        for f in &c.forms {
            let desc = |tag: Option<&String>| {
                let mut d = json!({
                    "mediaType": f.media_type,
                    "digest": f.manifest.to_string(),
                    "size": f.size,
                });
                if let Some(t) = tag {
                    d["annotations"] = json!({ REF_NAME: t });
                }
                d
            };
            if f.tags.is_empty() {
                manifests.push(desc(None));
            }
            for t in &f.tags {
                manifests.push(desc(Some(t)));
            }
        }
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))
        .map_err(|e| Error::new(format!("encoding index.json: {e}")))
    }

    fn write_oci_dir(&self, c: &Contents, dir: &Path) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).ctx(format!("creating {}", blobs.display()))?;
        for d in c.blobs() {
            let dst = blobs.join(d.hex());
            let (mut src, _) = self.open_for_save(c, &d)?;
            let mut out = File::create(&dst).ctx(format!("writing {}", dst.display()))?;
            io::copy(&mut src, &mut out).ctx(format!("writing {}", dst.display()))?;
        }
        fs::write(dir.join("oci-layout"), OCI_LAYOUT).ctx("writing oci-layout")?;
        fs::write(dir.join("index.json"), self.oci_index(c)?).ctx("writing index.json")?;
        Ok(())
    }

    fn write_oci_tar<W: Write>(&self, c: &Contents, b: &mut tar::Builder<W>) -> Result<()> {
        append_bytes(b, "oci-layout", OCI_LAYOUT)?;
        append_bytes(b, "index.json", &self.oci_index(c)?)?;
        append_dir(b, "blobs/")?;
        append_dir(b, "blobs/sha256/")?;
        for d in c.blobs() {
            let (mut f, len) = self.open_for_save(c, &d)?;
            append_reader(b, &format!("blobs/sha256/{}", d.hex()), len, &mut f)?;
        }
        Ok(())
    }

    fn write_docker_tar<W: Write>(
        &self,
        plan: &[Saved],
        b: &mut tar::Builder<W>,
        tmp: &Path,
    ) -> Result<()> {
        let mut written: BTreeSet<Digest> = BTreeSet::new();
        let mut manifest = Vec::new();
        let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let scratch = tmp.with_extension("layer");
        let res = (|| {
            for s in plan {
                let cfg_name = format!("{}.json", s.image.config_digest.hex());
                if written.insert(s.image.config_digest) {
                    let cfg = self.read_blob(&s.image.config_digest)?;
                    append_bytes(b, &cfg_name, &cfg)?;
                }
                let mut layers = Vec::new();
                for l in &s.image.layers {
                    let name = format!("{}/layer.tar", l.diff_id.hex());
                    if written.insert(l.diff_id) {
                        append_dir(b, &format!("{}/", l.diff_id.hex()))?;
                        self.append_layer_tar(b, &name, l, &scratch)?;
                    }
                    layers.push(name);
                }
                for t in &s.tags {
                    let (repo, tag) = crate::store::images::split_tag(t);
                    if let Some(top) = s.image.layers.last() {
                        repos
                            .entry(repo.to_string())
                            .or_default()
                            .insert(tag.to_string(), top.diff_id.hex());
                    }
                }
                manifest.push(json!({
                    "Config": cfg_name,
                    "RepoTags": s.tags,
                    "Layers": layers,
                }));
            }
            let enc = |e: serde_json::Error| Error::new(format!("encoding manifest.json: {e}"));
            append_bytes(
                b,
                "manifest.json",
                &serde_json::to_vec(&manifest).map_err(enc)?,
            )?;
            append_bytes(b, "repositories", &serde_json::to_vec(&repos).map_err(enc)?)
        })();
        let _ = fs::remove_file(&scratch);
        res
    }

    /// A layer as an uncompressed tar member, checked against its diff-id.
    fn append_layer_tar<W: Write>(
        &self,
        b: &mut tar::Builder<W>,
        name: &str,
        l: &crate::store::LayerRef,
        scratch: &Path,
    ) -> Result<()> {
        if self.layer_compression(l)? == Compression::None {
            let (mut f, len) = self.open_blob(&l.blob)?;
            return append_reader(b, name, len, &mut f);
        }
        let mut dec = self.layer_tar(l)?;
        let mut out = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(scratch)
            .ctx(format!("creating {}", scratch.display()))?;
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = dec
                .read(&mut buf)
                .map_err(|e| Error::io(format!("decompressing blob {}", l.blob), e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .ctx(format!("writing {}", scratch.display()))?;
        }
        let len = h.len();
        if h.finish() != l.diff_id {
            return Err(Error::corrupt(format!(
                "layer blob {} does not decompress to its diff-id {}",
                l.blob, l.diff_id
            )));
        }
        out.rewind().ctx(format!("reading {}", scratch.display()))?;
        append_reader(b, name, len, &mut out)
    }
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

fn blobs_of(r: &ImageRecord) -> Vec<Digest> {
    let mut v = vec![r.manifest_digest, r.config_digest];
    v.extend(r.layers.iter().map(|l| l.blob));
    v
}

/// One image as an OCI form writes it.
struct Form {
    tags: Vec<String>,
    manifest: Digest,
    media_type: String,
    size: u64,
    /// The manifest, the config, the layer blobs.
    blobs: Vec<Digest>,
}

/// The images of an OCI save, and the blobs the save itself made (rewritten manifests
/// in memory, rewritten layer blobs in temp files removed with it).
#[derive(Default)]
struct Contents {
    forms: Vec<Form>,
    bytes: std::collections::HashMap<Digest, Vec<u8>>,
    files: std::collections::HashMap<Digest, (PathBuf, u64, TempBlob)>,
}

impl Contents {
    /// Every blob, once, sorted.
    fn blobs(&self) -> BTreeSet<Digest> {
        self.forms
            .iter()
            .flat_map(|f| f.blobs.iter().copied())
            .collect()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_reader<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    len: u64,
    r: &mut dyn Read,
) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, len);
    h.set_path(name).ctx(format!("archive member {name}"))?;
    h.set_cksum();
    // Exactly `len` bytes: a source that changed under us fails instead of padding.
    let mut limited = r.take(len);
    let mut counting = CountingReader {
        inner: &mut limited,
        n: 0,
    };
    b.append(&h, &mut counting)
        .ctx(format!("writing archive member {name}"))?;
    if counting.n != len {
        return Err(Error::corrupt(format!(
            "archive member {name}: expected {len} bytes, read {}",
            counting.n
        )));
    }
    Ok(())
}

struct CountingReader<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut r = data;
    append_reader(b, name, data.len() as u64, &mut r)
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, name: &str) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    h.set_path(name).ctx(format!("archive member {name}"))?;
    h.set_cksum();
    b.append(&h, io::empty())
        .ctx(format!("writing archive member {name}"))
}
