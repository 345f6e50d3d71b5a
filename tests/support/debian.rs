//! The Debian minbase rootfs the real-program tests run (built by
//! `scripts/make-test-rootfs`; `scripts/test` sets `LAYERFS_TEST_ROOTFS`).

use std::path::PathBuf;

/// The rootfs at `LAYERFS_TEST_ROOTFS` (default `/var/cache/layerfs-test/bookworm`);
/// panics when there is none.
pub fn rootfs() -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os("LAYERFS_TEST_ROOTFS")
            .unwrap_or_else(|| "/var/cache/layerfs-test/bookworm".into()),
    );
    assert!(
        p.join("bin/sh").exists() && p.join("var/lib/dpkg/status").exists(),
        "no Debian rootfs at {} (scripts/make-test-rootfs builds it; scripts/test runs it)",
        p.display()
    );
    p
}
