//! `shell`: run a command chrooted in a mounted container, as root, for inspecting it
//! with ordinary tools (`layerfs shell c1 -- dpkg -l`). Not a container runtime: no
//! namespaces (for an ordinary user, a user namespace mapping only that user, so that it
//! may chroot), and `/proc`, `/sys` and `/dev` are whatever the image has.

use std::path::Path;
use std::process::{Command, ExitStatus};

use crate::error::{Error, ErrorKind};
use crate::store::Store;
use crate::sys;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment: the image's `Env` (from its config, when the store still has it),
/// else a default `PATH`; `TERM` from the caller; `HOME=/root`.
pub(crate) fn environment(store: &Store, image: &crate::store::Digest) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let cfg = store
        .images()
        .ok()
        .and_then(|catalog| catalog.get(image).cloned())
        .and_then(|r| store.read_blob(&r.config_digest).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if let Some(list) = cfg
        .as_ref()
        .and_then(|c| c.pointer("/config/Env"))
        .and_then(|e| e.as_array())
    {
        for v in list.iter().filter_map(|v| v.as_str()) {
            if let Some((k, v)) = v.split_once('=') {
                env.push((k.to_string(), v.to_string()));
            }
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    env.retain(|(k, _)| k != "TERM" && k != "HOME");
    env.push(("TERM".into(), term));
    env.push(("HOME".into(), "/root".into()));
    env
}

/// Why a command could not be started, with the exit code a shell would give.
#[derive(Debug)]
pub(crate) struct NotStarted {
    pub error: Error,
    /// 127 when the program does not exist, 126 when it cannot be run.
    pub code: u8,
}

/// Run `cmd` (default `/bin/sh`) chrooted at `root`; returns its exit status.
pub(crate) fn run(
    root: &Path,
    cmd: &[String],
    env: &[(String, String)],
) -> std::result::Result<ExitStatus, NotStarted> {
    let (prog, args) = match cmd.split_first() {
        Some((p, a)) => (p.as_str(), a),
        None => ("/bin/sh", &[][..]),
    };
    let mut c = Command::new(prog);
    c.args(args).env_clear();
    for (k, v) in env {
        c.env(k, v);
    }
    sys::chroot_command(&mut c, root).map_err(|e| NotStarted {
        error: Error::io(root.display(), e),
        code: 126,
    })?;
    c.status().map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        let msg = format!(
            "{prog}: {} in the container",
            crate::error::describe(&e).to_lowercase()
        );
        NotStarted {
            code,
            error: Error::with_kind(ErrorKind::of_io(&e), msg).with_source(e),
        }
    })
}
