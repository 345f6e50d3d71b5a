//! `commit`: a container's changes as a new OCI layer, and a new image made of the base
//! image's layers (shared, not copied) plus that layer.
//!
//! The layer is written from the upper dir, depth first in name order:
//! - whiteouts (kernel or OCI form) → `.wh.NAME`;
//! - opaque directories → the directory, then `.wh..wh..opq` right after it;
//! - directories renamed through the mount (`*.overlay.redirect`): OCI layers have no
//!   redirects, so the directory is written in full at its new place from the merged
//!   view (plus an opaque marker when the image has a directory there too); its old
//!   place has a whiteout already;
//! - everything else as it is in the upper dir (owner, mode, mtime, xattrs of copied-up
//!   files are in the copy; in a rootless upper dir, owner, mode and type as recorded);
//!   the overlay's own xattrs are never written;
//! - objects with several names become tar hard links to the first name written.
//!
//! The tar is reproducible (see `tarball`): committing the same changes twice gives the
//! same layer digest. It is stored uncompressed (`application/vnd.oci.image.layer.v1.tar`,
//! blob digest = diff-id).
//!
//! Committing a mounted container is allowed and reads the upper dir while the
//! container may still be written (as `docker commit --pause=false`): a file changed
//! during the commit may be caught half-written, and one that shrinks fails the commit.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use serde_json::{Value, json};

use crate::container::diff::is_kernel_whiteout;
use crate::container::tarball::{self, Entry, Kind, TarWriter};
use crate::container::view::{
    self, LinkKey, Links, View, join, write_view_object, write_view_tree,
};
use crate::container::{Container, Containers};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::markers::{self, OCI_OPAQUE, OCI_WH_PREFIX};
use crate::override_stat::OverrideLayer;
use crate::store::ImageRecord;
use crate::store::archive::{Compression, OCI_LAYER};
use crate::sys::{self, Errno};

/// What to record with the new image.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommitOptions {
    /// `NAME[:TAG]` for the new image.
    pub tag: Option<String>,
    pub message: Option<String>,
    pub author: Option<String>,
}

/// Write the layer tar of a container's changes to `out`.
pub(crate) fn write_layer<W: Write>(cs: &Containers<'_>, c: &Container, out: W) -> Result<W> {
    let image = View::image_of(cs, c)?;
    let merged = View::container(cs, c)?;
    let upper = cs.upper(c);
    let fd = sys::open_root_dir(&upper).ctx(format!("opening {}", upper.display()))?;
    let mut writer = LayerWriter {
        image: &image,
        merged: &merged,
        tw: TarWriter::new(out),
        links: Links::default(),
        ovl: OverrideLayer::detect(fd.as_fd()).ctx(format!("reading {}", upper.display()))?,
    };
    let root = image.root_attr()?;
    writer.dir(fd.as_fd(), b"", Some(root))?;
    writer
        .tw
        .finish()
        .map_err(|e| Error::io("writing the layer", e))
}

struct LayerWriter<'v, W: Write> {
    image: &'v View,
    merged: &'v View,
    tw: TarWriter<W>,
    links: Links,
    /// A rootless upper dir: owners, modes and types come from its records.
    ovl: Option<OverrideLayer>,
}

fn at(path: &[u8]) -> impl Fn(Errno) -> Error + '_ {
    move |e| Error::from(e).context(format!("/{}", String::from_utf8_lossy(path)))
}

impl<W: Write> LayerWriter<'_, W> {
    fn append(&mut self, e: &Entry, data: Option<&mut dyn std::io::Read>) -> Result<()> {
        self.tw
            .append(e, data)
            .map_err(|er| Error::io(format!("/{}", String::from_utf8_lossy(&e.path)), er))
    }

    fn dir(
        &mut self,
        fd: BorrowedFd<'_>,
        prefix: &[u8],
        img: Option<crate::overlay::Attr>,
    ) -> Result<()> {
        let markers = markers::read_markers(fd, None).map_err(at(prefix))?;
        let mut entries = sys::read_dir_all(fd).map_err(at(prefix))?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in entries {
            let name = entry.name.as_bytes();
            if name == OCI_OPAQUE {
                continue; // written right after its directory
            }
            let path = join(prefix, name);
            if name.starts_with(OCI_WH_PREFIX) {
                self.append(&Entry::marker(path), None)?;
                continue;
            }
            let st = match sys::stat_at(fd, &entry.name) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(err) => return Err(at(&path)(err)),
            };
            if is_kernel_whiteout(fd, &entry.name, &st, markers.xattr_whiteouts) {
                let mut wh = OCI_WH_PREFIX.to_vec();
                wh.extend_from_slice(name);
                self.append(&Entry::marker(join(prefix, &wh)), None)?;
                continue;
            }
            let in_image = match img {
                Some(d) if d.is_dir() => self.image.lookup(d.ino, &entry.name)?,
                _ => None,
            };
            if sys::is_dir_mode(st.st_mode) {
                let dir_markers =
                    markers::read_markers(fd, Some(&entry.name)).map_err(at(&path))?;
                if dir_markers.redirect.is_some() {
                    self.redirected(&path, in_image)?;
                    continue;
                }
                let sub = sys::open_dir_path(fd, &entry.name).map_err(at(&path))?;
                let oci_opaque = sys::stat_at(sub.as_fd(), OsStr::from_bytes(OCI_OPAQUE)).is_ok();
                self.real_object(fd, &entry.name, &path, &st)?;
                if dir_markers.opaque || oci_opaque {
                    self.append(&Entry::marker(join(&path, OCI_OPAQUE)), None)?;
                }
                self.dir(sub.as_fd(), &path, in_image)?;
                continue;
            }
            self.real_object(fd, &entry.name, &path, &st)?;
        }
        Ok(())
    }

    /// A renamed directory: written whole from the merged view.
    fn redirected(&mut self, path: &[u8], img: Option<crate::overlay::Attr>) -> Result<()> {
        let Some(a) = self.merged.lookup_path(path)? else {
            return Ok(());
        };
        write_view_object(self.merged, path, &a, &mut self.tw, &mut self.links)?;
        if img.is_some_and(|i| i.is_dir()) {
            self.append(&Entry::marker(join(path, OCI_OPAQUE)), None)?;
        }
        write_view_tree(self.merged, a.ino, path, &mut self.tw, &mut self.links)
    }

    /// An object of the upper dir as it is.
    fn real_object(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &[u8],
        st: &sys::Stat,
    ) -> Result<()> {
        let shown;
        let st = match &self.ovl {
            Some(o) => {
                shown = o.shown(dir, Some(name), st);
                &shown
            }
            None => st,
        };
        let xattrs = view::real_xattrs(dir, Some(name)).map_err(at(path))?;
        let mut e = Entry {
            path: path.to_vec(),
            kind: Kind::Dir,
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            mtime: st.st_mtime,
            size: 0,
            xattrs,
        };
        let mut file: Option<File> = None;
        match sys::mode_type(st.st_mode) {
            libc::S_IFDIR => {}
            libc::S_IFREG => {
                let fd: OwnedFd =
                    sys::open_at(dir, name, sys::OFlags::RDONLY, 0).map_err(at(path))?;
                let st2 = sys::stat_fd(fd.as_fd()).map_err(at(path))?;
                e.kind = Kind::File;
                e.size = st2.st_size as u64;
                file = Some(File::from(fd));
            }
            libc::S_IFLNK => e.kind = Kind::Symlink(sys::readlink_at(dir, name).map_err(at(path))?),
            libc::S_IFCHR => {
                e.kind = Kind::Char(sys::dev_major(st.st_rdev), sys::dev_minor(st.st_rdev))
            }
            libc::S_IFBLK => {
                e.kind = Kind::Block(sys::dev_major(st.st_rdev), sys::dev_minor(st.st_rdev))
            }
            libc::S_IFIFO => e.kind = Kind::Fifo,
            _ => {
                log::info!(
                    "/{}: sockets cannot be stored in a layer; skipped",
                    String::from_utf8_lossy(path)
                );
                return Ok(());
            }
        }
        if e.kind != Kind::Dir
            && st.st_nlink > 1
            && let Some(first) = self
                .links
                .earlier(LinkKey::Real(st.st_dev, st.st_ino), path)
        {
            e.kind = Kind::HardLink(first);
            e.size = 0;
            e.xattrs.clear();
            return self.append(&e, None);
        }
        self.append(&e, file.as_mut().map(|f| f as &mut dyn std::io::Read))
    }
}

/// The OCI media type for a layer blob of any known media type (same bytes).
fn oci_layer_type(mt: &str) -> String {
    match Compression::from_media_type(mt) {
        Some(c) if !mt.contains("nondistributable") && !mt.contains("foreign") => {
            c.media_type().to_string()
        }
        _ => mt.to_string(),
    }
}

/// Commit a container: store its changes as a layer and record the new image; returns
/// the image as stored.
pub(crate) fn commit(
    cs: &Containers<'_>,
    c: &Container,
    opts: &CommitOptions,
) -> Result<ImageRecord> {
    if let Some(t) = &opts.tag {
        crate::store::Reference::parse_tag(t)?;
    }
    let store = cs.store();
    let base = store.images()?.get(&c.image).cloned().ok_or_else(|| {
        Error::not_found(format!(
            "the image of container {} ({}) is no longer in the store; it cannot be committed",
            c.name,
            c.image.short()
        ))
    })?;
    let base_config: Value = serde_json::from_slice(&store.read_blob(&base.config_digest)?)
        .map_err(|e| Error::corrupt(format!("config {}: {e}", base.config_digest)))?;

    // Stream the tar from a writer thread straight into the store's layer import.
    let (w, r) = tarball::pipe();
    let layer = std::thread::scope(|s| {
        let writer = s.spawn(move || write_layer(cs, c, w).map(|w| w.close(Ok(()))));
        let added = store.add_layer_tar(r);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Error::new("the layer writer panicked")));
        match (added, written) {
            (Ok(l), Ok(())) => Ok(l),
            // The store stopped reading: its error says why.
            (Err(e), Err(w)) if w.kind() == ErrorKind::Cancelled => Err(e),
            (_, Err(w)) => Err(w),
            (Err(e), Ok(())) => Err(e),
        }
    })?;

    let now = crate::container::now_rfc3339();
    let mut config = base_config;
    let fields = config
        .as_object_mut()
        .ok_or_else(|| Error::corrupt("the base image config is not a JSON object"))?;
    fields.insert("created".into(), json!(now));
    if let Some(a) = &opts.author {
        fields.insert("author".into(), json!(a));
    }
    let rootfs = fields
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let ids = rootfs
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::corrupt("the base image config has no rootfs.diff_ids"))?;
    ids.push(json!(layer.diff_id.to_string()));
    let mut entry = json!({
        "created": now,
        "created_by": format!("layerfs commit {}", c.name),
    });
    if let Some(m) = &opts.message {
        entry["comment"] = json!(m);
    }
    if let Some(a) = &opts.author {
        entry["author"] = json!(a);
    }
    // One history entry per layer that is not marked empty, as docker expects.
    let history = fields
        .entry("history")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| Error::corrupt("the base image config has a history that is not a list"))?;
    let described = history
        .iter()
        .filter(|e| e.get("empty_layer").and_then(Value::as_bool) != Some(true))
        .count();
    for _ in described..base.layers.len() {
        history.push(json!({ "created_by": "(layer without history)" }));
    }
    history.push(entry);
    let config = serde_json::to_vec(&config)
        .map_err(|e| Error::new(format!("encoding the new config: {e}")))?;
    let mut layers: Vec<Value> = base
        .layers
        .iter()
        .map(|l| {
            json!({
                "mediaType": oci_layer_type(&l.media_type),
                "digest": l.blob.to_string(),
                "size": l.blob_size,
            })
        })
        .collect();
    layers.push(json!({
        "mediaType": OCI_LAYER,
        "digest": layer.blob.to_string(),
        "size": layer.blob_size,
    }));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": crate::store::Digest::of(&config).to_string(),
            "size": config.len(),
        },
        "layers": layers,
    }))
    .map_err(|e| Error::new(format!("encoding the new manifest: {e}")))?;
    let tags: Vec<String> = opts.tag.iter().cloned().collect();
    let image = store.add_image(&manifest, &config, &tags)?;
    Ok(image)
}
