//! Lay the functions a mount daemon runs side by side in the executable
//! (`link/hot-functions.txt`, made by `scripts/hot-functions`).
//!
//! The kernel maps a program's code 64 KiB at a time around each page it runs, so a
//! daemon whose few hundred functions lie scattered over 8 MiB of code keeps 2–3 MiB of it
//! resident; side by side they take about 0.6 MiB. Only LLD reads a symbol ordering file,
//! and it is the linker of this target from Rust 1.90 on unless one is configured; in
//! every other case the list is left out and nothing else changes. A name the build does
//! not have (the list is older than the code, or another compiler) is skipped silently.

use std::env;
use std::path::Path;
use std::process::Command;

const LIST: &str = "link/hot-functions.txt";

fn main() {
    println!("cargo:rerun-if-changed={LIST}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    println!("cargo:rerun-if-env-changed=LAYERFS_NO_HOT_ORDER");
    if env::var_os("LAYERFS_NO_HOT_ORDER").is_some() || !links_with_lld() {
        return;
    }
    let list = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join(LIST);
    if list.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether rustc links this build with its own LLD: x86_64 GNU/Linux, Rust 1.90 or
/// later, and no linker or linker flavour chosen in the flags or the environment.
fn links_with_lld() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
    {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags
        .split('\x1f')
        .any(|f| f.contains("linker") || f.contains("link-self-contained") || f.contains("fuse-ld"))
    {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
