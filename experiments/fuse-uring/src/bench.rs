//! The benchmark: file creates and first lookups on a fresh mount, interleaved rounds,
//! FUSE with each transport beside tmpfs and kernel overlayfs.

use crate::mount;
use crate::uring::TaskRun;
use crate::ServeOpts;
use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Barrier};
use std::time::{Duration, Instant};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

#[derive(Clone, Debug)]
enum Kind {
    Fuse {
        uring: bool,
        threads: usize,
        clone: bool,
        pin: bool,
        taskrun: TaskRun,
    },
    Tmpfs,
    Overlay,
}

#[derive(Clone, Debug)]
struct Config {
    name: String,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Work {
    Create,
    /// `lstat` of names never looked up (first LOOKUPs).
    Stat,
    /// `unlink` of names looked up before the timing starts (as `rm -rf` after its
    /// listing): UNLINK, and the directory's GETATTR the next permission check needs.
    Unlink,
    /// `open` + `fstat` forced to ask + `close` of names looked up before (the requests
    /// `tar c` costs per file on layerfs: OPEN, GETATTR after the atime went stale,
    /// RELEASE).
    OpenStat,
}

impl Work {
    /// The directory is populated with `f0..` before the run.
    fn populated(self) -> bool {
        self != Work::Create
    }
}

#[derive(Clone, Debug)]
struct Workload {
    name: String,
    work: Work,
    clients: usize,
}

pub struct Opts {
    n: usize,
    rounds: usize,
    dir: PathBuf,
    configs: Vec<Config>,
    workloads: Vec<Workload>,
    depth: usize,
    /// Pin client t to CPU t (so a one-client run stays on CPU 0).
    pin_clients: bool,
}

fn parse_config(s: &str, default_taskrun: TaskRun) -> Result<Config, String> {
    let kind = match s {
        "tmpfs" => Kind::Tmpfs,
        "overlay" => Kind::Overlay,
        _ => {
            let mut parts = s.split('-');
            let head = parts.next().unwrap_or("");
            let (uring, rest) = if let Some(r) = head.strip_prefix("classic") {
                (false, r)
            } else if let Some(r) = head.strip_prefix("uring") {
                (true, r)
            } else {
                return Err(format!("unknown config {s}"));
            };
            let threads = rest
                .parse()
                .map_err(|_| format!("{s}: thread count missing"))?;
            let (mut clone, mut pin, mut taskrun) = (true, uring, default_taskrun);
            for p in parts {
                match p {
                    "noclone" => clone = false,
                    "nopin" => pin = false,
                    "pin" => pin = true,
                    t => taskrun = crate::parse_taskrun(t).map_err(|e| format!("{s}: {e}"))?,
                }
            }
            Kind::Fuse {
                uring,
                threads,
                clone,
                pin,
                taskrun,
            }
        }
    };
    Ok(Config {
        name: s.into(),
        kind,
    })
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    let (work, rest) = if let Some(r) = s.strip_prefix("create") {
        (Work::Create, r)
    } else if let Some(r) = s.strip_prefix("stat") {
        (Work::Stat, r)
    } else if let Some(r) = s.strip_prefix("unlink") {
        (Work::Unlink, r)
    } else if let Some(r) = s.strip_prefix("openstat") {
        (Work::OpenStat, r)
    } else {
        return Err(format!(
            "unknown workload {s} (create1, stat1, unlink1, openstat1, ... 2 for two clients)"
        ));
    };
    let clients = rest
        .parse()
        .map_err(|_| format!("{s}: client count missing"))?;
    Ok(Workload {
        name: s.into(),
        work,
        clients,
    })
}

pub fn parse(args: &[String]) -> Result<Opts, String> {
    let mut n = 20_000;
    let mut rounds = 5;
    let mut dir = PathBuf::from("/tmp/fuse-uring-bench");
    let mut configs = "classic1,classic2,uring1,uring2,tmpfs,overlay".to_string();
    let mut workloads = "create1,create2,stat1,stat2".to_string();
    let mut taskrun = TaskRun::Defer;
    let mut depth = 8;
    let mut pin_clients = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--n" => n = val()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--rounds" => rounds = val()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--dir" => dir = val()?.into(),
            "--configs" => configs = val()?,
            "--workloads" => workloads = val()?,
            "--taskrun" => taskrun = crate::parse_taskrun(&val()?)?,
            "--depth" => depth = val()?.parse().map_err(|e| format!("--depth: {e}"))?,
            "--pin-clients" => pin_clients = true,
            _ => return Err(format!("unknown option {a}")),
        }
    }
    Ok(Opts {
        n,
        rounds,
        dir,
        configs: configs
            .split(',')
            .map(|c| parse_config(c, taskrun))
            .collect::<Result<_, _>>()?,
        workloads: workloads
            .split(',')
            .map(parse_workload)
            .collect::<Result<_, _>>()?,
        depth,
        pin_clients,
    })
}

/// Sets enable_uring for the life of a mount's INIT and puts the old value back.
struct UringSwitch {
    old: Option<String>,
}

impl UringSwitch {
    fn on() -> Result<UringSwitch, String> {
        let old = std::fs::read_to_string(ENABLE_URING)
            .map_err(|e| format!("{ENABLE_URING}: {e} (kernel without FUSE over io_uring?)"))?;
        std::fs::write(ENABLE_URING, "Y").map_err(|e| format!("{ENABLE_URING}: {e}"))?;
        Ok(UringSwitch {
            old: Some(old.trim().to_string()),
        })
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        if let Some(v) = self.old.take() {
            if let Err(e) = std::fs::write(ENABLE_URING, &v) {
                eprintln!("could not restore {ENABLE_URING} to {v}: {e}");
            }
        }
    }
}

/// Run `f` on a helper thread; None if it did not finish in time (the thread is left
/// behind, blocked on the mount that the caller is about to abort).
fn timed<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

fn lstat(p: &CString) -> bool {
    // SAFETY: p is NUL-terminated; st is a plain out-parameter.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::lstat(p.as_ptr(), &mut st) == 0
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// CPU µs and context switches (voluntary + involuntary) of the calling thread so far.
fn thread_usage() -> (f64, f64) {
    // SAFETY: plain out-parameter.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    usage(&ru)
}

fn usage(ru: &libc::rusage) -> (f64, f64) {
    (
        tv_us(ru.ru_utime) + tv_us(ru.ru_stime),
        (ru.ru_nvcsw + ru.ru_nivcsw) as f64,
    )
}

fn tv_us(t: libc::timeval) -> f64 {
    t.tv_sec as f64 * 1e6 + t.tv_usec as f64
}

/// `open(O_RDONLY)`, `statx` of the descriptor forced to ask the filesystem, `close`.
fn open_stat_close(p: &CString) -> bool {
    // SAFETY: p is NUL-terminated; stx is a plain out-parameter; the fd is closed here.
    unsafe {
        let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let mut stx: libc::statx = std::mem::zeroed();
        let ok = libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut stx,
        ) == 0;
        libc::close(fd) == 0 && ok
    }
}

struct ClientResult {
    elapsed: Duration,
    cpu_us: f64,
    switches: f64,
    errors: usize,
}

/// `clients` threads share `n` operations on `dir`; the time is from the common start
/// to the last one's end.
fn run_clients(dir: &Path, n: usize, clients: usize, work: Work, pin: bool) -> ClientResult {
    let barrier = Barrier::new(clients);
    let results: Vec<(Instant, Instant, (f64, f64), usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let names: Vec<CString> = (t..n)
                        .step_by(clients)
                        .map(|j| match work {
                            Work::Create => cpath(&dir.join(format!("c{t}_{j}"))),
                            _ => cpath(&dir.join(format!("f{j}"))),
                        })
                        .collect();
                    if matches!(work, Work::Unlink | Work::OpenStat) {
                        // Untimed: the names' first lookups.
                        for p in &names {
                            lstat(p);
                        }
                    }
                    let mut errors = 0;
                    if pin {
                        crate::uring::pin_to(t % crate::possible_cpus());
                    }
                    barrier.wait();
                    let u0 = thread_usage();
                    let t0 = Instant::now();
                    for p in &names {
                        let ok = match work {
                            Work::Stat => lstat(p),
                            // SAFETY: p is NUL-terminated.
                            Work::Unlink => unsafe { libc::unlink(p.as_ptr()) == 0 },
                            Work::OpenStat => open_stat_close(p),
                            // SAFETY: p is NUL-terminated; the fd is closed at once.
                            Work::Create => unsafe {
                                let fd = libc::open(
                                    p.as_ptr(),
                                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                                    0o644,
                                );
                                fd >= 0 && libc::close(fd) == 0
                            },
                        };
                        if !ok {
                            errors += 1;
                        }
                    }
                    let t1 = Instant::now();
                    let u1 = thread_usage();
                    (t0, t1, (u1.0 - u0.0, u1.1 - u0.1), errors)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let start = results.iter().map(|r| r.0).min().unwrap();
    let end = results.iter().map(|r| r.1).max().unwrap();
    ClientResult {
        elapsed: end - start,
        cpu_us: results.iter().map(|r| r.2 .0).sum(),
        switches: results.iter().map(|r| r.2 .1).sum(),
        errors: results.iter().map(|r| r.3).sum(),
    }
}

struct Sample {
    config: String,
    workload: String,
    round: usize,
    ops: usize,
    elapsed: Duration,
    client_cpu_us: f64,
    server_cpu_us: Option<f64>,
    client_switches: f64,
    server_switches: Option<f64>,
    /// Requests the server answered (or received, for FORGET) during the whole mount.
    requests: Option<u64>,
    stats: String,
}

impl Sample {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Wait for a child, with its resource usage; None on timeout.
fn wait_child(pid: i32, secs: u64) -> Option<(i32, libc::rusage)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut status = 0;
        // SAFETY: plain out-parameters.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            return Some((status, ru));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a FUSE run returns: the clients' result, the server's (CPU µs, context switches),
/// the number of requests it served, and its STATS line.
type FuseRun = (ClientResult, Option<(f64, f64)>, Option<u64>, String);

fn run_fuse(o: &Opts, mnt: &Path, kind: &Kind, w: &Workload) -> Result<FuseRun, String> {
    let Kind::Fuse {
        uring,
        threads,
        clone,
        pin,
        taskrun,
    } = *kind
    else {
        unreachable!()
    };
    let so = ServeOpts {
        mnt: mnt.to_path_buf(),
        uring,
        threads,
        clone,
        depth: o.depth,
        pin,
        taskrun,
        populate: if w.work.populated() { o.n } else { 0 },
        stat_dir: None,
    };
    let switch = if uring {
        Some(UringSwitch::on()?)
    } else {
        None
    };
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let mut child = Command::new(exe)
        .args(so.args())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start server: {e}"))?;
    let pid = child.id() as i32;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    let fail = |msg: String| {
        mount::abort_and_detach(mnt);
        // SAFETY: our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = wait_child(pid, 5);
        Err(msg)
    };
    if line.trim() != "READY" {
        return fail(format!("server did not start (said {line:?})"));
    }
    // The first request waits for INIT and, with io_uring, for every queue to be
    // registered: a mount that never gets there must not hang the benchmark.
    let root = cpath(mnt);
    if timed(10, move || lstat(&root)) != Some(true) {
        return fail("mount did not answer within 10 s: aborted".into());
    }
    drop(switch);
    let dir = match w.work {
        Work::Create => {
            let c = mnt.join("c");
            std::fs::create_dir(&c).map_err(|e| format!("mkdir {}: {e}", c.display()))?;
            c
        }
        _ => mnt.join("d"),
    };
    let r = run_clients(&dir, o.n, w.clients, w.work, o.pin_clients);
    let m = mnt.to_path_buf();
    match timed(10, move || mount::umount(&m, 0)) {
        Some(Ok(())) => {}
        Some(Err(e)) => return fail(format!("umount: {e}")),
        None => return fail("umount hung: aborted".into()),
    }
    let Some((status, ru)) = wait_child(pid, 10) else {
        return fail("server did not exit within 10 s of the unmount".into());
    };
    let mut stats = String::new();
    for l in out.lines().map_while(Result::ok) {
        if let Some(s) = l.strip_prefix("STATS ") {
            stats = s.to_string();
        }
    }
    if status != 0 {
        return Err(format!("server exited with status {status:#x}"));
    }
    let requests = stats
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "via_ring" || *k == "via_dev")
        .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
        .sum();
    Ok((r, Some(usage(&ru)), Some(requests), stats))
}

fn run_kernel(
    o: &Opts,
    mnt: &Path,
    kind: &Kind,
    w: &Workload,
    lower: &Path,
    scratch: &Path,
    round: usize,
) -> Result<ClientResult, String> {
    let dir;
    let mut cleanup = None;
    match kind {
        Kind::Tmpfs => {
            mount::mount_other("tmpfs", mnt, "tmpfs", "mode=755")
                .map_err(|e| format!("mount tmpfs: {e}"))?;
            dir = match w.work {
                Work::Create => mnt.join("c"),
                _ => mnt.join("d"),
            };
            std::fs::create_dir(&dir).map_err(|e| format!("mkdir: {e}"))?;
            if w.work.populated() {
                for j in 0..o.n {
                    std::fs::File::create(dir.join(format!("f{j}")))
                        .map_err(|e| format!("populate tmpfs: {e}"))?;
                }
            }
        }
        Kind::Overlay => {
            let up = scratch.join(format!("up{round}-{}", w.name));
            let wk = scratch.join(format!("wk{round}-{}", w.name));
            for d in [&up, &wk] {
                std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
            }
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                up.display(),
                wk.display()
            );
            mount::mount_other("overlay", mnt, "overlay", &opts)
                .map_err(|e| format!("mount overlay: {e}"))?;
            cleanup = Some((up, wk));
            dir = match w.work {
                Work::Create => {
                    let c = mnt.join("c");
                    std::fs::create_dir(&c).map_err(|e| format!("mkdir: {e}"))?;
                    c
                }
                _ => mnt.join("d"),
            };
        }
        Kind::Fuse { .. } => unreachable!(),
    }
    let r = run_clients(&dir, o.n, w.clients, w.work, o.pin_clients);
    mount::umount(mnt, 0).map_err(|e| format!("umount {}: {e}", mnt.display()))?;
    if let Some((up, wk)) = cleanup {
        let _ = std::fs::remove_dir_all(up);
        let _ = std::fs::remove_dir_all(wk);
    }
    Ok(r)
}

fn median(v: Vec<f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(o: Opts) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("bench needs root (mount, enable_uring)".into());
    }
    let mnt = o.dir.join("mnt");
    let base = o.dir.join("base");
    for d in [&mnt, &base] {
        std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    // Overlay's layers live on a tmpfs of their own, as the FUSE server keeps its tree
    // in memory: the lower names are in the dentry cache, the overlay's are not.
    let need_overlay = o.configs.iter().any(|c| matches!(c.kind, Kind::Overlay));
    if need_overlay {
        mount::mount_other("tmpfs", &base, "tmpfs", "mode=755")
            .map_err(|e| format!("mount tmpfs on {}: {e}", base.display()))?;
        let d = base.join("lower/d");
        std::fs::create_dir_all(&d).map_err(|e| format!("mkdir: {e}"))?;
        std::fs::create_dir_all(base.join("scratch")).map_err(|e| format!("mkdir: {e}"))?;
        for j in 0..o.n {
            std::fs::File::create(d.join(format!("f{j}"))).map_err(|e| format!("populate: {e}"))?;
        }
    }
    let result = run_rounds(&o, &mnt, &base);
    if need_overlay {
        let _ = mount::umount(&base, 0);
    }
    let samples = result?;
    print_summary(&o, &samples);
    Ok(())
}

fn run_rounds(o: &Opts, mnt: &Path, base: &Path) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    println!(
        "# n={} rounds={} cpus={} kernel={}",
        o.n,
        o.rounds,
        crate::possible_cpus(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "round\tworkload\tconfig\tops/s\tms\tclient_cpu_us/op\tserver_cpu_us/op\tclient_csw/op\tserver_csw/op\treq/op\tserver stats"
    );
    for round in 0..o.rounds {
        for w in &o.workloads {
            let k = o.configs.len();
            for i in 0..k {
                // Rotate the order each round so no config always runs first or last.
                let c = &o.configs[(i + round) % k];
                let (r, server_cpu, requests, stats) = match &c.kind {
                    Kind::Fuse { .. } => run_fuse(o, mnt, &c.kind, w)?,
                    kind => (
                        run_kernel(
                            o,
                            mnt,
                            kind,
                            w,
                            &base.join("lower"),
                            &base.join("scratch"),
                            round,
                        )?,
                        None,
                        None,
                        String::new(),
                    ),
                };
                if r.errors > 0 {
                    return Err(format!(
                        "{} {}: {} operations failed",
                        c.name, w.name, r.errors
                    ));
                }
                let s = Sample {
                    config: c.name.clone(),
                    workload: w.name.clone(),
                    round,
                    ops: o.n,
                    elapsed: r.elapsed,
                    client_cpu_us: r.cpu_us,
                    server_cpu_us: server_cpu.map(|u| u.0),
                    client_switches: r.switches,
                    server_switches: server_cpu.map(|u| u.1),
                    requests,
                    stats,
                };
                println!(
                    "{}\t{}\t{}\t{:.0}\t{:.1}\t{:.2}\t{}\t{:.2}\t{}\t{}\t{}",
                    s.round,
                    s.workload,
                    s.config,
                    s.ops_per_s(),
                    s.elapsed.as_secs_f64() * 1e3,
                    s.client_cpu_us / s.ops as f64,
                    s.server_cpu_us
                        .map_or("-".into(), |c| format!("{:.2}", c / s.ops as f64)),
                    s.client_switches / s.ops as f64,
                    s.server_switches
                        .map_or("-".into(), |c| format!("{:.2}", c / s.ops as f64)),
                    s.requests
                        .map_or("-".into(), |r| format!("{:.2}", r as f64 / s.ops as f64)),
                    s.stats
                );
                samples.push(s);
            }
        }
    }
    Ok(samples)
}

fn print_summary(o: &Opts, samples: &[Sample]) {
    println!();
    println!(
        "## medians over {} rounds (best round in brackets), n={}; ratios: median of per-round ratios",
        o.rounds, o.n
    );
    println!();
    println!(
        "| workload | config | ops/s | µs/op | requests/op | µs/request | CPU µs/op (client+server) | context switches/op | vs classic, same threads | vs the round's faster classic |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for w in &o.workloads {
        let pick = |cfg: &str, f: &dyn Fn(&Sample) -> f64| -> Vec<f64> {
            samples
                .iter()
                .filter(|s| s.workload == w.name && s.config == cfg)
                .map(f)
                .collect()
        };
        let best = |v: Vec<f64>| v.into_iter().fold(f64::NAN, f64::max);
        let ops_of = |s: &Sample| s.ops_per_s();
        for c in &o.configs {
            let ops = median(pick(&c.name, &ops_of));
            let top = best(pick(&c.name, &ops_of));
            let us = median(pick(&c.name, &|s| {
                s.elapsed.as_secs_f64() * 1e6 / s.ops as f64
            }));
            let reqs = median(pick(&c.name, &|s| {
                s.requests.map_or(f64::NAN, |r| r as f64 / s.ops as f64)
            }));
            let cpu = median(pick(&c.name, &|s| {
                (s.client_cpu_us + s.server_cpu_us.unwrap_or(0.0)) / s.ops as f64
            }));
            let csw = median(pick(&c.name, &|s| {
                (s.client_switches + s.server_switches.unwrap_or(0.0)) / s.ops as f64
            }));
            // Ratios within one round (the same minute's load), then their median.
            let paired = |base: &dyn Fn(usize) -> f64| -> f64 {
                median(
                    samples
                        .iter()
                        .filter(|s| s.workload == w.name && s.config == c.name)
                        .map(|s| s.ops_per_s() / base(s.round))
                        .collect(),
                )
            };
            let round_ops = |cfg: &str, r: usize| {
                samples
                    .iter()
                    .find(|s| s.workload == w.name && s.config == cfg && s.round == r)
                    .map_or(f64::NAN, |s| s.ops_per_s())
            };
            let (vs, vs_best) = match &c.kind {
                Kind::Fuse {
                    uring: true,
                    threads,
                    ..
                } => {
                    let same = format!("classic{threads}");
                    let classics: Vec<&str> = o
                        .configs
                        .iter()
                        .filter(|c| matches!(c.kind, Kind::Fuse { uring: false, .. }))
                        .map(|c| c.name.as_str())
                        .collect();
                    let f = |v: f64| {
                        if v.is_nan() {
                            "-".into()
                        } else {
                            format!("{v:.2}x")
                        }
                    };
                    (
                        f(paired(&|r| round_ops(&same, r))),
                        f(paired(&|r| {
                            classics
                                .iter()
                                .map(|b| round_ops(b, r))
                                .fold(f64::NAN, f64::max)
                        })),
                    )
                }
                _ => ("-".into(), "-".into()),
            };
            let f = |v: f64, p: usize| {
                if v.is_nan() {
                    "-".into()
                } else {
                    format!("{v:.p$}")
                }
            };
            println!(
                "| {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} |",
                w.name,
                c.name,
                f(ops, 0),
                f(top, 0),
                f(us, 1),
                f(reqs, 2),
                f(us / reqs, 1),
                f(cpu, 1),
                f(csw, 2),
                vs,
                vs_best
            );
        }
    }
}
