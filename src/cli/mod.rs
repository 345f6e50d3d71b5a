//! Command-line front end: argument definitions and output, no logic.

pub mod overlay_opts;

use std::process::ExitCode;

use crate::daemon;

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
    match daemon::run_overlay(a) {
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
    if rest.first().is_some_and(|a| a == "overlay") {
        return run_overlay_cli(&rest[1..]);
    }
    if rest.first().is_some_and(|a| a == "--version" || a == "-V") {
        println!("layerfs version {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!("usage: layerfs overlay -o lowerdir=...[,upperdir=...,workdir=...] MOUNTPOINT");
    ExitCode::from(2)
}
