//! Who runs the tests. As root (CI, `scripts/test`) every test runs and a missing tool is
//! a failure; a normal user's `cargo test` skips, with the reason printed, each test that
//! mounts or needs root, and runs the rest.

use std::io::Write;
use std::process::{Command, Stdio};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Say why the running test skips. Straight to stderr: the test harness captures what
/// `eprintln!` prints and shows it only for failures.
pub fn say_skipped(why: &str) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "skipped: {name} {why}");
}

/// `true` (with the reason printed) when the calling test must skip because it does not
/// run as root; it mounts FUSE or the kernel's overlayfs, or needs what only root may do
/// (other owners, device nodes, trusted xattrs). As root: `false`, the test runs.
pub fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    say_skipped("needs root (mounts, owners, device nodes); scripts/test runs it as root");
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
    say_skipped(&format!("needs {tool} (scripts/deps installs it)"));
    true
}
