//! Command-line front end: argument definitions and output, no logic.
//!
//! Each area has its own file with a clap `Subcommand` enum flattened into the top level.

pub mod container_cmds;
pub mod launcher;
pub mod overlay_opts;
pub mod progress;
pub mod registry_cmds;
#[cfg(feature = "snapshotter")]
pub mod snapshotter_cmd;
pub mod store_cmds;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Options every command sees.
#[derive(Debug, Clone, clap::Args)]
pub struct Globals {
    /// Store directory [default: /var/lib/layerfs as root, else $XDG_DATA_HOME/layerfs]
    #[arg(long, global = true, env = "LAYERFS_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// More log output (repeat for more)
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Globals {
    /// The store root: `--root`, `$LAYERFS_ROOT`, or the per-user default.
    pub fn store_root(&self) -> PathBuf {
        if let Some(r) = &self.root {
            return r.clone();
        }
        if crate::sys::is_privileged() {
            return PathBuf::from("/var/lib/layerfs");
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        data.join("layerfs")
    }

    /// The user namespace the store is used in (see [`maps_for_store`]); inside one,
    /// its maps.
    pub fn id_maps(&self) -> crate::error::Result<Option<crate::sys::IdMaps>> {
        if !crate::sys::in_initial_userns() {
            return Ok(crate::sys::IdMaps::of_this_process());
        }
        maps_for_store(&self.store_root())
    }

    /// Open the store with the maps it is used with (from outside its namespace too).
    pub fn open_store(&self) -> crate::error::Result<crate::store::Store> {
        crate::store::Store::open_with_ids(&self.store_root(), self.id_maps()?.as_ref())
    }
}

/// The maps the store at `root` is used with: the user's ranges (see [`subid_maps`]),
/// except for a store made without them (it has layers and no `idmap`), which stays in
/// the plain mode it was made in: a user who gains ranges keeps the store as it was
/// (a store made with ranges is never read without them: `Store::open_with_ids`).
pub fn maps_for_store(root: &std::path::Path) -> crate::error::Result<Option<crate::sys::IdMaps>> {
    let maps = subid_maps()?;
    if maps.is_some()
        && root.join("layers").exists()
        && !root.join(crate::store::idmode::IDMAP_FILE).exists()
    {
        return Ok(None);
    }
    Ok(maps)
}

/// The variable that turns the subordinate-id mode off (`off`) or leaves it to the
/// ranges in `/etc/subuid` and `/etc/subgid` (`auto`, the default).
pub const USERNS_ENV: &str = "LAYERFS_USERNS";

/// The maps an ordinary user's store commands run under: the user as 0 and its
/// subordinate ranges one after another from 1, when `/etc/subuid` and `/etc/subgid`
/// both give the user some (and `LAYERFS_USERNS` is not `off`); `None` for root and for
/// users without ranges.
pub fn subid_maps() -> crate::error::Result<Option<crate::sys::IdMaps>> {
    use crate::sys;
    match std::env::var(USERNS_ENV).as_deref() {
        Ok("off") => return Ok(None),
        Ok("auto") | Ok("") | Err(_) => {}
        Ok(v) => {
            return Err(crate::error::Error::invalid_input(format!(
                "{USERNS_ENV}={v}: say auto (the default) or off"
            )));
        }
    }
    let uid = sys::geteuid();
    if uid == 0 {
        return Ok(None);
    }
    let ranges = |f: &str| sys::subordinate_ranges(std::path::Path::new(f), uid);
    let (u, g) = (ranges("/etc/subuid"), ranges("/etc/subgid"));
    if u.is_empty() || g.is_empty() {
        return Ok(None);
    }
    Ok(Some(sys::IdMaps::for_user((uid, sys::getegid()), &u, &g)))
}

#[derive(Debug, Parser)]
#[command(
    name = "layerfs",
    version,
    about = "Container image layers stored once by digest, mounted through FUSE",
    after_help = "A fuse-overlayfs style call (layerfs -o lowerdir=... MOUNTPOINT) mounts directly."
)]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a layer stack: -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W] MOUNTPOINT
    #[command(disable_help_flag = true)]
    Overlay {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    #[command(flatten)]
    Store(store_cmds::StoreCommand),
    #[command(flatten)]
    Container(container_cmds::ContainerCommand),
    #[command(flatten)]
    Registry(registry_cmds::RegistryCommand),
    /// Serve containerd's snapshots API over the store (a containerd proxy plugin)
    #[cfg(feature = "snapshotter")]
    Snapshotter(snapshotter_cmd::SnapshotterArgs),
}

/// Print a one-line error and return the failure exit code.
pub fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("layerfs: {msg}");
    ExitCode::from(1)
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .try_init();
}

/// `layerfs overlay ...` and the fuse-overlayfs-compatible entry.
pub fn run_overlay_cli(args: &[String]) -> ExitCode {
    let a = match overlay_opts::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("layerfs: {e}");
            eprintln!("{}", overlay_opts::USAGE.lines().next().unwrap_or(""));
            return ExitCode::from(2);
        }
    };
    if a.show_help {
        println!("{}", overlay_opts::USAGE);
        return ExitCode::SUCCESS;
    }
    if a.show_version {
        println!("layerfs version {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    init_logging(a.debug);
    match launcher::run_overlay(&a.request(), a.foreground) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Whether the arguments are a fuse-overlayfs-style invocation (`PROG -o ... MNT`).
fn is_overlay_invocation(prog: &str, rest: &[String]) -> bool {
    if prog.contains("fuse-overlayfs") || prog.ends_with("-overlay") {
        return true;
    }
    rest.first()
        .is_some_and(|a| a == "-o" || a.starts_with("-o") || a == "-f" || a == "-d")
}

/// Store commands of a user with subordinate ids run again inside a user namespace
/// over them (see `sys::userns`), on the store chosen out here; `None` to go on here.
/// Mounting and unmounting stay outside: `fusermount3` works only here (the mount
/// daemon enters the namespace itself).
fn rerun_in_userns(cli: &Cli) -> Option<ExitCode> {
    let outside = match &cli.cmd {
        Command::Overlay { .. } => true,
        Command::Container(c) => c.stays_outside_userns(),
        #[cfg(feature = "snapshotter")]
        Command::Snapshotter(_) => true,
        _ => false,
    };
    if outside || !crate::sys::in_initial_userns() {
        return None;
    }
    let maps = match maps_for_store(&cli.globals.store_root()) {
        Ok(Some(m)) => m,
        Ok(None) => return None,
        Err(e) => return Some(fail(e)),
    };
    if let Command::Container(c) = &cli.cmd
        && let Err(e) = container_cmds::before_userns(c, &cli.globals)
    {
        return Some(fail(e));
    }
    let root = cli.globals.store_root();
    match crate::sys::rerun_in_userns(&maps, &[("LAYERFS_ROOT", root.as_os_str())]) {
        Ok(code) => Some(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(e) => Some(fail(format!(
            "cannot run in a user namespace over the subordinate ids of uid {}: {e}",
            crate::sys::geteuid()
        ))),
    }
}

/// Program entry.
pub fn main() -> ExitCode {
    // A store command rerun in a user namespace enters it first, while single-threaded.
    match crate::sys::enter_userns_if_rerun() {
        None | Some(Ok(true)) => {}
        // The parent could not write our maps and says why.
        Some(Ok(false)) => return ExitCode::from(1),
        Some(Err(e)) => return fail(format!("cannot enter a user namespace: {e}")),
    }
    // Before anything of ours is open (the namespace's handshake pipes are closed).
    crate::sys::note_inherited_fds();
    // Behave like other Unix tools when output goes to a closed pipe (`| head`).
    crate::sys::default_sigpipe();
    // Mounts and in-process views of lazily pulled images fetch what they lack.
    crate::overlay::layers::set_fetcher_factory(crate::registry::lazy::fetcher_for);
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let prog = argv
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest = &argv[1.min(argv.len())..];
    if is_overlay_invocation(&prog, rest) {
        return run_overlay_cli(rest);
    }
    let cli = Cli::parse();
    init_logging(cli.globals.verbose > 0);
    if let Some(code) = rerun_in_userns(&cli) {
        return code;
    }
    match cli.cmd {
        Command::Overlay { args } => run_overlay_cli(&args),
        Command::Store(c) => finish(store_cmds::run(c, &cli.globals)),
        Command::Container(c) => container_cmds::run(c, &cli.globals),
        Command::Registry(c) => finish(registry_cmds::run(c, &cli.globals)),
        #[cfg(feature = "snapshotter")]
        Command::Snapshotter(a) => finish(snapshotter_cmd::run(a, &cli.globals)),
    }
}

/// Exit code for a command's result, printing the error on one line.
pub fn finish(res: crate::error::Result<()>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
