//! The store under stress: concurrent commands, `kill -9` in the middle of an import,
//! damaged layers found by `system check`, leftovers and unused data removed by prune.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};
use rustix::process::Signal;

use support::cli::*;
use support::images::*;
use support::procs::signal;
use support::samples::*;

/// An image big enough that importing it takes a while: many small files and some data.
fn big_image() -> Image {
    let mut layers = Vec::new();
    for l in 0..3 {
        let mut b = LayerBuilder::new().dir(&format!("l{l}"), 0o755);
        for d in 0..12 {
            b = b.dir(&format!("l{l}/d{d}"), 0o755);
            for f in 0..50 {
                b = b.file(
                    &format!("l{l}/d{d}/f{f}"),
                    format!("layer {l} dir {d} file {f}").as_bytes(),
                );
            }
        }
        b = b.file(&format!("l{l}/blob"), &vec![l as u8; 1_500_000]);
        layers.push(Layer::new(
            b.build(),
            if l == 1 { Comp::Zstd } else { Comp::Gzip },
        ));
    }
    image(layers)
}

fn tmp_is_empty(root: &Path) -> bool {
    fs::read_dir(root.join("tmp"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn concurrent_imports_keep_one_copy_of_each_layer() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (a, b) = sample_pair();
    let (sa, sb) = (t.path().join("a"), t.path().join("b"));
    write_oci_layout(&sa, &[(&a, Some("a:1"))], false);
    write_oci_layout(&sb, &[(&b, Some("b:1"))], false);
    let spawn = |src: &Path| {
        Command::new(layerfs_bin())
            .arg("--root")
            .arg(&root)
            .arg("import")
            .arg(src)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = vec![spawn(&sa), spawn(&sa), spawn(&sb), spawn(&sb)];
    let mut out = String::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    // Each of the three layers was extracted exactly once.
    assert_eq!(out.matches(": extracted").count(), 3, "{out}");
    assert_eq!(fs::read_dir(root.join("layers/sha256")).unwrap().count(), 3);
    assert!(tmp_is_empty(&root));
    ok(&root, &["system", "check"]);
    let images = ok(&root, &["images"]);
    assert_eq!(images.lines().count(), 3, "{images}");
}

#[test]
fn a_command_waits_for_the_lock() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    ok(&root, &["images"]);
    let (a, _) = sample_pair();
    let src = t.path().join("a");
    write_oci_layout(&src, &[(&a, Some("a:1"))], false);
    let lock = fs::File::open(root.join("lock")).unwrap();
    flock(&lock, FlockOperation::LockExclusive).unwrap();
    let mut child = Command::new(layerfs_bin())
        .arg("--root")
        .arg(&root)
        .arg("import")
        .arg(&src)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "import ran while the lock was held"
    );
    drop(lock);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("waiting for another command"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Loaded image: a:1"));
}

#[test]
fn kill_9_at_any_moment_of_an_import() {
    let t = tempfile::tempdir().unwrap();
    let img = big_image();
    let src = t.path().join("big");
    write_oci_layout(&src, &[(&img, Some("big:1"))], false);

    // How long a whole import takes here.
    let root = t.path().join("timing");
    let start = Instant::now();
    ok(&root, &["import", src.to_str().unwrap()]);
    let full = start.elapsed();

    let steps = 8;
    for i in 0..=steps {
        let root = t.path().join(format!("kill{i}"));
        ok(&root, &["images"]);
        let delay = full * i / steps;
        let mut child = Command::new(layerfs_bin())
            .arg("--root")
            .arg(&root)
            .arg("import")
            .arg(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        signal(child.id(), Signal::KILL);
        let _ = child.wait();

        // Every command still works, and the first one cleans the leftovers.
        let images = ok(&root, &["images"]);
        assert!(tmp_is_empty(&root), "leftovers after kill at {delay:?}");
        assert!(images.lines().count() <= 2, "{images}");
        ok(&root, &["system", "df"]);
        // Any layer that made it into place is complete.
        ok(&root, &["system", "check"]);
        // And the import can simply be run again.
        ok(&root, &["import", src.to_str().unwrap()]);
        ok(&root, &["system", "check"]);
        assert_eq!(
            fs::read(layer_dir(&root, &img.layers[2].diff_id).join("l2/d11/f49")).unwrap(),
            b"layer 2 dir 11 file 49"
        );
    }
}

#[test]
fn check_finds_and_repairs_damaged_layers() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (a, _) = sample_pair();
    let src = t.path().join("a");
    write_oci_layout(&src, &[(&a, Some("a:1"))], false);
    ok(&root, &["import", src.to_str().unwrap()]);
    let out = ok(&root, &["system", "check"]);
    assert!(
        out.contains("checked 2 layers, 4 blobs and ") && out.contains("all intact"),
        "{out}"
    );

    let damaged = layer_dir(&root, &a.layers[0].diff_id).join("etc/os-release");
    fs::write(&damaged, b"NAME=tampered\n").unwrap();
    let o = run(&root, &["system", "check"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("layer {}: damaged", a.layers[0].diff_id)),
        "{out}"
    );
    assert!(out.contains("etc/os-release: content differs"), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("1 damaged layer"), "{err}");
    // A new file, a changed mode: found too.
    fs::write(&damaged, b"NAME=sample\n").unwrap();
    let f = fs::File::options().write(true).open(&damaged).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(MTIME))
        .unwrap();
    drop(f);
    ok(&root, &["system", "check"]);
    fs::write(
        layer_dir(&root, &a.layers[1].diff_id).join("app/intruder"),
        b"x",
    )
    .unwrap();
    let o = run(&root, &["system", "check"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("app/intruder: unexpected entry"));

    let o = run(&root, &["system", "check", "--repair"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("layer {}: removed", a.layers[1].diff_id)),
        "{out}"
    );
    assert!(
        !o.status.success(),
        "the image still needs the removed layer"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be imported again"));
    assert!(!layer_dir(&root, &a.layers[1].diff_id).exists());
    ok(&root, &["images"]);
    // Importing again restores it.
    let out = ok(&root, &["import", src.to_str().unwrap()]);
    assert!(
        out.contains(": extracted") && out.contains("already exists"),
        "{out}"
    );
    ok(&root, &["system", "check"]);
}

#[test]
fn prune_removes_leftovers_untagged_images_and_unused_data() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (a, b) = sample_pair();
    let (sa, sb) = (t.path().join("a"), t.path().join("b"));
    write_oci_layout(&sa, &[(&a, Some("a:1"))], false);
    write_oci_layout(&sb, &[(&b, None)], false);
    ok(&root, &["import", sa.to_str().unwrap()]);
    ok(&root, &["import", sb.to_str().unwrap()]);

    // What a crashed command could leave behind.
    fs::create_dir_all(root.join("tmp/import-1234-dead/layers/x/diff")).unwrap();
    fs::write(root.join("tmp/write-1234-dead"), b"{").unwrap();
    let out = ok(&root, &["system", "prune"]);
    assert!(out.contains("Removed 2 leftover(s)"), "{out}");
    assert!(
        out.contains(&format!("Deleted image: {}", b.config_digest)),
        "{out}"
    );
    assert!(
        out.contains(&format!("Deleted layer: {}", b.layers[1].diff_id)),
        "{out}"
    );
    assert!(
        !out.contains(&format!("Deleted layer: {}", b.layers[0].diff_id)),
        "shared base kept: {out}"
    );
    assert!(out.contains("Total reclaimed space:"), "{out}");
    assert!(tmp_is_empty(&root));
    assert_eq!(fs::read_dir(root.join("layers/sha256")).unwrap().count(), 2);
    ok(&root, &["system", "check"]);

    // Leftovers also go with the next ordinary command.
    fs::create_dir_all(root.join("tmp/import-99-dead")).unwrap();
    ok(&root, &["images"]);
    assert!(tmp_is_empty(&root));

    let out = ok(&root, &["system", "prune", "--all"]);
    assert!(
        out.contains(&format!("Deleted image: {}", a.config_digest)),
        "{out}"
    );
    assert_eq!(fs::read_dir(root.join("layers/sha256")).unwrap().count(), 0);
    assert_eq!(ok(&root, &["images", "-q"]), "");
}
