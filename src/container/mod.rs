//! Containers: a private writable layer on top of an image's shared layers.
//!
//! ```text
//! ROOT/containers/<id>/container.json   the record (written once, atomically)
//! ROOT/containers/<id>/upper/           the container's own changes (overlay upper dir)
//! ROOT/containers/<id>/work/            the mount's scratch dir
//! ROOT/containers/<id>/merged/          the default mountpoint
//! ```
//!
//! A container is created in a private dir under `ROOT/tmp/` and renamed into place, so a
//! record is either complete or absent. Whether a container is mounted is never stored:
//! it is read from `/proc/self/mountinfo` (see `mounts`), so it cannot go stale.
//!
//! The record keeps the diff-ids of the image's layers, so a container keeps working
//! (mount, diff, export) even after its image was untagged or removed with `rmi -f`.

pub(crate) mod commit;
pub(crate) mod diff;
pub(crate) mod export;
pub(crate) mod image_mounts;
pub(crate) mod list;
pub(crate) mod mounts;
mod names;
pub(crate) mod shell;
pub(crate) mod tarball;
pub(crate) mod view;

use std::collections::HashSet;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::store::df::data_size;
use crate::store::images::by_id_prefix;
use crate::store::layout::{read_json, sync_dir, unique_name};
use crate::store::{ContainerUse, Digest, Store};
use crate::sys;

/// One container record, `containers/<id>/container.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Container {
    /// 64 lowercase hex digits.
    pub id: String,
    pub name: String,
    /// The image id (config digest) it was created from.
    pub image: Digest,
    /// The image as the user named it.
    pub image_ref: String,
    /// The image's layers, base first (as image records list them).
    pub layers: Vec<Digest>,
    /// RFC 3339.
    pub created: String,
}

impl Container {
    /// The first 12 hex digits, as ids are shown.
    pub(crate) fn short_id(&self) -> &str {
        &self.id[..12]
    }

    /// Seconds since the epoch of `created`.
    pub(crate) fn created_secs(&self) -> i64 {
        self.created
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_second())
            .unwrap_or(0)
    }
}

/// Now, in whole seconds, as RFC 3339.
pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::from_second(crate::store::now_secs() as i64)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// Whether a string is a usable container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, as docker
/// allows, at most 128 characters.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh random container id.
fn new_id() -> Result<String> {
    let mut b = [0u8; 32];
    let mut f = fs::File::open("/dev/urandom").ctx("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b).ctx("reading /dev/urandom")?;
    Ok(hex::encode(b))
}

/// The containers of a store.
pub(crate) struct Containers<'a> {
    store: &'a Store,
}

impl<'a> Containers<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Containers { store }
    }

    pub(crate) fn store(&self) -> &Store {
        self.store
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.store.layout().containers_dir()
    }

    pub(crate) fn container_dir(&self, c: &Container) -> PathBuf {
        self.dir().join(&c.id)
    }

    pub(crate) fn upper(&self, c: &Container) -> PathBuf {
        self.container_dir(c).join("upper")
    }

    pub(crate) fn work(&self, c: &Container) -> PathBuf {
        self.container_dir(c).join("work")
    }

    /// Where `mount` puts it when no mountpoint is given.
    pub(crate) fn default_mountpoint(&self, c: &Container) -> PathBuf {
        self.container_dir(c).join("merged")
    }

    /// Every container, newest first.
    pub(crate) fn list(&self) -> Result<Vec<Container>> {
        let dir = self.dir();
        let rd = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.ctx(format!("reading {}", dir.display()))?;
            let name = e.file_name();
            let Some(id) = name.to_str().filter(|n| is_id(n)) else {
                continue;
            };
            match read_json::<Container>(&e.path().join("container.json")) {
                Ok(Some(c)) if c.id == id => out.push(c),
                Ok(Some(_)) => log::warn!("{}: record names another id", e.path().display()),
                Ok(None) => {}
                Err(err) => log::warn!("{err}"),
            }
        }
        out.sort_by(|a, b| {
            b.created_secs()
                .cmp(&a.created_secs())
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(out)
    }

    /// The container a user named: full id, name, or unique id prefix (as docker does).
    pub(crate) fn resolve(&self, s: &str) -> Result<Container> {
        let all = self.list()?;
        find(&all, s).cloned()
    }

    /// Lower dirs for a mount, top first; fails naming the first missing layer.
    pub(crate) fn layer_dirs(&self, c: &Container) -> Result<Vec<PathBuf>> {
        let mut out = Vec::with_capacity(c.layers.len());
        for l in c.layers.iter().rev() {
            if !self.store.layer_exists(l) {
                return Err(Error::not_found(format!(
                    "layer {l} of container {} is missing from the store",
                    c.name
                )));
            }
            out.push(self.store.layer_dir(l));
        }
        Ok(out)
    }

    /// Create a container from an image. Returns the record.
    pub(crate) fn create(&self, image: &str, name: Option<&str>) -> Result<Container> {
        if let Some(n) = name
            && !valid_name(n)
        {
            return Err(Error::invalid_input(format!(
                "invalid container name \"{n}\": use letters, digits, _ . - (starting with a letter or digit)"
            )));
        }
        let lock = self.store.lock()?;
        let rec = self.store.image(image)?;
        if rec.layers.is_empty() {
            return Err(Error::invalid_input(format!(
                "image {image} has no layers: nothing to mount"
            )));
        }
        // Check the layers now, not at the first mount.
        self.store.layer_dirs(&rec)?;
        let all = self.list()?;
        let taken: HashSet<&str> = all.iter().map(|c| c.name.as_str()).collect();
        let name = match name {
            Some(n) => {
                if let Some(other) = all.iter().find(|c| c.name == n) {
                    return Err(Error::already_exists(format!(
                        "the container name \"{n}\" is already in use by container {}",
                        other.short_id()
                    )));
                }
                n.to_string()
            }
            None => names::generate(|n| taken.contains(n)),
        };
        let id = loop {
            let id = new_id()?;
            if !all.iter().any(|c| c.id[..12] == id[..12]) {
                break id;
            }
        };
        let c = Container {
            id,
            name,
            image: rec.id,
            image_ref: image.to_string(),
            layers: rec.layers.iter().map(|l| l.diff_id).collect(),
            created: crate::container::now_rfc3339(),
        };
        let layout = self.store.layout();
        fs::create_dir_all(self.dir()).ctx(format!("creating {}", self.dir().display()))?;
        let tmp = layout.new_tmp_dir("container")?;
        let res = (|| {
            let top = self.store.layer_dir(&c.layers[c.layers.len() - 1]);
            let upper = tmp.join("upper");
            fs::create_dir(&upper).ctx(format!("creating {}", upper.display()))?;
            // The merged root shows the upper root's owner and mode: take the image's.
            if let Ok(md) = fs::metadata(&top) {
                let fd = sys::open_root_dir(&upper).ctx("opening the new upper dir")?;
                sys::chown_at(fd.as_fd(), None, Some(md.uid()), Some(md.gid()))
                    .ctx("setting the owner of the upper dir")?;
                sys::chmod_at(fd.as_fd(), None, md.mode() & 0o7777)
                    .ctx("setting the mode of the upper dir")?;
            }
            for d in ["work", "merged"] {
                fs::create_dir(tmp.join(d)).ctx(format!("creating {}", tmp.join(d).display()))?;
            }
            let mut data = serde_json::to_vec_pretty(&c)
                .map_err(|e| Error::new(format!("encoding the container record: {e}")))?;
            data.push(b'\n');
            let p = tmp.join("container.json");
            let mut f = fs::File::create(&p).ctx(format!("creating {}", p.display()))?;
            std::io::Write::write_all(&mut f, &data).ctx(format!("writing {}", p.display()))?;
            f.sync_all().ctx(format!("syncing {}", p.display()))?;
            sync_dir(&tmp)?;
            let dest = self.dir().join(&c.id);
            fs::rename(&tmp, &dest).ctx(format!("renaming into {}", dest.display()))?;
            sync_dir(&self.dir())
        })();
        if res.is_err() {
            let _ = remove_tree(&tmp);
        }
        drop(lock);
        res.map(|()| c)
    }

    /// Remove containers. Every name is checked first: an unknown one, or a mounted one
    /// without `force`, changes nothing. With `force`, mounted ones are unmounted first.
    /// Unmount the named containers (unknown names are left to `remove` to report): what
    /// `remove --force` does first, for a caller that removes them where it cannot
    /// unmount (a user namespace, see `sys::userns`).
    pub(crate) fn unmount_named(&self, names: &[String]) -> Result<()> {
        let _lock = self.store.lock()?;
        let all = self.list()?;
        for n in names {
            if let Ok(c) = find(&all, n) {
                mounts::unmount_all(&c.id, &c.name, true)?;
            }
        }
        Ok(())
    }

    pub(crate) fn remove(&self, names: &[String], force: bool) -> Result<Vec<Container>> {
        let _lock = self.store.lock()?;
        let all = self.list()?;
        let mut doomed: Vec<Container> = Vec::new();
        for n in names {
            let c = find(&all, n)?.clone();
            if !force {
                for m in mounts::mounts_of(&c.id)? {
                    if m.live {
                        return Err(Error::in_use(format!(
                            "container {} is mounted at {}: unmount it first or use --force",
                            c.name,
                            m.path.display()
                        )));
                    }
                }
            }
            if !doomed.iter().any(|d| d.id == c.id) {
                doomed.push(c);
            }
        }
        for c in &doomed {
            mounts::unmount_all(&c.id, &c.name, true)?;
            let tmp = self.store.layout().tmp_dir();
            let aside = tmp.join(unique_name("rm-container"));
            // Renamed aside first: a crash mid-removal leaves a leftover, never half a
            // container.
            fs::rename(self.container_dir(c), &aside)
                .ctx(format!("removing container {}", c.name))?;
            remove_tree(&aside).ctx(format!("removing container {}", c.name))?;
        }
        Ok(doomed)
    }

    /// Bytes of file data in a container's own layer (hard links once), as docker's
    /// `SizeRw`.
    pub(crate) fn rw_size(&self, c: &Container) -> u64 {
        data_size(&self.upper(c))
    }

    /// What containers need from the store, for `rmi`, `system df` and `system prune`.
    ///
    /// Read leniently, so that nothing a container may need is ever deleted: every dir
    /// under `containers/` whose record names an image or layers counts, even a record
    /// this version would not list (missing fields, another id form); the name falls
    /// back to the id, then to the dir name, and the layers to the image's.
    pub(crate) fn uses(&self) -> Result<Vec<ContainerUse>> {
        #[derive(Deserialize)]
        struct Lenient {
            #[serde(default)]
            id: String,
            #[serde(default)]
            name: String,
            #[serde(default)]
            image: Option<String>,
            #[serde(default)]
            layers: Vec<String>,
        }
        let dir = self.dir();
        let rd = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let images = self.store.images()?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.ctx(format!("reading {}", dir.display()))?;
            let p = e.path().join("container.json");
            let c: Lenient = match read_json(&p) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(err) => {
                    log::warn!("{err}");
                    continue;
                }
            };
            let name = [c.name, c.id]
                .into_iter()
                .find(|n| !n.is_empty())
                .unwrap_or_else(|| e.file_name().to_string_lossy().into_owned());
            let image = c.image.as_deref().and_then(|s| {
                s.parse::<Digest>()
                    .ok()
                    .or_else(|| images.resolve(s).ok().map(|r| r.id))
            });
            let mut layers: Vec<Digest> = c.layers.iter().filter_map(|l| l.parse().ok()).collect();
            if layers.is_empty()
                && let Some(r) = image.and_then(|id| images.get(&id))
            {
                layers = r.layers.iter().map(|l| l.diff_id).collect();
            }
            out.push(ContainerUse {
                size: data_size(&e.path().join("upper")),
                name,
                image,
                layers,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Find a container by full id, exact name, or unique id prefix, in that order.
pub(crate) fn find<'c>(all: &'c [Container], s: &str) -> Result<&'c Container> {
    if s.is_empty() {
        return Err(Error::invalid_input("empty container name"));
    }
    if let Some(c) = all.iter().find(|c| c.id == s) {
        return Ok(c);
    }
    if let Some(c) = all.iter().find(|c| c.name == s) {
        return Ok(c);
    }
    if s.bytes().all(|b| b.is_ascii_hexdigit())
        && let Some(c) = by_id_prefix(all, |c| c.id.clone(), s, s, "container")?
    {
        return Ok(c);
    }
    Err(Error::not_found(format!("no such container: {s}")))
}

/// Remove a directory tree (never following symlinks).
pub(crate) fn remove_tree(p: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(Error::invalid_input(format!(
            "cannot remove {}",
            p.display()
        )));
    };
    let pfd = sys::open_root_dir(parent).ctx(format!("opening {}", parent.display()))?;
    crate::sys::remove_tree(pfd.as_fd(), name).ctx(format!("removing {}", p.display()))
}

/// A path as the overlay command line wants it (`\`, `:` and `,` escaped).
pub(crate) fn escape_opt_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| Error::unsupported(format!("{}: not a UTF-8 path", p.display())))?;
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(ch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn c(id: &str, name: &str) -> Container {
        Container {
            id: id.to_string(),
            name: name.into(),
            image: Digest::of(b"x"),
            image_ref: "x".into(),
            layers: vec![],
            created: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn resolve_like_docker() {
        let a = c(&format!("abc{}", "0".repeat(61)), "web");
        let b = c(&format!("abd{}", "1".repeat(61)), "abc");
        let all = vec![a.clone(), b.clone()];
        assert_eq!(find(&all, &a.id).unwrap().id, a.id);
        assert_eq!(find(&all, "web").unwrap().id, a.id);
        // A name wins over an id prefix.
        assert_eq!(find(&all, "abc").unwrap().id, b.id);
        assert_eq!(find(&all, "abd").unwrap().id, b.id);
        assert_eq!(find(&all, "ab").unwrap_err().kind(), ErrorKind::Ambiguous);
        let missing = find(&all, "zzz").unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(missing.to_string(), "no such container: zzz");
    }

    #[test]
    fn names() {
        assert!(valid_name("c1"));
        assert!(valid_name("my.web-1_a"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape_opt_path(Path::new("/a:b,c\\d")).unwrap(),
            "/a\\:b\\,c\\\\d"
        );
    }
}
