//! Which ids a store's files have on disk. A store made by an ordinary user with
//! subordinate ids (see `sys::userns`) holds files owned by the user's subordinate ids and
//! records the maps it was made with in `ROOT/idmap`; every other store has no such file.
//! A store is only ever used with the maps it was made with: read with other maps (or
//! none) its owners would be wrong, and written it would mix two kinds of owners.

use std::fs;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::sys::IdMaps;

/// The file at the store root.
pub(crate) const IDMAP_FILE: &str = "idmap";

/// Check that the store at `root` is used with the maps it was made with (`None`: no
/// namespace); a store being made records `maps`.
pub(crate) fn check_or_record(root: &Path, maps: Option<&IdMaps>) -> Result<()> {
    let file = root.join(IDMAP_FILE);
    let recorded = match fs::read_to_string(&file) {
        Ok(s) => Some(
            IdMaps::parse(&s)
                .ok_or_else(|| Error::new(format!("{}: not a layerfs id map", file.display())))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
    };
    let made = root.join("layers").exists();
    match (recorded, maps) {
        (None, None) => Ok(()),
        (Some(r), Some(m)) if r == *m => Ok(()),
        (Some(r), Some(m)) => Err(Error::invalid_input(format!(
            "store {} was made with the subordinate ids {} but this user now has {}: \
             restore the ranges in /etc/subuid and /etc/subgid, or use another --root",
            root.display(),
            short(&r),
            short(m)
        ))),
        (Some(r), None) => Err(Error::invalid_input(format!(
            "store {} holds files owned by subordinate ids ({}): only its user with those \
             ranges uses it (not root, not LAYERFS_USERNS=off)",
            root.display(),
            short(&r)
        ))),
        // The command line keeps such a store in the plain mode (`maps_for_store`).
        (None, Some(_)) if made => Err(Error::invalid_input(format!(
            "store {} was made without subordinate ids: set LAYERFS_USERNS=off to use it, \
             or use another --root for a store with them",
            root.display()
        ))),
        (None, Some(m)) => {
            fs::create_dir_all(root).ctx(format!("creating {}", root.display()))?;
            let tmp = root.join(format!(".{IDMAP_FILE}.{}", std::process::id()));
            fs::write(&tmp, m.to_text()).ctx(format!("writing {}", tmp.display()))?;
            fs::rename(&tmp, &file).ctx(format!("writing {}", file.display()))
        }
    }
}

/// `uids 0:1000:1,1:200000:65536 gids …` for messages.
fn short(m: &IdMaps) -> String {
    let list = |v: &[crate::sys::IdRange]| {
        v.iter()
            .map(|r| format!("{}:{}:{}", r.inside, r.outside, r.count))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("uids {} gids {}", list(&m.uids), list(&m.gids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_keeps_the_mode_it_was_made_in() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        let m = IdMaps::for_user((1000, 1000), &[(200000, 65536)], &[(200000, 65536)]);
        check_or_record(&root, Some(&m)).unwrap();
        fs::create_dir(root.join("layers")).unwrap();
        check_or_record(&root, Some(&m)).unwrap();
        let e = check_or_record(&root, None).unwrap_err().to_string();
        assert!(e.contains("owned by subordinate ids"), "{e}");
        let other = IdMaps::for_user((1000, 1000), &[(300000, 65536)], &[(200000, 65536)]);
        let e = check_or_record(&root, Some(&other))
            .unwrap_err()
            .to_string();
        assert!(e.contains("now has uids 0:1000:1,1:300000:65536"), "{e}");

        let plain = t.path().join("plain");
        check_or_record(&plain, None).unwrap();
        fs::create_dir_all(plain.join("layers")).unwrap();
        let e = check_or_record(&plain, Some(&m)).unwrap_err().to_string();
        assert!(e.contains("made without subordinate ids"), "{e}");
        assert!(!plain.join(IDMAP_FILE).exists());
    }

    #[test]
    fn a_store_made_with_one_range_keeps_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        // As a store made with the first range only recorded it.
        fs::create_dir_all(root.join("layers")).unwrap();
        fs::write(
            root.join(IDMAP_FILE),
            "uid 0 1000 1\nuid 1 200000 65536\ngid 0 1000 1\ngid 1 200000 65536\n",
        )
        .unwrap();
        let one = IdMaps::for_user((1000, 1000), &[(200000, 65536)], &[(200000, 65536)]);
        check_or_record(&root, Some(&one)).unwrap();
        // The user gained a second range: other maps, refused in one line.
        let two = IdMaps::for_user(
            (1000, 1000),
            &[(200000, 65536), (400000, 1000)],
            &[(200000, 65536)],
        );
        let e = check_or_record(&root, Some(&two)).unwrap_err().to_string();
        assert!(
            e.contains("now has uids 0:1000:1,1:200000:65536,65537:400000:1000 gids"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        // A store made with two ranges keeps them, and is refused with one.
        let root2 = t.path().join("store2");
        check_or_record(&root2, Some(&two)).unwrap();
        fs::create_dir(root2.join("layers")).unwrap();
        check_or_record(&root2, Some(&two)).unwrap();
        let e = check_or_record(&root2, Some(&one)).unwrap_err().to_string();
        assert!(
            e.contains(
                "was made with the subordinate ids uids 0:1000:1,1:200000:65536,65537:400000:1000"
            ),
            "{e}"
        );
    }
}
