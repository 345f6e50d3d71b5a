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

/// Program entry.
pub fn main() -> ExitCode {
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
