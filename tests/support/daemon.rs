//! Foreground daemons (`layerfs -f`) that a test can kill, signal and wait for.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cli::layerfs_bin;
use crate::mounts::{clean_mount, is_mounted, umount};
use crate::stack::Stack;

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
        let cmd = if prefix.is_empty() {
            Command::new(&bin)
        } else {
            let mut c = Command::new(prefix[0]);
            c.args(&prefix[1..]).arg(&bin);
            c
        };
        Self::spawn(cmd, stack, mnt, extra)
    }

    /// `layerfs -f` as user `uid` (its group too, no others), from `bin`: a copy of the
    /// binary that user can reach. The dirs it writes must be the user's.
    pub fn start_as(
        uid: u32,
        bin: &Path,
        stack: &Stack,
        mnt: &Path,
        extra: &[&str],
    ) -> Result<Daemon, String> {
        fs::create_dir_all(mnt).unwrap();
        let _ = std::process::Command::new("chown")
            .arg(format!("{uid}:{uid}"))
            .arg(mnt)
            .status();
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        Self::spawn(cmd, stack, mnt, extra)
    }

    fn spawn(
        mut cmd: Command,
        stack: &Stack,
        mnt: &Path,
        extra: &[&str],
    ) -> Result<Daemon, String> {
        // Waiting for the mount below would not notice a mount left there before.
        if is_mounted(mnt) {
            return Err(format!("{} is a mount point already", mnt.display()));
        }
        cmd.arg("-f")
            .arg("-o")
            .arg(stack.layerfs_options(extra))
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

    /// Unmount and wait for the daemon to exit. A busy mount is retried for a while: a
    /// child another thread is just starting holds copies of this process's open
    /// files (in the mount too) until it execs.
    pub fn stop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while umount(&self.mnt, false) == Err(libc::EBUSY) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
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
