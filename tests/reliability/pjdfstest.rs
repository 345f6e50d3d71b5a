//! POSIX conformance: `scripts/pjdfstest` runs pjdfstest on the kernel's overlayfs and on
//! layerfs (passthrough on and off) in one run and fails if any test the kernel overlay
//! passes fails on layerfs. It installs pjdfstest into a cache dir the first time.

use std::process::Command;

use support::layerfs_bin;
use support::report::*;

#[test]
fn pjdfstest_matches_kernel_overlay() {
    if support::skip_unless_root() {
        return;
    }
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{repo}/scripts/pjdfstest"))
        .args(["upper", "off"])
        .env("LAYERFS_BIN", layerfs_bin())
        .output()
        .expect("run scripts/pjdfstest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    let mut r = Report::new("pjdfstest", "vs-kernel");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("PJDFSTEST "))
        .collect();
    r.ok(
        "kernel and both layerfs runs finished",
        lines.len() == 3,
        || format!("{stdout}\n{stderr}"),
    );
    let passed = |l: &str| -> u64 {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("passed="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for l in &lines {
        r.ok(&format!("{l}: ran the suite"), passed(l) > 300, || {
            l.to_string()
        });
    }
    r.ok(
        "no test that passes on the kernel overlay fails on layerfs",
        out.status.success(),
        || format!("{stdout}\n{stderr}"),
    );
    r.finish();
}
