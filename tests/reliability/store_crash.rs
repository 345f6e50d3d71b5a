//! Store crashes: `kill -9` of `layerfs import` and of `layerfs commit` at a random moment.
//! Afterwards `system check` is clean (the first command clears what the killed one left),
//! the store's `tmp/` is empty, what the store held before is intact (an earlier image; for
//! commit, the container with its changes), and running the command again succeeds with
//! the right content (for commit, the new image mounts with the changes).
//!
//! Size: `LAYERFS_STORE_KILLS` rounds per command (default 10; the full run uses 50),
//! `LAYERFS_STORE_KILL_SEED` (default 5).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cli::*;
use support::images::*;
use support::report::*;
use support::rng::*;
use support::samples::*;
use support::shell::*;
use support::store_env::*;

/// Start `layerfs --root ROOT ARGS…`, kill it with SIGKILL after `delay`, reap it.
fn kill_after(root: &Path, args: &[&str], delay: Duration) {
    let mut child = Command::new(layerfs_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("LAYERFS_ROOT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn layerfs");
    std::thread::sleep(delay);
    // Child::kill sends SIGKILL.
    let _ = child.kill();
    let _ = child.wait();
}

/// A command that must succeed.
fn ok_cmd(root: &Path, args: &[&str]) -> Result<String, String> {
    let o = run(root, args);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!("layerfs {args:?}: {}", out_str(&o)))
    }
}

/// `system check` exits 0 and finds everything intact.
fn check_clean(root: &Path) -> Result<(), String> {
    let out = ok_cmd(root, &["system", "check"])?;
    if out.contains("all intact") {
        Ok(())
    } else {
        Err(format!("system check: {out}"))
    }
}

fn tmp_empty(root: &Path) -> Result<(), String> {
    let left: Vec<_> = fs::read_dir(root.join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("store tmp dir holds {left:?}"))
    }
}

fn file_content(l: usize, d: usize, f: usize) -> Vec<u8> {
    format!("layer {l} dir {d} file {f}\n")
        .repeat(1 + f % 7)
        .into_bytes()
}

/// Four layers of small files and one incompressible 5 MiB blob each: an import of a few
/// hundred ms.
fn big_image() -> Image {
    let mut layers = Vec::new();
    for l in 0..4 {
        let mut b = LayerBuilder::new().dir(&format!("l{l}"), 0o755);
        for d in 0..10 {
            b = b.dir(&format!("l{l}/d{d}"), 0o755);
            for f in 0..60 {
                b = b.file(&format!("l{l}/d{d}/f{f}"), &file_content(l, d, f));
            }
        }
        b = b.file(&format!("l{l}/blob"), &Rng::new(l as u64).bytes(5 << 20));
        let comp = [Comp::Gzip, Comp::Zstd, Comp::None, Comp::Gzip][l];
        layers.push(Layer::new(b.build(), comp));
    }
    image(layers)
}

/// The imported layers hold what the image has.
fn layers_right(root: &Path, img: &Image) -> Result<(), String> {
    for (l, layer) in img.layers.iter().enumerate() {
        let dir = layer_dir(root, &layer.diff_id);
        for (d, f) in [(0, 0), (4, 33), (9, 59)] {
            let p = dir.join(format!("l{l}/d{d}/f{f}"));
            if !p.exists() {
                return Err(format!("{}: missing", p.display()));
            }
            if read_layer_file(&p) != file_content(l, d, f) {
                return Err(format!("{}: wrong content", p.display()));
            }
        }
        let blob = read_layer_file(&dir.join(format!("l{l}/blob")));
        if blob != Rng::new(l as u64).bytes(5 << 20) {
            return Err(format!("layer {l}: blob content differs"));
        }
    }
    Ok(())
}

#[test]
fn kill_9_during_import() {
    let rounds = env_u64("LAYERFS_STORE_KILLS", 10);
    let mut rng = Rng::new(env_u64("LAYERFS_STORE_KILL_SEED", 5));
    let mut report = Report::new("store-crash", "import");
    let t = tempfile::tempdir().unwrap();
    let img = big_image();
    let src = t.path().join("big");
    write_oci_layout(&src, &[(&img, Some("big:1"))], false);
    let src = src.to_str().unwrap();
    let small = t.path().join("small");
    write_oci_layout(&small, &[(&sample_image(), Some("keep:1"))], false);
    let small = small.to_str().unwrap();

    // How long a whole import takes here.
    let timing = t.path().join("timing");
    let start = Instant::now();
    ok_cmd(&timing, &["import", src]).unwrap();
    let full = start.elapsed();
    fs::remove_dir_all(&timing).unwrap();
    eprintln!("a whole import takes {full:?}");

    let mut cut_short = 0;
    for round in 0..rounds {
        let root = t.path().join(format!("r{round}"));
        ok_cmd(&root, &["import", small]).unwrap();
        let delay = full.mul_f64(rng.below(1001) as f64 / 1000.0);
        kill_after(&root, &["import", src], delay);
        cut_short += u64::from(tmp_empty(&root).is_err());
        let at = format!("round {round} (kill after {} ms)", delay.as_millis());
        report.check(&format!("{at}: system check clean"), check_clean(&root));
        report.check(
            &format!("{at}: tmp empty after the next command"),
            tmp_empty(&root),
        );
        report.check(
            &format!("{at}: earlier image kept"),
            ok_cmd(&root, &["images"]).and_then(|o| {
                if o.contains("keep") {
                    Ok(())
                } else {
                    Err(format!("keep:1 gone: {o}"))
                }
            }),
        );
        report.check(
            &format!("{at}: import again succeeds"),
            ok_cmd(&root, &["import", src]).map(|_| ()),
        );
        report.check(&format!("{at}: layers right"), layers_right(&root, &img));
        report.check(
            &format!("{at}: system check clean after"),
            check_clean(&root),
        );
        report.check(&format!("{at}: tmp empty after"), tmp_empty(&root));
        let _ = fs::remove_dir_all(&root);
    }
    eprintln!("{cut_short} of {rounds} kills left work in progress behind");
    report.finish();
}

/// The changes a round writes through the mount: a few MiB in all.
fn changes(round: u64) -> Vec<(String, Vec<u8>)> {
    let mut r = Rng::new(100 + round);
    let mut v: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("data/big{i}"), r.bytes(1 << 20)))
        .collect();
    for i in 0..200 {
        v.push((
            format!("data/small/{}/f{i}", i % 10),
            format!("round {round} file {i}\n").into_bytes(),
        ));
    }
    v.push(("etc/os-release".into(), b"NAME=changed\n".to_vec()));
    v
}

/// The changed files read through a mount of `what` (a container name).
fn changes_visible(env: &Env, what: &str, round: u64) -> Result<(), String> {
    let o = run(&env.root, &["mount", what]);
    if !o.status.success() {
        return Err(format!("mount {what}: {}", out_str(&o)));
    }
    let m = std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let mut res = Ok(());
    for (p, want) in changes(round) {
        match fs::read(m.join(&p)) {
            Ok(got) if got == want => {}
            Ok(_) => {
                res = Err(format!("{what}: {p}: wrong content"));
                break;
            }
            Err(e) => {
                res = Err(format!("{what}: {p}: {e}"));
                break;
            }
        }
    }
    if res.is_ok() && m.join("etc/passwd").exists() {
        res = Err(format!("{what}: deleted etc/passwd is back"));
    }
    let u = run(&env.root, &["umount", what]);
    if !u.status.success() {
        return Err(format!("umount {what}: {}", out_str(&u)));
    }
    res
}

/// Create a container `name` from base:1 and write the round's changes into it.
fn prepare(env: &Env, name: &str, round: u64) -> Result<(), String> {
    ok_cmd(&env.root, &["create", "base:1", "--name", name])?;
    let m = env.mount(name);
    for (p, data) in changes(round) {
        let p = m.join(p);
        fs::create_dir_all(p.parent().unwrap()).map_err(|e| e.to_string())?;
        fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    fs::remove_file(m.join("etc/passwd")).map_err(|e| e.to_string())?;
    ok_cmd(&env.root, &["umount", name]).map(|_| ())
}

#[test]
fn kill_9_during_commit() {
    if support::skip_unless_root() {
        return;
    }
    let rounds = env_u64("LAYERFS_STORE_KILLS", 10);
    let mut rng = Rng::new(env_u64("LAYERFS_STORE_KILL_SEED", 5) + 1);
    let mut report = Report::new("store-crash", "commit");
    // Every mount below the env's dir is unmounted when it is dropped, even on a panic.
    let env = Env::new();
    env.import(&sample_image(), "base:1");

    // How long a whole commit takes here.
    prepare(&env, "timing", 999).unwrap();
    let start = Instant::now();
    ok_cmd(&env.root, &["commit", "timing", "timing:1"]).unwrap();
    let full = start.elapsed();
    eprintln!("a whole commit takes {full:?}");

    let mut cut_short = 0;
    for round in 0..rounds {
        let name = format!("c{round}");
        let newimg = format!("img{round}:1");
        if let Err(e) = prepare(&env, &name, round) {
            report.check(&format!("round {round}: prepare the container"), Err(e));
            continue;
        }
        let delay = full.mul_f64(rng.below(1001) as f64 / 1000.0);
        kill_after(&env.root, &["commit", &name, &newimg], delay);
        cut_short += u64::from(tmp_empty(&env.root).is_err());
        let at = format!("round {round} (kill after {} ms)", delay.as_millis());
        report.check(&format!("{at}: system check clean"), check_clean(&env.root));
        report.check(
            &format!("{at}: tmp empty after the next command"),
            tmp_empty(&env.root),
        );
        report.check(
            &format!("{at}: container still there"),
            ok_cmd(&env.root, &["ps", "-a"]).and_then(|o| {
                if o.contains(&name) {
                    Ok(())
                } else {
                    Err(format!("{name} gone: {o}"))
                }
            }),
        );
        report.check(
            &format!("{at}: container keeps its changes"),
            changes_visible(&env, &name, round),
        );
        report.check(
            &format!("{at}: commit again succeeds"),
            ok_cmd(&env.root, &["commit", &name, &newimg]).map(|_| ()),
        );
        let from = format!("from{round}");
        report.check(
            &format!("{at}: the new image mounts with the changes"),
            ok_cmd(&env.root, &["create", &newimg, "--name", &from])
                .and_then(|_| changes_visible(&env, &from, round)),
        );
        report.check(
            &format!("{at}: system check clean after"),
            check_clean(&env.root),
        );
        report.check(&format!("{at}: tmp empty after"), tmp_empty(&env.root));
    }
    drop(env);
    eprintln!("{cut_short} of {rounds} kills left work in progress behind");
    report.finish();
}

/// `kill -9` of `system migrate` at random moments: the store stays one `system check`
/// passes (each layer is the old tree or the converted one), and a rerun finishes the
/// conversion with every file's content as it was.
#[test]
fn kill_9_during_migrate() {
    use layerfs::store::extract::ExtractOptions;
    use layerfs::store::import::Quiet;
    use layerfs::store::{ImportOptions, Store};
    let rounds = env_u64("LAYERFS_STORE_KILLS", 10);
    let mut rng = Rng::new(env_u64("LAYERFS_STORE_KILL_SEED", 7));
    let mut report = Report::new("store-crash", "migrate");
    let t = tempfile::tempdir().unwrap();
    let img = big_image();
    let src = t.path().join("big");
    write_oci_layout(&src, &[(&img, Some("big:1"))], false);
    // A store as written before the file store: whole files in the layer trees.
    let old_store = |root: &Path| {
        let mut s = Store::open(root).unwrap();
        s.set_extract_options(ExtractOptions::plain(support::privilege::is_root()));
        s.import(&src, &ImportOptions::default(), &Quiet).unwrap();
    };
    let timing = t.path().join("timing");
    old_store(&timing);
    let start = Instant::now();
    ok_cmd(&timing, &["system", "migrate"]).unwrap();
    let full = start.elapsed();
    fs::remove_dir_all(&timing).unwrap();
    eprintln!("a whole migration takes {full:?}");

    for round in 0..rounds {
        let root = t.path().join(format!("m{round}"));
        old_store(&root);
        let delay = full.mul_f64(rng.below(1001) as f64 / 1000.0);
        kill_after(&root, &["system", "migrate"], delay);
        let at = format!("round {round} (kill after {} ms)", delay.as_millis());
        report.check(&format!("{at}: system check clean"), check_clean(&root));
        report.check(&format!("{at}: layers right"), layers_right(&root, &img));
        report.check(
            &format!("{at}: migrate again finishes"),
            ok_cmd(&root, &["system", "migrate"]).map(|_| ()),
        );
        report.check(
            &format!("{at}: nothing left to convert"),
            ok_cmd(&root, &["system", "migrate"]).and_then(|o| {
                if o.contains("0 layer(s) converted") {
                    Ok(())
                } else {
                    Err(o)
                }
            }),
        );
        report.check(
            &format!("{at}: layers right after"),
            layers_right(&root, &img),
        );
        report.check(
            &format!("{at}: system check clean after"),
            check_clean(&root),
        );
        report.check(&format!("{at}: tmp empty after"), tmp_empty(&root));
        let _ = fs::remove_dir_all(&root);
    }
    report.finish();
}
