//! `layerfs snapshotter`: serve containerd's snapshots API over the store (see
//! `crate::snapshotter`). Arguments and messages only.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::cli::Globals;
use crate::error::{Error, Result};
use crate::snapshotter::{self, Config, Core, MountType};
use crate::store::Store;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum MountTypeArg {
    /// A bind of a layerfs union mount the snapshotter keeps (one daemon per snapshot)
    Fuse,
    /// The kernel's overlayfs over the same directories, mounted by containerd
    Overlay,
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotterArgs {
    /// Unix socket to serve on (containerd's proxy_plugins address)
    #[arg(
        long,
        default_value = "/run/layerfs/snapshotter.sock",
        value_name = "SOCKET"
    )]
    address: PathBuf,
    /// Where the union mounts of active snapshots and views go
    #[arg(
        long,
        default_value = "/run/layerfs/snapshotter/mounts",
        value_name = "DIR"
    )]
    mount_dir: PathBuf,
    /// How containerd gets a snapshot's root
    #[arg(long, value_enum, default_value = "fuse")]
    mount_type: MountTypeArg,
}

pub(crate) fn run(a: SnapshotterArgs, g: &Globals) -> Result<()> {
    let root = g.store_root();
    let store = Store::open(&root)?;
    let _lock = snapshotter::lock(&root)?;
    std::fs::create_dir_all(&a.mount_dir)
        .map_err(|e| Error::io(format!("creating {}", a.mount_dir.display()), e))?;
    let mount_dir = std::fs::canonicalize(&a.mount_dir)
        .map_err(|e| Error::io(format!("{}", a.mount_dir.display()), e))?;
    let program =
        std::env::current_exe().map_err(|e| Error::io("finding the layerfs binary", e))?;
    let mut core = Core::open(
        store,
        Config {
            mount_dir,
            mount_type: match a.mount_type {
                MountTypeArg::Fuse => MountType::Fuse,
                MountTypeArg::Overlay => MountType::Overlay,
            },
            program,
        },
    )?;
    let restored = core.restore();
    let address = a.address.clone();
    snapshotter::service::serve(core, &a.address, move || {
        eprintln!(
            "layerfs snapshotter: serving {} on {} ({restored} mounts restored)",
            root.display(),
            address.display()
        );
    })
}
