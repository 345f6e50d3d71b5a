//! `ps`: which containers to list (docker's filters) and what to show of each: where it
//! is mounted, which of its mounts lost their daemon, the image as it was named while
//! that name still means the same image, and the sizes.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::container::mounts::{self, ContainerMount};
use crate::container::{Container, Containers};
use crate::error::{Error, Result};
use crate::store::ImageRecord;

/// Which containers to list.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Unmounted ones too (they are left out otherwise, unless `mounted` is given).
    pub all: bool,
    /// Made from one of these images, or from an image built on one of them.
    pub ancestors: Vec<ImageRecord>,
    /// Name contains one of these.
    pub names: Vec<String>,
    /// Id starts with one of these.
    pub ids: Vec<String>,
    /// Mounted (true) or not (false).
    pub mounted: Option<bool>,
}

impl Filter {
    /// From `KEY=VALUE` filters: `ancestor=IMAGE`, `name=TEXT`, `id=PREFIX`,
    /// `mounted=true|false` (each repeatable; values of one key are alternatives).
    pub(crate) fn parse(cs: &Containers<'_>, all: bool, filters: &[String]) -> Result<Filter> {
        let catalog = cs.store().images()?;
        let mut filter = Filter {
            all,
            ..Filter::default()
        };
        for f in filters {
            let (k, v) = f.split_once('=').ok_or_else(|| {
                Error::invalid_input(format!("bad filter \"{f}\": expected KEY=VALUE"))
            })?;
            match k {
                "ancestor" => filter.ancestors.push(catalog.resolve(v)?.clone()),
                "name" => filter.names.push(v.to_string()),
                "id" => filter.ids.push(v.to_string()),
                "mounted" => {
                    filter.mounted = Some(match v {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => {
                            return Err(Error::invalid_input(format!(
                                "bad filter \"{f}\": true or false"
                            )));
                        }
                    })
                }
                _ => {
                    return Err(Error::invalid_input(format!(
                        "unknown filter \"{k}\" (ancestor, name, id, mounted)"
                    )));
                }
            }
        }
        Ok(filter)
    }

    /// Whether `c` is listed, `mounted` saying whether it has a live mount.
    pub(crate) fn matches(&self, c: &Container, mounted: bool) -> bool {
        if !self.all && self.mounted.is_none() && !mounted {
            return false;
        }
        if self.mounted.is_some_and(|want| want != mounted) {
            return false;
        }
        if !self.names.is_empty() && !self.names.iter().any(|n| c.name.contains(n.as_str())) {
            return false;
        }
        if !self.ids.is_empty() && !self.ids.iter().any(|i| c.id.starts_with(i.as_str())) {
            return false;
        }
        self.ancestors.is_empty() || self.ancestors.iter().any(|a| is_ancestor(a, c))
    }
}

/// An image is an ancestor of a container made from it, or from an image whose first
/// layers are its layers.
pub(crate) fn is_ancestor(image: &ImageRecord, c: &Container) -> bool {
    image.id == c.image
        || (image.layers.len() <= c.layers.len()
            && image
                .layers
                .iter()
                .zip(&c.layers)
                .all(|(l, d)| l.diff_id == *d))
}

/// One container as `ps` shows it.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub container: Container,
    /// The image as it was named, while that name still means the same image; else
    /// its short id.
    pub image: String,
    /// Where it is mounted (a live mount).
    pub mounted: Option<PathBuf>,
    /// Mounts whose daemon is gone.
    pub dead: Vec<PathBuf>,
    /// Its own layer's size and the virtual size (image + own layer), when asked for.
    pub sizes: Option<(u64, u64)>,
}

/// The containers `filter` selects, newest first; `sizes` adds their sizes.
pub(crate) fn list(cs: &Containers<'_>, filter: &Filter, sizes: bool) -> Result<Vec<Listed>> {
    let store = cs.store();
    let catalog = store.images()?;
    let containers = cs.list()?;
    let all_mounts: HashMap<String, Vec<ContainerMount>> =
        mounts::mounts_for(containers.iter().map(|c| c.id.as_str()))?;
    let mut out = Vec::new();
    for c in containers {
        let ms = all_mounts.get(&c.id).cloned().unwrap_or_default();
        let mounted = ms.iter().find(|m| m.live).map(|m| m.path.clone());
        if !filter.matches(&c, mounted.is_some()) {
            continue;
        }
        let dead = ms
            .iter()
            .filter(|m| !m.live)
            .map(|m| m.path.clone())
            .collect();
        let image = match catalog.resolve(&c.image_ref) {
            Ok(r) if r.id == c.image => c.image_ref.clone(),
            _ => c.image.short(),
        };
        let sizes = sizes.then(|| {
            let own = cs.rw_size(&c);
            let base: u64 = c
                .layers
                .iter()
                .filter_map(|l| store.layer_record(l).ok().flatten())
                .map(|r| r.size)
                .sum();
            (own, base + own)
        });
        out.push(Listed {
            container: c,
            image,
            mounted,
            dead,
            sizes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Digest, LayerRef};

    fn image(n: u8, layers: &[u8]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(&[n]),
            manifest_digest: Digest::of(&[n, 1]),
            manifest_media_type: String::new(),
            config_digest: Digest::of(&[n]),
            layers: layers
                .iter()
                .map(|l| LayerRef {
                    diff_id: Digest::of(&[*l]),
                    blob: Digest::of(&[*l]),
                    media_type: String::new(),
                    blob_size: 0,
                    size: 0,
                })
                .collect(),
            tags: Vec::new(),
            created: None,
            imported: 0,
            size: 0,
            platform: "linux/amd64".into(),
        }
    }

    fn container(name: &str, from: &ImageRecord) -> Container {
        Container {
            id: format!("{:0>64}", name.len()),
            name: name.into(),
            image: from.id,
            image_ref: name.into(),
            layers: from.layers.iter().map(|l| l.diff_id).collect(),
            created: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn ancestors_are_images_whose_layers_come_first() {
        let base = image(1, &[10, 11]);
        let child = image(2, &[10, 11, 12]);
        let other = image(3, &[10, 13]);
        let c = container("web", &child);
        assert!(is_ancestor(&child, &c));
        assert!(is_ancestor(&base, &c));
        assert!(!is_ancestor(&other, &c));
        assert!(!is_ancestor(&child, &container("db", &base)));
    }

    #[test]
    fn filters_combine() {
        let base = image(1, &[10]);
        let c = container("web-1", &base);
        let mut f = Filter::default();
        assert!(!f.matches(&c, false), "unmounted ones need -a");
        assert!(f.matches(&c, true));
        f.all = true;
        assert!(f.matches(&c, false));
        f.names = vec!["db".into(), "web".into()];
        assert!(f.matches(&c, false));
        f.ids = vec!["1".into()];
        assert!(!f.matches(&c, false));
        f.ids = vec!["0".into()];
        f.mounted = Some(true);
        assert!(!f.matches(&c, false));
        f.ancestors = vec![image(2, &[11])];
        assert!(!f.matches(&c, true));
        f.ancestors.push(base);
        assert!(f.matches(&c, true));
    }
}
