//! Extended attributes of a path, never following a symlink.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{XattrFlags, lgetxattr, llistxattr, lsetxattr};

/// Every xattr of `p`, name → value (empty when it has none or cannot be read).
pub fn list_xattrs(p: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 65536];
    let Ok(n) = llistxattr(p, &mut names[..]) else {
        return out;
    };
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let mut value = vec![0u8; 65536];
        if let Ok(m) = lgetxattr(p, OsStr::from_bytes(name), &mut value[..]) {
            value.truncate(m);
            out.insert(OsString::from_vec(name.to_vec()), value);
        }
    }
    out
}

/// `list_xattrs` with the names as strings, for assertions.
pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    list_xattrs(p)
        .into_iter()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v))
        .collect()
}

/// Set an xattr (on a symlink itself, if `p` is one).
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    lsetxattr(p, name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}
