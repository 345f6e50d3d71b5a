//! Hostile images: generated malformed and malicious archives run through `import`, in
//! every source form the import detects (layer tar plain, gzip or zstd; OCI layout and
//! docker-archive, with right or wrong digests). Kinds: `..` anywhere in a path, absolute
//! paths, files under a symlinked parent, hard links out of the layer or to names not seen
//! yet, device nodes, very long names (GNU longname, PAX path) and huge PAX records, bad
//! header checksums, streams cut at a random byte, decompression bombs, duplicate entries,
//! whiteouts of `.`/`..`/odd names, and random byte flips of a valid tar.
//!
//! Every case must end in a clear error or a correct layer, never a panic, never a write
//! outside the store (canary dirs beside the store root are the targets of every escape
//! attempt and must stay untouched), an empty store `tmp/` afterwards, and a layer that
//! `system check` finds intact, whose hard links all stay inside it. Most cases call the
//! library in-process (panics caught); every 50th runs the `layerfs` binary and also checks
//! the exit status and the one `layerfs:` line on stderr.
//!
//! The store lives on a tmpfs (`/dev/shm`) when there is one: successful imports `syncfs`,
//! which on a disk shared with other work would dominate the run time.
//!
//! Size: `LAYERFS_HOSTILE_CASES` (default 10000; the full run uses 200000),
//! `LAYERFS_HOSTILE_SEED` (default 11).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use layerfs::store::import::Quiet;
use layerfs::store::{ExpansionLimit, ImportOptions, Store};

use support::cli::*;
use support::images::*;
use support::report::*;
use support::rng::*;

/// The in-process store stops a bomb early: past 8 MiB, at most 100:1.
const TEST_LIMIT: ExpansionLimit = ExpansionLimit {
    floor: 8 << 20,
    ratio: 100,
};

// ------------------------------------------------------------------------ raw tar

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}", v, w = field.len() - 1);
    let b = s.as_bytes();
    let b = &b[b.len().saturating_sub(field.len() - 1)..];
    field[..b.len()].copy_from_slice(b);
    field[b.len()] = 0;
}

/// One ustar header block, checksum right (or off by one with `bad_sum`).
fn header(name: &[u8], kind: u8, size: u64, link: &[u8], mode: u32, bad_sum: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size.min(0o77777777777));
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let mut sum: u32 = h.iter().map(|b| *b as u32).sum();
    if bad_sum {
        sum += 1;
    }
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn pax_record(key: &str, val: &[u8]) -> Vec<u8> {
    let body = key.len() + val.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(val);
    r.push(b'\n');
    r
}

/// A tar written block by block, so that anything can be put in it.
#[derive(Default, Clone)]
struct RawTar {
    data: Vec<u8>,
}

impl RawTar {
    fn block_data(&mut self, data: &[u8]) {
        self.data.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.data.extend(std::iter::repeat_n(0u8, pad));
    }

    fn raw(&mut self, name: &[u8], kind: u8, link: &[u8], data: &[u8], mode: u32) {
        self.data
            .extend_from_slice(&header(name, kind, data.len() as u64, link, mode, false));
        self.block_data(data);
    }

    /// An entry; names and targets over 100 bytes go in a GNU longname/longlink or a
    /// PAX header (`pax`).
    fn entry(&mut self, name: &[u8], kind: u8, link: &[u8], data: &[u8], pax: bool) {
        if pax && (name.len() > 100 || link.len() > 100) {
            let mut recs = Vec::new();
            if name.len() > 100 {
                recs.extend(pax_record("path", name));
            }
            if link.len() > 100 {
                recs.extend(pax_record("linkpath", link));
            }
            self.raw(b"././@PaxHeader", b'x', b"", &recs, 0o644);
        } else {
            if name.len() > 100 {
                let mut n = name.to_vec();
                n.push(0);
                self.raw(b"././@LongLink", b'L', b"", &n, 0o644);
            }
            if link.len() > 100 {
                let mut n = link.to_vec();
                n.push(0);
                self.raw(b"././@LongLink", b'K', b"", &n, 0o644);
            }
        }
        let mode = match kind {
            b'5' => 0o755,
            b'2' => 0o777,
            _ => 0o644,
        };
        self.raw(name, kind, link, data, mode);
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name.as_bytes(), b'0', b"", data, false);
    }
    fn dir(&mut self, name: &str) {
        self.entry(name.as_bytes(), b'5', b"", b"", false);
    }
    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name.as_bytes(), b'2', target.as_bytes(), b"", false);
    }
    fn hardlink(&mut self, name: &str, target: &str) {
        self.entry(name.as_bytes(), b'1', target.as_bytes(), b"", false);
    }

    fn finish(mut self) -> Vec<u8> {
        self.data.extend_from_slice(&[0u8; 1024]);
        self.data
    }
}

// ------------------------------------------------------------------------ cases

/// What a case must end in.
#[derive(Debug, Clone)]
enum Expect {
    /// An error whose message contains each string.
    Refuse(Vec<String>),
    /// A successful import with these files (path, content; `None`: any non-file).
    Accept(Vec<(String, Option<Vec<u8>>)>),
    /// Either a clear error or a correct layer.
    Either,
}

/// How the layer reaches `import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Tar,
    Gzip,
    Zstd,
    /// OCI layout dir; `bad`: 0 right digests, 1 wrong diff-id, 2 altered blob.
    Oci(Comp, u8),
    /// docker-archive tar; `bad`: 0 right, 1 wrong diff-id.
    Docker(u8),
}

struct Case {
    kind: &'static str,
    /// The layer tar (or already compressed stream, see `pre`).
    tar: Vec<u8>,
    /// `tar` is a finished blob of this compression (cut streams, bombs): no wrapping.
    pre: Option<Comp>,
    form: Form,
    expect: Expect,
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "etc",
    "usr",
    "x y",
    "d\u{e9}j\u{e0}",
    ".hidden",
    "..a",
];

fn rand_name(rng: &mut Rng) -> String {
    let mut s = rng.pick(NAMES).to_string();
    if rng.chance(40) {
        s.push_str(&rng.below(100).to_string());
    }
    s
}

fn rand_path(rng: &mut Rng, max: u64) -> Vec<String> {
    (0..rng.range(1, max)).map(|_| rand_name(rng)).collect()
}

/// A relative path that climbs `ups` levels to the canary dir beside the store.
fn climb(ups: u64, rest: &str) -> String {
    format!("{}canary/{rest}", "../".repeat(ups as usize))
}

/// A small valid layer to put hostile entries after (or to damage).
fn benign(rng: &mut Rng, t: &mut RawTar) {
    for i in 0..rng.range(0, 3) {
        let p = format!("ok{i}/{}", rand_name(rng));
        let data = {
            let n = rng.below(700) as usize;
            rng.bytes(n)
        };
        t.file(&p, &data);
    }
}

/// A case of one of `kinds`; `big`: for the binary (its bomb must beat the default limit).
fn gen_case(rng: &mut Rng, canary: &Path, kinds: &[&'static str], big: bool) -> Case {
    let kind = *rng.pick(kinds);
    let mut t = RawTar::default();
    let abs_canary = canary.display().to_string();
    let mut pre = None;
    let mut forced_form = None;
    let expect = match kind {
        "dotdot" => {
            benign(rng, &mut t);
            let mut comps = rand_path(rng, 4);
            let at = rng.below(comps.len() as u64 + 1) as usize;
            for _ in 0..rng.range(1, 6) {
                comps.insert(at, "..".into());
            }
            if rng.chance(50) {
                comps.push("canary".into());
                comps.push("pwned".into());
            }
            let name = comps.join("/");
            let k = *rng.pick(b"05236");
            t.entry(name.as_bytes(), k, b"/etc", b"x", rng.chance(30));
            Expect::Refuse(vec!["\"..\" refused".into()])
        }
        "absolute" => {
            benign(rng, &mut t);
            let name = if rng.chance(50) {
                format!("{abs_canary}/pwned")
            } else {
                format!("/{}", rand_path(rng, 3).join("/"))
            };
            let k = *rng.pick(b"0526");
            t.entry(name.as_bytes(), k, b"x", b"x", rng.chance(30));
            Expect::Refuse(vec!["absolute path refused".into()])
        }
        "symlink-parent" => {
            benign(rng, &mut t);
            let dir = if rng.chance(50) { "d/" } else { "" };
            if !dir.is_empty() {
                t.dir("d");
            }
            let target = match rng.below(4) {
                0 => abs_canary.clone(),
                1 => climb(rng.range(1, 8), ""),
                2 => ".".into(),
                _ => "/".into(),
            };
            t.symlink(&format!("{dir}lnk"), &target);
            let under = if rng.chance(50) { "pwned" } else { "sub/pwned" };
            let k = *rng.pick(b"05261");
            let name = format!("{dir}lnk/{under}");
            t.entry(name.as_bytes(), k, b"x", b"x", false);
            Expect::Refuse(vec![format!("parent {dir}lnk is a symlink")])
        }
        "hardlink-out" => {
            benign(rng, &mut t);
            let target = match rng.below(4) {
                0 => format!("{abs_canary}/file"),
                1 => climb(rng.range(1, 8), "file"),
                2 => format!("a/{}", climb(rng.range(1, 8), "file")),
                _ => "/etc/hostname".into(),
            };
            t.hardlink(&rand_name(rng), &target);
            Expect::Refuse(vec!["hard link to".into()])
        }
        "hardlink-through-symlink" => {
            t.symlink("out", &abs_canary);
            t.hardlink("pw", "out/file");
            Expect::Refuse(vec![
                "hard link to out/file, which is not in the layer".into(),
            ])
        }
        "hardlink-unseen" => {
            benign(rng, &mut t);
            let later = format!("later{}", rng.below(1000));
            t.hardlink("early", &later);
            t.file(&later, b"late");
            Expect::Refuse(vec![format!(
                "hard link to {later}, which is not in the layer"
            )])
        }
        "hardlink-dir" => {
            t.dir("d");
            t.hardlink("h", if rng.chance(50) { "d" } else { "." });
            Expect::Refuse(vec!["entry h: hard link to".into()])
        }
        "devices" => {
            benign(rng, &mut t);
            let mut want = Vec::new();
            for i in 0..rng.range(1, 4) {
                let k = *rng.pick(b"346");
                let mut h = header(format!("dev{i}").as_bytes(), k, 0, b"", 0o640, false);
                octal(&mut h[329..337], rng.below(300));
                octal(&mut h[337..345], rng.below(300));
                h[148..156].copy_from_slice(b"        ");
                let sum: u32 = h.iter().map(|b| *b as u32).sum();
                h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
                t.data.extend_from_slice(&h);
                want.push((format!("dev{i}"), None));
            }
            Expect::Accept(want)
        }
        "long-name" => {
            // Deep paths past 100 bytes, sometimes with a component past NAME_MAX.
            let mut comps = rand_path(rng, 40);
            let too_long = rng.chance(20);
            if too_long {
                comps.push("n".repeat(300));
            } else {
                comps.push("leaf-with-a-long-name".repeat(3));
            }
            let name = comps.join("/");
            let data = {
                let n = rng.below(600) as usize;
                rng.bytes(n)
            };
            let pax = rng.chance(50);
            if rng.chance(30) {
                let target = "t".repeat(rng.range(101, 3000) as usize);
                t.entry(name.as_bytes(), b'2', target.as_bytes(), b"", pax);
                if too_long {
                    Expect::Either
                } else {
                    Expect::Accept(vec![(name, None)])
                }
            } else {
                t.entry(name.as_bytes(), b'0', b"", &data, pax);
                if too_long {
                    Expect::Either
                } else {
                    Expect::Accept(vec![(name, Some(data))])
                }
            }
        }
        "huge-pax" => {
            let n = rng.range(1 << 10, 2 << 20) as usize;
            let mut recs = pax_record("comment", &vec![b'c'; n]);
            if rng.chance(50) {
                recs.extend(pax_record(
                    "SCHILY.xattr.user.big",
                    &vec![b'v'; n.min(60_000)],
                ));
            }
            if rng.chance(30) {
                // A record whose length field lies.
                recs.extend_from_slice(b"99999999 path=x\n");
            }
            t.raw(b"././@PaxHeader", b'x', b"", &recs, 0o644);
            t.file("after-pax", b"data");
            Expect::Either
        }
        "huge-declared-header" => {
            // An extension header that declares gigabytes and then stops.
            let k = *rng.pick(b"xLKg");
            t.data.extend_from_slice(&header(
                b"././@LongLink",
                k,
                rng.range(1 << 30, 0o77777777777),
                b"",
                0o644,
                false,
            ));
            t.block_data(&{
                let n = rng.below(4096) as usize;
                rng.bytes(n)
            });
            Expect::Refuse(vec![])
        }
        "bad-checksum" => {
            t.file("first", b"1");
            benign(rng, &mut t);
            t.data
                .extend_from_slice(&header(b"bad", b'0', 3, b"", 0o644, true));
            t.block_data(b"bad");
            Expect::Refuse(vec!["checksum".into()])
        }
        "truncated" => {
            benign(rng, &mut t);
            t.file("big", &{
                let n = rng.range(600, 5000) as usize;
                rng.bytes(n)
            });
            let full = t.clone().finish();
            let comp = *rng.pick(&[Comp::None, Comp::Gzip, Comp::Zstd]);
            let mut blob = compress(&full, comp);
            let cut = rng.range(1, blob.len() as u64 - 1) as usize;
            blob.truncate(cut);
            pre = Some(comp);
            t = RawTar { data: blob };
            if comp == Comp::None {
                Expect::Either
            } else {
                Expect::Refuse(vec![])
            }
        }
        "bomb" => {
            pre = Some(if rng.chance(50) {
                Comp::Gzip
            } else {
                Comp::Zstd
            });
            t = RawTar {
                data: bomb(pre.unwrap(), rng.chance(50), if big { 1024 } else { 64 }),
            };
            Expect::Refuse(vec!["decompression bomb".into()])
        }
        "dup-same" => {
            let p = rand_path(rng, 3).join("/");
            t.file(&p, b"first");
            t.file(&p, b"second");
            Expect::Accept(vec![(p, Some(b"second".to_vec()))])
        }
        "dup-file-dir" => {
            t.file("p", b"file");
            t.dir("p");
            t.file("p/in", b"inside");
            Expect::Accept(vec![("p/in".into(), Some(b"inside".to_vec()))])
        }
        "dup-dir-file" => {
            t.dir("p");
            t.file("p/in", b"inside");
            t.dir("p/sub");
            t.file("p/sub/deep", b"deep");
            t.file("p", b"file");
            Expect::Accept(vec![("p".into(), Some(b"file".to_vec()))])
        }
        "dup-symlink-file" => {
            // A symlink replaced by a file of the same name: the file lands in the
            // layer, not at the symlink's target.
            t.symlink("s", &format!("{abs_canary}/file"));
            t.file("s", b"replaced");
            Expect::Accept(vec![("s".into(), Some(b"replaced".to_vec()))])
        }
        "whiteout-odd" => {
            benign(rng, &mut t);
            let (name, expect) = match rng.below(8) {
                0 => (".wh...", Expect::Refuse(vec!["invalid name".into()])),
                1 => (".wh..", Expect::Refuse(vec!["invalid name".into()])),
                2 => (".wh.", Expect::Refuse(vec!["invalid name".into()])),
                3 => ("a/.wh...", Expect::Refuse(vec!["invalid name".into()])),
                4 => (".wh..wh..opq", Expect::Accept(vec![])),
                5 => ("deep/er/.wh..wh..opq", Expect::Accept(vec![])),
                6 => ("a/.wh.b/c", Expect::Either),
                _ => (".wh.x/y/.wh.z", Expect::Either),
            };
            let k = if rng.chance(80) {
                b'0'
            } else {
                *rng.pick(b"521")
            };
            t.entry(name.as_bytes(), k, b"a", b"", false);
            if k == b'0' { expect } else { Expect::Either }
        }
        "whiteout-existing" => {
            t.dir("w");
            t.file("w/f", b"x");
            t.file(".wh.w", b"");
            // As root the whiteout becomes the kernel's form: a 0/0 device named `w`.
            Expect::Accept(vec![("w".into(), None)])
        }
        "byte-flips" => {
            t.dir("d");
            t.file("d/f", &{
                let n = rng.below(2000) as usize;
                rng.bytes(n)
            });
            t.symlink("d/s", "f");
            t.hardlink("d/h", "d/f");
            let mut data = t.finish();
            for _ in 0..rng.range(1, 8) {
                let i = rng.below(data.len() as u64) as usize;
                data[i] ^= 1 << rng.below(8);
            }
            t = RawTar { data };
            forced_form = Some(());
            Expect::Either
        }
        "benign" => {
            t.dir("ok");
            t.file("ok/file", b"fine");
            t.symlink("ok/abs", &abs_canary);
            t.hardlink("ok/hard", "ok/file");
            Expect::Accept(vec![
                ("ok/file".into(), Some(b"fine".to_vec())),
                ("ok/hard".into(), Some(b"fine".to_vec())),
            ])
        }
        _ => unreachable!("{kind}"),
    };
    let tar = match (pre, forced_form) {
        (Some(_), _) | (None, Some(())) => t.data,
        (None, None) => t.finish(),
    };
    let form = match pre {
        Some(Comp::None) => Form::Tar,
        Some(Comp::Gzip) => Form::Gzip,
        Some(Comp::Zstd) => Form::Zstd,
        None => match rng.below(10) {
            0..=2 => Form::Tar,
            3 => Form::Gzip,
            4 => Form::Zstd,
            5..=7 => Form::Oci(
                *rng.pick(&[Comp::None, Comp::Gzip, Comp::Zstd]),
                if rng.chance(80) {
                    0
                } else {
                    rng.range(1, 2) as u8
                },
            ),
            _ => Form::Docker(if rng.chance(80) { 0 } else { 1 }),
        },
    };
    let mut expect = expect;
    if matches!(form, Form::Oci(_, b) | Form::Docker(b) if b != 0) {
        expect = Expect::Refuse(vec![]);
    }
    Case {
        kind,
        tar,
        pre,
        form,
        expect,
    }
}

/// A decompression bomb: a tar of zeros (or a tar header for a file of 8 GiB followed by
/// zeros), as `mib` concatenated gzip members or zstd frames of 1 MiB of zeros each: 1 GiB
/// of output from about 1 MiB (gzip) or a few KiB (zstd).
fn bomb(comp: Comp, file: bool, mib: usize) -> Vec<u8> {
    static MEMBERS: OnceLock<HashMap<&'static str, Vec<u8>>> = OnceLock::new();
    let m = MEMBERS.get_or_init(|| {
        let zeros = vec![0u8; 1 << 20];
        let mut m = HashMap::new();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).unwrap();
        m.insert("gz", gz.finish().unwrap());
        m.insert("zst", zstd::encode_all(&zeros[..], 19).unwrap());
        m
    });
    let (key, c) = match comp {
        Comp::Gzip => ("gz", Comp::Gzip),
        _ => ("zst", Comp::Zstd),
    };
    let mut out = Vec::new();
    if file {
        out.extend(compress(
            &header(b"zeros", b'0', 0o77777777777, b"", 0o644, false),
            c,
        ));
    }
    for _ in 0..mib {
        out.extend_from_slice(&m[key]);
    }
    out
}

/// Write the case's source under `dir`; returns the path to import.
fn write_source(c: &Case, dir: &Path, rng: &mut Rng) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let file = |ext: &str, data: &[u8]| {
        let p = dir.join(format!("layer.{ext}"));
        fs::write(&p, data).unwrap();
        p
    };
    match (c.pre, c.form) {
        (Some(Comp::Gzip), _) => return file("tar.gz", &c.tar),
        (Some(Comp::Zstd), _) => return file("tar.zst", &c.tar),
        (Some(Comp::None), _) => return file("tar", &c.tar),
        _ => {}
    }
    match c.form {
        Form::Tar => file("tar", &c.tar),
        Form::Gzip => file("tar.gz", &compress(&c.tar, Comp::Gzip)),
        Form::Zstd => file("tar.zst", &compress(&c.tar, Comp::Zstd)),
        Form::Oci(comp, bad) => {
            let base = Layer::new(
                LayerBuilder::new().file("base", b"base").build(),
                Comp::Gzip,
            );
            let layer = Layer::new(c.tar.clone(), comp);
            let img = if bad == 1 {
                let ids = vec![base.diff_id.clone(), sha(&rng.bytes(8))];
                image_for(vec![base, layer.clone()], host_arch(), Some(ids))
            } else {
                image(vec![base, layer.clone()])
            };
            let src = dir.join("oci");
            write_oci_layout(&src, &[(&img, Some("hostile:1"))], false);
            if bad == 2 {
                let p = src.join("blobs/sha256").join(hex_of(&layer.digest));
                let mut data = fs::read(&p).unwrap();
                let i = rng.below(data.len() as u64) as usize;
                data[i] ^= 0x40;
                fs::write(&p, data).unwrap();
            }
            src
        }
        Form::Docker(bad) => {
            let layer = Layer::new(c.tar.clone(), Comp::None);
            let img = if bad == 1 {
                image_for(vec![layer], host_arch(), Some(vec![sha(&rng.bytes(8))]))
            } else {
                image(vec![layer])
            };
            let p = dir.join("docker.tar");
            write_docker_archive(&p, &[(&img, &["hostile:1"])]);
            p
        }
    }
}

// ------------------------------------------------------------------------ checks

/// Names under `dir` (recursively, not following symlinks), with type and size.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let md = e.path().symlink_metadata().unwrap();
            out.push(format!(
                "{} {:o} {} {}",
                e.path().strip_prefix(dir).unwrap().display(),
                md.mode(),
                md.len(),
                md.nlink()
            ));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Everything a layer dir holds stays inside it: every hard-linked file has all its
/// links in the layer (a link to a file outside would count one more).
fn links_inside(diff: &Path) -> Result<(), String> {
    let mut counts: HashMap<u64, (u64, u64, PathBuf)> = HashMap::new();
    let mut stack = vec![diff.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))? {
            let e = e.unwrap();
            let md = e.path().symlink_metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.nlink() > 1 {
                let c = counts.entry(md.ino()).or_insert((0, md.nlink(), e.path()));
                c.0 += 1;
            }
        }
    }
    for (seen, nlink, p) in counts.values() {
        if seen != nlink {
            return Err(format!(
                "{}: {nlink} links, only {seen} in the layer (a link leads outside)",
                p.display()
            ));
        }
    }
    Ok(())
}

struct World {
    t: PathBuf,
    root: PathBuf,
    canary: PathBuf,
    canary_before: Vec<String>,
    top_before: Vec<String>,
}

impl World {
    fn new(t: &Path) -> World {
        let root = t.join("store");
        let canary = t.join("canary");
        fs::create_dir_all(canary.join("dir")).unwrap();
        fs::write(canary.join("file"), b"canary").unwrap();
        fs::create_dir_all(t.join("src")).unwrap();
        Store::open(&root).unwrap();
        World {
            t: t.to_path_buf(),
            canary_before: listing(&canary),
            top_before: top_names(t),
            root,
            canary,
        }
    }

    /// Nothing written outside the store, nothing left in its tmp dir.
    fn outside_untouched(&self) -> Result<(), String> {
        let now = listing(&self.canary);
        if now != self.canary_before {
            return Err(format!("canary dir changed: {now:?}"));
        }
        if fs::read(self.canary.join("file")).ok().as_deref() != Some(&b"canary"[..]) {
            return Err("canary file changed".into());
        }
        let top = top_names(&self.t);
        if top != self.top_before {
            return Err(format!("entries appeared beside the store: {top:?}"));
        }
        let mut in_root: Vec<String> = fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        in_root.sort();
        in_root.retain(|n| {
            !["blobs", "images", "layers", "lock", "objects", "tmp"].contains(&n.as_str())
        });
        if !in_root.is_empty() {
            return Err(format!("unexpected entries in the store root: {in_root:?}"));
        }
        let tmp: Vec<_> = fs::read_dir(self.root.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if !tmp.is_empty() {
            return Err(format!("store tmp dir not empty: {tmp:?}"));
        }
        Ok(())
    }
}

/// A refused import stores no file object; an accepted one's go with `prune`.
fn no_objects(root: &Path) -> Result<(), String> {
    let objects: Vec<_> = fs::read_dir(root.join("objects"))
        .unwrap()
        .flat_map(|fan| fs::read_dir(fan.unwrap().path()).into_iter().flatten())
        .map(|e| e.unwrap().file_name())
        .collect();
    if objects.is_empty() {
        Ok(())
    } else {
        Err(format!("file objects left in the store: {objects:?}"))
    }
}

fn top_names(t: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(t)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// After an import that succeeded: every layer intact and self-contained, the expected
/// files there; then everything is removed again to keep the store small.
fn check_imported(store: &Store, expect: &Expect) -> Result<(), String> {
    let idx = store.images().map_err(|e| e.to_string())?;
    if idx.images.is_empty() {
        return Err("import succeeded but no image is recorded".into());
    }
    for rec in idx.images.values() {
        let top = rec.layers.last().expect("a layer");
        for l in &rec.layers {
            let bad = store.check_layer(&l.diff_id);
            if !bad.is_empty() {
                return Err(format!("layer {}: check: {}", l.diff_id, bad.join("; ")));
            }
            links_inside(&store.layer_dir(&l.diff_id))?;
        }
        if let Expect::Accept(files) = expect {
            let diff = store.layer_dir(&top.diff_id);
            for (p, content) in files {
                let f = diff.join(p);
                let md = f
                    .symlink_metadata()
                    .map_err(|e| format!("{p}: missing from the layer: {e}"))?;
                if let Some(c) = content {
                    let got = support::store_env::read_layer_file(&f);
                    if !md.is_file() || &got != c {
                        return Err(format!("{p}: wrong content {:?}", lossy(&got)));
                    }
                }
            }
        }
    }
    store
        .prune(true, &[])
        .map_err(|e| format!("prune after the case: {e}"))?;
    if !store.layer_ids().unwrap().is_empty() || !store.blob_ids().unwrap().is_empty() {
        return Err("prune left layers or blobs".into());
    }
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(60)]).into_owned()
}

/// The outcome against the expectation.
fn judge(expect: &Expect, outcome: &Result<(), String>) -> Result<(), String> {
    match (expect, outcome) {
        (Expect::Refuse(_), Ok(())) => Err("import succeeded, must be refused".into()),
        (Expect::Refuse(want), Err(msg)) => match want.iter().find(|w| !msg.contains(*w)) {
            Some(w) => Err(format!("error {msg:?} does not say {w:?}")),
            None => Ok(()),
        },
        (Expect::Accept(_), Err(msg)) => Err(format!("import refused a valid layer: {msg}")),
        _ => Ok(()),
    }
}

const KINDS: &[&str] = &[
    "dotdot",
    "absolute",
    "symlink-parent",
    "hardlink-out",
    "hardlink-through-symlink",
    "hardlink-unseen",
    "hardlink-dir",
    "devices",
    "long-name",
    "huge-pax",
    "huge-declared-header",
    "bad-checksum",
    "truncated",
    "bomb",
    "dup-same",
    "dup-file-dir",
    "dup-dir-file",
    "dup-symlink-file",
    "whiteout-odd",
    "whiteout-existing",
    "byte-flips",
    "benign",
];

#[test]
fn hostile_images() {
    if support::skip_unless_root() {
        return;
    }
    let cases = env_u64("LAYERFS_HOSTILE_CASES", 10_000);
    let seed = env_u64("LAYERFS_HOSTILE_SEED", 11);
    let mut report = Report::new("hostile", "import");
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::Builder::new()
            .prefix("layerfs-hostile.")
            .tempdir_in("/dev/shm")
            .unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let w = World::new(base.path());
    let mut store = Store::open(&w.root).unwrap();
    store.set_expansion_limit(TEST_LIMIT);
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut by_kind: HashMap<&str, (u64, u64, f64)> = HashMap::new();
    let mut failed_before = 0;
    for i in 0..cases {
        let t0 = Instant::now();
        let via_bin = i % 50 == 49;
        let c = gen_case(&mut rng, &w.canary, KINDS, via_bin);
        let dir = w.t.join("src").join(i.to_string());
        let src = write_source(&c, &dir, &mut rng);
        let name = format!("case {i} ({} as {:?})", c.kind, c.form);
        let outcome: Result<Result<(), String>, String> = if via_bin {
            Ok(import_bin(&w.root, &src))
        } else {
            catch_unwind(AssertUnwindSafe(|| {
                store
                    .import(&src, &ImportOptions::default(), &Quiet)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }))
            .map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            })
        };
        let r = match outcome {
            Err(panic) => Err(format!("PANIC: {panic}")),
            Ok(res) => {
                let src_str = src.display().to_string();
                let named = match &res {
                    Err(m) if !m.contains(&src_str) && !via_bin => {
                        Err(format!("error {m:?} does not name the source {src_str}"))
                    }
                    _ => Ok(()),
                };
                named
                    .and_then(|_| judge(&c.expect, &res))
                    .and_then(|_| w.outside_untouched())
                    .and_then(|_| match &res {
                        Ok(()) => check_imported(&store, &c.expect),
                        Err(_) => Ok(()),
                    })
                    .and_then(|_| no_objects(&w.root))
                    .and_then(|_| {
                        if via_bin {
                            system_check_bin(&w.root)
                        } else {
                            Ok(())
                        }
                    })
            }
        };
        let e = by_kind.entry(c.kind).or_default();
        e.0 += 1;
        if r.is_ok() {
            e.1 += 1;
        }
        e.2 += t0.elapsed().as_secs_f64();
        report.check(&name, r);
        let _ = fs::remove_dir_all(&dir);
        if report.failed() > failed_before {
            failed_before = report.failed();
            // Start the next case from a clean store.
            let _ = store.prune(true, &[]);
        }
    }
    // A last full check of the store as `system check` sees it.
    let chk = store.check(false).unwrap();
    report.ok("final: system check clean", chk.is_clean(), || {
        format!("{chk:?}")
    });
    report.check("final: nothing outside the store", w.outside_untouched());
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by_key(|k| k.0);
    for (k, (n, ok, secs)) in kinds {
        eprintln!("  {k:26} {ok:>7} of {n:>7} passed  {secs:6.1} s");
    }
    eprintln!(
        "hostile: {cases} cases in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    report.finish();
}

/// `layerfs import` as a subprocess: exit 0, or non-zero with one `layerfs:` line on
/// stderr and no panic.
fn import_bin(root: &Path, src: &Path) -> Result<(), String> {
    let o = run(root, &["import", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if err.contains("panicked") {
        return Err(format!("PANIC (binary): {err}"));
    }
    if o.status.success() {
        return Ok(());
    }
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    if lines.len() != 1 || !lines[0].starts_with("layerfs: ") {
        return Err(format!(
            "binary failed ({}) without one `layerfs:` line: {err:?}",
            o.status
        ));
    }
    if o.status.code() != Some(1) {
        return Err(format!("binary exit status {} on refusal", o.status));
    }
    if !lines[0].contains(&src.display().to_string()) {
        return Err(format!("error {:?} does not name the source", lines[0]));
    }
    Err(lines[0].to_string())
}

fn system_check_bin(root: &Path) -> Result<(), String> {
    let o = run(root, &["system", "check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    if o.status.success() && out.contains("all intact") {
        Ok(())
    } else {
        Err(format!(
            "system check: {} {out} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

#[test]
fn raw_tar_writer_makes_what_the_tar_crate_reads() {
    let mut t = RawTar::default();
    t.file("a", b"hello");
    let long = "d/".repeat(80) + "leaf";
    t.entry(long.as_bytes(), b'0', b"", b"x", true);
    t.entry(long.as_bytes(), b'0', b"", b"y", false);
    let data = t.finish();
    let mut ar = tar::Archive::new(&data[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().to_vec()).unwrap())
        .collect();
    assert_eq!(names, vec!["a".to_string(), long.clone(), long]);
    let mut out = Vec::new();
    out.write_all(&pax_record("k", b"v")).unwrap();
    assert_eq!(out, b"6 k=v\n");
}
