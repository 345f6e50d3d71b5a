//! Who runs the tests. As root (CI, `scripts/test`) every test runs and a missing tool is
//! a failure; a normal user's `cargo test` skips, with the reason printed, each test that
//! mounts or needs root, and runs the rest.

use std::process::{Command, Stdio};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The running test's name, as the test harness calls it.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// `true` (with the reason printed) when the calling test must skip because it does not
/// run as root; it mounts FUSE or the kernel's overlayfs, or needs what only root may do
/// (other owners, device nodes, trusted xattrs). As root: `false`, the test runs.
pub fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "skipped: {} needs root (mounts, owners, device nodes); scripts/test runs it",
        test_name()
    );
    true
}

/// `true` (with the reason printed) when the calling test must skip because `tool` is not
/// installed and it does not run as root; as root a missing tool fails the test.
pub fn skip_without_tool(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return false;
    }
    assert!(
        !is_root(),
        "{tool} is not installed (scripts/deps installs it)"
    );
    eprintln!(
        "skipped: {} needs {tool} (scripts/deps installs it)",
        test_name()
    );
    true
}
