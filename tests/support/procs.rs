//! Processes, found through `/proc`: the daemons serving a mount or a container, whether
//! one still runs, its memory, and signals to it.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::cli::layerfs_bin;

/// A running process and its command line.
pub struct Process {
    pub pid: u32,
    pub args: Vec<Vec<u8>>,
}

/// Every process this one can see (the one scan of `/proc`).
pub fn processes() -> Vec<Process> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            let args = cmd.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
            Some(Process { pid, args })
        })
        .collect()
}

/// Live layerfs daemons (this build's binary) whose command line names `mnt`, old ones
/// that are still exiting included.
pub fn daemons_for(mnt: &Path) -> Vec<u32> {
    let want = mnt.as_os_str().as_bytes();
    let bin = layerfs_bin();
    processes()
        .into_iter()
        .filter(|p| {
            p.args.iter().any(|a| a == want)
                && fs::read_link(format!("/proc/{}/exe", p.pid)).is_ok_and(|x| x == bin)
                && pid_alive(p.pid)
        })
        .map(|p| p.pid)
        .collect()
}

/// The pid of the layerfs daemon serving `mnt`.
pub fn daemon_pid(mnt: &Path) -> Option<u32> {
    daemons_for(mnt).into_iter().next()
}

/// The pid of the daemon serving a container (by the container id in its command line).
pub fn container_daemon_pid(id: &str) -> Option<u32> {
    let needle = format!("fsname=layerfs:{id}");
    processes()
        .into_iter()
        .find(|p| {
            p.args
                .iter()
                .any(|a| String::from_utf8_lossy(a).contains(&needle))
        })
        .map(|p| p.pid)
}

/// Whether a process runs with this pid (a zombie does not).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid).unwrap_or(true)
}

fn is_zombie(pid: u32) -> Option<bool> {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .map(|s| s.contains(") Z "))
}

/// Wait until a process is gone or a zombie (at most 10 s): the daemons are reparented,
/// so nobody here reaps them.
pub fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        if is_zombie(pid) == Some(true) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CPUs online now (`/sys/devices/system/cpu/online`, e.g. `0-3,6`).
pub fn online_cpus() -> Vec<usize> {
    let s = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    out
}

/// (name, scheduling policy) of each thread of `pid` (`/proc/PID/task/TID/stat` field
/// 41: 0 `SCHED_OTHER`, 5 `SCHED_IDLE`).
pub fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut v = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let stat = fs::read_to_string(t.join("stat")).unwrap_or_default();
        let name = stat
            .split_once(" (")
            .and_then(|(_, r)| r.rsplit_once(") "))
            .map_or("", |(n, _)| n)
            .to_string();
        if let Some(policy) = stat_field(&stat, 41) {
            v.push((name, policy as u32));
        }
    }
    v
}

/// Numeric field `n` (1-based, as `man 5 proc` counts) of a `/proc/.../stat` line; the
/// name in field 2 may hold spaces and parentheses, so counting starts after its end.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = stat.rsplit_once(") ")?.1;
    rest.split(' ').nth(n.checked_sub(3)?)?.parse().ok()
}

/// CPU-bound processes, `per_cpu` pinned to each online CPU, for as long as this lives.
pub struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    /// Returns once each has spun for a few scheduler ticks.
    pub fn start(per_cpu: usize) -> CpuHogs {
        let hogs = CpuHogs(
            online_cpus()
                .into_iter()
                .flat_map(|c| std::iter::repeat_n(c, per_cpu))
                .map(|c| {
                    std::process::Command::new("taskset")
                        .args(["-c", &c.to_string(), "sh", "-c", "while :; do :; done"])
                        .spawn()
                        .expect("taskset (util-linux)")
                })
                .collect(),
        );
        // utime and stime.
        let ticks = |pid: u32| -> u64 {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat_field(&stat, 14).unwrap_or(0) + stat_field(&stat, 15).unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while hogs.0.iter().any(|c| ticks(c.id()) < 5) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        hogs
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A number from a `/proc/.../status` file (`field` without its colon; a `kB` unit is
/// dropped), or `None` if the file or the field is missing.
pub fn status_number(status: impl AsRef<Path>, field: &str) -> Option<u64> {
    fs::read_to_string(status)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_number(format!("/proc/{pid}/status"), "VmRSS").unwrap_or(0)
}

/// Send a signal to a process; one that has exited already is not an error here.
pub fn signal(pid: u32, sig: Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .expect("a valid pid");
    let _ = kill_process(pid, sig);
}
