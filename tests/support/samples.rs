//! The sample images the tests share: a pair sharing a base layer, and the container
//! tests' image with every kind of entry (and a layer holding a shell that runs in it).

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::images::{Comp, Image, Layer, LayerBuilder, image};

/// Three layers: a base shared by two images, and one app layer each.
pub fn sample_pair() -> (Image, Image) {
    let base = Layer::new(
        LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/os-release", b"NAME=sample\n")
            .dir("usr", 0o755)
            .dir("usr/lib", 0o755)
            .file("usr/lib/libbase.so", &vec![7u8; 300_000])
            .build(),
        Comp::Gzip,
    );
    let app1 = Layer::new(
        LayerBuilder::new()
            .dir("app", 0o755)
            .file("app/one", &vec![1u8; 50_000])
            .build(),
        Comp::Gzip,
    );
    let app2 = Layer::new(
        LayerBuilder::new()
            .dir("app", 0o755)
            .file("app/two", &vec![2u8; 70_000])
            .build(),
        Comp::Zstd,
    );
    (image(vec![base.clone(), app1]), image(vec![base, app2]))
}

/// A base layer with every kind of entry: nested dirs, hard links, symlinks (harmless
/// targets), xattrs, a setuid file, a fifo, a device node, files of another owner.
pub fn base_layer() -> Layer {
    Layer::new(
        LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/os-release", b"NAME=sample\nVERSION=1\n")
            .file("etc/motd", b"welcome\n")
            .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
            .dir("usr", 0o755)
            .dir("usr/bin", 0o755)
            .file_full(
                "usr/bin/tool",
                b"#!/bin/sh\necho tool\n",
                0o755,
                0,
                0,
                1_700_000_000,
            )
            .file_full("usr/bin/suid", b"setuid\n", 0o4755, 0, 0, 1_700_000_000)
            .symlink("usr/bin/abs", "/usr/bin/tool")
            .dir("usr/lib", 0o755)
            .file("usr/lib/libx.so", &vec![42u8; 200_000])
            .hardlink("usr/lib/libx.so.1", "usr/lib/libx.so")
            .symlink("usr/lib/libx.link", "libx.so")
            .dir("srv", 0o755)
            .dir("srv/app", 0o755)
            .file("srv/app/version", b"v1\n")
            .dir("srv/app/conf", 0o750)
            .file("srv/app/conf/a.conf", b"a=1\n")
            .file("srv/app/conf/b.conf", b"b=2\n")
            .dir("var", 0o755)
            .dir("var/log", 0o755)
            .file("var/log/old.log", b"old\n")
            .dir("opq", 0o755)
            .file("opq/keep1", b"1")
            .file("opq/keep2", b"2")
            .dir("data", 0o755)
            .file_xattrs("data/tagged", b"tagged", &[("user.mime", b"text/plain")])
            .dir("dev", 0o755)
            .chardev("dev/null", 1, 3)
            .dir("run", 0o755)
            .fifo("run/fifo")
            .dir("home", 0o755)
            .dir("home/user", 0o755)
            .file_full(
                "home/user/notes",
                b"mine\n",
                0o600,
                1000,
                1000,
                1_700_000_000,
            )
            .build(),
        Comp::Gzip,
    )
}

/// A second layer: changes a file, deletes one (OCI whiteout) and adds some.
pub fn app_layer() -> Layer {
    Layer::new(
        LayerBuilder::new()
            .dir("srv", 0o755)
            .dir("srv/app", 0o755)
            .file("srv/app/version", b"v2\n")
            .dir("etc", 0o755)
            .whiteout("etc/motd")
            .file("etc/issue", b"sample 2\n")
            .build(),
        Comp::Zstd,
    )
}

/// The sample image: base + app.
pub fn sample_image() -> Image {
    image(vec![base_layer(), app_layer()])
}

/// A second image sharing the base layer.
pub fn sibling_image() -> Image {
    let other = Layer::new(
        LayerBuilder::new()
            .dir("opt", 0o755)
            .file("opt/other", b"other image\n")
            .build(),
        Comp::Gzip,
    );
    image(vec![base_layer(), other])
}

/// A layer holding the host's `/bin/sh` (dash) and the libraries it needs, so a shell
/// runs chrooted in the image.
pub fn shell_layer() -> Layer {
    let sh = fs::canonicalize("/bin/sh").unwrap();
    let out = Command::new("ldd").arg(&sh).output().unwrap();
    let mut b = LayerBuilder::new().dir("bin", 0o755).file_full(
        "bin/sh",
        &fs::read(&sh).unwrap(),
        0o755,
        0,
        0,
        1_700_000_000,
    );
    let mut dirs = std::collections::BTreeSet::new();
    let mut files = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let path = l
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let rel = p.strip_prefix("/").unwrap().to_path_buf();
            let mut d = rel.parent();
            while let Some(x) = d {
                if x.as_os_str().is_empty() {
                    break;
                }
                dirs.insert(x.to_path_buf());
                d = x.parent();
            }
            files.push((rel, fs::read(&p).unwrap()));
        }
    }
    for d in dirs {
        b = b.dir(d.to_str().unwrap(), 0o755);
    }
    for (rel, data) in files {
        b = b.file_full(rel.to_str().unwrap(), &data, 0o755, 0, 0, 1_700_000_000);
    }
    b = b.dir("root", 0o700).dir("tmp", 0o1777);
    Layer::new(b.build(), Comp::None)
}
