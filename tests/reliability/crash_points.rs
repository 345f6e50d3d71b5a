//! Crash points: the daemon dies at each system call that changes the upper or work dir
//! (or answers the kernel) during one operation, in turn. `strace` attaches to a daemon
//! with one request thread, first to record the operation's calls, then once per call
//! to kill the daemon as that call starts (`--inject=CALL:signal=KILL:when=N`). After each
//! kill a fresh daemon mounts the same dirs: the tree must be the tree before the
//! operation or the tree after it, with the same inode numbers, never a mix (both names
//! of a renamed directory, a half-copied file, a lost one, hard links come apart), and
//! the work dir must be empty. Where root wrote the upper dir, the kernel's
//! overlayfs mounting the same dirs must then read the same tree.
//!
//! Each operation is one request to the daemon (one rename, link, mkdir, rmdir, chmod,
//! truncate, or an append that copies a file up), so no state in between is legitimate.
//! Everything runs three times: with a root daemon; with an ordinary user's (owner
//! records in the upper dir, `user.overlay.*` markers, no passthrough); and with root's
//! over a store's layers, where files over 4 KiB are metacopy stubs whose data is in a
//! data-only layer (copy-ups copy from there).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::cli::layerfs_bin;
use support::daemon::*;
use support::files::*;
use support::images::*;
use support::mounts::*;
use support::report::*;
use support::shell::*;
use support::stack::*;
use support::store_env::Env;
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

fn dir_file(d: usize, f: usize) -> Vec<u8> {
    format!("dir {d} file {f}\n").repeat(10 + f).into_bytes()
}

/// Files over 4 KiB, so that a store keeps them as objects behind stubs.
fn a_file() -> Vec<u8> {
    b"lower a\n".repeat(800)
}

fn b_file() -> Vec<u8> {
    b"lower b\n".repeat(700)
}

fn linked_file() -> Vec<u8> {
    b"linked\n".repeat(1000)
}

fn big_file() -> Vec<u8> {
    (0..(3u32 << 20)).map(|i| (i * 7 % 251) as u8).collect()
}

fn lowers(stack: &Stack) {
    for d in 0..2 {
        for f in 0..3 {
            write(
                &stack.lowers[f % 2].join(format!("D{d}/f{f}")),
                &dir_file(d, f),
            );
        }
    }
    write(&stack.lowers[0].join("a"), &a_file());
    write(&stack.lowers[1].join("b"), &b_file());
    fs::create_dir_all(stack.lowers[1].join("Empty")).unwrap();
    write(&stack.lowers[1].join("big"), &big_file());
    write(&stack.lowers[0].join("h1"), &linked_file());
    fs::hard_link(stack.lowers[0].join("h1"), stack.lowers[0].join("h2")).unwrap();
}

/// The same two lowers as an image's layers (top: what `lowers` puts in the first).
fn store_image() -> Image {
    let mut bottom = LayerBuilder::new()
        .dir("D0", 0o755)
        .dir("D1", 0o755)
        .dir("Empty", 0o755);
    let mut top = LayerBuilder::new().dir("D0", 0o755).dir("D1", 0o755);
    for d in 0..2 {
        for f in 0..3 {
            let path = format!("D{d}/f{f}");
            if f % 2 == 0 {
                top = top.file(&path, &dir_file(d, f));
            } else {
                bottom = bottom.file(&path, &dir_file(d, f));
            }
        }
    }
    let bottom = bottom.file("b", &b_file()).file("big", &big_file());
    let top = top
        .file("a", &a_file())
        .file("h1", &linked_file())
        .hardlink("h2", "h1");
    image(vec![
        Layer::new(bottom.build(), Comp::Gzip),
        Layer::new(top.build(), Comp::Gzip),
    ])
}

/// Who runs the daemon under test and the operations: root, or an ordinary user (no
/// passthrough, owners kept in `user.containers.override_stat` records, `user.overlay.*`
/// markers); then root looks at the result through a read-only mount of the same dirs
/// (the user's mount is the user's alone).
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Root,
    User,
    /// Root, over a store's layers: files over 4 KiB are metacopy stubs whose data is in
    /// the store's file objects (a data-only layer).
    Store,
}

const NOBODY: u32 = 65534;

struct Runner {
    mode: Mode,
    /// A copy of the binary the user can run.
    bin: PathBuf,
    /// Store mode: the image's layers and data layer.
    image: Option<Stack>,
}

impl Runner {
    /// Run `script` in the mount as the mode's user; its status.
    fn in_mount(&self, mnt: &Path, script: &str) -> bool {
        let line = format!("cd {} && {script}", q(mnt));
        match self.mode {
            Mode::Root | Mode::Store => sh(&line).status.success(),
            Mode::User => sh_as(NOBODY, NOBODY, &line).status.success(),
        }
    }

    /// The daemon under test, with one request thread so `strace` counts one thread.
    /// It returns once the daemon answers (its handshake with the kernel done), so a
    /// kill point is never the handshake's reply.
    fn mount(&self, stack: &Stack, mnt: &Path) -> Result<Daemon, String> {
        let d = match self.mode {
            Mode::Root | Mode::Store => Daemon::start(stack, mnt, &["threads=1"]),
            Mode::User => Daemon::start_as(NOBODY, &self.bin, stack, mnt, &["threads=1"]),
        }?;
        self.in_mount(mnt, "true");
        Ok(d)
    }

    /// The tree a fresh mount shows: through the daemon itself (root), or through
    /// root's read-only view of the user's dirs with the numbers the user's own mount
    /// shows.
    fn snap(&self, stack: &Stack, mnt: &Path) -> Tree {
        let view;
        let s = match self.mode {
            Mode::Root | Mode::Store => stack,
            Mode::User => {
                let mut lowers = vec![stack.upper.clone().unwrap()];
                lowers.extend(stack.lowers.iter().cloned());
                view = Stack {
                    data: Vec::new(),
                    lowers,
                    upper: None,
                    work: None,
                };
                &view
            }
        };
        let mut d = Daemon::start(s, mnt, &["threads=1"]).unwrap();
        let mut t = snapshot(mnt, &SnapOpts::default());
        d.stop();
        if self.mode == Mode::User {
            // Inode numbers are the daemon's own: as the user sees them in its mount.
            let mut d = self.mount(stack, mnt).unwrap();
            let out = sh_as(
                NOBODY,
                NOBODY,
                &format!("cd {} && find . -printf '%i %P\\n'", q(mnt)),
            );
            d.stop();
            t.inos = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let (ino, path) = l.split_once(' ')?;
                    Some((PathBuf::from(path), ino.parse().ok()?))
                })
                .collect();
            assert_eq!(
                t.inos.keys().collect::<Vec<_>>(),
                t.entries.keys().collect::<Vec<_>>(),
                "the user's listing of its mount names what root's view does"
            );
        }
        t
    }

    /// Upper and work dirs the mode's user owns.
    fn own(&self, stack: &Stack) {
        if self.mode == Mode::User {
            for d in [&stack.upper, &stack.work].into_iter().flatten() {
                shell(&format!("chown -R {NOBODY}:{NOBODY} {}", q(d)));
            }
        }
    }
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
        data: tpl.data.clone(),
        lowers: tpl.lowers.clone(),
        upper: Some(run.join("upper")),
        work: Some(run.join("work")),
    }
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
    crash_points(Mode::Root);
}

#[test]
fn every_crash_point_of_one_request_as_a_user() {
    if support::skip_unless_root() {
        return;
    }
    if !sh_as(
        NOBODY,
        NOBODY,
        "test -r /dev/fuse && test -w /dev/fuse && command -v fusermount3",
    )
    .status
    .success()
    {
        support::privilege::say_skipped(
            "needs /dev/fuse open to nobody and fusermount3 (scripts/test opens it for the run)",
        );
        return;
    }
    crash_points(Mode::User);
}

#[test]
fn every_crash_point_of_one_request_over_store_layers() {
    if support::skip_unless_root() {
        return;
    }
    crash_points(Mode::Store);
}

fn crash_points(mode: Mode) {
    if !sh("command -v strace").status.success() {
        panic!("strace is needed (scripts/deps installs it)");
    }
    let suite_test = match mode {
        Mode::Root => "kill-at-each-call",
        Mode::User => "kill-at-each-call-as-a-user",
        Mode::Store => "kill-at-each-call-over-store-layers",
    };
    let report = Mutex::new(Report::new("crash-points", suite_test));
    // Store mode: one store holding the image; its layers are shared by every case.
    let env = (mode == Mode::Store).then(|| {
        let env = Env::new();
        env.import(&store_image(), "crash:1");
        env
    });
    let image = env.as_ref().map(|e| Stack::of_image(&e.inspect("crash:1")));
    if let Some(img) = &image {
        let stubs = ["a", "b", "big", "h1"].iter().all(|f| {
            img.lowers.iter().any(|l| {
                sh(&format!(
                    "getfattr -n trusted.overlay.metacopy {}",
                    q(&l.join(f))
                ))
                .status
                .success()
            })
        });
        ok(
            &report,
            "store layers: the files over 4 KiB are stubs",
            stubs,
            || "no trusted.overlay.metacopy on a, b, big or h1".into(),
        );
    }
    let t = tempfile::tempdir().unwrap();
    // The user must reach its dirs, the mount points and its copy of the binary.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = t.path().join("layerfs");
    fs::copy(layerfs_bin(), &bin).unwrap();
    let r = Runner { mode, bin, image };
    let bases: Vec<PathBuf> = (0..CASES.len())
        .map(|ci| t.path().join(format!("case{ci}")))
        .collect();
    let wd = Watchdog::new(
        "crash-points",
        900,
        bases.iter().map(|b| b.join("m")).collect(),
    );
    // The cases side by side (the time goes to mounting and waiting, not to CPU).
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                loop {
                    let ci = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = CASES.get(ci) else {
                        return;
                    };
                    run_case(&r, case, &bases[ci], &report);
                }
            });
        }
    });
    let mut report = report.into_inner().unwrap();
    report.check("no hang", wd.disarm());
    report.finish();
}

/// Record one case's calls, then kill a daemon at each in turn (dirs below `base`).
/// `Report::ok` on the report the cases share.
fn ok(report: &Mutex<Report>, what: &str, cond: bool, detail: impl FnOnce() -> String) {
    report.lock().unwrap().ok(what, cond, detail);
}

/// `Report::check` on the report the cases share.
fn check(report: &Mutex<Report>, what: &str, r: Result<(), String>) {
    report.lock().unwrap().check(what, r);
}

fn run_case(r: &Runner, case: &Case, base: &Path, report: &Mutex<Report>) {
    let tag = match r.mode {
        Mode::Root => "",
        Mode::User => "as a user: ",
        Mode::Store => "store layers: ",
    };
    let mode = r.mode;
    fs::create_dir_all(base).unwrap();
    let mnt = base.join("m");
    let run = base.join("run");
    let name = format!("{tag}{}", case.name);
    let tpl = match &r.image {
        Some(img) => {
            let s = new_stack(&base.join("tpl"), 0);
            Stack {
                lowers: img.lowers.clone(),
                data: img.data.clone(),
                ..s
            }
        }
        None => {
            let s = new_stack(&base.join("tpl"), 2);
            lowers(&s);
            s
        }
    };
    if mode == Mode::User {
        // Layers as an ordinary user's store has them: owners in records.
        for l in &tpl.lowers {
            shell(&format!(
                "setfattr -n user.containers.override_stat -v 0:0:0755:dir {}",
                q(l)
            ));
        }
    }
    r.own(&tpl);
    let prep_ok = match r.mount(&tpl, &mnt) {
        Ok(mut d) => {
            let ok = case.prep.is_empty() || r.in_mount(&mnt, case.prep);
            d.stop();
            ok
        }
        Err(e) => {
            check(report, &format!("{name}: mount"), Err(e));
            return;
        }
    };
    ok(report, &format!("{name}: prepared"), prep_ok, || {
        case.prep.to_string()
    });
    if !prep_ok {
        return;
    }

    // The recording run: the calls of the operation, and the trees before and after
    // it (each on a fresh mount, as after a crash).
    let rs = fresh_copy(&tpl, &run);
    let before_rec = r.snap(&rs, &mnt);
    let mut d = r.mount(&rs, &mnt).unwrap();
    let log = base.join("log");
    let trace = format!("trace={}", CALLS.join(","));
    let tracer = attach(
        d.pid(),
        &["-e".into(), trace, "-o".into(), log.display().to_string()],
    )
    .unwrap();
    let op_ok = r.in_mount(&mnt, case.op);
    detach(tracer);
    d.stop();
    let after_rec = r.snap(&rs, &mnt);
    let pts = points(&fs::read_to_string(&log).unwrap_or_default());
    ok(
        report,
        &format!("{name}: the operation works"),
        op_ok,
        || case.op.to_string(),
    );
    ok(
        report,
        &format!("{name}: it changes the tree"),
        !diff_trees(&before_rec, &after_rec).is_empty(),
        || "no difference before and after".into(),
    );
    ok(
        report,
        &format!("{name}: its calls were recorded"),
        !pts.is_empty(),
        || "no calls in the log".into(),
    );

    for p in &pts {
        let what = format!("{name}: killed at {} #{} ({})", p.call, p.n, p.line);
        let rs = fresh_copy(&tpl, &run);
        let before = r.snap(&rs, &mnt);
        let mut d = r.mount(&rs, &mnt).unwrap();
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
                check(report, &what, Err(e));
                d.stop();
                return;
            }
        };
        r.in_mount(&mnt, case.op);
        // The daemon dies at the point (or, if the numbering moved, lives on:
        // then the operation simply completed).
        let died = d.wait_exit(Duration::from_secs(2)).is_some();
        detach(tracer);
        if !died {
            d.stop();
        }
        clean_mount(&mnt);
        // The next mount finishes or cleans what the dead one left.
        match r.mount(&rs, &mnt) {
            Ok(mut d) => d.stop(),
            Err(e) => {
                check(report, &format!("{what}: remount"), Err(e));
                return;
            }
        }
        let leftovers = work_leftovers(&rs);
        let got = r.snap(&rs, &mnt);
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
        ok(
            report,
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
        ok(
            report,
            &format!("{what}: work dir empty"),
            leftovers.is_empty(),
            || format!("{leftovers:?}"),
        );
        if mode != Mode::User {
            // Containers move between layerfs and the kernel's driver: after a crash
            // too, the kernel's overlayfs must read what layerfs shows.
            let km = base.join("k");
            let g = mount_kernel(&rs, &km);
            let kernel = snapshot(&km, &SnapOpts::default().kernel());
            drop(g);
            let ours = accept_visible_link_counts(&kernel, &got, &rs.lowers);
            let differs = diff_trees(&kernel, &ours);
            ok(
                report,
                &format!("{what}: the kernel's overlayfs reads the same"),
                differs.is_empty(),
                || differs.join("\n"),
            );
        }
    }
}
