//! Two containers of one image, both mounted, both writing, deleting and renaming the
//! same paths: neither sees the other's changes, and the image's layer dirs do not
//! change at all.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::fingerprint::*;
use support::store_env::*;
use support::tree::*;

/// The same operations in every container, with its own content.
fn churn(m: &Path, tag: &str) {
    fs::write(m.join("etc/os-release"), format!("NAME={tag}\n")).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("usr/lib/libx.so"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, tag.as_bytes()))
        .unwrap();
    fs::remove_file(m.join("srv/app/conf/a.conf")).unwrap();
    fs::rename(m.join("srv/app"), m.join("srv/moved")).unwrap();
    fs::remove_dir_all(m.join("opq")).unwrap();
    fs::create_dir(m.join("opq")).unwrap();
    fs::write(m.join("opq/only"), tag).unwrap();
    fs::write(m.join("new-file"), tag).unwrap();
    fs::set_permissions(m.join("usr/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(format!("/{tag}"), m.join("new-link")).unwrap();
}

#[test]
fn two_containers_never_see_each_other() {
    if support::skip_unless_root() {
        return;
    }
    let env = Env::with_sample();
    let mut layers = env.layer_dirs("sample:1");
    // The file objects the layers' stubs name are lower data too.
    layers.push(env.root.join("objects"));
    let before: Vec<_> = layers
        .iter()
        .map(|l| (store_fingerprint(l), snapshot(l, &SnapOpts::with_mtimes())))
        .collect();
    env.create("sample:1", "one");
    env.create("sample:1", "two");
    env.create("sample:1", "untouched");
    let m1 = env.mount("one");
    let m2 = env.mount("two");
    let m3 = env.mount("untouched");
    let pristine = snapshot(&m3, &SnapOpts::default());

    // Interleaved: one, then two, the same paths.
    churn(&m1, "one");
    churn(&m2, "two");
    // And a change only one of them makes.
    fs::remove_file(m1.join("etc/passwd")).unwrap();
    fs::write(m2.join("srv/moved/version"), "two's version").unwrap();

    for (m, tag, other) in [(&m1, "one", "two"), (&m2, "two", "one")] {
        assert_eq!(
            fs::read_to_string(m.join("etc/os-release")).unwrap(),
            format!("NAME={tag}\n")
        );
        let lib = fs::read(m.join("usr/lib/libx.so")).unwrap();
        assert!(lib.ends_with(tag.as_bytes()) && !lib.ends_with(other.as_bytes()));
        // The hard link follows its own container's copy.
        assert_eq!(fs::read(m.join("usr/lib/libx.so.1")).unwrap(), lib);
        assert!(!m.join("srv/app").exists());
        assert!(!m.join("srv/moved/conf/a.conf").exists());
        assert!(m.join("srv/moved/conf/b.conf").is_file());
        assert_eq!(fs::read_to_string(m.join("opq/only")).unwrap(), tag);
        assert!(!m.join("opq/keep1").exists());
        assert_eq!(fs::read_to_string(m.join("new-file")).unwrap(), tag);
        assert_eq!(
            fs::read_link(m.join("new-link")).unwrap(),
            Path::new(&format!("/{tag}"))
        );
    }
    assert!(!m1.join("etc/passwd").exists());
    assert!(m2.join("etc/passwd").is_file());
    assert_eq!(
        fs::read_to_string(m1.join("srv/moved/version")).unwrap(),
        "v2\n"
    );
    assert_eq!(
        fs::read_to_string(m2.join("srv/moved/version")).unwrap(),
        "two's version"
    );
    // The third container still shows the image exactly.
    assert_same_tree(
        &pristine,
        &snapshot(&m3, &SnapOpts::default()),
        "untouched container",
    );

    // Each diff shows only its own changes.
    let d1 = env.ok(&["diff", "one"]);
    let d2 = env.ok(&["diff", "two"]);
    assert!(
        d1.contains("D /etc/passwd\n") && !d2.contains("D /etc/passwd\n"),
        "{d1}\n{d2}"
    );
    assert!(d2.contains("A /srv/moved/version\n"), "{d2}");
    assert!(env.ok(&["diff", "untouched"]).is_empty());

    // Unmount and mount again: still separate.
    env.ok(&["umount", "one", "two"]);
    let m1 = env.mount("one");
    let m2 = env.mount("two");
    assert_eq!(fs::read_to_string(m1.join("new-file")).unwrap(), "one");
    assert_eq!(fs::read_to_string(m2.join("new-file")).unwrap(), "two");

    // The image's layers never changed (content, metadata, xattrs, mtimes).
    for (l, (fp, snap)) in layers.iter().zip(&before) {
        assert_eq!(&store_fingerprint(l), fp, "layer {} changed", l.display());
        assert_same_tree(snap, &snapshot(l, &SnapOpts::with_mtimes()), "layer dir");
    }
}
