//! Layers and images built here, with every digest right (tests break them on purpose
//! afterwards): layer tars with every entry type (hostile names on request), gzip and
//! zstd blobs, configs, manifests, and the source forms `import` reads (OCI layout,
//! oci-archive, docker-archive).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

impl Comp {
    pub fn media_type(self) -> &'static str {
        match self {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

pub fn compress(data: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::None => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(data, 1).unwrap(),
    }
}

pub const MTIME: u64 = 1_700_000_000;

/// Builds one layer tar.
pub struct LayerBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.b.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_full(path, data, 0o644, 0, 0, MTIME)
    }

    pub fn file_full(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A file with xattrs in a PAX header (`SCHILY.xattr.NAME`).
    pub fn file_xattrs(mut self, path: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> Self {
        let exts: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(exts.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self.file(path, data)
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn fifo(mut self, path: &str) -> Self {
        let mut h = header(tar::EntryType::Fifo, 0o640, 0);
        self.b.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    pub fn chardev(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    /// OCI whiteout for `path` (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), b"")
    }

    /// OCI opaque marker in `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    /// An entry whose name (and link name) are written as given, bypassing the tar
    /// writer's own checks: for hostile archives.
    pub fn raw(mut self, kind: tar::EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Self {
        let mut h = header(kind, 0o644, data.len() as u64);
        {
            let g = h.as_gnu_mut().unwrap();
            g.name = [0; 100];
            g.name[..name.len()].copy_from_slice(name);
            g.linkname = [0; 100];
            g.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// A layer as an image carries it.
#[derive(Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub comp: Comp,
    pub blob: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
}

impl Layer {
    pub fn new(tar: Vec<u8>, comp: Comp) -> Layer {
        let blob = compress(&tar, comp);
        Layer {
            digest: sha(&blob),
            diff_id: sha(&tar),
            tar,
            comp,
            blob,
        }
    }
}

/// An image: config, manifest and layers, with every digest right (tests break them on
/// purpose afterwards).
#[derive(Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub arch: String,
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

pub fn image(layers: Vec<Layer>) -> Image {
    image_for(layers, host_arch(), None)
}

/// An image whose config may list other diff-ids than its layers have.
pub fn image_for(layers: Vec<Layer>, arch: &str, diff_ids: Option<Vec<String>>) -> Image {
    let diff_ids = diff_ids.unwrap_or_else(|| layers.iter().map(|l| l.diff_id.clone()).collect());
    let config = serde_json::to_vec(&json!({
        "created": "2024-01-02T03:04:05Z",
        "architecture": arch,
        "os": "linux",
        "config": { "Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [],
    }))
    .unwrap();
    let manifest = manifest_for(&config, &layers);
    Image {
        config_digest: sha(&config),
        manifest_digest: sha(&manifest),
        config,
        manifest,
        layers,
        arch: arch.to_string(),
    }
}

pub fn manifest_for(config: &[u8], layers: &[Layer]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(config),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.comp.media_type(),
            "digest": l.digest,
            "size": l.blob.len(),
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn put_layout_blob(dir: &Path, data: &[u8]) {
    let p = dir.join("blobs/sha256").join(hex_of(&sha(data)));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Write an OCI image layout holding `images`, each listed in index.json with an
/// optional ref name; with `platforms`, descriptors carry their platform.
pub fn write_oci_layout(dir: &Path, images: &[(&Image, Option<&str>)], platforms: bool) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for (img, name) in images {
        for l in &img.layers {
            put_layout_blob(dir, &l.blob);
        }
        put_layout_blob(dir, &img.config);
        put_layout_blob(dir, &img.manifest);
        let mut d = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": img.manifest_digest,
            "size": img.manifest.len(),
        });
        if let Some(n) = name {
            d["annotations"] = json!({ "org.opencontainers.image.ref.name": n });
        }
        if platforms {
            d["platform"] = json!({ "architecture": img.arch, "os": "linux" });
        }
        manifests.push(d);
    }
    let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Tar up a directory (an oci-archive from a layout, say).
pub fn tar_dir(dir: &Path, out: &Path) {
    let f = fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap().flush().unwrap();
}

/// `docker save` form: manifest.json, `<hex>.json` configs, `<n>/layer.tar` layers.
pub fn write_docker_archive(out: &Path, images: &[(&Image, &[&str])]) {
    let f = fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    let mut entries = Vec::new();
    let mut added = std::collections::HashSet::new();
    let mut add = |b: &mut tar::Builder<fs::File>, name: &str, data: &[u8]| {
        if added.insert(name.to_string()) {
            let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        }
    };
    for (img, tags) in images {
        let cfg_name = format!("{}.json", hex_of(&img.config_digest));
        add(&mut b, &cfg_name, &img.config);
        let mut layers = Vec::new();
        for l in &img.layers {
            let name = format!("{}/layer.tar", &hex_of(&l.diff_id)[..16]);
            add(&mut b, &name, &l.tar);
            layers.push(name);
        }
        entries.push(json!({ "Config": cfg_name, "RepoTags": tags, "Layers": layers }));
    }
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&entries).unwrap(),
    );
    b.into_inner().unwrap().flush().unwrap();
}

/// The extracted dir of a layer in a store.
pub fn layer_dir(root: &Path, diff_id: &str) -> PathBuf {
    root.join("layers/sha256")
        .join(hex_of(diff_id))
        .join("diff")
}
