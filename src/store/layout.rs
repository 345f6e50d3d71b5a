//! Where things live under the store root, and the primitives that keep it consistent:
//! atomic JSON writes and private temp dirs.
//!
//! ```text
//! ROOT/lock                         flock: one mutating command at a time
//! ROOT/idmap                        the user namespace maps of a store made with
//!                                   subordinate ids (see `idmode`); absent otherwise
//! ROOT/blobs/sha256/<hex>           manifests, configs, layer blobs as imported
//! ROOT/layers/sha256/<diff-id hex>/ one per layer, renamed into place once complete:
//!     diff/                         the extracted tree (a lower dir for mounts)
//!     layer.json                    summary: diff-id, size, entry count
//!     tree.json                     every entry with its metadata and content hash
//! ROOT/objects/ab/cdef…             each regular file's content once (see `objects`); the
//!                                   layer trees hold metacopy stubs that name them
//! ROOT/images/index.json            image records with their tags
//! ROOT/images/mounts/<id hex>/      default mountpoints of read-only image mounts
//!                                   (made and removed by the container code)
//! ROOT/containers/<id>/             container records (kept by the container code)
//! ROOT/tmp/                         work in progress; anything here when no command
//!                                   holds the lock is a leftover and is removed
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::store::digest::Digest;

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub(crate) fn blob(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }
    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers/sha256")
    }
    pub(crate) fn layer(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }
    /// The extracted tree of a layer: what a mount uses as a lower dir.
    pub(crate) fn layer_diff(&self, diff_id: &Digest) -> PathBuf {
        self.layer(diff_id).join("diff")
    }
    /// The file store: the data-only lower layer of every mount.
    pub(crate) fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }
    pub(crate) fn images_index(&self) -> PathBuf {
        self.root.join("images/index.json")
    }
    /// Where read-only image mounts go by default (the store itself never mounts).
    pub(crate) fn image_mounts_dir(&self) -> PathBuf {
        self.root.join("images/mounts")
    }
    pub(crate) fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Create the directory skeleton (idempotent).
    pub(crate) fn create(&self) -> Result<()> {
        for d in [
            self.root.clone(),
            self.blobs_dir(),
            self.layers_dir(),
            self.objects_dir(),
            self.root.join("images"),
            self.tmp_dir(),
        ] {
            fs::create_dir_all(&d).ctx(format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    /// A fresh private directory under `tmp/`.
    pub(crate) fn new_tmp_dir(&self, what: &str) -> Result<PathBuf> {
        let p = self.tmp_dir().join(unique_name(what));
        fs::create_dir(&p).ctx(format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// Write a file atomically: temp file in `tmp/`, fsync, rename over `dest`, fsync
    /// the directory. Readers see the old or the new content, never a mix.
    pub(crate) fn write_atomic(&self, dest: &Path, data: &[u8]) -> Result<()> {
        let tmp = self.tmp_dir().join(unique_name("write"));
        let res = (|| {
            let mut f = File::create(&tmp).ctx(format!("creating {}", tmp.display()))?;
            f.write_all(data)
                .ctx(format!("writing {}", tmp.display()))?;
            f.sync_all().ctx(format!("syncing {}", tmp.display()))?;
            fs::rename(&tmp, dest).ctx(format!("replacing {}", dest.display()))?;
            sync_dir(dest.parent().unwrap_or(Path::new(".")))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    pub(crate) fn write_json_atomic<T: Serialize>(&self, dest: &Path, value: &T) -> Result<()> {
        let mut data = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::new(format!("encoding {}: {e}", dest.display())))?;
        data.push(b'\n');
        self.write_atomic(dest, &data)
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx(format!("syncing {}", dir.display()))
}

/// A name no other process or call uses: pid, time and a counter.
pub(crate) fn unique_name(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{what}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Read a JSON file; `Ok(None)` when it does not exist.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| Error::corrupt(format!("{}: damaged record: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path());
        l.create().unwrap();
        let p = t.path().join("images/index.json");
        l.write_json_atomic(&p, &vec![1, 2]).unwrap();
        l.write_json_atomic(&p, &vec![3]).unwrap();
        assert_eq!(read_json::<Vec<i32>>(&p).unwrap(), Some(vec![3]));
        assert_eq!(fs::read_dir(l.tmp_dir()).unwrap().count(), 0);
        assert_eq!(read_json::<Vec<i32>>(&t.path().join("nope")).unwrap(), None);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("a"), unique_name("a"));
    }
}
