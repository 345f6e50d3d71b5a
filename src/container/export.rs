//! `export`: a container's merged root filesystem as one flat tar.
//!
//! Read through an in-process view of the container (no mount needed, and a mounted
//! container can be exported too): symlinks are stored, never followed; objects with
//! several names become tar hard links; xattrs, device nodes and fifos are kept. The
//! tar is written in the same reproducible form as committed layers.

use std::io::Write;

use crate::container::tarball::TarWriter;
use crate::container::view::{Links, View, write_view_tree};
use crate::container::{Container, Containers};
use crate::error::{Error, Result};
use crate::overlay::ROOT_INO;

/// Write the merged tree of a container to `out`.
pub(crate) fn export<W: Write>(cs: &Containers<'_>, c: &Container, out: W) -> Result<W> {
    let view = View::container(cs, c)?;
    let mut tw = TarWriter::new(out);
    let mut links = Links::default();
    write_view_tree(&view, ROOT_INO, b"", &mut tw, &mut links)?;
    tw.finish().map_err(|e| Error::io("writing the tar", e))
}

/// Export to a file: written next to it and renamed into place when complete.
pub(crate) fn export_to_file(
    cs: &Containers<'_>,
    c: &Container,
    path: &std::path::Path,
) -> Result<()> {
    use crate::error::IoContext;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid_input(format!("invalid output path {}", path.display())))?;
    let tmp = parent.join(format!(
        ".{}.{}",
        name.to_string_lossy(),
        crate::store::layout::unique_name("tmp")
    ));
    let res = (|| {
        let f = std::fs::File::create(&tmp).ctx(format!("creating {}", tmp.display()))?;
        let w = export(cs, c, std::io::BufWriter::with_capacity(1 << 20, f))?;
        let f = w
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e.into_error()))?;
        f.sync_all().ctx(format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).ctx(format!("renaming into {}", path.display()))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
