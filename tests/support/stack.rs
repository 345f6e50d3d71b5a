//! Layer stacks and their mounts: layerfs (daemonized, as users run it) and the kernel's
//! overlayfs over the same directories, each behind a guard that unmounts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::layerfs_bin;
use crate::mounts::{MountGuard, is_mounted};

/// A layer stack: lower dirs (top first), optional upper and work dirs.
pub struct Stack {
    pub lowers: Vec<PathBuf>,
    /// Data-only lower layers (`lowerdir=…::DATA`): where metacopy stubs find their data.
    pub data: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

impl Stack {
    /// A read-only stack of these lower dirs (top first).
    pub fn ro(lowers: Vec<PathBuf>) -> Stack {
        Stack {
            data: Vec::new(),
            lowers,
            upper: None,
            work: None,
        }
    }

    pub fn lowerdir(&self) -> String {
        let esc = |p: &PathBuf| p.to_str().unwrap().replace(':', "\\:");
        let mut s = self.lowers.iter().map(esc).collect::<Vec<_>>().join(":");
        for d in &self.data {
            s.push_str("::");
            s.push_str(&esc(d));
        }
        s
    }

    /// A read-only stack of a store image's layers (`inspect` output), with the store's
    /// file objects as the data-only layer.
    pub fn of_image(inspect: &serde_json::Value) -> Stack {
        let mut s = Stack::ro(crate::store_env::layer_dirs_of(inspect));
        s.data = vec![PathBuf::from(inspect["DataDir"].as_str().expect("DataDir"))];
        s
    }

    /// Mount options: the layers, `rw_extra` after the upper and work dirs when there
    /// are some, then `extra`.
    pub fn options(&self, rw_extra: &str, extra: &[&str]) -> String {
        let mut opts = format!("lowerdir={}", self.lowerdir());
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            opts.push_str(&format!(
                ",upperdir={},workdir={}{rw_extra}",
                u.display(),
                w.display()
            ));
        }
        for e in extra {
            opts.push(',');
            opts.push_str(e);
        }
        opts
    }

    /// The options of a layerfs mount: `options`, with `LAYERFS_TEST_OPTIONS` (when set)
    /// before the test's own, which win (scripts/test runs the mount suites again with
    /// `uring=off`).
    pub fn layerfs_options(&self, extra: &[&str]) -> String {
        let more = std::env::var("LAYERFS_TEST_OPTIONS").unwrap_or_default();
        let mut all: Vec<&str> = more.split(',').filter(|o| !o.is_empty()).collect();
        all.extend_from_slice(extra);
        self.options("", &all)
    }
}

/// A writable stack in `base`: lowers as given, fresh `upper` and `work` dirs named with
/// `tag` so several stacks can share the lowers.
pub fn rw_stack(base: &Path, lowers: &[PathBuf], tag: &str) -> Stack {
    let upper = base.join(format!("upper-{tag}"));
    let work = base.join(format!("work-{tag}"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    Stack {
        data: Vec::new(),
        lowers: lowers.to_vec(),
        upper: Some(upper),
        work: Some(work),
    }
}

/// `n` empty lower layers (`l1`…), an upper and a work dir under `root`.
pub fn new_stack(root: &Path, n: usize) -> Stack {
    let lowers: Vec<PathBuf> = (1..=n).map(|i| root.join(format!("l{i}"))).collect();
    for l in &lowers {
        fs::create_dir_all(l).unwrap();
    }
    let upper = root.join("upper");
    let work = root.join("work");
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    Stack {
        data: Vec::new(),
        lowers,
        upper: Some(upper),
        work: Some(work),
    }
}

/// The same stack with other lower dirs (e.g. the kernel form of OCI-form layers).
pub fn with_lowers(s: &Stack, lowers: &[PathBuf]) -> Stack {
    Stack {
        data: Vec::new(),
        lowers: lowers.to_vec(),
        upper: s.upper.clone(),
        work: s.work.clone(),
    }
}

/// Entries left in the work dir's scratch area (`WORKDIR/work`).
pub fn work_leftovers(stack: &Stack) -> Vec<String> {
    let Some(w) = &stack.work else {
        return Vec::new();
    };
    match fs::read_dir(w.join("work")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Mount with layerfs (daemonized, returns once the mount is ready).
pub fn mount_layerfs(stack: &Stack, mnt: &Path, extra: &[&str]) -> MountGuard {
    try_mount_layerfs(stack, mnt, extra).unwrap_or_else(|e| panic!("layerfs mount failed: {e}"))
}

/// Mount with layerfs; its error output when it fails.
pub fn try_mount_layerfs(stack: &Stack, mnt: &Path, extra: &[&str]) -> Result<MountGuard, String> {
    fs::create_dir_all(mnt).unwrap();
    let opts = stack.layerfs_options(extra);
    let out = Command::new(layerfs_bin())
        .arg("-o")
        .arg(&opts)
        .arg(mnt)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    assert!(
        is_mounted(mnt),
        "layerfs returned success but {} is not mounted",
        mnt.display()
    );
    Ok(MountGuard::new(mnt))
}

/// Mount the same stack with the kernel's overlayfs (index=on, redirect_dir=on when it
/// is writable).
pub fn mount_kernel(stack: &Stack, mnt: &Path) -> MountGuard {
    fs::create_dir_all(mnt).unwrap();
    let mut opts = stack.options(",index=on,redirect_dir=on", &[]);
    if !stack.data.is_empty() {
        // A stub over a file of a lower layer: the kernel follows it only with metacopy.
        opts.push_str(",metacopy=on");
    }
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(mnt)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "kernel overlay mount failed: {opts}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    MountGuard::new(mnt)
}

/// The kernel's overlayfs, mounted at `km` over `stack`, shows the tree `ours` (link
/// counts of lower hard links aside: `accept_visible_link_counts`).
pub fn assert_kernel_shows(stack: &Stack, km: &Path, ours: &crate::tree::Tree, what: &str) {
    use crate::tree::*;
    let g = mount_kernel(stack, km);
    let k = snapshot(km, &SnapOpts::default().kernel());
    drop(g);
    assert_same_tree(
        &k,
        &accept_visible_link_counts(&k, ours, &stack.lowers),
        what,
    );
}
