//! Helpers shared by the reliability suites (`tests/rel_*.rs`): a seedable random
//! generator, sizes taken from the environment, foreground daemons that can be killed,
//! a watchdog that turns a hang into a failure, running commands as another user, and
//! a per-suite report of named checks.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Stack, is_mounted, layerfs_bin};

// ------------------------------------------------------------------------ randomness

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A seed from `LAYERFS_SEED`-style variables, or a fixed default (CI is repeatable).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------------------ reports

/// Named checks of one suite; prints one summary line (and appends it to
/// `$LAYERFS_REL_REPORT` when set, for `scripts/reliability`) and fails the test if
/// any check failed.
pub struct Report {
    suite: String,
    test: String,
    cases: u64,
    failures: Vec<String>,
}

impl Report {
    pub fn new(suite: &str, test: &str) -> Self {
        Report {
            suite: suite.into(),
            test: test.into(),
            cases: 0,
            failures: Vec::new(),
        }
    }

    /// Record one case.
    pub fn check(&mut self, name: &str, r: Result<(), String>) {
        self.cases += 1;
        if let Err(e) = r {
            eprintln!("FAIL {}::{}: {name}: {e}", self.suite, self.test);
            self.failures.push(format!("{name}: {e}"));
        }
    }

    /// Record `n` cases that passed (e.g. verified operations).
    pub fn passed(&mut self, n: u64) {
        self.cases += n;
    }

    pub fn ok(&mut self, name: &str, cond: bool, detail: impl FnOnce() -> String) {
        self.check(name, if cond { Ok(()) } else { Err(detail()) });
    }

    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// Print the summary and fail if anything failed.
    pub fn finish(self) {
        let line = format!(
            "RELIABILITY suite={} test={} cases={} passed={} failed={}",
            self.suite,
            self.test,
            self.cases,
            self.cases - self.failures.len() as u64,
            self.failures.len()
        );
        println!("{line}");
        if let Ok(p) = std::env::var("LAYERFS_REL_REPORT") {
            if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(p) {
                let _ = writeln!(f, "{line}");
            }
        }
        assert!(
            self.failures.is_empty(),
            "{}::{}: {} of {} cases failed:\n{}",
            self.suite,
            self.test,
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
    }
}

// ------------------------------------------------------------------------ layer stacks

/// `n` empty lower layers, an upper and a work dir under `root`.
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
        lowers,
        upper: Some(upper),
        work: Some(work),
    }
}

/// The `-o` string for a stack plus extra options.
pub fn mount_opts(stack: &Stack, extra: &[&str]) -> String {
    stack.options("", extra)
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

// ------------------------------------------------------------------------ daemons

/// A `layerfs -f` child serving one mount. Dropping it unmounts and reaps it.
pub struct Daemon {
    pub child: Option<Child>,
    pub mnt: PathBuf,
}

impl Daemon {
    /// Start `layerfs -f -o OPTS MNT` (optionally through `prefix`, e.g. `prlimit`) and
    /// wait until the mount is there.
    pub fn start(stack: &Stack, mnt: &Path, extra: &[&str]) -> Result<Daemon, String> {
        Self::start_with(stack, mnt, extra, &[])
    }

    pub fn start_with(
        stack: &Stack,
        mnt: &Path,
        extra: &[&str],
        prefix: &[&str],
    ) -> Result<Daemon, String> {
        fs::create_dir_all(mnt).unwrap();
        let bin = layerfs_bin();
        let mut cmd = if prefix.is_empty() {
            Command::new(&bin)
        } else {
            let mut c = Command::new(prefix[0]);
            c.args(&prefix[1..]).arg(&bin);
            c
        };
        cmd.arg("-f")
            .arg("-o")
            .arg(mount_opts(stack, extra))
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn layerfs: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(mnt) {
            if let Ok(Some(st)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "layerfs -f exited with {st} before mounting: {err}"
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("layerfs -f did not mount within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Drain stderr in the background so the daemon never blocks on a full pipe.
        if let Some(mut e) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                use std::io::Read;
                let _ = e.read_to_end(&mut sink);
                if !sink.is_empty() {
                    eprintln!("[layerfs stderr] {}", String::from_utf8_lossy(&sink));
                }
            });
        }
        Ok(Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// `kill -9` the daemon and reap it. The mount stays behind, disconnected.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Unmount and wait for the daemon to exit.
    pub fn stop(&mut self) {
        let _ = umount(&self.mnt, false);
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            self.kill9();
        }
    }

    /// Wait for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = umount(&self.mnt, false);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                self.kill9();
            }
        }
        clean_mount(&self.mnt);
    }
}

/// `umount` (or `umount -l`) through the syscall; returns the errno on failure.
pub fn umount(mnt: &Path, lazy: bool) -> Result<(), i32> {
    let c = CString::new(mnt.as_os_str().as_bytes()).unwrap();
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: umount2 with a NUL-terminated path.
    let r = unsafe { libc::umount2(c.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Remove every mount at `mnt` (dead or alive), lazily if needed.
pub fn clean_mount(mnt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(mnt) {
        if umount(mnt, false).is_err() {
            let _ = umount(mnt, true);
        }
        if Instant::now() > deadline {
            break;
        }
    }
}

// ------------------------------------------------------------------------ watchdog

/// "major:minor" of the filesystem mounted at `mnt`, from mountinfo (never touches it).
fn mount_dev(mnt: &Path) -> Option<(u32, u32)> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mnt.to_str()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4) == Some(&want) {
            let (a, b) = f.get(2)?.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        } else {
            None
        }
    })
}

/// Abort the FUSE connection behind `mnt` (every waiter gets ENOTCONN).
pub fn abort_fuse(mnt: &Path) -> bool {
    let Some((major, minor)) = mount_dev(mnt) else {
        return false;
    };
    let conns = Path::new("/sys/fs/fuse/connections");
    if fs::read_dir(conns)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
    {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(conns)
            .status();
    }
    let id = (major << 20) | minor;
    fs::write(conns.join(id.to_string()).join("abort"), b"1").is_ok()
}

/// Turns a hang into a failure: after `secs`, aborts the FUSE connections of the given
/// mounts (so stuck calls return) and marks itself fired.
pub struct Watchdog {
    done: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
    name: String,
}

impl Watchdog {
    pub fn new(name: &str, secs: u64, mounts: Vec<PathBuf>) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let (d, f, n) = (done.clone(), fired.clone(), name.to_string());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < deadline {
                if d.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            f.store(true, Ordering::Release);
            eprintln!("WATCHDOG {n}: still running after {secs} s: aborting {mounts:?}");
            for m in &mounts {
                abort_fuse(m);
            }
            // If even that did not unblock the test, end the process rather than hang.
            std::thread::sleep(Duration::from_secs(60));
            if !d.load(Ordering::Acquire) {
                eprintln!("WATCHDOG {n}: test still stuck 60 s after abort: exiting");
                for m in &mounts {
                    let _ = umount(m, true);
                }
                std::process::exit(124);
            }
        });
        Watchdog {
            done,
            fired,
            name: name.into(),
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Stop the watchdog; `Err` if it fired.
    pub fn disarm(&self) -> Result<(), String> {
        self.done.store(true, Ordering::Release);
        if self.fired() {
            Err(format!("{}: watchdog fired (deadlock or hang)", self.name))
        } else {
            Ok(())
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

// ------------------------------------------------------------------------ other users

pub const NOBODY: u32 = 65534;
pub const NOGROUP: u32 = 65534;

/// Run `sh -c script` as uid/gid (std drops the supplementary groups when root
/// changes uid).
pub fn sh_as(uid: u32, gid: u32, script: &str) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).uid(uid).gid(gid).current_dir("/");
    c.output().expect("run sh")
}

/// Run `sh -c script` as root and return the output.
pub fn sh(script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh")
}

pub fn out_str(o: &Output) -> String {
    format!(
        "status {} stdout {:?} stderr {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Quote a path for `sh -c`.
pub fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Errno of the last failed libc call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A path as a C string.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Whether any process still runs the given pid.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// Pids of `layerfs` processes whose command line names `mnt` (daemonized mounts).
pub fn daemons_for(mnt: &Path) -> Vec<u32> {
    let want = mnt.as_os_str().as_bytes();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_layerfs = args
            .first()
            .is_some_and(|a| a.ends_with(b"layerfs") || a.ends_with(b"/layerfs"));
        if is_layerfs && args.contains(&want) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}
