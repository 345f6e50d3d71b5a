//! The layerfs binary and the ways the tests run it against a store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `layerfs` binary cargo built beside the running test: a test executable lives in
/// `<target>/<profile>/deps/`, the binaries one level up (where `CARGO_BIN_EXE_layerfs`
/// points for an integration test; this library is not one, so it finds it the same way).
pub fn layerfs_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("layerfs"))
            .expect("the test executable is in <target>/<profile>/deps");
        assert!(
            bin.is_file(),
            "{} is missing: run the tests through cargo test, which builds it",
            bin.display()
        );
        bin
    })
    .clone()
}

/// `layerfs --root ROOT`, with nothing from the caller's `LAYERFS_ROOT`.
pub fn command(root: &Path) -> Command {
    let mut c = Command::new(layerfs_bin());
    c.arg("--root").arg(root).env_remove("LAYERFS_ROOT");
    c
}

/// Run `layerfs --root ROOT ARGS…`.
pub fn run(root: &Path, args: &[&str]) -> Output {
    command(root).args(args).output().expect("run layerfs")
}

/// Run and require success; returns stdout.
pub fn ok(root: &Path, args: &[&str]) -> String {
    succeeded(args, run(root, args))
}

/// Run and require failure with one `layerfs: ` line on stderr; returns that line.
pub fn fails(root: &Path, args: &[&str]) -> String {
    one_error_line(args, run(root, args))
}

/// The stdout of a command that must have succeeded.
pub fn succeeded(args: &[&str], o: Output) -> String {
    assert!(
        o.status.success(),
        "layerfs {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The error of a command that must have failed, as a user sees it: a non-zero exit, no
/// panic, and exactly one line on stderr, starting with `layerfs: `.
pub fn one_error_line(args: &[&str], o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "layerfs {args:?} succeeded:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        !err.contains("panicked"),
        "layerfs {args:?} panicked: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "layerfs {args:?}: expected one error line, got:\n{err}"
    );
    assert!(lines[0].starts_with("layerfs: "), "{err}");
    lines[0].to_string()
}
