//! The containerd guard itself: its teardown leaves no process, mount, cgroup or shim
//! socket behind, whether containerd still answers or was killed under a running
//! container.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use support::mounts::is_mounted;
use support::procs::pid_alive;

use crate::containerd::can_run;
use crate::fixture::*;

/// The shim's socket for container `id` of this containerd.
fn shim_socket(e: &Engine, id: &str) -> std::path::PathBuf {
    let key = format!("{}/{}/{id}", e.ctrd.address.display(), e.ctrd.namespace);
    Path::new("/run/containerd/s").join(hex::encode(Sha256::digest(key.as_bytes())))
}

#[test]
fn teardown_leaves_nothing_behind() {
    if !can_run() {
        return;
    }
    let mut e = Engine::new();
    e.pull(SNAPSHOTTER, "a");

    // containerd killed under a running container: the shim, the container's
    // processes and its root mount outlive it, and the teardown finds them.
    e.run_detached(SNAPSHOTTER, "a", "orphan");
    let rootfs = e.ctrd.state().join(format!(
        "io.containerd.runtime.v2.task/{}/orphan/rootfs",
        e.ctrd.namespace
    ));
    let shims = e.ctrd.shims();
    let procs = e.ctrd.container_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert!(!procs.is_empty());
    assert!(is_mounted(&rootfs), "{}", rootfs.display());
    assert!(shim_socket(&e, "orphan").exists());
    e.ctrd.kill9();
    assert!(pid_alive(shims[0].0) && procs.iter().all(|p| pid_alive(*p)));
    e.ctrd.cleanup();
    assert_eq!(e.ctrd.leftovers(), Vec::<String>::new());
    assert!(!pid_alive(shims[0].0) && !procs.iter().any(|p| pid_alive(*p)));
    assert!(!is_mounted(&rootfs));
    assert!(!shim_socket(&e, "orphan").exists());
    assert!(
        !Path::new("/run/containerd/runc")
            .join(&e.ctrd.namespace)
            .exists()
    );

    // containerd answering: its containers are removed through it.
    e.ctrd.restart();
    e.run_detached(SNAPSHOTTER, "a", "second");
    let shims = e.ctrd.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    e.ctrd.cleanup();
    assert_eq!(e.ctrd.leftovers(), Vec::<String>::new());
    assert!(!pid_alive(shims[0].0));
    assert!(!shim_socket(&e, "second").exists());
}
