//! The mounts a snapshot hands containerd, and the union mounts behind them.
//!
//! In the default mode each active snapshot or view with parents has a layerfs union
//! mount of its own at `MOUNT_DIR/<n>`, served by its own daemon process (the binary run
//! as `layerfs overlay -o …`, as podman runs a mount program), and containerd gets a
//! `bind` of it. The daemons are not children that die with the snapshotter: a restart,
//! or a `kill -9`, leaves running containers their root filesystems, and the restarted
//! snapshotter finds the mounts again by their source name, `layerfs-snapshot:<n>`.

use std::path::{Path, PathBuf};

use crate::container::mounts::{
    is_live, mount_table, overlay_options, run_daemon, umount_patiently,
};
use crate::error::{Error, IoContext, Result};
use crate::sys::{self, Errno};

/// Mount source of snapshot union mounts: `layerfs-snapshot:<n>`.
pub(crate) const SOURCE_PREFIX: &str = "layerfs-snapshot:";

/// One mount as containerd's API carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl Mount {
    pub(crate) fn bind(path: &Path, readonly: bool) -> Mount {
        Mount {
            kind: "bind".into(),
            source: path.display().to_string(),
            options: vec!["rbind".into(), if readonly { "ro" } else { "rw" }.into()],
        }
    }
}

/// Make sure snapshot `n`'s union mount is up at `mp`: kept when its daemon answers,
/// otherwise (missing, or its daemon gone) mounted afresh over the same directories.
pub(crate) fn ensure(
    program: &Path,
    n: u64,
    (lowers, data): (&[PathBuf], &[PathBuf]),
    upper: Option<&(PathBuf, PathBuf)>,
    mp: &Path,
) -> Result<()> {
    let source = format!("{SOURCE_PREFIX}{n}");
    let here: Vec<_> = mount_table()?
        .into_iter()
        .filter(|m| m.path == mp)
        .collect();
    if let Some(top) = here.last() {
        if top.source == source && is_live(mp) {
            return Ok(());
        }
        for _ in &here {
            match sys::umount_detach(mp) {
                Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
                Err(e) => {
                    return Err(Error::from(e)
                        .context(format!("detaching the dead mount at {}", mp.display())));
                }
            }
        }
    }
    std::fs::create_dir_all(mp).ctx(format!("creating {}", mp.display()))?;
    let opts = overlay_options(
        lowers,
        data,
        upper.map(|(u, w)| (u.as_path(), w.as_path())),
        &source,
    )?;
    run_daemon(program, &opts, mp).map_err(|e| e.context(format!("mounting {}", mp.display())))
}

/// Unmount snapshot `n`'s union mount (every layer of it, dead or alive) and remove its
/// mountpoint. A mount still in use somewhere (a container's bind that containerd has
/// not taken down) is detached: it goes away when its last user does.
pub(crate) fn release(n: u64, mp: &Path) -> Result<()> {
    let source = format!("{SOURCE_PREFIX}{n}");
    for _ in 0..16 {
        let Some(m) = mount_table()?.into_iter().rev().find(|m| m.path == mp) else {
            let _ = std::fs::remove_dir(mp);
            return Ok(());
        };
        if m.source != source {
            return Err(Error::in_use(format!(
                "{} is mounted at {}, not snapshot {n}",
                m.source,
                mp.display()
            )));
        }
        match umount_patiently(mp) {
            Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
            Err(Errno::BUSY) => {
                sys::umount_detach(mp).ctx(format!("detaching {}", mp.display()))?;
            }
            Err(e) => {
                return Err(Error::from(e).context(format!("unmounting {}", mp.display())));
            }
        }
    }
    Err(Error::in_use(format!("{} stays mounted", mp.display())))
}
