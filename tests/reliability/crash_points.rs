//! Crash points: the daemon dies at each system call that changes the upper or work dir
//! (or answers the kernel) during one operation, in turn. `strace` attaches to a daemon
//! with one request thread, first to record the operation's calls, then once per call
//! to kill the daemon as that call starts (`--inject=CALL:signal=KILL:when=N`). After each
//! kill a fresh daemon mounts the same dirs: the tree must be the tree before the
//! operation or the tree after it, with the same inode numbers, never a mix (both names
//! of a renamed directory, a half-copied file, a lost one, hard links come apart), and
//! the work dir must be empty.
//!
//! Each operation is one request to the daemon (one rename, link, mkdir, rmdir, chmod,
//! truncate, or an append that copies a file up), so no state in between is legitimate.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::*;
use support::files::*;
use support::mounts::*;
use support::report::*;
use support::shell::*;
use support::stack::*;
use support::tree::*;
use support::watchdog::*;

/// The calls counted: every one that can change a directory, a file, its metadata, or
/// answer a request. `openat` is counted so the numbering matches; only its creating or
/// writing forms are kill points.
const CALLS: &[&str] = &[
    "mkdirat",
    "mknodat",
    "linkat",
    "symlinkat",
    "renameat2",
    "unlinkat",
    "openat",
    "setxattr",
    "fsetxattr",
    "lsetxattr",
    "removexattr",
    "fremovexattr",
    "fchmod",
    "fchmodat",
    "fchownat",
    "utimensat",
    "ftruncate",
    "fallocate",
    "write",
    "pwrite64",
    "writev",
    "copy_file_range",
    "ioctl",
    "fsync",
    "fdatasync",
    "syncfs",
];

/// One operation: what the lowers hold, what an earlier mount did, and the one request.
struct Case {
    name: &'static str,
    prep: &'static str,
    op: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "rename a lower dir",
        prep: "",
        op: "mv D0 E0",
    },
    Case {
        name: "rename it back onto its whiteout",
        prep: "mv D0 E0",
        op: "mv E0 D0",
    },
    Case {
        name: "rename a lower file over a lower file",
        prep: "",
        op: "mv a b",
    },
    Case {
        name: "rename a file onto a whiteout",
        prep: "rm a",
        op: "mv b a",
    },
    Case {
        name: "rename a new dir over an empty lower dir",
        prep: "mkdir N && echo n > N/n",
        op: "mv -T N Empty",
    },
    Case {
        name: "rmdir a lower dir emptied before",
        prep: "rm D1/f0 D1/f1 D1/f2",
        op: "rmdir D1",
    },
    Case {
        name: "mkdir where a lower dir was removed",
        prep: "rm -r D1",
        op: "mkdir D1",
    },
    Case {
        name: "append to a big lower file (copy-up)",
        prep: "",
        op: "echo x >> big",
    },
    Case {
        name: "truncate a big lower file",
        prep: "",
        op: "truncate -s 100 big",
    },
    Case {
        name: "chmod a lower file (metadata copy-up)",
        prep: "",
        op: "chmod 600 big",
    },
    Case {
        name: "hard link a lower file",
        prep: "",
        op: "ln a a2",
    },
    Case {
        name: "unlink one name of a lower hard link",
        prep: "",
        op: "rm h1",
    },
    Case {
        name: "unlink a lower file",
        prep: "",
        op: "rm a",
    },
    Case {
        name: "rename a lower file over an upper one",
        prep: "echo upper > u",
        op: "mv a u",
    },
    Case {
        name: "rename a lower dir into another",
        prep: "",
        op: "mv D0 D1/",
    },
    Case {
        name: "mkdir in a lower dir (parent copy-up)",
        prep: "",
        op: "mkdir D0/sub",
    },
    Case {
        name: "symlink in a lower dir",
        prep: "",
        op: "ln -s harmless D0/s",
    },
    Case {
        name: "set an xattr on a lower file",
        prep: "",
        op: "setfattr -n user.k -v v a",
    },
];

fn lowers(stack: &Stack) {
    for d in 0..2 {
        for f in 0..3 {
            write(
                &stack.lowers[f % 2].join(format!("D{d}/f{f}")),
                format!("dir {d} file {f}\n").repeat(10 + f).as_bytes(),
            );
        }
    }
    write(&stack.lowers[0].join("a"), b"lower a\n");
    write(&stack.lowers[1].join("b"), b"lower b\n");
    fs::create_dir_all(stack.lowers[1].join("Empty")).unwrap();
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    write(&stack.lowers[1].join("big"), &big);
    write(&stack.lowers[0].join("h1"), b"linked\n");
    fs::hard_link(stack.lowers[0].join("h1"), stack.lowers[0].join("h2")).unwrap();
}

/// Run `script` in the mount; its status.
fn in_mount(mnt: &Path, script: &str) -> bool {
    sh(&format!("cd {} && {script}", q(mnt))).status.success()
}

/// A daemon with one request thread, so `strace` counts one thread's calls.
fn mount(stack: &Stack, mnt: &Path) -> Result<Daemon, String> {
    Daemon::start(stack, mnt, &["threads=1"])
}

fn snap(mnt: &Path) -> Tree {
    snapshot(mnt, &SnapOpts::default())
}

/// `strace` attached to every thread of `pid`; returns once each thread is traced.
fn attach(pid: u32, args: &[String]) -> Result<Child, String> {
    let child = Command::new("strace")
        .args(["-f", "-qq", "-p", &pid.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("strace: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks: Vec<PathBuf> = fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("daemon {pid}: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let traced = tasks.iter().all(|t| {
            fs::read_to_string(t.join("status")).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                })
            })
        });
        if traced && !tasks.is_empty() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            return Err(format!("strace did not attach to {pid}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stop a recording `strace` (it detaches; the daemon goes on).
fn detach(mut s: Child) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(s.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let _ = s.wait();
}

/// A kill point: the `n`th call of `call` by thread `tid` since the attach.
#[derive(Debug, Clone)]
struct Point {
    call: String,
    n: usize,
    line: String,
}

/// The kill points in a recorded log: each counted call of the request thread, except
/// `openat`s that neither create nor write.
fn points(log: &str) -> Vec<Point> {
    let mut counts: std::collections::BTreeMap<(String, String), usize> = Default::default();
    let mut out = Vec::new();
    for line in log.lines() {
        let mut parts = line.splitn(2, ' ');
        let (Some(tid), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.starts_with("<...") || rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        }
        let Some(call) = rest.split('(').next() else {
            continue;
        };
        if !CALLS.contains(&call) {
            continue;
        }
        let n = counts
            .entry((tid.to_string(), call.to_string()))
            .and_modify(|c| *c += 1)
            .or_insert(1);
        if call == "openat"
            && !["O_CREAT", "O_TMPFILE", "O_WRONLY", "O_RDWR", "O_TRUNC"]
                .iter()
                .any(|f| rest.contains(f))
        {
            continue;
        }
        out.push(Point {
            call: call.to_string(),
            n: *n,
            line: format!("{tid} {}", rest.chars().take(100).collect::<String>()),
        });
    }
    out
}

/// A fresh copy of the template's upper and work dirs in `run`, over its lowers (never
/// written, so their inode numbers stay).
fn fresh_copy(tpl: &Stack, run: &Path) -> Stack {
    let _ = fs::remove_dir_all(run);
    fs::create_dir_all(run).unwrap();
    for d in ["upper", "work"] {
        shell(&format!(
            "cp -a {} {}",
            q(&tpl.upper.as_ref().unwrap().with_file_name(d)),
            q(&run.join(d))
        ));
    }
    Stack {
        data: Vec::new(),
        lowers: tpl.lowers.clone(),
        upper: Some(run.join("upper")),
        work: Some(run.join("work")),
    }
}

/// Mount `stack`, snapshot it (the numbers a fresh mount shows), and leave it mounted.
fn mount_and_snap(stack: &Stack, mnt: &Path) -> (Daemon, Tree) {
    let d = mount(stack, mnt).unwrap();
    let t = snap(mnt);
    (d, t)
}

/// Inode numbers the tree after the operation must show in a copy whose tree before
/// showed `before`: each path of `after_rec` whose number was some path's number in
/// `before_rec` keeps that path's number in `before` (new objects: any number).
fn expected_inos(before_rec: &Tree, after_rec: &Tree, before: &Tree) -> Vec<(PathBuf, u64)> {
    let by_ino: std::collections::BTreeMap<u64, &PathBuf> =
        before_rec.inos.iter().map(|(p, i)| (*i, p)).collect();
    after_rec
        .inos
        .iter()
        .filter_map(|(p, i)| {
            let q = by_ino.get(i)?;
            Some((p.clone(), *before.inos.get(*q)?))
        })
        .collect()
}

#[test]
fn every_crash_point_of_one_request() {
    if support::skip_unless_root() {
        return;
    }
    if !sh("command -v strace").status.success() {
        panic!("strace is needed (scripts/deps installs it)");
    }
    let mut report = Report::new("crash-points", "kill-at-each-call");
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("m");
    let run = t.path().join("run");
    let wd = Watchdog::new("crash-points", 600, vec![mnt.clone()]);
    for (ci, case) in CASES.iter().enumerate() {
        let tpl = new_stack(&t.path().join(format!("tpl{ci}")), 2);
        lowers(&tpl);
        let mut d = mount(&tpl, &mnt).unwrap();
        let prep_ok = case.prep.is_empty() || in_mount(&mnt, case.prep);
        d.stop();
        report.ok(&format!("{}: prepared", case.name), prep_ok, || {
            case.prep.to_string()
        });
        if !prep_ok {
            continue;
        }

        // The recording run: the calls of the operation, and the tree after it (on a
        // fresh mount, as after a crash).
        let rs = fresh_copy(&tpl, &run);
        let (mut d, before_rec) = mount_and_snap(&rs, &mnt);
        let log = t.path().join("log");
        let trace = format!("trace={}", CALLS.join(","));
        let tracer = attach(
            d.pid(),
            &["-e".into(), trace, "-o".into(), log.display().to_string()],
        )
        .unwrap();
        let op_ok = in_mount(&mnt, case.op);
        detach(tracer);
        d.stop();
        let (mut d, after_rec) = mount_and_snap(&rs, &mnt);
        d.stop();
        let pts = points(&fs::read_to_string(&log).unwrap_or_default());
        report.ok(
            &format!("{}: the operation works", case.name),
            op_ok,
            || case.op.to_string(),
        );
        report.ok(
            &format!("{}: it changes the tree", case.name),
            !diff_trees(&before_rec, &after_rec).is_empty(),
            || "no difference before and after".into(),
        );
        report.ok(
            &format!("{}: its calls were recorded", case.name),
            !pts.is_empty(),
            || "no calls in the log".into(),
        );

        for p in &pts {
            let what = format!("{}: killed at {} #{} ({})", case.name, p.call, p.n, p.line);
            let rs = fresh_copy(&tpl, &run);
            let (mut d, before) = mount_and_snap(&rs, &mnt);
            let inject = format!("inject={}:signal=KILL:when={}", p.call, p.n);
            let tracer = attach(
                d.pid(),
                &[
                    "-e".into(),
                    format!("trace={}", p.call),
                    "-e".into(),
                    inject,
                    "-o".into(),
                    "/dev/null".into(),
                ],
            );
            let tracer = match tracer {
                Ok(s) => s,
                Err(e) => {
                    report.check(&what, Err(e));
                    d.stop();
                    continue;
                }
            };
            in_mount(&mnt, case.op);
            // The daemon dies at the point (or, if the numbering moved, lives on:
            // then the operation simply completed).
            let died = d.wait_exit(Duration::from_secs(2)).is_some();
            detach(tracer);
            if !died {
                d.stop();
            }
            clean_mount(&mnt);
            let mut d = match mount(&rs, &mnt) {
                Ok(d) => d,
                Err(e) => {
                    report.check(&format!("{what}: remount"), Err(e));
                    continue;
                }
            };
            let got = snap(&mnt);
            let leftovers = work_leftovers(&rs);
            d.stop();
            let mut to_before = diff_trees(&before, &got);
            to_before.extend(
                ino_changes(&before, &got)
                    .into_iter()
                    .map(|c| format!("inode number: {c}")),
            );
            let mut to_after = diff_trees(&after_rec, &got);
            for (path, want) in expected_inos(&before_rec, &after_rec, &before) {
                match got.inos.get(&path) {
                    Some(i) if *i == want => {}
                    i => to_after.push(format!(
                        "inode number: {}: {i:?}, want {want}",
                        path.display()
                    )),
                }
            }
            report.ok(
                &format!("{what}: the tree before or after"),
                to_before.is_empty() || to_after.is_empty(),
                || {
                    format!(
                        "vs before:\n{}\nvs after:\n{}",
                        to_before.join("\n"),
                        to_after.join("\n")
                    )
                },
            );
            report.ok(
                &format!("{what}: work dir empty"),
                leftovers.is_empty(),
                || format!("{leftovers:?}"),
            );
        }
    }
    report.check("no hang", wd.disarm());
    report.finish();
}
