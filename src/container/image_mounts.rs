//! Read-only mounts of images (`layerfs image mount`, as `podman image mount`): the
//! image's layers through the daemon, with no writable layer and no container record.
//!
//! They are made and found as container mounts are (see `mounts`): the mount's source is
//! `layerfs-image:<store key>:<image id hex>`, so the mount table alone says which images
//! are mounted where, a record cannot go stale, and a mount whose daemon died
//! (`ENOTCONN`) counts as not mounted and is detached by the next `image mount`,
//! `image umount` or `rmi`. An image id is the same in every store that holds the image
//! (unlike a container id), so the source names the store too: the store key is the
//! first 16 hex digits of the sha256 of the store root's canonical path. The default
//! mountpoint is `ROOT/images/mounts/<image id hex>`, made by `image mount` and removed
//! by `image umount`.
//!
//! Mounting is idempotent: mounting a mounted image prints where it is, and one
//! `image umount` unmounts it (podman counts mounts instead).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::container::mounts::{
    ContainerMount, MountRequest, Mounted, absolute, existing_mount, mount_new, mounted_at,
    mountpoints_by, mounts_with_source, unmount_source, with_liveness,
};
use crate::error::{Error, IoContext, Result};
use crate::store::gc::Doomed;
use crate::store::{Digest, Store};

/// Mount sources of image mounts start with this.
const SOURCE_PREFIX: &str = "layerfs-image:";

/// The start of the mount sources of this store's image mounts:
/// `layerfs-image:<store key>:`.
fn store_prefix(store: &Store) -> Result<String> {
    let root = std::fs::canonicalize(store.root()).ctx(format!(
        "resolving the store root {}",
        store.root().display()
    ))?;
    let key = Digest::of(root.as_os_str().as_encoded_bytes()).hex();
    Ok(format!("{SOURCE_PREFIX}{}:", &key[..16]))
}

/// The mount source of an image's mounts from this store.
fn source(store: &Store, id: &Digest) -> Result<String> {
    Ok(format!("{}{}", store_prefix(store)?, id.hex()))
}

/// Where default mountpoints of images go.
pub(crate) fn mounts_dir(store: &Store) -> PathBuf {
    store.layout().image_mounts_dir()
}

/// Where `image mount` puts an image when no mountpoint is given.
pub(crate) fn default_mountpoint(store: &Store, id: &Digest) -> PathBuf {
    mounts_dir(store).join(id.hex())
}

/// Every mount of this store's images, by image id, with its liveness.
pub(crate) fn mounted(store: &Store) -> Result<HashMap<Digest, Vec<ContainerMount>>> {
    Ok(mountpoints_by(&store_prefix(store)?)?
        .into_iter()
        .filter_map(|(hex, paths)| Some((Digest::from_hex(&hex)?, with_liveness(paths))))
        .collect())
}

/// Every image of this store with a mount, live or dead (nothing is touched to find out).
pub(crate) fn held(store: &Store) -> Result<Vec<Digest>> {
    Ok(mountpoints_by(&store_prefix(store)?)?
        .keys()
        .filter_map(|hex| Digest::from_hex(hex))
        .collect())
}

/// Mount an image read-only (or report where it is mounted already). Takes the store
/// lock, so two commands never mount one image twice and `rmi` sees every mount.
pub(crate) fn mount(
    store: &Store,
    image: &str,
    mountpoint: Option<&Path>,
    program: PathBuf,
) -> Result<Mounted> {
    let wanted = mountpoint.map(absolute).transpose()?;
    let _lock = store.lock()?;
    let rec = store.image(image)?;
    if rec.layers.is_empty() {
        return Err(Error::invalid_input(format!(
            "image {image} has no layers: nothing to mount"
        )));
    }
    let src = source(store, &rec.id)?;
    let what = format!("image {image}");
    if let Some(m) = existing_mount(&src, &what, wanted.as_deref())? {
        return Ok(m);
    }
    let lowers = store.layer_dirs(&rec)?;
    let path = match wanted {
        Some(p) => p,
        None => {
            let dir = mounts_dir(store);
            std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
            default_mountpoint(store, &rec.id)
        }
    };
    let req = MountRequest {
        mountpoint: None,
        options: Vec::new(),
        program,
    };
    let data = [store.objects_dir()];
    mount_new(
        &src,
        &what,
        path,
        (&lowers, &data),
        None,
        &req,
        store.subids(),
    )
}

/// Remove a default mountpoint left empty by an unmount (others are the user's).
fn tidy(store: &Store, path: &Path) {
    if path.parent() == Some(mounts_dir(store).as_path()) {
        let _ = std::fs::remove_dir(path);
    }
}

/// `image umount`: each target is a mountpoint (a path where an image is mounted) or an
/// image; `all` takes every mounted image. Everything is resolved and checked first (a
/// target that is not mounted changes nothing), then each image's mounts are unmounted
/// under the store lock; a busy mount is refused unless `force` (detached). Returns the
/// mountpoints unmounted.
pub(crate) fn umount(
    store: &Store,
    targets: &[String],
    all: bool,
    force: bool,
) -> Result<Vec<PathBuf>> {
    let mut plan: Vec<(Digest, String)> = Vec::new();
    if all {
        for id in held(store)? {
            plan.push((id, format!("image {}", id.short())));
        }
    }
    for t in targets {
        let by_path = if t.contains('/') || Path::new(t).exists() {
            mounted_at(Path::new(t), &store_prefix(store)?)?.and_then(|hex| Digest::from_hex(&hex))
        } else {
            None
        };
        let id = match by_path {
            Some(id) => id,
            None => match store.image(t) {
                Ok(r) => r.id,
                Err(_) if t.contains('/') && Path::new(t).exists() => {
                    return Err(Error::not_found(format!("no image is mounted at {t}")));
                }
                Err(e) => return Err(e),
            },
        };
        if !plan.iter().any(|(d, _)| *d == id) {
            plan.push((id, format!("image {t}")));
        }
    }
    let _lock = store.lock()?;
    for (id, what) in &plan {
        if mounts_with_source(&source(store, id)?)?.is_empty() {
            return Err(Error::not_found(format!("{what} is not mounted")));
        }
    }
    let mut done = Vec::new();
    for (id, what) in &plan {
        for p in unmount_source(&source(store, id)?, what, force)? {
            tidy(store, &p);
            done.push(p);
        }
    }
    Ok(done)
}

/// For `rmi`, under the store lock, with the images about to be deleted (as named, and
/// their records): a live mount refuses the removal unless `force`, which unmounts it
/// (detached if busy). Dead mounts are detached either way.
pub(crate) fn release(store: &Store, doomed: &[Doomed], force: bool) -> Result<()> {
    if !force {
        for (name, rec) in doomed {
            if let Some(m) = mounts_with_source(&source(store, &rec.id)?)?
                .into_iter()
                .find(|m| m.live)
            {
                return Err(Error::in_use(format!(
                    "image {name} ({}) is mounted at {}: unmount it first (layerfs image umount {name}) or use --force",
                    rec.id.short(),
                    m.path.display()
                )));
            }
        }
    }
    for (name, rec) in doomed {
        for p in unmount_source(&source(store, &rec.id)?, &format!("image {name}"), true)? {
            tidy(store, &p);
        }
    }
    Ok(())
}
