//! Shell command lines, as root or as another user.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

pub const NOBODY: u32 = 65534;
pub const NOGROUP: u32 = 65534;

/// Run `sh -c script` and return its output, whatever its exit status.
pub fn sh(script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh")
}

/// Run a shell command line; panic with its output when it fails. Returns stdout.
pub fn shell(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `sh -c script` as uid/gid in `/` (std drops the supplementary groups when root
/// changes uid).
pub fn sh_as(uid: u32, gid: u32, script: &str) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).uid(uid).gid(gid).current_dir("/");
    c.output().expect("run sh")
}

/// Run a shell command line as another user (real and effective ids, no supplementary
/// groups unless given) with a umask; returns (exit code, stdout+stderr).
pub fn shell_as(uid: u32, gid: u32, groups: &[u32], umask: u32, cmd: &str) -> (i32, String) {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        c.arg(format!("--groups={}", g.join(",")));
    }
    let out = c
        .args(["--", "sh", "-c"])
        .arg(format!("umask {umask:03o}; {cmd}"))
        .output()
        .expect("run setpriv");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), s)
}

/// A command's exit status and output, for failure messages.
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
