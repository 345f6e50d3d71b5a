//! `scripts/fuse-requests`, the tool that counts a workload's FUSE requests from the
//! kernel's tracepoints: it counts only the requests of the mount it is given, sees the
//! background RELEASE after a command's last close, and puts the tracing state back.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use support::files::*;
use support::privilege::*;
use support::stack::*;

const TRACING: &str = "/sys/kernel/tracing";

/// The count `scripts/fuse-requests` reports for `opcode` (0 where it has no row).
fn count(report: &str, opcode: &str) -> u64 {
    report
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(opcode)).then(|| w.next().unwrap().parse().unwrap())
        })
        .unwrap_or(0)
}

/// The kernel's tracing is one for the whole machine: one test at a time uses it.
static TRACING_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This test's turn at the tracing, for as long as it holds the guard; `None` (and the
/// reason printed) where the test cannot count requests here.
fn tracing_turn() -> Option<std::sync::MutexGuard<'static, ()>> {
    if skip_unless_root() {
        return None;
    }
    if !Path::new(TRACING)
        .join("events/fuse/fuse_request_send")
        .exists()
    {
        eprintln!("skipped: this kernel has no fuse request tracepoints");
        return None;
    }
    Some(TRACING_TURN.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Run `scripts/fuse-requests --mount MNT ARGS...`.
fn fuse_requests(mnt: &Path, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fuse-requests");
    Command::new(script)
        .arg("--mount")
        .arg(mnt)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn fuse_requests_counts_one_mounts_requests_and_puts_tracing_back() {
    let Some(_turn) = tracing_turn() else {
        return;
    };
    let enable = Path::new(TRACING).join("events/fuse/fuse_request_send/enable");
    let before = fs::read_to_string(&enable).unwrap();
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    fs::create_dir_all(&l).unwrap();
    write(&l.join("f"), b"lower bytes\n");
    write(&l.join("g"), b"other\n");
    let s = rw_stack(t.path(), std::slice::from_ref(&l), "u");
    let m = t.path().join("m");
    let _g = mount_layerfs(&s, &m, &[]);
    // A second mount whose requests must not be counted.
    let other = t.path().join("other");
    let s2 = rw_stack(t.path(), std::slice::from_ref(&l), "v");
    let _g2 = mount_layerfs(&s2, &other, &[]);

    let f = m.join("f").display().to_string();
    let g = other.join("g").display().to_string();
    let out = fuse_requests(&m, &["--show", "20", "--", "cat", &f, &g]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/fuse-requests: {}\n{report}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One name looked up, opened and released on this mount; `g` lives on the other.
    assert_eq!(count(&report, "FUSE_LOOKUP"), 1, "{report}");
    assert_eq!(count(&report, "FUSE_OPEN"), 1, "{report}");
    assert_eq!(count(&report, "FUSE_RELEASE"), 1, "{report}");
    assert!(!report.contains("without an answer"), "{report}");
    assert!(
        report.contains("send  req") && report.contains("FUSE_OPEN"),
        "--show lists the requests in order: {report}"
    );
    assert_eq!(
        fs::read_to_string(&enable).unwrap(),
        before,
        "the tracepoint is switched back"
    );

    // A command that fails: its status is passed on, the tracing still put back.
    assert!(!fuse_requests(&m, &["--", "false"]).status.success());
    assert_eq!(fs::read_to_string(&enable).unwrap(), before);
    // Not a FUSE mount: one line, and a failure.
    let st = fuse_requests(t.path(), &["--", "true"]);
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a mount point"), "{err}");
}

#[test]
fn small_lower_files_come_with_their_open_and_read_without_a_read_request() {
    let Some(_turn) = tracing_turn() else {
        return;
    };
    const LIMIT: usize = 128 * 1024;
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    fs::create_dir_all(&l).unwrap();
    let sizes = [1, 4095, 4096, 4097, 70_000, LIMIT, LIMIT + 1];
    let data = |n: usize| (0..n).map(|i| (i * 7 % 253) as u8).collect::<Vec<u8>>();
    for n in sizes {
        write(&l.join(format!("f{n}")), &data(n));
    }
    // Without passthrough, as every mount of an ordinary user; over the ring (where the
    // kernel has it) and over /dev/fuse.
    for (k, opts) in [
        ["passthrough=off", "uring=on"],
        ["passthrough=off", "uring=off"],
    ]
    .iter()
    .enumerate()
    {
        let s = rw_stack(t.path(), std::slice::from_ref(&l), &format!("u{k}"));
        let m = t.path().join(format!("m{k}"));
        let _g = mount_layerfs(&s, &m, opts);
        for n in sizes {
            let f = m.join(format!("f{n}")).display().to_string();
            // Read, then `stat` as `tar c` does after each file.
            let script = r#"cat "$0" >/dev/null && stat "$0" >/dev/null"#;
            let out = fuse_requests(&m, &["--", "sh", "-c", script, &f]);
            let report = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let what = format!("{opts:?}, {n} bytes: {report}");
            assert_eq!(count(&report, "FUSE_OPEN"), 1, "{what}");
            if n <= LIMIT {
                // The data went with the open; no READ, so no stale atime to ask for.
                assert_eq!(count(&report, "FUSE_READ"), 0, "{what}");
                assert_eq!(count(&report, "FUSE_GETATTR"), 0, "{what}");
            } else {
                assert!(count(&report, "FUSE_READ") > 0, "{what}");
            }
            assert_eq!(
                fs::read(m.join(format!("f{n}"))).unwrap(),
                data(n),
                "{what}"
            );
        }
        // Written through the mount (copied up), the file reads back as written.
        fs::write(m.join("f4097"), b"new").unwrap();
        assert_eq!(fs::read(m.join("f4097")).unwrap(), b"new");
    }
    assert_eq!(
        fs::read(l.join("f4097")).unwrap(),
        data(4097),
        "the lower file is untouched"
    );
}
